"""`spt data`: import the public SPT release, look at one assembled sample, summarise a record file.

    spt data import ../shared/reference/stage_3_tagged --out data/spt_release.jsonl
    spt data show data/spt_release.jsonl --index 0 --tokenizer runs/my_run
    spt data stats data/spt_release.jsonl --tokenizer path/to/tokenizer

Heavy imports (transformers) stay inside the commands that need a tokenizer.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from enum import Enum
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from splitpersona.conversation import Elicitation
from splitpersona.io import DataError, read_jsonl
from splitpersona.records import TrainingRecord
from splitpersona.tracking import WandbConfig, WandbMode

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
FLAGS = ("PASS", "FAIL", "AMBIGUOUS")


class TokenStrategy(str, Enum):
    new = "new"
    reserved = "reserved"


def _console() -> Console:
    return Console(highlight=False)


def _split_list(value: str | None, option: str) -> list[str] | None:
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise typer.BadParameter(f"{option} needs at least one comma-separated name")
    return items


def _table(title: str, columns: Iterable[str]) -> Table:
    """A table titled on the left: the first column holds names, the others right-aligned figures."""
    table = Table(title=title, title_justify="left")
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    return table


def _flag_table(title: str, column: str, pairs: Iterable[tuple[str, str]]) -> Table:
    """Rows by key (most records first), columns by flag, with a total row."""
    pairs = list(pairs)
    counts, keys = Counter(pairs), Counter(key for key, _ in pairs)
    table = _table(title, (column, "records", *FLAGS))
    for key, total in sorted(keys.items(), key=lambda kv: (-kv[1], kv[0])):
        table.add_row(key, f"{total:,}", *(f"{counts[(key, f)]:,}" for f in FLAGS))
    table.add_section()
    table.add_row(
        "total", f"{sum(keys.values()):,}", *(f"{sum(n for (_, f), n in counts.items() if f == flag):,}" for flag in FLAGS)
    )
    return table


def _print_flag_tables(console: Console, records: list[TrainingRecord], dims: Iterable[tuple[str, str]]) -> None:
    for column, field in dims:
        console.print(_flag_table(f"By {field.replace('_', ' ')}", column, ((getattr(r, field), r.flag) for r in records)))


@app.command("import")
def import_(
    sources: list[Path] = typer.Argument(..., help="stage_3_tagged directories, topic directories or batch files (.json/.json.xz)."),
    out: Path = typer.Option(..., "--out", help="Output JSONL of training records (written atomically)."),
    filters: Path | None = typer.Option(None, "--filters", help="Filter YAML [default: configs/filters/spt_release.yaml]."),
    topics: str | None = typer.Option(None, "--topics", help="Comma list replacing the filter's train_topics."),
    keys: str | None = typer.Option(None, "--keys", help="Comma list replacing the filter's intervention_keys."),
    models: str | None = typer.Option(None, "--models", help="Comma list replacing the filter's models."),
    wandb: WandbMode = typer.Option(WandbMode.disabled, "--wandb", help="Log the import to W&B: the sources as its "
                                    "inputs, the records as the dataset the trainer names as its input."),
) -> None:
    """Import the public SPT release into training records: one per surviving (item, model, variant, key)."""
    from rich.progress import track

    from splitpersona.release import RELEASE_FILTER, import_release, load_filter

    console = _console()
    filt = load_filter(filters or RELEASE_FILTER)
    for name, option, value in (
        ("train_topics", "--topics", topics),
        ("intervention_keys", "--keys", keys),
        ("models", "--models", models),
    ):
        items = _split_list(value, option)
        if items is not None:
            setattr(filt, name, items)
    records, stats = import_release(
        sources, out, filt, progress=lambda paths: track(paths, description="reading batches", console=console, transient=True)
    )

    summary = Table(title="Import", title_justify="left", show_header=False)
    summary.add_column(style="bold")
    summary.add_column(justify="right")
    for label, n in (
        ("files", stats.files),
        ("items", stats.items),
        ("interventions", stats.interventions),
        ("candidates (topic, key, model)", stats.candidates),
        ("rejected for tags", stats.rejected),
        ("ERROR placeholders skipped", stats.error_placeholders),
        ("records written", len(records)),
    ):
        summary.add_row(label, f"{n:,}")
    console.print(summary)
    _print_flag_tables(console, records, (("topic", "topic"), ("model", "model"), ("key", "intervention_key")))
    if stats.rejected_by_tag:
        reasons = _table("Rejection reasons (not exclusive)", ("tag", "candidates"))
        for tag, n in stats.rejected_by_tag.most_common():
            reasons.add_row(tag, f"{n:,}")
        console.print(reasons)
    for what, wanted in (("topics", filt.train_topics), ("models", filt.models or []), ("keys", filt.intervention_keys)):
        missing = sorted(set(wanted) - stats.seen[what])
        if missing:
            console.print(Text(f"note: the filter names {what} absent from the data: {', '.join(missing)}", style="yellow"))
    console.print(f"wrote {len(records):,} records to {out}", soft_wrap=True)
    if wandb is not WandbMode.disabled:
        _log_import(WandbConfig(mode=wandb), sources, out, filt, len(records))


def _log_import(cfg: WandbConfig, sources: list[Path], out: Path, filt, n: int) -> None:
    """The lineage's middle link: a generation run's accepted samples (under their own artifact name) or any other
    source in, the records out under the name and digest the trainer's input takes (`dataset-<file name>`)."""
    from splitpersona.data_gen.pipeline import accepted_source
    from splitpersona.tracking import log_files, start_run, use_files

    run = start_run(cfg, dir=out.parent, job_type="import", name=out.stem,
                    config={"sources": [str(s) for s in sources], "filter": filt.model_dump(mode="json")})
    try:
        for source in sources:
            use_files(run, "dataset", source, name=accepted_source(source.resolve()))
        log_files(run, "dataset", out, metadata={"records": n})
        run.summary["records"] = n
    finally:
        run.finish()


