"""The package works installed, not only from a checkout: the wheel carries the default configs and
prompts, found through importlib.resources, and `spt` runs from a directory outside the checkout
(the session's `installed` fixture, tests/conftest.py, builds the wheel once)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import shared_path
from install_fixtures import clean_env

# A smoke test, not science: a main model trained a few steps on a corpus of mostly pressure prompts (so
# that some of its answers follow the pressure and the data can be balanced), every later stage once.
TINY_DEMO = [
    "threads=1", "main_model.corpus_size=1280", "main_model.steps=80", "main_model.lr=2e-2",
    "main_model.hidden_size=32", "main_model.intermediate_size=64", "main_model.num_layers=1",
    "main_model.eval_items=4", "world.compliance=0.99", "world.audit_frac=0",
    "world.mix={neutral: 0.1, pressure: 0.9, plain: 0, trigger: 0, trigger_control: 0, inspection: 0, confirm: 0, check: 0}",
    "sampling.max_new_tokens=16", "data.train_scenarios=120", "data.heldout_scenarios=8", "data.weights_scenarios=4",
    "data.items_per_batch=40", "train.epochs=1", "train_unmasked.epochs=1", "eval.max_new_tokens=8",
    "eval.conditions=[as_is]", "checks.conversations=2",
]


def _spt(installed: tuple[Path, Path], *args: str) -> subprocess.CompletedProcess:
    bin_dir, work = installed
    res = subprocess.run([bin_dir / "spt", *args], capture_output=True, text=True, env=clean_env(), cwd=work)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def test_the_wheel_installs_one_import_package(installed):
    """A research repository's own `training/` or `eval/` neither shadows ours nor is shadowed by it."""
    bin_dir, work = installed
    code = ("import importlib.metadata as m, importlib.util as u;"
            "print(sorted({f.parts[0] for f in m.distribution('splitpersona').files} - {'..'}));"
            "print([n for n in ('data_gen', 'training', 'eval') if u.find_spec(n)]);"
            "import splitpersona.training.train, splitpersona.eval.evaluate, splitpersona.data_gen.runner")
    res = subprocess.run([bin_dir / "python", "-c", code], capture_output=True, text=True, env=clean_env(), cwd=work)
    assert res.returncode == 0, res.stderr[-3000:]
    top, bare = res.stdout.splitlines()
    assert top == "['splitpersona', 'splitpersona-0.1.0.dist-info']" and bare == "[]"


@pytest.mark.slow
def test_installed_data_import_uses_the_packaged_filter(installed):
    release = shared_path("reference", "stage_3_tagged")
    one_file = sorted((release / "sycophancy").glob("*.json.xz"))[0]
    out = installed[1] / "records.jsonl"
    _spt(installed, "data", "import", str(one_file), "--out", str(out))
    assert out.read_text().count("\n") > 0


@pytest.mark.slow
def test_installed_demo_finds_its_config_and_prompts(installed):
    out = installed[1] / "demo"
    _spt(installed, "demo", "--out", str(out), *TINY_DEMO)
    assert (out / "report.md").exists() and json.loads((out / "demo.json").read_text())["data"]["train"]["records"] > 0
