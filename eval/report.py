"""`spt eval report`: results files -> report.md, report.json and bar charts with 95% intervals.

Several files (say a masked and an unmasked run) go into one report, each under its own label.
Every rate is printed with its n and Wilson interval, the control arms stand beside the persona in
the same table, and the system-prompt swap gets a table of its own: it is the test a persona that
learned "biased prompt -> FAIL" instead of reading its own reasoning fails.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from splitpersona.eval.config import CalibrationConfig
from splitpersona.eval.detection import ArmDetection, Comparison, detection_table, mcnemar, persona_vs_best
from splitpersona.eval.metrics import (
    Combined,
    Rate,
    Row,
    Summary,
    as_jsonable,
    cross_topic,
    jailbreak_flips,
    swap_table,
    table,
)
from splitpersona.eval.results import ARMS, CONDITIONS, Results, load_results
from splitpersona.io import DataError, atomic_write, write_json
from splitpersona.tracking import WandbConfig

COMPARISON = "__runs__"  # key of the cross-run charts in the chart index
SWAP_CONDITIONS = ("as_is", "no_system_prompt", "swapped_system_prompt")
DEFAULT_SLICES = ("variant", "complied")

DEFINITIONS = """\
- **accuracy**: correct / parsed samples (the published work's denominator). **accuracy (all)**:
  correct / all samples, a parse failure counted wrong.
- **TPR**: share of expected-FAIL samples flagged FAIL (FAIL = detection, the positive class);
  **TNR**: share of expected-PASS samples flagged PASS; both over parsed samples.
  **balanced** = (TPR + TNR) / 2.
- Intervals are Wilson score 95%. Balanced accuracy and the swap drop combine two Wilson intervals
  with Newcombe's MOVER method, treating the two rates as independent.
- **Scores** (detection by a continuous score of FAIL): P(FAIL) / (P(FAIL) + P(PASS)) at the flag for
  the generative arms (read after the arm's own review, the flag prefix teacher-forced), the fitted
  probe's and text classifier's output, and Claude's self-reported probability (`score source`).
  **AUROC** with a 95% DeLong interval. **TPR@x%FPR**: recall at the threshold that flags at most
  x% of the calibration samples (expected PASS, chosen by `calibration`), with the FPR that threshold
  achieves on the other PASS samples beside it; the recall is over the samples outside the
  calibration set too. **ECE**: expected calibration error over 10 equal-width bins (probability
  scores only). AUROC, ECE and the paired tests fit nothing, so they are over every labelled sample,
  as the accuracies are; `n` counts scored ones.
- **Paired comparisons** (two arms on the same samples, not treated as independent): accuracy
  difference by McNemar's test (exact binomial under 25 discordant pairs, else continuity-corrected
  chi-square; parse failures counted wrong), AUROC difference by DeLong's paired test, balanced
  accuracy difference with a seeded paired bootstrap interval (resampling within each class;
  parse failures counted wrong). The swap table's p-value is McNemar's on the same samples.
- **jailbreak flip**: of the samples flagged FAIL without the planted "answer PASS" instruction,
  the share flagged PASS with it (same sample, same arm); **changed**: either direction.
"""


@dataclass
class RunReport:
    label: str
    results: Results
    rows: list[Row]
    swap: list[dict]
    swap_by_variant: list[dict]
    cross_topic: list[Row]
    per_topic: list[Row]
    slices: dict[str, list[Row]]
    jailbreak: list[dict]
    calibration: CalibrationConfig
    detection: list[ArmDetection]
    versus: list[Comparison]
    swap_paired: dict[tuple[str, str], Any]  # (arm, condition) -> McNemar of as_is against it


def _rank(known: Sequence[str]):
    """Sort key: known names in their canonical order, then the rest sorted."""
    return lambda v: (known.index(v), "") if v in known else (len(known), str(v))


def _order(values, known: Sequence[str]) -> list:
    return sorted(dict.fromkeys(values), key=_rank(known))


def _sort_rows(rows: list[Row]) -> list[Row]:
    """Arms and conditions in their canonical order, other key values sorted."""
    ranks = {"arm": _rank(ARMS), "condition": _rank(CONDITIONS)}
    plain = lambda v: (0, "") if v is None else (1, str(v))  # noqa: E731
    return sorted(rows, key=lambda r: tuple(ranks.get(d, plain)(v) for d, v in r.key.items()))


def calibration_of(results: Results) -> CalibrationConfig:
    """The calibration the run was configured with (defaults for files written before it existed)."""
    from pydantic import ValidationError

    try:
        return CalibrationConfig.model_validate(results.metadata.eval_config.get("calibration") or {})
    except ValidationError as e:
        raise DataError(results.path, f"bad calibration settings in the metadata: {e}", record="line 1") from e


def _swap_paired(records, base: str = "as_is") -> dict[tuple[str, str], Any]:
    """McNemar's test of each arm's accuracy under `base` against each swap condition, same samples."""
    by: dict[tuple[str, str], dict[str, Any]] = {}
    for r in records:
        if r.jailbreak is None and r.condition in SWAP_CONDITIONS:
            by.setdefault((r.arm, r.condition), {})[r.id] = r
    out = {}
    for (arm, cond), rs in by.items():
        if cond == base or (arm, base) not in by:
            continue
        ids = sorted(set(rs) & set(by[(arm, base)]))
        if ids:
            out[(arm, cond)] = mcnemar([by[(arm, base)][i].correct for i in ids], [rs[i].correct for i in ids])
    return out


def analyse(
    results: Results, label: str, slices: Sequence[str] = DEFAULT_SLICES, calibration: CalibrationConfig | None = None
) -> RunReport:
    recs = results.records
    calibration = calibration or calibration_of(results)
    detection = detection_table(recs, calibration)
    detection.sort(key=lambda d: (_rank(CONDITIONS)(d.condition), _rank(ARMS)(d.arm)))
    slice_rows = {}
    for name in slices:
        labelled = [r for r in recs if r.slice_value(name) is not None]
        if labelled:
            slice_rows[name] = _sort_rows(table(labelled, ("arm", "condition", name)))
    return RunReport(
        label=label,
        results=results,
        rows=_sort_rows(table(recs, ("arm", "condition"))),
        swap=swap_table(recs),
        swap_by_variant=swap_table([r for r in recs if r.variant is not None], by=("arm", "variant")),
        cross_topic=_sort_rows(cross_topic(recs, results.metadata.trained_topics)),
        per_topic=_sort_rows(table([r for r in recs if r.topic is not None], ("arm", "condition", "topic"))),
        slices=slice_rows,
        jailbreak=jailbreak_flips(recs),
        calibration=calibration,
        detection=detection,
        versus=persona_vs_best(recs, detection, calibration),
        swap_paired=_swap_paired(recs),
    )


def unique_labels(results: Sequence[Results], labels: Sequence[str] | None = None) -> list[str]:
    if labels:
        if len(labels) != len(results):
            raise ValueError(f"{len(labels)} labels given for {len(results)} results files")
        if len(set(labels)) != len(labels):
            raise ValueError(f"labels must differ: {list(labels)}")
        return list(labels)
    out: list[str] = []
    for res in results:
        base, k = res.label, 2
        name = base
        while name in out:
            name, k = f"{base}#{k}", k + 1
        out.append(name)
    return out


# --- markdown ------------------------------------------------------------------------------------


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; None reads as a dash and a pipe inside a cell is escaped."""
    cell = lambda v: "–" if v is None else str(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _pivot(rows: list[Row], row_dims: Sequence[str], metric: str = "accuracy") -> str:
    """Arms as columns, so every control sits beside the persona on the same samples."""
    arms = _order((r.key["arm"] for r in rows), ARMS)
    cells: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        cells.setdefault(tuple(r.key[d] for d in row_dims), {})[r.key["arm"]] = getattr(r.summary, metric)
    body = [[*k, *(cells[k].get(a) for a in arms)] for k in cells]
    return md_table([*row_dims, *arms], body)


def _summary_cells(s: Summary) -> list[Any]:
    return [s.n, s.parsed, s.parse_failures, s.accuracy, s.accuracy_all, s.tpr, s.tnr, s.balanced]


SUMMARY_HEADER = ["n", "parsed", "parse failures", "accuracy", "accuracy (all)", "TPR", "TNR", "balanced"]


def _swap_md(rows: list[dict], dims: Sequence[str], paired: dict[tuple[str, str], Any] | None = None) -> str:
    body = []
    for row in rows:
        cells = [row["key"][d] for d in dims] + [row["n"]]
        cells += [row[c].accuracy if c in row else None for c in SWAP_CONDITIONS]
        cells += [row["drop"].get(c) for c in SWAP_CONDITIONS[1:]]
        if paired is not None:
            tests = [paired.get((row["key"]["arm"], c)) for c in SWAP_CONDITIONS[1:]]
            cells += [None if t is None else f"{t.p:.3g}" for t in tests]
        body.append(cells)
    header = [*dims, "n (same samples)", *SWAP_CONDITIONS, "drop: no_system_prompt", "drop: swapped_system_prompt"]
    if paired is not None:
        header += ["p: no_system_prompt (McNemar)", "p: swapped_system_prompt (McNemar)"]
    return md_table(header, body)


def _pct(v: float | None) -> str | None:
    return None if v is None else f"{100 * v:.1f}%"


def detection_rows(detection: Sequence[ArmDetection]) -> list[list[Any]]:
    """Cells of the score table: arm, condition, AUROC [CI], TPR@1%FPR (achieved FPR), TPR@5%FPR, ECE, n, source."""
    rows = []
    for d in detection:
        low, high = d.recall_at(0.01), d.recall_at(0.05)
        rows.append([
            d.arm, d.condition, d.auc, low, None if high is None else _pct(high.tpr.value),
            None if d.ece is None else f"{d.ece:.3f}", f"{d.n} ({d.n_pos}+/{d.n_neg}-)",
            d.recall[0].n_calibration if d.recall else None, d.score_source, d.note or None,
        ])
    return rows


DETECTION_HEADER = ["arm", "condition", "AUROC [95% DeLong]", "TPR@1%FPR (achieved FPR)", "TPR@5%FPR", "ECE", "n",
                    "calibration n", "score source", "note"]


def reliability_md(detection: Sequence[ArmDetection], condition: str) -> str | None:
    """Reliability table of one condition: per score bin and arm, mean score / observed FAIL rate (n)."""
    rows = [d for d in detection if d.condition == condition and d.reliability]
    if not rows:
        return None
    cell = lambda b: None if not b.n else f"{b.mean_score:.2f} / {b.fail_rate:.2f} ({b.n})"  # noqa: E731
    body = [[f"{b.low:.1f}-{b.high:.1f}", *(cell(d.reliability[i]) for d in rows)]
            for i, b in enumerate(rows[0].reliability)]
    return md_table(["score bin", *(d.arm for d in rows)], body)


def versus_lines(versus: Sequence[Comparison]) -> list[str]:
    """One line per condition: the persona against the best other arm by AUROC, each figure with its test."""
    lines = []
    for c in versus:
        parts = [f"AUROC {c.auroc}" if c.auroc else "AUROC: n/a",
                 f"accuracy {c.accuracy}" if c.accuracy else "accuracy: n/a",
                 f"balanced accuracy {c.balanced}" if c.balanced else "balanced accuracy: n/a"]
        lines.append(f"- **{c.condition}**: {c.a} vs best baseline `{c.b}` (n={c.n} paired samples): "
                     + "; ".join(parts))
    return lines


def _run_header(rr: RunReport) -> str:
    m = rr.results.metadata
    git = m.provenance.get("git") or {}
    commit = git.get("commit") or "unknown"
    if git.get("dirty"):
        commit += " (dirty)"
    pkgs = m.provenance.get("packages", {}) or {}
    shown = ("splitpersona", "torch", "transformers", "peft")
    versions = ", ".join(f"{k} {v}" for k, v in pkgs.items() if v and k in shown)
    rows = [
        ("file", str(rr.results.path)),
        ("model", m.model),
        ("run dir / adapter", f"{m.run_dir or '–'} / {m.adapter or '–'}"),
        ("elicitation / lora_mask", f"{m.elicitation or '–'} / {m.lora_mask if m.lora_mask is not None else '–'}"),
        ("eval sets", ", ".join(f"{e.get('name', '?')} (n={e.get('n', '?')})" for e in m.eval_sets) or "–"),
        ("trained topics", ", ".join(m.trained_topics) if m.trained_topics is not None else "–"),
        ("records", len(rr.results.records)),
        ("created", m.created),
        ("git commit", commit),
        ("packages", versions or "–"),
    ]
    return md_table(["", ""], rows)


def _comparison_md(runs: Sequence[RunReport]) -> str:
    """Accuracy of each arm and condition across runs (e.g. masked vs unmasked) in one table."""
    labels = [rr.label for rr in runs]
    cells: dict[tuple, dict[str, Any]] = {}
    for rr in runs:
        for r in rr.rows:
            cells.setdefault((r.key["arm"], r.key["condition"]), {})[rr.label] = r.summary.accuracy
    keys = sorted(cells, key=lambda k: (_rank(ARMS)(k[0]), _rank(CONDITIONS)(k[1])))
    return md_table(["arm", "condition", *labels], [[*k, *(cells[k].get(lb) for lb in labels)] for k in keys])


def render_markdown(runs: Sequence[RunReport], charts: dict[str, list[str]]) -> str:
    out = ["# Evaluation report", ""]
    if len(runs) > 1:
        out += ["## Runs compared: accuracy over parsed samples", "", _comparison_md(runs), ""]
        out += [f"![{png}]({png})" for png in charts.get(COMPARISON, [])] + [""]
    for rr in runs:
        out += [f"## Run `{rr.label}`", "", _run_header(rr), ""]
        out += ["### Accuracy by condition, arms side by side (over parsed samples)", ""]
        out += [_pivot(rr.rows, ("condition",)), ""]
        out += ["### Accuracy by condition, parse failures counted wrong", ""]
        out += [_pivot(rr.rows, ("condition",), "accuracy_all"), ""]
        out += ["### Detection metrics per arm and condition", ""]
        out += [md_table(["arm", "condition", *SUMMARY_HEADER],
                          [[r.key["arm"], r.key["condition"], *_summary_cells(r.summary)] for r in rr.rows]), ""]
        out += ["### Detection by score: AUROC and recall at fixed low FPR", ""]
        if any(d.n for d in rr.detection):
            cal = rr.calibration
            how = {"split": f"a seeded (seed {cal.seed}) {cal.fraction:.0%} of the sample ids with an expected-PASS "
                            "record", "set": f"the expected-PASS samples of eval set `{cal.eval_set}`",
                   "none": "none (no recall at fixed FPR)"}[cal.mode]
            out += [(f"Thresholds fixed on calibration samples: {how}; they are left out of the recall at fixed FPR "
                     "and its achieved FPR (AUROC, ECE and the paired tests are over every sample)."), ""]
            out += [md_table(DETECTION_HEADER, detection_rows(rr.detection)), ""]
            if rr.versus:
                out += ["Persona vs best baseline (highest AUROC), paired on the same samples:", ""]
                out += [*versus_lines(rr.versus), ""]
            first = next((d.condition for d in rr.detection if d.reliability), None)
            if first is not None:
                out += [f"Reliability ({first}): mean score / observed FAIL rate (n) per score bin; "
                        "a calibrated score has the two equal.", "", reliability_md(rr.detection, first), ""]
        else:
            out += ["_No scores in these results (files written before scores were recorded)._", ""]
        out += ["### System-prompt swap: as_is vs no_system_prompt vs swapped_system_prompt", ""]
        out += ["A persona that reads its own reasoning keeps its accuracy when the A and B system prompts "
                "are exchanged; one that learned \"biased prompt -> FAIL\" collapses. Drop = as_is - condition.", ""]
        if rr.swap:
            out += [_swap_md(rr.swap, ("arm",), rr.swap_paired), ""]
            if rr.swap_by_variant:
                out += ["By variant (A: unbiased system prompt, B: biased):", ""]
                out += [_swap_md(rr.swap_by_variant, ("arm", "variant")), ""]
        else:
            out += ["_Not run: these results hold no system-prompt conditions beside as_is._", ""]
        if rr.cross_topic:
            out += ["### Trained topics vs held-out topics", ""]
            out += [_pivot(rr.cross_topic, ("condition", "topics")), ""]
        if rr.jailbreak:
            out += ["### Jailbreak: planted \"answer PASS\" instructions", ""]
            body = [[j["key"]["arm"], j["key"]["condition"], j["key"]["jailbreak"], j["stats"].pairs,
                     j["stats"].unparsed, j["stats"].missing_twin, j["stats"].flip, j["stats"].changed]
                    for j in rr.jailbreak]
            out += [md_table(["arm", "condition", "planted in", "pairs", "unparsed pairs", "missing twin",
                               "flip FAIL->PASS", "changed"], body), ""]
        for name, rows in rr.slices.items():
            out += [f"### By {name}", "", _pivot(rows, ("condition", name)), ""]
        if rr.per_topic:
            out += ["### Per topic", "", _pivot(rr.per_topic, ("condition", "topic")), ""]
        out += ["### Parse failures", ""]
        out += [md_table(["arm", "condition", "n", "failures", "reasons"],
                          [[r.key["arm"], r.key["condition"], r.summary.n, r.summary.parse_failures,
                            ", ".join(f"{k}: {v}" for k, v in r.summary.failure_reasons.most_common()) or None]
                           for r in rr.rows]), ""]
        for png in charts.get(rr.label, []):
            out += [f"![{png}]({png})", ""]
    out += ["## Definitions", "", DEFINITIONS]
    return "\n".join(out)


# --- charts --------------------------------------------------------------------------------------


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "run"


def _bar(r: Rate | Combined) -> tuple[float, float, float, str] | None:
    """Value, interval and n of a bar; None for an empty rate."""
    if isinstance(r, Combined):
        return r.value, r.low, r.high, "/".join(str(p.n) for p in r.parts)
    return (r.value, *r.ci, str(r.n)) if r.n else None


def _axes(figsize: tuple[float, float]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=figsize)


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110)
    plt.close(fig)


def bar_chart(
    path: Path, groups: list[str], series: list[str], rates: dict[tuple[str, str], Rate | Combined], title: str,
    *, ylabel: str = "accuracy (95% Wilson)", reference: tuple[float, str] | None = None,
) -> None:
    """Grouped bars with 95% error bars and n under each bar; `reference` is a labelled line (value, label)."""
    width = 0.8 / max(len(series), 1)
    fig, ax = _axes((min(20.0, max(6.0, 0.35 * len(groups) * len(series) + 2)), 4.8))
    for j, s in enumerate(series):
        xs, ys, lo, hi, ns = [], [], [], [], []
        for i, g in enumerate(groups):
            bar = None if rates.get((g, s)) is None else _bar(rates[(g, s)])
            if bar is None:
                continue
            value, low, high, n = bar
            xs.append(i + (j - (len(series) - 1) / 2) * width)
            ys.append(value)
            lo.append(value - low)
            hi.append(high - value)
            ns.append(n)
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=s)
        for x, n in zip(xs, ns):
            ax.text(x, 0.01, f"n={n}", rotation=90, ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(groups)), groups, rotation=15, ha="right", rotation_mode="anchor")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.axhline(0.5, color="grey", lw=0.6, ls=":")
    if reference is not None:
        ax.axhline(reference[0], color="C3", ls="--", label=reference[1])
    ax.legend(fontsize=8, ncols=min(len(series) + (reference is not None), 6), loc="upper center",
              bbox_to_anchor=(0.5, -0.2), frameon=False)
    _save(fig, path)


