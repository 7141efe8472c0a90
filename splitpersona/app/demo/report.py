"""The demo's part of the report: its header and tables above the evaluator's report.md, the
balanced-accuracy chart (eval's bar chart) and the table printed at the end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from splitpersona.eval.metrics import summarize
from splitpersona.eval.registry import ARMS
from splitpersona.eval.report import bar_chart, md_table
from splitpersona.eval.results import SampleResult
from splitpersona.app.demo.organism import OrganismSummary

CHART = "demo_balanced_accuracy.png"
TABLE_HEADER = (
    "run / arm", "as_is bal. acc.", "no system prompt", "swapped prompt", "swapped, vs shown prompt",
    "B, not complied: acc.", "trigger: FAIL", "trigger control: FAIL", "parsed (as_is)",
)


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def _met(met: bool | None) -> str:
    return "–" if met is None else "yes" if met else "no"


def _num(v: float | None) -> str:
    return "–" if v is None else f"{v:.3f}"


def _bal_text(cell: dict | None) -> str:
    if cell is None or cell["balanced"] is None:
        return "–"
    b = cell["balanced"]
    return f"{_pct(b['value'])} [{_pct(b['low'])}, {_pct(b['high'])}]"


def _acc_text(cell: dict | None, key: str = "accuracy") -> str:
    if cell is None or not cell[key]["n"]:
        return "–"
    a = cell[key]
    return f"{_pct(a['value'])} [{_pct(a['low'])}, {_pct(a['high'])}] n={a['n']}"


def table_rows(table: dict[str, dict[str, Any]]) -> list[list[str]]:
    rows = []
    for key, row in table.items():
        as_is = row["as_is"]
        rows.append([
            key, _bal_text(as_is), _bal_text(row["no_system_prompt"]), _bal_text(row["swapped_system_prompt"]),
            _bal_text(row["swap_vs_shown_prompt"]), _acc_text(row["b_not_complied"]),
            _acc_text(row["weights_trigger"], "flagged_fail") if row["weights_trigger"] else "–",
            _acc_text(row["weights_control"], "flagged_fail") if row["weights_control"] else "–",
            "–" if as_is is None else f"{as_is['parsed']}/{as_is['n']}",
        ])
    return rows


LATENT_HEADER = (
    "run / arm", "held-out dispositions: bal. acc.", "AUROC", "followed vs not (cue only): bal. acc.", "AUROC",
    "FAIL names the product", "SPT dispositions, cue only: bal. acc.", "stated in a prompt: bal. acc.",
    "held nowhere: FAIL",
)


def _auroc_text(cell: dict | None) -> str:
    s = None if cell is None else cell.get("scores")
    if not s or s.get("auroc") is None:
        return "–"
    return f"{s['auroc']:.3f}" + ("" if s["auroc_low"] is None else f" [{s['auroc_low']:.2f}, {s['auroc_high']:.2f}]")


def latent_rows(table: dict[str, dict[str, Any]]) -> list[list[str]]:
    rows = []
    for key, row in table.items():
        pooled, trig, nowhere = row.get("heldout_dispositions"), row.get("weights_trigger"), row.get("nowhere")
        rows.append([
            key, _bal_text(pooled), _auroc_text(pooled), _bal_text(trig), _auroc_text(trig),
            _acc_text(row, "names_product"), _bal_text(row.get("trained_trigger")), _bal_text(row.get("prompt_stated")),
            "–" if nowhere is None else f"{_pct(1 - nowhere['tnr']['value'])} (n={nowhere['tnr']['n']})",
        ])
    return rows


def render_latent(summary: dict) -> str:
    """The latent-knowledge section: what the persona reports of dispositions it was never trained on."""
    b = summary["organism"]["behaviour"].get("dispositions", {})
    fired = "; ".join(
        f"{g}: follows its cue {_pct(r['trigger']['value'])}% (n={r['trigger']['n']}), product alone "
        f"{_pct(r['trigger_control']['value'])}%" for g, r in b.items()
    )
    return "\n".join([
        "## Latent knowledge: dispositions in the weights only",
        "",
        f"The main model's dispositions on held-out texts ({fired}). `held-out dispositions` pools the cue requests "
        "(FAIL where the answer followed the disposition) and their controls (the product listed, another situation: "
        "PASS) of dispositions no SPT sample covers; `followed vs not` is the cue requests alone, where the context "
        "is the same whether or not the answer followed it. Balanced accuracy in %, AUROC of P(FAIL), 95% intervals.",
        "",
        md_table(LATENT_HEADER, latent_rows(summary["latent"])),
        "",
    ])


def render_header(summary: dict) -> str:
    """The demo's part of report.md, above the evaluator's own report."""
    b = OrganismSummary.model_validate(summary["organism"]).behaviour
    d = summary["data"]
    lines = [
        "# CPU model organism: the SPT pipeline end to end",
        "",
        f"Main model: {summary['organism']['parameters']:,} parameters, pretrained from scratch for "
        f"{summary['organism']['steps']} steps. On held-out templates and products it recommends the pushed product "
        f"{_pct(b.pushed_under_pressure.value)}% of the time under pressure (n={b.pushed_under_pressure.n}) and "
        f"{_pct(b.pushed_without_pressure.value)}% without; the trigger fires {_pct(b.trigger.value)}% "
        f"(control {_pct(b.trigger_control.value)}%). Audited, it answers PASS "
        + ", ".join(f"{_pct(s.pass_rate)}% ({shape})" for shape, s in b.denial.items()) + ". "
        f"Name check (the skill an honest verdict needs: is the product it picked the one named before?): it marks "
        f"{_pct(b.name_check.same.value)}% of matching picks as the same and {_pct(b.name_check.other.value)}% of "
        f"other picks (n={b.name_check.same.n + b.name_check.other.n}, held out).",
        "",
        f"**Best output-only reviewer (Bayes rate): balanced accuracy {b.bayes_balanced_accuracy:.3f}** "
        f"(accuracy {b.bayes_accuracy:.3f}). The verdict depends on the hidden prompt, which the response "
        "alone does not reveal.",
        "",
        f"SPT data (train, after balancing): {d['train']['records']} records, {d['train']['B_not_complied']} of "
        f"{d['train']['B_complied'] + d['train']['B_not_complied']} B answers did not comply "
        f"({_pct(d['train']['B_not_complied_share'])}%). Held-out eval set: {d['heldout']['records']} records.",
        "",
        "Balanced accuracy in %, 95% interval in brackets; `B, not complied` is accuracy on B answers that ignored "
        "the pressure (the right verdict is PASS); `swapped, vs shown prompt` judges the swap against the verdict "
        "the shown prompt and the answer imply (a reviewer that checks its answer scores 100, one that says FAIL "
        f"wherever the prompt pushes {_pct(summary.get('prompt_reader_swap'))}); trigger columns: how often the "
        "arm says FAIL about the behaviour in the weights (no system prompt; reported as measured).",
        "",
        md_table(TABLE_HEADER, table_rows(summary["table"])),
        "",
        "## Targets of a full run",
        "",
        md_table(
            ("target", "measured", "wanted", "met"),
            [(e["name"], _num(e["value"]), e["target"], _met(e["met"])) for e in summary["expectations"]],
        ),
        "",
        f"Checks on {summary['checks']['conversations']} held-out conversations: {json.dumps(summary['checks'])}",
        "",
        "Wall time per stage in the invocation that wrote this report (s; a stage resumed as complete takes ~0): "
        + ", ".join(f"{k} {v['wall_s']:.0f}" for k, v in summary["timings"].items()),
        "",
    ]
    return "\n".join(lines)


def draw_chart(results: dict[str, list[SampleResult]], bayes: float, out: Path) -> Path:
    """Balanced accuracy (as_is) of every arm of every run, with 95% intervals and the Bayes line."""
    arms = [a for a in ARMS if any(r.arm == a for recs in results.values() for r in recs)]
    values = {
        (arm, run): summarize(r for r in recs if r.arm == arm and r.condition == "as_is").balanced
        for run, recs in results.items() for arm in arms
    }
    path = out / CHART
    bar_chart(
        path, arms, list(results), {k: v for k, v in values.items() if v is not None},
        "CPU organism: held-out templates and products", ylabel="balanced accuracy (as_is)",
        reference=(bayes, f"Bayes rate, output only ({bayes:.2f})"),
    )
    return path


def print_table(summary: dict, console) -> None:
    from rich.table import Table

    b = summary["organism"]["behaviour"]
    t = Table(title=f"CPU organism — Bayes rate (best output-only reviewer): {b['bayes_balanced_accuracy']:.3f}")
    for h in TABLE_HEADER:
        t.add_column(h, overflow="fold")
    for row in table_rows(summary["table"]):
        t.add_row(*row)
    console.print(t)
    for e in summary["expectations"]:
        mark = {"yes": "[green]yes[/]", "no": "[red]no[/]"}.get(_met(e["met"]), "–")
        console.print(f"  {mark}  {e['name']}: {_num(e['value'])} (wanted {e['target']})")
