"""`spt train`: one process, in this interpreter. Multi-GPU runs go through the deepspeed launcher:

    deepspeed --num_gpus 8 --module splitpersona.training.train --config configs/train/X.yaml [key=value ...]
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

    from splitpersona.config import load_config
    from splitpersona.training.config import TrainConfig

    cfg = load_config(TrainConfig, config, ctx.args)
    if plan:
        _plan(cfg, config)
        return
    from splitpersona.training.train import Preempted
    from splitpersona.training.train import train as run_training

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        run_dir = run_training(cfg)
    except Preempted as e:
        typer.echo(f"preempted: {e}", err=True)
        raise typer.Exit(Preempted.exit_code) from e
    typer.echo(f"run directory: {run_dir}")
    if cfg.deepspeed:
        from splitpersona.training.engine import exit_now

        exit_now(0)  # DeepSpeed's process-group threads can abort the interpreter's teardown; all is saved


def _plan(cfg, config: Path) -> None:
    """A plan that cannot fit on its planned GPUs is an error (exit 1)."""
    from splitpersona.training.plan import make_plan

    result = make_plan(cfg, source=str(config))
    typer.echo(result.render())
    if not result.fits:
        hints = [] if result.checkpointing else ["enable gradient_checkpointing"]
        hints += ["lower micro_batch_size or max_length", "plan more GPUs or a higher ZeRO stage"]
        raise ValueError(f"{config} does not fit on {result.gpus} x {result.gpu_memory_gib:g} GiB; {'; '.join(hints)}")
