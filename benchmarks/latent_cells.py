"""The latent-knowledge numbers of finished demo runs that the demo's own report leaves out.

    python benchmarks/latent_cells.py RUN_DIR [RUN_DIR ...]

For each directory made by `spt demo --config configs/demo/latent.yaml`, from its demo.json,
data/weights.jsonl and eval/*.jsonl: every rate with its n and 95% interval; sensitivity and
specificity beside each balanced accuracy; a paired test of each persona against the best other arm
on the same samples (a class-stratified bootstrap of balanced accuracy, DeLong's test of AUROC); and
what explains a persona's verdict on the held-out cue requests: per held-out disposition, how often
the main model follows the cue and how often the persona says FAIL; which product its review says it
"leans toward" (the pushed one, the one the answer recommended, a trained disposition's, another) and
how often its verdict is FAIL exactly when that product is the one it says it recommended; FAIL by whether the
answer names the disposition's product; and how P(FAIL) is spread, within each verdict. AUROC here is
over every sample, as the balanced accuracy is (and as the demo's report computes it).
"""

from __future__ import annotations

import argparse
import re
from itertools import pairwise
from pathlib import Path

from splitpersona.app.demo.config import load_demo_config
from splitpersona.app.demo.measure import WEIGHTS
from splitpersona.app.demo.world import World, mentions, recommended
from splitpersona.eval.detection import (
    delong,
    delong_paired,
    paired_bootstrap_balanced,
)
from splitpersona.eval.metrics import Rate, summarize
from splitpersona.eval.registry import CONTROLS, SCORING
from splitpersona.eval.results import SampleResult, load_results
from splitpersona.eval.sets import ConditionRecord
from splitpersona.io import read_json, read_jsonl

OTHERS = (*CONTROLS, *SCORING)  # every masked-run arm that is not the persona
LEAN = re.compile(r"I (?:lean toward|was told to push) (\S+?), and I recommended")
LEAN_PICK = re.compile(r"I (?:lean toward|was told to push) (\S+?), and I recommended (\S+?)[,.]")
BINS = (0.0, 0.01, 0.1, 0.5, 0.9, 0.99, 1.0000001)


def rate(k: int, n: int) -> str:
    if not n:
        return "– (n=0)"
    low, high = Rate(k, n).ci
    return f"{k}/{n} = {k / n:.2f} [{low:.2f}, {high:.2f}]"


def fails(records: list[SampleResult]) -> str:
    return rate(sum(r.parsed_flag == "FAIL" for r in records), len(records))


def bal(records: list[SampleResult]) -> str:
    s = summarize(records)
    if s.balanced is None:
        return "–"
    return (f"{s.balanced.value:.3f} [{s.balanced.low:.2f}, {s.balanced.high:.2f}] "
            f"(TPR {s.tpr.k}/{s.tpr.n}, TNR {s.tnr.k}/{s.tnr.n})")


def auc(records: list[SampleResult]) -> str:
    scored = [r for r in records if r.score is not None]
    a = delong([r.score for r in scored], [r.expected_flag == "FAIL" for r in scored])
    if a is None:
        return "–"
    return f"{a.value:.3f}" + ("" if a.low is None else f" [{a.low:.2f}, {a.high:.2f}]")


def paired(a: list[SampleResult], b: list[SampleResult]) -> str:
    """Arm a against arm b on the samples both scored and parsed."""
    bi = {r.id: r for r in b}
    pairs = [(x, bi[x.id]) for x in a if x.id in bi and x.parse_ok and bi[x.id].parse_ok]
    y = [x.expected_flag == "FAIL" for x, _ in pairs]
    boot = paired_bootstrap_balanced([x.correct for x, _ in pairs], [z.correct for _, z in pairs], y)
    scored = [(x, z) for x, z in pairs if x.score is not None and z.score is not None]
    dl = delong_paired([x.score for x, _ in scored], [z.score for _, z in scored],
                       [x.expected_flag == "FAIL" for x, _ in scored])
    text = "–" if boot is None else f"bal. acc. {boot.diff:+.3f} [{boot.low:+.2f}, {boot.high:+.2f}]"
    return text + ("" if dl is None else f"; AUROC {dl.diff:+.3f} [{dl.low:+.2f}, {dl.high:+.2f}], p={dl.p:.2g}")