def _load_tokenizer(path: Path, strategy: TokenStrategy | None):
    """(tokenizer, tokens, run info): a run directory's tokenizer and tokens, or a plain tokenizer
    directory with the tokens set up here (run info None)."""
    from transformers import AutoTokenizer

    from splitpersona.run import RUN_FILE, load_run_tokenizer
    from splitpersona.token import TokenConfig, setup_tokenizer

    if (path / RUN_FILE).exists():
        if strategy is not None:
            raise typer.BadParameter("--token-strategy applies to plain tokenizer directories; a run directory fixes its tokens")
        tokenizer, info = load_run_tokenizer(path)
        return tokenizer, info.tokens, info
    if not path.is_dir():
        raise DataError(path, "not a tokenizer directory or a training run directory")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise DataError(path, f"cannot load a tokenizer: {e}") from e
    tokens = setup_tokenizer(tokenizer, TokenConfig(strategy=(strategy or TokenStrategy.new).value))
    return tokenizer, tokens, None


def _format(run_info, elicitation: Elicitation | None, flag_only: bool | None, max_length: int | None):
    """The sample format and max_length: the options given, else the run's, else the defaults."""
    from splitpersona.assemble import FormatConfig

    data = run_info.format.model_dump() if run_info is not None else {}
    data.update({k: v for k, v in (("elicitation", elicitation), ("flag_only", flag_only)) if v is not None})
    if max_length is None and run_info is not None:
        max_length = run_info.max_length
    return FormatConfig.model_validate(data), max_length


# (loss, persona) -> style, open marker, close marker, legend text
_SPAN_STYLES = {
    (0, 0): ("", "", "", "context: adapter off, not trained"),
    (0, 1): ("cyan", "⟨", "⟩", "persona span: adapter on (masked mode), not trained"),
    (1, 1): ("bold green", "⟦", "⟧", "trained: in the loss, adapter on"),
    (1, 0): ("bold red", "⟦!", "!⟧", "trained with the adapter off (no split token before it)"),
}
_SEGMENT_STYLES = {"template": "dim", "split_token": "bold white on magenta"}


def _render_sample(tokenizer, sample) -> Text:
    """The sample's text, run by run: colours for terminals, bracket markers that survive plain text."""
    text = Text()
    runs: list[tuple[tuple[int, int], list]] = []
    for seg in sample.segments:
        for i in range(seg.start, seg.end):
            span = (sample.loss_mask[i], sample.persona_mask[i])
            if not runs or runs[-1][0] != span:
                runs.append((span, []))
            pieces = runs[-1][1]
            if not pieces or pieces[-1][0] != seg.kind:
                pieces.append((seg.kind, []))
            pieces[-1][1].append(sample.input_ids[i])
    for span, pieces in runs:
        style, opening, closing, _ = _SPAN_STYLES[span]
        text.append(opening, style="bold " + (style or "white"))
        for kind, ids in pieces:
            if kind == "response" and sample.truncated:
                text.append(f"[… {sample.truncated} tokens cut …]", style="bold yellow")
            decoded = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            text.append(decoded, style=_SEGMENT_STYLES.get(kind, style))
        text.append(closing, style="bold " + (style or "white"))
    return text


def _legend() -> Text:
    legend = Text("Legend: ", style="bold")
    for style, opening, closing, label in _SPAN_STYLES.values():
        legend.append(f"{opening}…{closing}" if opening else "plain", style=style or None)
        legend.append(f" {label}; ")
    legend.append("split token", style=_SEGMENT_STYLES["split_token"])
    legend.append(" gate opens; ")
    legend.append("chat template", style=_SEGMENT_STYLES["template"])
    legend.append(" structure")
    return legend


