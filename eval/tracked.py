"""An evaluation outside its results file: in W&B (`wandb:` enabled), and in the run directory's model card.

Both read a `RunReport` (splitpersona.eval.report), so W&B, the card and report.md show the same numbers.
The W&B run joins the project and group of the training run it evaluates (run.json's `wandb`), and
holds per arm and condition the metrics with their intervals, one table row per verdict and the ROC charts.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from splitpersona.card import Evaluation, Metric, write_card
from splitpersona.eval.report import RunReport, analyse, md_table, roc_chart
from splitpersona.eval.results import load_results
from splitpersona.io import DataError
from splitpersona.run import RUN_FILE, load_run_info
from splitpersona.tracking import WandbConfig, artifact_name, start_run, use_files

VERDICT_COLUMNS = ["sample_id", "topic", "eval_set", "arm", "condition", "jailbreak", "review", "flag", "parse_ok",
                   "p_fail", "score_source", "expected_flag", "correct"]


def _ci(prefix: str, value: Any, low: Any, high: Any) -> dict[str, Any]:
    return {prefix: value, f"{prefix}_low": low, f"{prefix}_high": high}


def arm_metrics(rr: RunReport) -> list[dict[str, Any]]:
    """One flat row per arm and condition: n, accuracy and balanced accuracy, AUROC (each with its 95% interval),
    recall at each fixed FPR with the FPR achieved, ECE."""
    detection = {(d.arm, d.condition): d for d in rr.detection}
    rows = []
    for r in rr.rows:
        arm, cond, s = r.key["arm"], r.key["condition"], r.summary
        row: dict[str, Any] = {"arm": arm, "condition": cond, "n": s.n, "parsed": s.parsed}
        row |= _ci("accuracy", s.accuracy.value, *s.accuracy.ci) if s.accuracy.n else _ci("accuracy", None, None, None)
        b = s.balanced
        row |= _ci("balanced_accuracy", *(None, None, None) if b is None else (b.value, b.low, b.high))
        d = detection.get((arm, cond))
        auc = None if d is None else d.auc
        row |= _ci("auroc", *(None, None, None) if auc is None else (auc.value, auc.low, auc.high))
        for rec in [] if d is None else d.recall:
            pct = f"{100 * rec.target:g}pct"
            row[f"tpr_at_{pct}_fpr"] = rec.tpr.value
            row[f"achieved_fpr_at_{pct}"] = rec.fpr.value
        row["ece"] = None if d is None else d.ece
        rows.append(row)
    return rows


def verdict_rows(rr: RunReport) -> list[list[Any]]:
    return [[r.id, r.topic, r.eval_set, r.arm, r.condition, r.jailbreak, r.generated, r.parsed_flag, r.parse_ok,
             r.score, r.score_source, r.expected_flag, r.correct] for r in rr.results.records]


def _training_run(rr: RunReport) -> tuple[Path | None, dict | None]:
    """The evaluated run directory (where it still holds run.json) and its W&B run."""
    run_dir = rr.results.metadata.run_dir
    if not run_dir or not (Path(run_dir) / RUN_FILE).exists():
        return None, None
    return Path(run_dir), load_run_info(run_dir).wandb


def log_wandb(rr: RunReport, cfg: WandbConfig, charts: Sequence[Path], *, job_type: str) -> dict[str, Any]:
    """One W&B run for one results file, beside it (`<results dir>/wandb`); returns its tracking.run_ref."""
    import wandb

    from splitpersona.tracking import run_ref

    run_dir, trained = _training_run(rr)
    trained = trained or {}
    group = cfg.group or trained.get("group") or (run_dir.name if run_dir else None)
    meta = rr.results.metadata
    config = {"label": rr.label, "results": str(rr.results.path), "model": meta.model, "run_dir": meta.run_dir,
              "adapter": meta.adapter, "lora_mask": meta.lora_mask, "elicitation": meta.elicitation,
              "training_wandb_run": trained.get("id"), "eval_config": meta.eval_config,
              "calibration": rr.calibration.model_dump(mode="json")}
    cfg = cfg.model_copy(update={"entity": cfg.entity or trained.get("entity")})
    run = start_run(cfg, dir=Path(rr.results.path).parent, job_type=job_type, name=rr.label, group=group,
                    project=trained.get("project"), config=config)
    try:
        if meta.adapter and Path(meta.adapter).is_dir():
            logged = (trained.get("adapter_artifact") or {}).get("name")
            use_files(run, "model", meta.adapter, name=logged or artifact_name("adapter", Path(meta.adapter).parent.name))
        metrics = arm_metrics(rr)
        flat = {f"{m['arm']}/{m['condition']}/{k}": v for m in metrics for k, v in m.items()
                if k not in ("arm", "condition") and v is not None}
        columns = list(dict.fromkeys(k for m in metrics for k in m))
        run.log({
            **flat,
            "metrics": wandb.Table(columns=columns, data=[[m.get(c) for c in columns] for m in metrics]),
            "verdicts": wandb.Table(columns=VERDICT_COLUMNS, data=verdict_rows(rr)),
            **{f"charts/{Path(c).stem}": wandb.Image(str(c)) for c in charts},
        })
        run.summary.update(flat)
        ref = run_ref(run)
    finally:
        run.finish()
    return ref


def log_results(path: str | os.PathLike[str], cfg: WandbConfig, *, job_type: str = "eval") -> dict[str, Any]:
    """`spt eval run`'s W&B run: the report's analysis of the results file, its ROC charts drawn apart."""
    results = load_results(path)
    if not results.records:
        raise DataError(results.path, "holds no records to log")
    rr = analyse(results, results.label)
    with tempfile.TemporaryDirectory() as tmp:
        charts = []
        for cond in dict.fromkeys(d.condition for d in rr.detection if d.roc is not None):
            charts.append(Path(tmp) / f"roc_{cond}.png")
            roc_chart(charts[-1], [d for d in rr.detection if d.condition == cond], f"{rr.label}: ROC, {cond}")
        return log_wandb(rr, cfg, charts, job_type=job_type)


# --- the model card ------------------------------------------------------------------------------


def _cell(value: Any) -> str | None:
    return None if value is None else str(value)


def card_evaluation(runs: Sequence[RunReport], source: str) -> Evaluation:
    """The card's results: the persona's headline metrics per condition, and every arm in the table."""
    metrics: list[Metric] = []
    body = []
    several = len(runs) > 1
    for rr in runs:
        detection = {(d.arm, d.condition): d for d in rr.detection}
        for row in arm_metrics(rr):
            arm, cond = row["arm"], row["condition"]
            label = f"{rr.label}: " if several else ""
            if arm == "persona":
                for key, kind, what in (("accuracy", "accuracy", "accuracy"),
                                        ("balanced_accuracy", "accuracy", "balanced accuracy"),
                                        ("auroc", "roc_auc", "AUROC"), ("tpr_at_1pct_fpr", "recall", "recall at 1% FPR")):
                    if row.get(key) is not None:
                        metrics.append(Metric(kind, f"{label}persona {what} ({cond})", row[key]))
        for r in rr.rows:
            d = detection.get((r.key["arm"], r.key["condition"]))
            low = None if d is None else d.recall_at(0.01)
            body.append([*([rr.label] if several else []), r.key["arm"], r.key["condition"], r.summary.n,
                         r.summary.accuracy, r.summary.balanced, None if d is None else _cell(d.auc), _cell(low),
                         None if d is None or d.ece is None else f"{d.ece:.3f}"])
    header = [*(["run"] if several else []), "arm", "condition", "n", "accuracy", "balanced accuracy",
              "AUROC [95% DeLong]", "TPR@1%FPR (achieved FPR)", "ECE"]
    sets = list(dict.fromkeys(e.get("name", "?") for rr in runs for e in rr.results.metadata.eval_sets))
    return Evaluation(task="Misalignment detection by the persona's review flag (FAIL = detected)", datasets=sets,
                      metrics=metrics, table=md_table(header, body), source=source)


def refresh_cards(runs: Sequence[RunReport], source: str) -> list[Path]:
    """Write the results into the model card of every evaluated run directory that holds run.json."""
    by_dir: dict[Path, list[RunReport]] = {}
    for rr in runs:
        run_dir, _ = _training_run(rr)
        if run_dir is not None:
            by_dir.setdefault(run_dir.resolve(), []).append(rr)
    return [write_card(d, evaluation=card_evaluation(rrs, source)) for d, rrs in by_dir.items()]
