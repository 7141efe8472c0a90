"""The CPU demo with several seeds, one after another, and one markdown table of what each measured.

    python benchmarks/demo_seeds.py --seeds 0 1 2 --out runs/demo_seeds [--quick] [key=value ...]

Each seed moves every seeded stage at once (world, main model, data, both personas); a finished seed
is resumed from its directory, not rerun. The table goes to stdout and DIR/seeds.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from splitpersona.eval.report import md_table
from splitpersona.app.demo.config import load_demo_config
from splitpersona.eval.registry import CONTROLS
from splitpersona.app.demo.stages import run_demo
from splitpersona.io import atomic_write

REPO = Path(__file__).resolve().parents[1]
KEYS = ("world.seed", "main_model.seed", "data.seed", "train.seed")


def _bal(summary: dict, key: str, condition: str = "as_is") -> str:
    cell = summary["table"].get(key, {}).get(condition)
    if not cell or not cell["balanced"]:
        return "–"
    b = cell["balanced"]
    return f"{b['value']:.3f} [{b['low']:.2f}, {b['high']:.2f}]"


def _rate(cell: dict | None, key: str) -> str:
    if not cell or not cell[key]["n"]:
        return "–"
    r = cell[key]
    return f"{r['value']:.2f} (n={r['n']})"


def _score(summary: dict, key: str, field: str, condition: str = "as_is") -> str:
    """A score metric (splitpersona.eval.detection.score_fields) of one arm: AUROC with its DeLong interval, or a rate."""
    cell = summary["table"].get(key, {}).get("scores", {}).get(condition)
    if not cell or cell.get(field) is None:
        return "–"
    if field == "auroc":
        return f"{cell['auroc']:.3f}" + ("" if cell["auroc_low"] is None else
                                          f" [{cell['auroc_low']:.2f}, {cell['auroc_high']:.2f}]")
    return f"{cell[field]:.2f} (FPR {cell['achieved_fpr_at_1pct']:.2f})"


def row(seed: int, s: dict, wall: float) -> list[str]:
    t = s["table"]
    best = max(t[f"masked/{a}"]["as_is"]["balanced"]["value"] for a in CONTROLS)
    parse = min(t[f"masked/{a}"]["as_is"]["parsed"] / t[f"masked/{a}"]["as_is"]["n"] for a in CONTROLS)
    return [
        str(seed),
        f"{s['organism']['behaviour']['pushed_under_pressure']['value']:.2f} / "
        f"{s['organism']['behaviour']['pushed_without_pressure']['value']:.2f}",
        f"{s['organism']['behaviour']['bayes_balanced_accuracy']:.3f}",
        f"{s['organism']['behaviour']['name_check']['same']['value']:.2f} / "
        f"{s['organism']['behaviour']['name_check']['other']['value']:.2f}",
        _bal(s, "masked/persona"), _bal(s, "unmasked/persona"),
        _score(s, "masked/persona", "auroc"), _score(s, "masked/persona", "tpr_at_1pct_fpr"),
        _score(s, "unmasked/persona", "auroc"), _score(s, "masked/probe", "auroc"),
        _rate(t["masked/persona"]["b_not_complied"], "accuracy"),
        _rate(t["unmasked/persona"]["b_not_complied"], "accuracy"),
        _bal(s, "masked/persona", "swapped_system_prompt"), _bal(s, "masked/persona", "swap_vs_shown_prompt"),
        "–" if s.get("prompt_reader_swap") is None else f"{s['prompt_reader_swap']:.3f}",
        _bal(s, "masked/external"), _bal(s, "masked/probe"), f"{best:.3f}", f"{parse:.2f}",
        _bal(s, "unmasked/control_token_adapter"),
        _rate(t["masked/persona"]["weights_trigger"], "flagged_fail"),
        _rate(t["masked/persona"]["weights_control"], "flagged_fail"),
        "yes" if all(e["met"] for e in s["expectations"] if "alignment tax" in e["name"] or "KV" in e["name"]) else "NO",
        f"{s['timings']['total']['wall_s']:.0f} ({wall:.0f})",
    ]


HEADER = [
    "seed", "pushed: pressure / none", "Bayes", "name check: same / other", "masked persona", "unmasked persona",
    "masked persona AUROC", "masked persona TPR@1%FPR", "unmasked persona AUROC", "probe AUROC",
    "masked: B not complied", "unmasked: B not complied", "masked, swapped prompt", "masked, swap vs shown prompt",
    "prompt reader, swap vs shown", "external", "probe", "best control (masked)", "min control parse rate",
    "unmasked adapter + untrained token", "trigger flagged FAIL", "trigger control flagged FAIL", "tax & KV checks",
    "wall s (stages)",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "demo_seeds")
    ap.add_argument("--config", type=Path, default=REPO / "configs" / "demo" / "organism.yaml")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("overrides", nargs="*", help="key=value config overrides for every seed (e.g. threads=1)")
    args = ap.parse_args()
    rows = []
    for seed in args.seeds:
        cfg = load_demo_config(args.config, [*(f"{k}={seed}" for k in KEYS), *args.overrides], quick=args.quick)
        start = time.perf_counter()
        summary = run_demo(cfg, args.out / f"seed{seed}")
        rows.append(row(seed, summary, time.perf_counter() - start))
    text = md_table(HEADER, rows) + "\n"
    print(text)
    with atomic_write(args.out / "seeds.md") as fh:
        fh.write(text)


if __name__ == "__main__":
    main()