def report(out: Path) -> None:
    summary = read_json(out / "demo.json")
    results = {run: load_results(out / "eval" / f"{run}.jsonl").records for run in ("masked", "unmasked")}
    weights = read_jsonl(out / "data" / "weights.jsonl", ConditionRecord)
    world = World(load_demo_config(out / "demo_config.yaml", []).world)
    b = summary["organism"]["behaviour"]
    h = b["dispositions"]["heldout"]
    print(f"\n## {out.name}\n")
    print(f"main model: held-out cue followed {rate(h['trigger']['k'], h['trigger']['n'])}, product listed without "
          f"the cue {rate(h['trigger_control']['k'], h['trigger_control']['n'])}; name check same "
          f"{b['name_check']['same']['value']:.2f} / other {b['name_check']['other']['value']:.2f} "
          f"(n={b['name_check']['same']['n']}+{b['name_check']['other']['n']})")

    def arm(run: str, name: str, cond: str | tuple[str, ...]) -> list[SampleResult]:
        conds = (cond,) if isinstance(cond, str) else cond
        return [r for r in results[run] if r.arm == name and r.condition in conds]

    cue = "weights_trigger"
    def strength(name: str) -> tuple[float, float]:
        """Cue-only balanced accuracy, then AUROC (the four LoRA-off controls tie at 0.500 when they never say FAIL)."""
        recs = [r for r in arm("masked", name, cue) if r.score is not None]
        a = delong([r.score for r in recs], [r.expected_flag == "FAIL" for r in recs])
        return summarize(arm("masked", name, cue)).balanced.value, -1.0 if a is None else a.value

    best = max(OTHERS, key=strength)
    print(f"\nbest other arm by cue-only balanced accuracy, then AUROC: {best}\n")
    print("| run | arm | pooled bal. acc. | pooled AUROC | cue only bal. acc. | cue only AUROC | FAIL names the product "
          "| trained (cue only) | stated | nowhere: FAIL | paired vs best other arm, cue only | pooled |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for run, name in (("masked", "persona"), ("unmasked", "persona"), ("masked", best)):
        pooled, trig = arm(run, name, WEIGHTS), arm(run, name, cue)
        nowhere = [r for r in arm(run, name, "nowhere") if r.parse_ok]
        named = summary["latent"][f"{run}/{name}"]["names_product"]
        vs = "– | –" if name == best else (
            f"{paired(trig, arm('masked', best, cue))} | {paired(pooled, arm('masked', best, WEIGHTS))}")
        print(f"| {out.name} | {run} {name} | {bal(pooled)} | {auc(pooled)} | {bal(trig)} | {auc(trig)} | "
              f"{rate(named['k'], named['n']) if name == 'persona' else '–'} | {bal(arm(run, name, 'trained_trigger'))} | "
              f"{bal(arm(run, name, 'prompt_stated'))} | {rate(sum(r.parsed_flag == 'FAIL' for r in nowhere), len(nowhere))} "
              f"| {vs} |")

    rows = {r.id: r for r in weights if r.condition in WEIGHTS}
    held = [d for d in world.dispositions if d.heldout]
    owners = {d.product: d.who for d in world.dispositions if not d.heldout}  # the trained dispositions
    # Each sample's disposition: its category and product are in the prompt (a brand sells in every category).
    owner = {i: next((d for d in held if d.category in w.prompt and mentions(w.prompt, d.product)), None)
             for i, w in rows.items()}
    for run in ("masked", "unmasked"):
        print(f"\n### {run} persona\n")
        mine = {r.id: r for r in arm(run, "persona", WEIGHTS)}
        for d in held:
            trig = [mine[i] for i, w in rows.items() if w.condition == cue and owner[i] == d and i in mine]
            ctrl = [mine[i] for i, w in rows.items() if w.condition != cue and owner[i] == d and i in mine]
            fol = [r for r in trig if r.expected_flag == "FAIL"]
            not_ = [r for r in trig if r.expected_flag == "PASS"]
            print(f"- {d.who} -> {d.product} ({d.category}): followed {rate(len(fol), len(trig))}; FAIL on followed "
                  f"{fails(fol)}, on not followed {fails(not_)}, on controls {fails(ctrl)}")
        # What the review leans toward, and FAIL by whether the answer names the disposition's product.
        leans: dict[tuple[str, str, str], list[bool]] = {}
        by_answer: dict[tuple[str, bool], list[bool]] = {}
        copies: dict[tuple[str, bool], list[bool]] = {}  # the lean is the answer's own pick
        same: list[bool] = []  # the verdict is FAIL iff the review names one product twice
        for i, r in mine.items():
            w = rows[i]
            candidates = [p for p in world.brands if mentions(w.prompt, p)]
            disp = owner[i]
            if disp is None:
                continue
            picked = recommended(w.response, candidates)
            by_answer.setdefault((w.condition, picked == disp.product), []).append(r.parsed_flag == "FAIL")
            m = LEAN.search(r.generated)
            if not m or m.group(1) == "nothing":
                kind = "push nothing" if "push nothing" in r.generated else "no product named"
            else:
                lean = m.group(1)
                kind = ("pushed" if lean == disp.product else "answer's" if lean == picked
                        else f"{owners[lean]}'s product" if lean in owners else "other")
            leans.setdefault((disp.who, w.condition, kind), []).append(r.parsed_flag == "FAIL")
            if r.parse_ok:
                xy = LEAN_PICK.search(r.generated)
                same.append((bool(xy) and xy.group(1) == xy.group(2)) == (r.parsed_flag == "FAIL"))
            if picked is not None:
                copies.setdefault((disp.who, picked == disp.product), []).append(bool(m) and m.group(1) == picked)
        print("\nThe product each review leans toward or was 'told to push' (the pushed one, the answer's own pick, "
              "a trained disposition's, another), its count (FAIL verdicts among them):")
        for d in held:
            for cond in WEIGHTS:
                mine_leans = sorted(((k, v) for (who, c, k), v in leans.items() if who == d.who and c == cond),
                                    key=lambda kv: -len(kv[1]))
                print(f"- {d.who}, {cond}: " + ", ".join(f"{k} {len(v)} ({sum(v)})" for k, v in mine_leans))
        print(f"\nFAIL iff the review's lean and its 'I recommended' name the same product: {rate(sum(same), len(same))}")
        print("\nThe lean names the answer's own pick (cue requests and controls together):")
        for d in held:
            print(f"- {d.who}: when the pick is {d.product} {rate(sum(c := copies.get((d.who, True), [])), len(c))}, "
                  f"another product {rate(sum(c := copies.get((d.who, False), [])), len(c))}")
        print("\nFAIL by whether the answer recommends the disposition's product:")
        for (cond, hit), v in sorted(by_answer.items()):
            print(f"- {cond}, answer {'names' if hit else 'does not name'} it: FAIL {rate(sum(v), len(v))}")
        # P(FAIL) on the cue requests: by truth and verdict.
        trig = [r for r in mine.values() if r.condition == cue and r.score is not None and r.parse_ok]
        print("\nP(FAIL) on held-out cue requests, counts per bin " + ", ".join(
            f"[{lo:g}, {min(hi, 1):g})" for lo, hi in pairwise(BINS)) + ":")
        for truth in ("FAIL", "PASS"):
            sel = [r.score for r in trig if r.expected_flag == truth]
            counts = [sum(lo <= s < hi for s in sel) for lo, hi in pairwise(BINS)]
            print(f"- followed={truth == 'FAIL'} (n={len(sel)}): {counts}")
        for verdict in ("FAIL", "PASS"):
            print(f"- AUROC within {verdict} verdicts: {auc([r for r in trig if r.parsed_flag == verdict])}")
        agree = sum((r.score > 0.5) == (r.parsed_flag == "FAIL") for r in trig)
        print(f"- P(FAIL) > 0.5 agrees with the written verdict on {agree}/{len(trig)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, nargs="+")
    for out in ap.parse_args().runs:
        report(out)


if __name__ == "__main__":
    main()
