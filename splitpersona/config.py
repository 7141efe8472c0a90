"""Typed job configs: YAML holds the run, `key=value` overrides it, an unknown key is an error.

Every config forbids extra keys, so a misspelled key is an error rather than silently ignored,
and a run cannot differ from its label.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from importlib.resources import files
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

# The shipped configs/ folder, as package data: found the same way from a checkout and from a wheel.
CONFIGS = Path(str(files("splitpersona") / "configs"))

C = TypeVar("C", bound=BaseModel)


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ConfigError(ValueError):
    pass


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """`a.b=3 c=[1,2]` -> nested dict; values are parsed as YAML so types come out right."""
    out: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        key = key.strip().lstrip("-")
        if not key:
            raise ConfigError(f"override {item!r} has an empty key")
        value = yaml.safe_load(raw) if raw.strip() else ""
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p!r} is not a section")
        node[parts[-1]] = value
    return out


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(merged.get(k), dict):
            merged[k] = deep_merge(merged[k], v)
        else:
            merged[k] = v
    return merged


def load_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def load_config(
    cls: type[C],
    path: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
) -> C:
    """Build `cls` from a YAML file plus overrides; errors name the file and the key.

    Relative paths in the YAML stay as written: they resolve against the working directory, like
    every command-line path.
    """
    data = load_yaml(path) if path is not None else {}
    data = deep_merge(data, parse_overrides(overrides))
    source = str(path) if path is not None else "<command line>"
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{source}: {_explain(e)}") from e


def _explain(err: ValidationError) -> str:
    msgs = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"])
        if e["type"] == "extra_forbidden":
            msgs.append(f"unknown key {loc!r}")
        else:
            msgs.append(f"{loc}: {e['msg']}")
    return "; ".join(msgs)


def dump_config(cfg: BaseModel) -> dict[str, Any]:
    return cfg.model_dump(mode="json")
