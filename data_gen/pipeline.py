"""Chaining the stages, tagging, and the run summary; the Python API behind `spt generate`.

    from splitpersona.data_gen.pipeline import generate
    summary = generate(cfg, ["stage1", "stage2", "stage3", "tag", "filter"], iteration=1)

A run directory holds everything: `config.json` (no secrets), `store/<stage>.jsonl` (finished
requests), `ledger.jsonl` (every call, tokens, cost), `batches.jsonl` (submitted Message Batches),
`stage_1|2|3/`, `stage_3_tagged/` and `filter/iter_NNN/` (outputs), `logs/generate.log`, and
`summary.json` (per stage: requests, failures by reason, calls, retries, faults by kind, tokens,
cost; cost per accepted sample; why the run stopped, if it did).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from splitpersona.data_gen.backend import Backend
from splitpersona.data_gen.config import GenerateConfig
from splitpersona.data_gen.runner import GenerationRun, StageResult
from splitpersona.data_gen.store import now_iso, run_lock, summarise_ledger
from splitpersona.config import dump_config
from splitpersona.io import iter_jsonl, read_json, write_json
from splitpersona.records import ReleaseBatch
from splitpersona.release import batch_stem, release_json
from splitpersona.run import provenance

log = logging.getLogger("data_gen")

STEPS = ("stage1", "stage2", "stage3", "tag", "filter")


def run_tag(run: GenerationRun) -> StageResult:
    """Tag the stage-3 batches with the release's tags (`splitpersona.data_gen.tags`) into `stage_3_tagged/`."""
    from splitpersona.data_gen.tags import tag_batches

    result = StageResult("tag")
    files = run.batch_files(3)
    batches = [ReleaseBatch.model_validate(read_json(p)) for p in files]
    report = tag_batches(batches, stems=[batch_stem(p) for p in files])
    for path, batch in zip(files, report.batches):
        write_json(run.stage_dir("tagged") / path.parent.name / path.name, release_json(batch, strip_empty=False))
    result.files = len(files)
    result.notes.update(
        interventions=report.interventions, variants=report.variants,
        dropped_variants=sum(report.dropped_variants.values()),
        intervention_tags=dict(report.intervention_tags.most_common()),
        variant_tags=dict(report.variant_tags.most_common()),
    )
    return result


def _step(run: GenerationRun, step: str, iteration: int, propose: bool) -> StageResult:
    """One step; each stage's module is imported only when it runs (stage 2 pulls in torch)."""
    if step == "tag":
        return run_tag(run)
    if step == "filter":
        from splitpersona.data_gen.quality import run_filter

        return run_filter(run, iteration, propose)
    if step in STEPS:
        return getattr(importlib.import_module(f"splitpersona.data_gen.{step}"), f"run_{step}")(run)
    raise ValueError(f"unknown step {step!r}; steps: {STEPS}")


def _latest_accepted(out: Path) -> tuple[int | None, int]:
    iters = sorted((out / "filter").glob("iter_*/decisions.jsonl"))
    if not iters:
        return None, 0
    accepted = sum(1 for _, row in iter_jsonl(iters[-1]) if row.get("accepted"))
    return int(iters[-1].parent.name.removeprefix("iter_")), accepted


def write_summary(run: GenerationRun, results: Mapping[str, StageResult]) -> dict[str, Any]:
    """Recomputed from the ledger and the stores, so it also counts what killed runs did."""
    path = run.out / "summary.json"
    previous = read_json(path) if path.exists() else {}
    costs = summarise_ledger(run.ledger.rows())
    stages: dict[str, Any] = {}
    for name in ("stage1", "stage2", "stage3", "tag", "filter", "propose"):
        entry: dict[str, Any] = dict(costs.get(name, {}))
        store = run.out / "store" / f"{name}.jsonl"
        if store.exists():
            rows = run.store(name).rows()
            entry["stored"] = {"ok": sum(r["status"] == "ok" for r in rows), "failed": sum(r["status"] == "failed" for r in rows)}
        last = results[name].as_dict() if name in results else previous.get("stages", {}).get(name, {}).get("last_command")
        if last is not None:
            entry["last_command"] = last
        if entry:
            stages[name] = entry
    spent = round(sum(s.get("cost_usd", 0.0) for s in costs.values()), 6)
    iteration, accepted = _latest_accepted(run.out)
    stopped = next((r.stopped for r in results.values() if r.stopped), None)
    summary = {
        "run": run.cfg.name, "updated": now_iso(), "budget_usd": run.cfg.budget_usd, "spent_usd": spent,
        "stopped": stopped, "stages": stages, "filter_iteration": iteration, "accepted_samples": accepted,
        "cost_per_accepted_sample_usd": round(spent / accepted, 6) if accepted else None,
    }
    write_json(path, summary)
    return summary


