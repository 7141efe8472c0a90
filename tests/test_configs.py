"""Every file under configs/ loads with the config model of its job: none can silently rot."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for p in (REPO / "configs").rglob("*") if p.is_file())


def _load(path: Path):
    rel = path.relative_to(REPO / "configs").parts
    if rel[0] == "train":
        from splitpersona.config import load_config
        from splitpersona.training.config import TrainConfig

        return load_config(TrainConfig, path)
    if rel[0] == "deepspeed":
        from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

        from splitpersona.config import load_yaml

        return DeepSpeedZeroConfig(**load_yaml(path)["zero_optimization"])
    if rel[0] == "eval":
        from splitpersona.eval.config import EvalConfig
        from splitpersona.config import load_config

        return load_config(EvalConfig, path)
    if rel[:2] == ("data_gen", "criteria"):
        from splitpersona.data_gen.quality import load_criteria

        return load_criteria(path)
    if rel[0] == "data_gen":
        from splitpersona.data_gen.config import GenerateConfig
        from splitpersona.config import load_config

        return load_config(GenerateConfig, path)
    if rel[0] == "filters":
        from splitpersona.release import load_filter

        return load_filter(path)
    if rel[0] == "models":
        from splitpersona.training.plan import load_arch_file

        return load_arch_file(path)
    if rel[0] == "demo":
        from splitpersona.app.demo.config import load_demo_config

        return load_demo_config(path), load_demo_config(path, quick=True)
    raise AssertionError(f"{path}: no config model is known for configs/{rel[0]}/; add one to this test")


def test_configs_exist():
    assert {p.parent.name for p in CONFIGS} >= {"train", "deepspeed", "eval", "data_gen", "criteria", "filters", "demo"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_config_loads(path: Path):
    assert _load(path) is not None


def test_each_eval_config_reads_a_run_a_train_config_writes():
    written = {str(_load(p).output_dir) for p in CONFIGS if p.parent.name == "train"}
    for path in (p for p in CONFIGS if p.parent.name == "eval"):
        cfg = _load(path)
        assert str(cfg.run) in written, (path.name, cfg.run, sorted(written))
        assert Path(cfg.output).parent == Path(cfg.run), path.name
