"""`spt generate ...`: stage1 | stage2 | stage3 | tag | filter | run, each `--config X.yaml [key=value ...]`.

Every stop leaves the run directory consistent: rerunning the same command continues where it
stopped. A stop short of the end raises BudgetReached or BatchPending, whose exit codes (with every
other error's) `spt --help` lists.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from splitpersona.data_gen.backend import BatchPending, BudgetReached

app = typer.Typer(
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help="Generate SPT data: Claude writes scenarios (stage1) and reviews (stage3), the target model answers (stage2).",
)

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="Generator YAML (configs/data_gen/*.yaml).")]
Overrides = Annotated[list[str] | None, typer.Argument(help="key=value overrides, dotted for nested keys.")]
IterationOpt = Annotated[int, typer.Option("--iteration", "-i", help="Filter iteration (1, 2, ...).")]
ProposeOpt = Annotated[bool, typer.Option("--propose-criteria", help="Ask Claude for the next criteria version.")]


def _main(config: Path, overrides: list[str] | None, steps: list[str], iteration: int = 1, propose: bool = False) -> None:
    from rich.console import Console

    from splitpersona.data_gen.config import GenerateConfig
    from splitpersona.data_gen.pipeline import generate
    from splitpersona.config import load_config

    cfg = load_config(GenerateConfig, config, overrides or [])
    summary = generate(cfg, steps, iteration=iteration, propose=propose)
    _print_summary(Console(stderr=True), summary)
    if summary["stopped"] == BudgetReached.reason:
        raise BudgetReached("budget reached; raise budget_usd and rerun to continue")
    if summary["stopped"] == BatchPending.reason:
        raise BatchPending()


def _print_summary(console, summary: dict) -> None:
    from rich.table import Table

    table = Table(title=f"run {summary['run']}: ${summary['spent_usd']:.4f} spent"
                  + (f" of ${summary['budget_usd']:.2f}" if summary["budget_usd"] else ""))
    for col in ("stage", "stored ok", "failed", "calls", "retries", "faults", "cost $"):
        table.add_column(col)
    for name, s in summary["stages"].items():
        stored = s.get("stored", {})
        faults = ", ".join(f"{k} {v}" for k, v in s.get("faults", {}).items()) or "-"
        table.add_row(name, str(stored.get("ok", "-")), str(stored.get("failed", "-")), str(s.get("calls", "-")),
                      str(s.get("retries", "-")), faults, f"{s.get('cost_usd', 0.0):.4f}")
    console.print(table)
    if summary["accepted_samples"]:
        console.print(f"filter iteration {summary['filter_iteration']}: {summary['accepted_samples']} accepted samples, "
                      f"${summary['cost_per_accepted_sample_usd']:.5f} each")


@app.command()
def stage1(config: ConfigOpt, overrides: Overrides = None) -> None:
    """Scenarios (A, B, T, metadata) per topic, written by Claude."""
    _main(config, overrides, ["stage1"])


@app.command()
def stage2(config: ConfigOpt, overrides: Overrides = None) -> None:
    """The target model's responses to T under A and B (transformers, vLLM, or an OpenAI-compatible endpoint)."""
    _main(config, overrides, ["stage2"])


@app.command()
def stage3(config: ConfigOpt, overrides: Overrides = None) -> None:
    """Interventions, first-person reviews and verdicts for each response, written by Claude."""
    _main(config, overrides, ["stage3"])


@app.command()
def tag(config: ConfigOpt, overrides: Overrides = None) -> None:
    """Tag stage-3 batches with the release's quality tags."""
    _main(config, overrides, ["tag"])


@app.command("filter")
def filter_(config: ConfigOpt, iteration: IterationOpt, propose_criteria: ProposeOpt = False,
            overrides: Overrides = None) -> None:
    """One iteration of the quality filter: rate, drop, report, compare with the previous iteration."""
    _main(config, overrides, ["filter"], iteration, propose_criteria)


@app.command()
def run(config: ConfigOpt, iteration: IterationOpt = 1, propose_criteria: ProposeOpt = False,
        overrides: Overrides = None) -> None:
    """stage1 -> stage2 -> stage3 -> tag -> filter, stopping cleanly at the budget."""
    _main(config, overrides, ["stage1", "stage2", "stage3", "tag", "filter"], iteration, propose_criteria)