@contextlib.contextmanager
def _log_to(out: Path) -> Iterator[None]:
    """Log the `data_gen` logger to the run's log file (and, via rich, to stderr) while a command runs."""
    from rich.logging import RichHandler

    logger = logging.getLogger("data_gen")
    (out / "logs").mkdir(parents=True, exist_ok=True)
    file_handler = logging.FileHandler(out / "logs" / "generate.log", encoding="utf-8")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    console = RichHandler(show_path=False, rich_tracebacks=False)
    handlers = (file_handler, console)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    for h in handlers:
        logger.addHandler(h)
    try:
        yield
    finally:
        for h in handlers:
            logger.removeHandler(h)
            h.close()
        logger.setLevel(old_level)


def generate(
    cfg: GenerateConfig, steps: Sequence[str], *, iteration: int = 1, propose: bool = False,
    backends: Mapping[str, Backend] | None = None,
) -> dict[str, Any]:
    """Run `steps` in order, stopping early when one stops (budget reached, batch pending)."""
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise ValueError(f"unknown steps {unknown}; steps: {STEPS}")
    with run_lock(cfg.out_dir), _log_to(cfg.out_dir):
        write_json(cfg.out_dir / "config.json", {"config": dump_config(cfg), "provenance": provenance(), "steps": list(steps)})
        run = GenerationRun(cfg, backends)
        results: dict[str, StageResult] = {}
        calls_before = sum(1 for _ in run.ledger.rows())
        try:
            for step in steps:
                result = _step(run, step, iteration, propose)
                results[step] = result
                log.info("%s: %s", step, result.as_dict())
                if result.stopped:
                    break
        finally:
            summary = write_summary(run, results)
        if cfg.wandb.enabled:
            log_wandb(run, summary, results, calls_before, iteration)
    return summary


def _flat(prefix: str, data: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, Mapping):
            out |= _flat(f"{prefix}/{k}", v)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"{prefix}/{k}"] = v
    return out


def accepted_artifact(run_name: str) -> str:
    """The W&B name of a generation run's accepted samples, which `spt data import` names as its input."""
    from splitpersona.tracking import artifact_name

    return artifact_name("dataset", f"{run_name}-accepted")


def accepted_source(path: Path) -> str | None:
    """`accepted_artifact` of the run whose filter iteration `path` is the accepted directory of, else None."""
    config = path.parents[2] / "config.json" if len(path.parents) > 2 else None
    if path.name != "accepted" or not path.parent.name.startswith("iter_") or config is None or not config.is_file():
        return None
    # GenerateConfig.name from the two keys it reads: a config an older version wrote need not validate today
    return accepted_artifact(read_json(config)["config"].get("run_name") or config.parent.resolve().name)


def log_wandb(run: GenerationRun, summary: dict[str, Any], results: Mapping[str, StageResult], calls_before: int,
              iteration: int) -> None:
    """One W&B run per command: per stage what this command sent and what the run has spent (calls, tokens, cost,
    faults), per filter iteration its acceptance rate and failure modes, and the accepted samples as a table."""
    import wandb

    from splitpersona.data_gen.quality import accepted_rows, failure_mode_counts, iteration_dir
    from splitpersona.tracking import log_files, start_run

    cfg = run.cfg
    wb = start_run(cfg.wandb, dir=cfg.out_dir, job_type="generate", name=cfg.name, group=cfg.wandb.group or cfg.name,
                   config=dump_config(cfg))
    try:
        command = summarise_ledger(list(run.ledger.rows())[calls_before:])
        row: dict[str, Any] = {"spent_usd": summary["spent_usd"], "accepted_samples": summary["accepted_samples"]}
        for stage, entry in summary["stages"].items():
            total = {k: v for k, v in entry.items() if k != "last_command"}
            row |= _flat(f"{stage}/total", total) | _flat(f"{stage}/command", command.get(stage, {}))
            if stage in results:
                r = results[stage]
                row |= _flat(f"{stage}/command", r.as_dict())
                if r.requested:
                    row[f"{stage}/command/acceptance_rate"] = r.ok / r.requested
        for it_dir in sorted((cfg.out_dir / "filter").glob("iter_*")):
            if (it_dir / "failure_modes.json").exists():
                row |= _flat(f"filter/{it_dir.name}", failure_mode_counts(read_json(it_dir / "failure_modes.json")))
        latest = summary["filter_iteration"]
        if latest is not None:
            rows = accepted_rows(run, latest)
            columns = list(dict.fromkeys(k for r in rows for k in r))
            row["accepted"] = wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])
            accepted = iteration_dir(run, latest) / "accepted"
            if accepted.is_dir():  # the release batches `spt data import` turns into training records
                log_files(wb, "dataset", accepted, name=accepted_artifact(cfg.name),
                          metadata={"filter_iteration": latest, "accepted_samples": len(rows)})
        wb.log(row)
        wb.summary.update({k: v for k, v in row.items() if not isinstance(v, wandb.Table)})
    finally:
        wb.finish()
