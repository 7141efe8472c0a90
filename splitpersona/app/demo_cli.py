"""`spt demo`: the CPU model organism (splitpersona.app.demo.stages)."""

from __future__ import annotations

from pathlib import Path

import typer

from splitpersona.config import CONFIGS

DEFAULT_CONFIG = CONFIGS / "demo" / "organism.yaml"


def demo(
    overrides: list[str] = typer.Argument(None, help="key=value overrides of the config, e.g. data.seed=1."),
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Directory of the run; an interrupted run resumes."),
    config: Path = typer.Option(DEFAULT_CONFIG, "--config", help="The demo's YAML config."),
    quick: bool = typer.Option(False, "--quick", help="Apply the config's `quick` overrides (a smaller, faster run)."),
) -> None:
    """The whole SPT pipeline on a tiny model with a known hidden behaviour, on CPU, no key, no download."""
    from splitpersona.app.demo.config import load_demo_config
    from splitpersona.app.demo.stages import run_demo

    run_demo(load_demo_config(config, overrides or (), quick=quick), out)