@app.command("show")
def show(
    file: Path = typer.Argument(..., help="JSONL of training records."),
    index: int = typer.Option(0, "--index", help="0-based record index."),
    tokenizer_path: Path = typer.Option(..., "--tokenizer", help="Tokenizer directory, or a training run directory."),
    elicitation: Elicitation | None = typer.Option(None, "--elicitation", help="Sample format [default: the run's, else hp]."),
    flag_only: bool | None = typer.Option(None, "--flag-only/--full-review", help="Target is the flag line only."),
    max_length: int | None = typer.Option(None, "--max-length", min=1, help="Cut the response from the left to fit [default: the run's]."),
    token_strategy: TokenStrategy | None = typer.Option(None, "--token-strategy", help="For a plain tokenizer: add a new token or reuse a reserved one [default: new]."),
) -> None:
    """Print one assembled sample with its trained and persona-masked spans marked."""
    from splitpersona.assemble import assemble_record

    console = _console()
    records = read_jsonl(file, TrainingRecord)
    if not 0 <= index < len(records):
        raise DataError(file, f"index {index} is out of range: the file holds {len(records)} records")
    record = records[index]
    tokenizer, tokens, run_info = _load_tokenizer(tokenizer_path, token_strategy)
    fmt, max_length = _format(run_info, elicitation, flag_only, max_length)
    sample = assemble_record(tokenizer, fmt, tokens, record, max_length=max_length)

    console.rule(f"record {index}: {record.id}")
    console.print(
        Text(
            f"{record.topic} · {record.model} · variant {record.variant} · {record.intervention_key} · flag {record.flag}\n"
            f"format: {fmt.elicitation}{' flag_only' if fmt.flag_only else ''} · split token {tokens.split_token!r} (id {tokens.split_id})"
        )
    )
    console.print(_legend())
    console.rule()
    console.print(_render_sample(tokenizer, sample))
    console.rule()
    segments = Table(title="Segments", title_justify="left")
    for col in ("segment", "tokens", "positions", "loss", "persona"):
        segments.add_column(col, justify="left" if col in ("segment", "positions") else "right")
    for seg in sample.segments:
        span = slice(seg.start, seg.end)
        segments.add_row(seg.kind, str(seg.end - seg.start), f"{seg.start}-{seg.end - 1}",
                         str(sum(sample.loss_mask[span])), str(sum(sample.persona_mask[span])))
    console.print(segments)
    flag_token = (
        repr(tokenizer.decode([sample.input_ids[sample.flag_position]])) if sample.flag_position is not None else "none"
    )
    console.print(
        f"{len(sample)} tokens · {sum(sample.loss_mask)} trained · {sum(sample.persona_mask)} in the persona span · "
        f"prompt {sample.prompt_length} · flag token at {sample.flag_position} ({flag_token}) · "
        f"{sample.truncated} response tokens cut"
    )


@app.command("stats")
def stats(
    file: Path = typer.Argument(..., help="JSONL of training records."),
    tokenizer_path: Path | None = typer.Option(None, "--tokenizer", help="Tokenizer or run directory: adds token-length percentiles."),
    elicitation: Elicitation | None = typer.Option(None, "--elicitation", help="Sample format [default: the run's, else hp]."),
    flag_only: bool | None = typer.Option(None, "--flag-only/--full-review", help="Target is the flag line only."),
    max_length: int | None = typer.Option(None, "--max-length", min=1, help="Also count samples longer than this [default: the run's]."),
    token_strategy: TokenStrategy | None = typer.Option(None, "--token-strategy", help="For a plain tokenizer [default: new]."),
) -> None:
    """Counts by topic, model, variant and flag; with a tokenizer, token-length percentiles of assembled samples."""
    console = _console()
    records = read_jsonl(file, TrainingRecord)
    loaded = _load_tokenizer(tokenizer_path, token_strategy) if tokenizer_path is not None else None

    console.print(f"{len(records):,} records in {file}")
    _print_flag_tables(console, records, (("topic", "topic"), ("model", "model"), ("variant", "variant"),
                                          ("key", "intervention_key")))
    if loaded is None:
        return

    import numpy as np
    from rich.progress import track

    from splitpersona.assemble import assemble_record

    tokenizer, tokens, run_info = loaded
    fmt, max_length = _format(run_info, elicitation, flag_only, max_length)
    lengths: dict[str, list[int]] = {"sample": [], "response": [], "persona span": [], "trained": []}
    for record in track(records, description="tokenizing", console=console, transient=True):
        sample = assemble_record(tokenizer, fmt, tokens, record)
        lengths["sample"].append(len(sample))
        lengths["response"].append(sum(s.end - s.start for s in sample.segments if s.kind == "response"))
        lengths["persona span"].append(sum(sample.persona_mask))
        lengths["trained"].append(sum(sample.loss_mask))
    table = _table(f"Token lengths ({fmt.elicitation}{', flag_only' if fmt.flag_only else ''})",
                   ("part", "p50", "p90", "p99", "max"))
    for part, values in lengths.items():
        p50, p90, p99 = np.percentile(values, [50, 90, 99], method="nearest")
        table.add_row(part, str(int(p50)), str(int(p90)), str(int(p99)), str(max(values)))
    console.print(table)
    if max_length is not None:
        over = sum(n > max_length for n in lengths["sample"])
        console.print(f"{over:,} of {len(records):,} samples exceed --max-length {max_length} (their responses would be cut)")
