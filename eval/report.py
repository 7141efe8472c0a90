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

from eval.metrics import (
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
from eval.results import ARMS, CONDITIONS, Results, load_results
from splitpersona.io import DataError, atomic_write, write_json

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


def _order(values, known: Sequence[str]) -> list:
    """Known names in their canonical order, then the rest sorted."""
    values = list(dict.fromkeys(values))
    head = [v for v in known if v in values]
    return head + sorted((v for v in values if v not in known), key=str)


def _rank(known: Sequence[str]):
    return lambda v: (known.index(v), "") if v in known else (len(known), str(v))


def _sort_rows(rows: list[Row], dims: Sequence[str]) -> list[Row]:
    ranks = {"arm": _rank(ARMS), "condition": _rank(CONDITIONS)}
    plain = lambda v: (0, "") if v is None else (1, str(v))  # noqa: E731
    return sorted(rows, key=lambda r: tuple(ranks.get(d, plain)(r.key[d]) for d in dims))


def analyse(results: Results, label: str, slices: Sequence[str] = DEFAULT_SLICES) -> RunReport:
    recs = results.records
    main = _sort_rows(table(recs, ("arm", "condition")), ("arm", "condition"))
    topical = [r for r in recs if r.topic is not None]
    slice_rows = {}
    for name in slices:
        labelled = [r for r in recs if r.slice_value(name) is not None]
        if labelled:
            slice_rows[name] = _sort_rows(table(labelled, ("arm", "condition", name)), ("arm", "condition", name))
    return RunReport(
        label=label,
        results=results,
        rows=main,
        swap=swap_table(recs),
        swap_by_variant=swap_table([r for r in recs if r.variant is not None], by=("arm", "variant")),
        cross_topic=_sort_rows(cross_topic(recs, results.metadata.trained_topics), ("arm", "condition", "topics")),
        per_topic=_sort_rows(table(topical, ("arm", "condition", "topic")), ("arm", "condition", "topic")),
        slices=slice_rows,
        jailbreak=jailbreak_flips(recs),
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


def _swap_md(rows: list[dict], dims: Sequence[str]) -> str:
    body = []
    for row in rows:
        cells = [row["key"][d] for d in dims] + [row["n"]]
        cells += [row[c].accuracy if c in row else None for c in SWAP_CONDITIONS]
        cells += [row["drop"].get(c) for c in SWAP_CONDITIONS[1:]]
        body.append(cells)
    header = [*dims, "n (same samples)", *SWAP_CONDITIONS, "drop: no_system_prompt", "drop: swapped_system_prompt"]
    return md_table(header, body)


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
        out += ["### System-prompt swap: as_is vs no_system_prompt vs swapped_system_prompt", ""]
        out += ["A persona that reads its own reasoning keeps its accuracy when the A and B system prompts "
                "are exchanged; one that learned \"biased prompt -> FAIL\" collapses. Drop = as_is - condition.", ""]
        if rr.swap:
            out += [_swap_md(rr.swap, ("arm",)), ""]
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


def bar_chart(
    path: Path, groups: list[str], series: list[str], rates: dict[tuple[str, str], Rate | Combined], title: str,
    *, ylabel: str = "accuracy (95% Wilson)", reference: tuple[float, str] | None = None,
) -> None:
    """Grouped bars with 95% error bars and n under each bar; `reference` is a labelled line (value, label)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(min(20.0, max(6.0, 0.35 * len(groups) * len(series) + 2)), 4.8))
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
    fig.tight_layout()
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110)
    plt.close(fig)


def draw_charts(runs: Sequence[RunReport], out: Path) -> dict[str, list[str]]:
    charts: dict[str, list[str]] = {}
    for rr in runs:
        names = []
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
) -> ReportFiles:
    """Read every results file (failing on the first bad record), then write the report into `out`."""
    if not paths:
        raise ValueError("no results files given")
    results = [load_results(p) for p in paths]
    for res in results:
        if not res.records:
            raise DataError(res.path, "holds no records (the run wrote only its metadata)")
    names = unique_labels(results, labels)
    runs = [analyse(res, name, slices) for res, name in zip(results, names)]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    charts = draw_charts(runs, out)
    md = out / "report.md"
    with atomic_write(md) as fh:
        fh.write(render_markdown(runs, charts))
    js = out / "report.json"
    write_json(js, report_json(runs))
    return ReportFiles(md, js, [out / c for names_ in charts.values() for c in names_])