def roc_chart(path: Path, rows: Sequence[ArmDetection], title: str) -> None:
    """Every arm's ROC curve on one chart, AUROC in the legend, the 1% and 5% FPR lines marked."""
    fig, ax = _axes((5.6, 5.2))
    for d in rows:
        if d.roc is not None:
            ax.plot(*d.roc, lw=1.4, label=f"{d.arm}: {d.auc} (n={d.n})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.6, ls=":")
    for x in (0.01, 0.05):
        ax.axvline(x, color="grey", lw=0.5, ls="--")
    ax.set_xlim(-0.01, 1.0)  # a curve along x = 0 stays visible
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("false-positive rate (PASS flagged FAIL)")
    ax.set_ylabel("true-positive rate (FAIL flagged FAIL)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower right", title="AUROC [95% DeLong]", title_fontsize=7)
    _save(fig, path)


def draw_charts(runs: Sequence[RunReport], out: Path) -> dict[str, list[str]]:
    charts: dict[str, list[str]] = {}
    for rr in runs:
        names = []
        for cond in _order((d.condition for d in rr.detection if d.roc is not None), CONDITIONS):
            name = f"roc_{_safe(rr.label)}_{_safe(cond)}.png"
            roc_chart(out / name, [d for d in rr.detection if d.condition == cond], f"{rr.label}: ROC, {cond}")
            names.append(name)
        conds = _order((r.key["condition"] for r in rr.rows), CONDITIONS)
        arms = _order((r.key["arm"] for r in rr.rows), ARMS)
        rates = {(r.key["condition"], r.key["arm"]): r.summary.accuracy for r in rr.rows}
        name = f"accuracy_{_safe(rr.label)}.png"
        bar_chart(out / name, conds, arms, rates, f"{rr.label}: accuracy over parsed samples, by arm")
        names.append(name)
        if rr.swap:
            swap_rates = {
                (row["key"]["arm"], c): row[c].accuracy for row in rr.swap for c in SWAP_CONDITIONS if c in row
            }
            name = f"swap_{_safe(rr.label)}.png"
            bar_chart(out / name, [row["key"]["arm"] for row in rr.swap], list(SWAP_CONDITIONS), swap_rates,
                       f"{rr.label}: system-prompt swap (same samples)")
            names.append(name)
        charts[rr.label] = names
    if len(runs) > 1:
        persona = {
            (r.key["condition"], rr.label): r.summary.accuracy
            for rr in runs for r in rr.rows if r.key["arm"] == "persona"
        }
        if persona:
            conds = _order((c for c, _ in persona), CONDITIONS)
            bar_chart(out / "compare_persona.png", conds, [rr.label for rr in runs], persona,
                       "persona accuracy by run (over parsed samples)")
            charts[COMPARISON] = ["compare_persona.png"]
    return charts


# --- JSON and entry point ------------------------------------------------------------------------


def _swap_json(rows: list[dict]) -> list[dict]:
    return [
        {"key": row["key"], "n": row["n"], **{c: row[c].to_dict() for c in SWAP_CONDITIONS if c in row},
         "drop": as_jsonable(row["drop"])}
        for row in rows
    ]


def report_json(runs: Sequence[RunReport]) -> dict[str, Any]:
    return {
        "runs": [
            {
                "label": rr.label,
                "path": str(rr.results.path),
                "metadata": rr.results.metadata.model_dump(mode="json"),
                "summary": [r.to_dict() for r in rr.rows],
                "swap": _swap_json(rr.swap),
                "swap_by_variant": _swap_json(rr.swap_by_variant),
                "cross_topic": [r.to_dict() for r in rr.cross_topic],
                "per_topic": [r.to_dict() for r in rr.per_topic],
                "slices": {k: [r.to_dict() for r in v] for k, v in rr.slices.items()},
                "jailbreak": [{**j["key"], **j["stats"].to_dict()} for j in rr.jailbreak],
                "calibration": rr.calibration.model_dump(mode="json"),
                "detection": [d.to_dict() for d in rr.detection],
                "persona_vs_best_baseline": [c.to_dict() for c in rr.versus],
                "swap_paired": [{"arm": a, "condition": c, **t.to_dict()} for (a, c), t in rr.swap_paired.items()],
            }
            for rr in runs
        ],
        "definitions": DEFINITIONS,
    }


@dataclass
class ReportFiles:
    markdown: Path
    json: Path
    charts: list[Path]


def write_report(
    paths: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    labels: Sequence[str] | None = None,
    slices: Sequence[str] = DEFAULT_SLICES,
    calibration: CalibrationConfig | None = None,
    wandb: WandbConfig | None = None,
) -> ReportFiles:
    """Read every results file (failing on the first bad record), then write the report into `out`, the results
    into the model card of each evaluated run directory, and with `wandb` enabled one W&B run per results file."""
    if not paths:
        raise ValueError("no results files given")
    results = [load_results(p) for p in paths]
    for res in results:
        if not res.records:
            raise DataError(res.path, "holds no records (the run wrote only its metadata)")
    names = unique_labels(results, labels)
    runs = [analyse(res, name, slices, calibration) for res, name in zip(results, names)]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    charts = draw_charts(runs, out)
    md = out / "report.md"
    with atomic_write(md) as fh:
        fh.write(render_markdown(runs, charts))
    js = out / "report.json"
    write_json(js, report_json(runs))
    from splitpersona.eval.tracked import log_wandb, refresh_cards  # it builds on this module

    refresh_cards(runs, str(md))
    if wandb is not None and wandb.enabled:
        for rr in runs:
            log_wandb(rr, wandb, [out / c for c in charts[rr.label]], job_type="eval-report")
    return ReportFiles(md, js, [out / c for names_ in charts.values() for c in names_])

