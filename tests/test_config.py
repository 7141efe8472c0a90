"""Config loading: YAML plus key=value overrides; unknown keys and bad values are named."""

import pytest
from pydantic import Field

from splitpersona.config import ConfigError, StrictModel, load_config, parse_overrides


class Inner(StrictModel):
    r: int = 8
    targets: list[str] = Field(default_factory=lambda: ["q_proj"])


class Job(StrictModel):
    name: str
    lr: float = 1e-5
    inner: Inner = Field(default_factory=Inner)


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("name: demo\nlr: 2.0e-5\ninner:\n  r: 16\n")
    cfg = load_config(Job, path, ["inner.r=32", "inner.targets=[a, b]", "lr=3e-4"])
    assert cfg.name == "demo" and cfg.lr == 3e-4 and cfg.inner.r == 32 and cfg.inner.targets == ["a", "b"]


def test_unknown_key_is_named(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("name: demo\nlearning_rate: 1.0\n")
    with pytest.raises(ConfigError, match=r"job.yaml: unknown key 'learning_rate'"):
        load_config(Job, path)
    with pytest.raises(ConfigError, match=r"unknown key 'inner.alpha'"):
        load_config(Job, None, ["name=x", "inner.alpha=3"])


def test_bad_value_and_bad_override(tmp_path):
    with pytest.raises(ConfigError, match=r"inner.r"):
        load_config(Job, None, ["name=x", "inner.r=many"])
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["lr"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(Job, tmp_path / "missing.yaml")
