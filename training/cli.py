"""`spt train`: one process, in this interpreter. Multi-GPU runs go through the deepspeed launcher:

    deepspeed --num_gpus 8 --module training.train --config configs/train/X.yaml [key=value ...]
"""

from __future__ import annotations

from pathlib import Path

import typer


def train(
    ctx: typer.Context,
    config: Path = typer.Option(..., "--config", help="Train config YAML (configs/train/*.yaml)."),
    plan: bool = typer.Option(False, "--plan", help="Print parameters, tokens per step and memory per GPU; train nothing."),
) -> None:
    """Train a persona adapter; extra `key=value` arguments override the config (dotted for nested keys)."""
    import logging

    from splitpersona.config import ConfigError, load_config
    from splitpersona.io import DataError
    from training.config import TrainConfig

    try:
        cfg = load_config(TrainConfig, config, ctx.args)
    except ConfigError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e
    if plan:
        _plan(cfg, config)
        return
    from training.train import train as run_training

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        run_dir = run_training(cfg)
    except (ConfigError, DataError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from e
    typer.echo(f"run directory: {run_dir}")
    if cfg.deepspeed:
        from training.engine import exit_now

        exit_now(0)  # DeepSpeed's process-group threads can abort the interpreter's teardown; all is saved


def _plan(cfg, config: Path) -> None:
    """Exit 1 when the run cannot fit on its planned GPUs."""
    from splitpersona.config import ConfigError
    from training.plan import make_plan

    try:
        result = make_plan(cfg, source=str(config))
    except ConfigError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e
    typer.echo(result.render())
    if not result.fits:
        hints = [] if result.checkpointing else ["enable gradient_checkpointing"]
        hints += ["lower micro_batch_size or max_length", "plan more GPUs or a higher ZeRO stage"]
        typer.echo(f"error: {config} does not fit on {result.gpus} x {result.gpu_memory_gib:g} GiB; {'; '.join(hints)}",
                   err=True)
        raise typer.Exit(1)
