"""`spt eval ...`: one function per command; each imports its module inside, so `spt --help` stays fast."""

from __future__ import annotations

from pathlib import Path

import typer

from splitpersona.devices import DEVICE, DTYPE
from splitpersona.tracking import WandbMode

app = typer.Typer(no_args_is_help=True)


@app.command()
def report(
    results: list[Path] = typer.Argument(..., help="Results files (JSONL) written by `spt eval run`."),
    out: Path = typer.Option(..., "--out", help="Directory for report.md, report.json and the PNG charts."),
    label: list[str] = typer.Option(None, "--label", help="A name per results file, in order (default: file name)."),
    slice_: list[str] = typer.Option(
        None, "--slice", help="Extra slice label to tabulate (default: variant, complied)."
    ),
    wandb: WandbMode = typer.Option(WandbMode.disabled, "--wandb", help="Log each results file to W&B, in the "
                                    "project and group of the training run it evaluates."),
) -> None:
    """Markdown, JSON and bar charts: every rate with n and a 95% interval, controls beside the persona; the
    results also go into the model card (README.md) of each evaluated run directory."""
    from splitpersona.eval.report import DEFAULT_SLICES, write_report
    from splitpersona.tracking import WandbConfig

    files = write_report(results, out, labels=label or None, slices=slice_ or DEFAULT_SLICES,
                         wandb=WandbConfig(mode=wandb))
    typer.echo(f"wrote {files.markdown}, {files.json} and {len(files.charts)} charts")


@app.command()
def published(
    directory: Path = typer.Argument(..., help="Directory of the release's evaluation result files (recursive)."),
    json_out: Path = typer.Option(None, "--json", help="Write the per-file table as JSON here."),
) -> None:
    """Re-score the published SPT evaluation files with our flag parser; per-file and grouped tables."""
    from splitpersona.eval.published import print_tables, scan
    from splitpersona.io import write_json

    result = scan(directory)
    for path, reason in result.skipped:
        typer.echo(f"warning: skipped {path}: {reason}", err=True)
    print_tables(result)
    if json_out is not None:
        write_json(json_out, [f.to_json() for f in result.files])
        typer.echo(f"wrote {json_out}")


@app.command("run")
def run(
    config: Path = typer.Option(..., "--config", help="Eval config YAML (configs/eval/)."),
    overrides: list[str] = typer.Argument(None, help="key=value overrides, dotted when nested (probe.layers=[0,1])."),
) -> None:
    """Run the persona and every control arm on the same samples; one resumable results file."""
    from splitpersona.config import load_config
    from splitpersona.eval.config import EvalConfig
    from splitpersona.eval.evaluate import run_eval

    out = run_eval(load_config(EvalConfig, config, overrides or []))
    typer.echo(f"wrote {out}")


@app.command()
def checks(
    run_dir: Path = typer.Option(..., "--run", help="A masked persona's run directory."),
    records: Path = typer.Option(
        None, "--records", help="TrainingRecord JSONL to check on (default: the run's first training file)."
    ),
    n: int = typer.Option(16, "--n", min=1, help="How many records (from the start of the file)."),
    max_new_tokens: int = typer.Option(48, "--max-new-tokens", min=1),
    out: Path = typer.Option(
        None, "--out", help="Directory for checks.json and checks.md (default: the run directory)."
    ),
    device: str = DEVICE,
    dtype: str = DTYPE,
    tolerance: float = typer.Option(
        None, "--tolerance", min=0.0,
        help="Largest reuse logit difference that agrees (default: identical text in float32; in half precision "
        "eval.checks.REUSE_TOLERANCE).",
    ),
) -> None:
    """Zero alignment tax and KV reuse: the masked persona leaves the base model's logits (in the columns the run
    left untouched) and answers bit-identical, and reviews alike on the main model's cache and from scratch."""
    from splitpersona.eval.checks import record_conversations, run_checks, run_records, verdicts, write_checks

    records = records or run_records(run_dir)  # bad input raises; `spt` maps it to its exit code (app/cli.py)
    chats, interventions = record_conversations(records, n)
    result = run_checks(run_dir, chats, interventions, max_new_tokens=max_new_tokens, device=device, dtype=dtype,
                        tolerance=tolerance)
    js, md = write_checks(result, out or run_dir, run=str(run_dir), records=str(records))
    failed = [k for k, ok in verdicts(result).items() if not ok]
    typer.echo(f"wrote {js} and {md}: " + ("all checks passed" if not failed else "FAILED: " + ", ".join(failed)))
    if failed:
        raise typer.Exit(1)
