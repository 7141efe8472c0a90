"""benchmarks/gpu_check.sh at toy size on the CPU: every step the GPU run takes, so its minutes go to measuring."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from train_fixtures import REPO


def toy_bundle(root: Path, name: str, version: str, module: str, body: str = "", requires: tuple[str, ...] = ()) -> Path:
    """A bundle folder as tools/gpu_bundle.py writes it, holding one pure-Python wheel built here without an index."""
    project = root / "project"
    (project / module).mkdir(parents=True)
    (project / module / "__init__.py").write_text(body)
    (project / "pyproject.toml").write_text(
        f'[project]\nname = "{name}"\nversion = "{version}"\ndependencies = {list(requires)!r}\n[tool.setuptools]\npackages = ["{module}"]\n'
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
    )
    bundle = root / "bundle"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-index", "--no-build-isolation",
                    "-w", str(bundle / "wheels"), str(project)], check=True, capture_output=True)
    return bundle


# Imported first by every Python the check starts: the path finder stops seeing what neither the GPU image (with
# what its packages require here) nor the bundle holds, so importing it fails as on that machine, and a library's
# probe for an optional package (importlib.util.find_spec) finds nothing, as there.
IMAGE_ONLY = f"""
import sys
from importlib import machinery, metadata
sys.path.insert(0, {str(REPO / "tools")!r})
from gpu_bundle import canonical, closure, image_packages, pins
sys.path.pop(0)
here = {{canonical(d.metadata["Name"]) for d in metadata.distributions()}}
held = closure(tuple(image_packages() & here)) | {{p.split("==")[0] for p in pins()}} | {{"splitpersona"}}
absent = {{m for m, names in metadata.packages_distributions().items() if not any(canonical(n) in held for n in names)}}


class ImageOnly(machinery.PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        return None if name.partition(".")[0] in absent else super().find_spec(name, path, target)


sys.meta_path[sys.meta_path.index(machinery.PathFinder)] = ImageOnly
"""


def image_env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "image").mkdir()
    (tmp_path / "image" / "sitecustomize.py").write_text(IMAGE_ONLY)
    return {**os.environ, "PYTHONPATH": f"{tmp_path / 'image'}:{REPO}", "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_the_image_stand_in_refuses_what_neither_the_image_nor_the_bundle_holds(tmp_path):
    env = image_env(tmp_path)
    held = subprocess.run([sys.executable, "-c", "import torch, transformers, peft, pydantic, deepspeed, trl"], env=env,
                          capture_output=True, text=True, check=False)
    assert held.returncode == 0, held.stderr[-2000:]
    for module in ("anthropic", "wandb"):
        absent = subprocess.run([sys.executable, "-c", f"import {module}"], env=env, capture_output=True, text=True,
                                check=False)
        assert f"ModuleNotFoundError: No module named '{module}'" in absent.stderr, absent.stderr[-2000:]


def gpu_check_toy(tmp_path: Path, bundle: Path) -> tuple[subprocess.CompletedProcess, str]:
    env = image_env(tmp_path) | {"OUT": str(tmp_path / "out"), "PYTHON": sys.executable, "SPT_GPU_BUNDLE": str(bundle)}
    proc = subprocess.run([str(REPO / "benchmarks/gpu_check.sh"), "--toy"], env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    return proc, (tmp_path / "out/gpu_check.md").read_text()


@pytest.mark.slow
def test_gpu_check_toy_runs_every_step(tmp_path):
    from importlib import metadata

    requires = ("torch", "numpy<1", "no-such-distribution>=1")  # met, not met, absent
    proc, text = gpu_check_toy(tmp_path, toy_bundle(tmp_path, "spt-bundle-probe", "1.0", "spt_bundle_probe",
                                                    requires=requires))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert text in proc.stdout and "failed:" not in text
    assert "installed from the bundle: spt-bundle-probe 1.0\n" in text  # pip --no-index, ahead of the image's packages
    assert (f"the image does not meet: numpy<1 for spt-bundle-probe (the image has {metadata.version('numpy')}); "
            "no-such-distribution>=1 for spt-bundle-probe (the image has none)") in text
    (engine,) = [[c.strip() for c in line.split("|")[1:-1]] for line in text.splitlines()
                 if line.startswith("| Qwen3-8B width, 2 layers |")]  # ZeRO-2 bf16, aLoRA under checkpointing
    model, steps, precision, logits, reuse = engine
    assert steps.startswith("2 (") and precision == "fp32, as the policy" and logits == "2/2 (max diff 0)"
    assert reuse.startswith("2/2 agree") and reuse.endswith("tolerance 1)")
    rows = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    train = [[c.strip() for c in r] for r in rows if len(r) == 6 and r[1].strip() in {"ours", "TRL + peft"}]
    assert {r[0].split(",")[0] for r in train} == {"Qwen3-8B", "Llama-3.3-70B width"}
    assert len(train) == 4
    for model, trainer, tokens_per_s, padding, peak, plan in train:
        assert float(tokens_per_s) > 0 and padding.endswith("%")
        assert peak == "–"  # torch counts peak memory on a GPU only
        assert float(plan) > 0 if trainer == "ours" else plan == "–"  # the plan is for our trainer's run
    review = [[c.strip() for c in r] for r in rows if len(r) == 6 and r[0].strip() == "Qwen3-8B" and r[1].strip().isdigit()]
    assert [int(r[1]) for r in review] and all(int(r[1]) <= n for r, n in zip(review, (96, 192)))
    assert all(float(r[3]) > 0 and float(r[4]) > 0 for r in review)


@pytest.mark.slow
def test_a_row_that_exits_does_not_cost_the_others(tmp_path):
    """A bundled trl that ends the process on import (as a broken or mismatched wheel can): both training rows
    fail and say why, the review rows are still measured, and the exit status reports the failure."""
    bundle = toy_bundle(tmp_path, "trl", "0.0.1", "trl", "raise SystemExit('this trl cannot load')\n")
    proc, text = gpu_check_toy(tmp_path, bundle)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "installed from the bundle: trl 0.0.1\n" in text
    failed = [line for line in text.splitlines() if line.startswith("failed:")]
    assert failed == [f"failed: {m} training: SystemExit: this trl cannot load"
                      for m in ("Qwen3-8B", "Llama-3.3-70B width, 4 of 80 layers")], failed
    rows = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert [r for r in rows if len(r) == 6 and r[0].strip() == "Qwen3-8B" and r[1].strip().isdigit()]


def test_bundle_pins_what_the_image_lacks_at_the_versions_tested_here():
    from importlib import metadata

    sys.path.insert(0, str(REPO / "tools"))
    try:
        from gpu_bundle import pins
    finally:
        sys.path.remove(str(REPO / "tools"))

    pinned = dict(p.split("==") for p in pins())
    for name in ("pydantic", "typer", "trl", "datasets", "deepspeed", "pydantic-core", "hjson"):
        assert pinned[name] == metadata.version(name), name
    image = {"torch", "transformers", "peft", "accelerate", "numpy", "safetensors", "pyarrow", "pandas", "tokenizers",
             "rich"}  # the image holds these: carried only when pinned
    assert not image & set(pinned)
    assert dict(p.split("==") for p in pins(["pyarrow==21.0.0"]))["pyarrow"] == "21.0.0"
    with pytest.raises(SystemExit, match="bundled package"):
        pins(["no-such-distribution==1.0"])
