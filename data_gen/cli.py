"""`spt generate ...`: stage1 | stage2 | stage3 | tag | filter | run, each `--config X.yaml [key=value ...]`.

Exit codes: 0 done; 1 bad input or config; 2 aborted (the API refused the credentials);
3 budget reached (rerun with a higher `budget_usd` to continue); 4 a Message Batch is still
processing (rerun to collect it). Every stop leaves the run directory consistent: rerunning the
same command continues where it stopped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Generate SPT data: Claude writes scenarios (stage1) and reviews (stage3), the target model answers (stage2).",
)

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="Generator YAML (configs/data_gen/*.yaml).")]
Overrides = Annotated[list[str] | None, typer.Argument(help="key=value overrides, dotted for nested keys.")]
IterationOpt = Annotated[int, typer.Option("--iteration", "-i", help="Filter iteration (1, 2, ...).")]
ProposeOpt = Annotated[bool, typer.Option("--propose-criteria", help="Ask Claude for the next criteria version.")]

EXIT = {"budget": 3, "batch_pending": 4}


def _main(config: Path, overrides: list[str] | None, steps: list[str], iteration: int = 1, propose: bool = False) -> None:
    from rich.console import Console

    from data_gen.backend import GenerationAborted
    from data_gen.config import GenerateConfig
    from data_gen.pipeline import generate
    from data_gen.store import RunLocked
    from splitpersona.config import ConfigError, load_config
    from splitpersona.io import DataError

    console = Console(stderr=True)
    try:
        cfg = load_config(GenerateConfig, config, overrides or [])
        summary = generate(cfg, steps, iteration=iteration, propose=propose)
    except (ConfigError, DataError, RunLocked) as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from None
    except GenerationAborted as e:
        console.print(f"[red]aborted:[/red] {e}")
        raise typer.Exit(2) from None
    _print_summary(console, summary)
    if summary["stopped"]:
        raise typer.Exit(EXIT[summary["stopped"]])


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
    if summary["stopped"] == "budget":
        console.print("[yellow]stopped: budget reached; raise budget_usd and rerun to continue[/yellow]")
    elif summary["stopped"] == "batch_pending":
        console.print("[yellow]stopped: a Message Batch is still processing; rerun later to collect it[/yellow]")


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


if __name__ == "__main__":
    app()
