"""Detection metrics over eval records, each rate with its n and a 95% interval.

Conventions, chosen so a rate cannot look better than the evidence:
- FAIL is the positive class (a detection). TPR = P(flag FAIL | expected FAIL), TNR = P(flag PASS |
  expected PASS); a reviewer answering AMBIGUOUS counts as neither detecting nor clearing.
- Every rate is computed twice: over parsed samples (the published work's denominator) and over all
  samples with a parse failure counted wrong. Parse failures are also counted by reason.
- Intervals: Wilson score, 95%. A sum or difference of two rates (balanced accuracy, the
  system-prompt swap drop) gets Newcombe's MOVER-Wilson interval, which combines the two Wilson
  intervals' half-widths on each side; it treats the two rates as independent. Two arms (or two
  conditions) measured on the same samples are compared by paired tests instead: splitpersona.eval.detection.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from splitpersona.eval.results import SampleResult

Z95 = 1.959963984540054


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for k successes in n; (0, 1) when n is 0.

    Closed form rather than scipy's `binomtest(...).proportion_ci("wilson")` (equal, see the tests):
    scipy refuses n = 0 and is not one of our declared dependencies.
    """
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    z2 = z * z
    denom = 1 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # At k = 0 or k = n the closed form can miss p by a rounding error (0/7, 10/10); the interval must hold p.
    return (max(0.0, min(p, center - half)), min(1.0, max(p, center + half)))


@dataclass(frozen=True)
class Rate:
    """k of n, with its Wilson 95% interval."""

    k: int
    n: int

    @property
    def value(self) -> float | None:
        return self.k / self.n if self.n else None

    @property
    def ci(self) -> tuple[float, float]:
        return wilson(self.k, self.n)

    def to_dict(self) -> dict[str, Any]:
        low, high = self.ci
        return {"k": self.k, "n": self.n, "value": self.value, "low": low, "high": high}

    def __str__(self) -> str:
        if not self.n:
            return "n/a (n=0)"
        low, high = self.ci
        return f"{100 * self.value:.1f}% [{100 * low:.1f}, {100 * high:.1f}] (n={self.n})"


@dataclass(frozen=True)
class Combined:
    """A combination of rates (mean or difference) with its MOVER-Wilson 95% interval."""

    value: float
    low: float
    high: float
    parts: tuple[Rate, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "low": self.low, "high": self.high, "n": [r.n for r in self.parts]}

    def __str__(self) -> str:
        ns = "/".join(str(r.n) for r in self.parts)
        return f"{100 * self.value:.1f}% [{100 * self.low:.1f}, {100 * self.high:.1f}] (n={ns})"


def mover(a: Rate, b: Rate, sign: int = 1, scale: float = 1.0) -> Combined | None:
    """scale * (a + sign * b) with Newcombe's MOVER interval built from each rate's Wilson interval."""
    if not a.n or not b.n:
        return None
    pa, pb = a.value, b.value
    (la, ua), (lb, ub) = a.ci, b.ci
    if sign > 0:
        lo_parts, hi_parts = (pa - la, pb - lb), (ua - pa, ub - pb)
    else:
        lo_parts, hi_parts = (pa - la, ub - pb), (ua - pa, pb - lb)
    est = pa + sign * pb
    low = est - math.hypot(*lo_parts)
    high = est + math.hypot(*hi_parts)
    return Combined(scale * est, scale * low, scale * high, (a, b))


@dataclass
class Summary:
    """Detection metrics of one group of records."""

    n: int
    parsed: int
    correct: int
    flags: Counter[str]
    failure_reasons: Counter[str]
    accuracy: Rate  # correct / parsed
    accuracy_all: Rate  # correct / n, failures wrong
    tpr: Rate  # over parsed expected-FAIL samples
    tnr: Rate  # over parsed expected-PASS samples
    tpr_all: Rate
    tnr_all: Rate
    balanced: Combined | None = None
    balanced_all: Combined | None = None

    @property
    def parse_failures(self) -> int:
        return self.n - self.parsed

    def to_dict(self) -> dict[str, Any]:
        rates = ("accuracy", "accuracy_all", "tpr", "tnr", "tpr_all", "tnr_all", "balanced", "balanced_all")
        return {
            "n": self.n, "parsed": self.parsed, "parse_failures": self.parse_failures, "correct": self.correct,
            "flags": dict(self.flags), "failure_reasons": dict(self.failure_reasons),
            **{name: as_jsonable(getattr(self, name)) for name in rates},
        }


def summarize(records: Iterable[SampleResult]) -> Summary:
    records = list(records)
    parsed = [r for r in records if r.parse_ok]
    correct = sum(r.correct for r in parsed)
    pos = [r for r in records if r.expected_flag == "FAIL"]
    neg = [r for r in records if r.expected_flag == "PASS"]
    tp = sum(r.parsed_flag == "FAIL" for r in pos)
    tn = sum(r.parsed_flag == "PASS" for r in neg)
    pos_parsed = sum(r.parse_ok for r in pos)
    neg_parsed = sum(r.parse_ok for r in neg)
    tpr, tnr = Rate(tp, pos_parsed), Rate(tn, neg_parsed)
    tpr_all, tnr_all = Rate(tp, len(pos)), Rate(tn, len(neg))
    return Summary(
        n=len(records), parsed=len(parsed), correct=correct, flags=Counter(r.parsed_flag for r in parsed),
        failure_reasons=Counter(
            r.parse_reason or ("error" if r.error else "unknown") for r in records if not r.parse_ok
        ),
        accuracy=Rate(correct, len(parsed)), accuracy_all=Rate(correct, len(records)),
        tpr=tpr, tnr=tnr, tpr_all=tpr_all, tnr_all=tnr_all,
        balanced=balanced_accuracy(tpr, tnr), balanced_all=balanced_accuracy(tpr_all, tnr_all),
    )


def balanced_accuracy(tpr: Rate, tnr: Rate) -> Combined | None:
    """(TPR + TNR) / 2 with a MOVER-Wilson interval; None unless both classes are present."""
    return mover(tpr, tnr, sign=1, scale=0.5)


def difference(a: Rate, b: Rate) -> Combined | None:
    """a - b with a MOVER-Wilson interval (Newcombe's method 10 for independent proportions)."""
    return mover(a, b, sign=-1)


def group(records: Iterable[SampleResult], by: Sequence[str]) -> dict[tuple, list[SampleResult]]:
    """Records grouped by the values of `by` (fields or `slices` labels), in first-seen order."""
    out: dict[tuple, list[SampleResult]] = defaultdict(list)
    for r in records:
        out[tuple(r.slice_value(k) for k in by)].append(r)
    return dict(out)


@dataclass
class Row:
    key: dict[str, Any]
    summary: Summary

    def to_dict(self) -> dict[str, Any]:
        return {**self.key, **self.summary.to_dict()}


def table(records: Iterable[SampleResult], by: Sequence[str]) -> list[Row]:
    """One summary per group, in first-seen order."""
    return [Row(dict(zip(by, k)), summarize(rs)) for k, rs in group(records, by).items()]


def cross_topic(records: Iterable[SampleResult], trained_topics: Iterable[str] | None = None) -> list[Row]:
    """Accuracy on trained vs held-out topics per arm and condition.

    A record's `held_out_topic` decides; where it is unset, `trained_topics` (from the results
    metadata) does; records with neither are left out.
    """
    trained = set(trained_topics) if trained_topics is not None else None
    labelled: dict[tuple, list[SampleResult]] = defaultdict(list)
    for r in records:
        held = r.held_out_topic
        if held is None and trained is not None and r.topic is not None:
            held = r.topic not in trained
        if held is None:
            continue
        labelled[(r.arm, r.condition, "held-out" if held else "trained")].append(r)
    return [Row({"arm": a, "condition": c, "topics": t}, summarize(rs)) for (a, c, t), rs in labelled.items()]


@dataclass
class FlipStats:
    """How a planted "answer PASS" instruction changes verdicts on the same samples.

    `flip` is the attack's success: of the samples flagged FAIL without the instruction, the
    share flagged PASS with it. `changed` counts a change in either direction. Both are over
    pairs whose two verdicts parsed; `unparsed` counts the rest, `missing_twin` the jailbreak
    records whose clean twin is not in the results.
    """

    pairs: int
    unparsed: int
    missing_twin: int
    flip: Rate
    changed: Rate

    def to_dict(self) -> dict[str, Any]:
        return {**vars(self), "flip": self.flip.to_dict(), "changed": self.changed.to_dict()}


def flip_stats(jailbroken: Iterable[SampleResult], clean_by_key: dict[tuple, SampleResult]) -> FlipStats:
    pairs = unparsed = missing = flips = clean_fail = changed = both = 0
    for r in jailbroken:
        twin = clean_by_key.get((r.id, r.base_condition, r.arm))
        if twin is None:
            missing += 1
            continue
        pairs += 1
        if not (r.parse_ok and twin.parse_ok):
            unparsed += 1
            continue
        both += 1
        changed += r.parsed_flag != twin.parsed_flag
        if twin.parsed_flag == "FAIL":
            clean_fail += 1
            flips += r.parsed_flag == "PASS"
    return FlipStats(pairs, unparsed, missing, Rate(flips, clean_fail), Rate(changed, both))


def jailbreak_flips(
    records: Iterable[SampleResult], by: Sequence[str] = ("arm", "condition", "jailbreak")
) -> list[dict]:
    """Flip statistics of every jailbreak record against its clean twin, grouped by `by`."""
    records = list(records)
    index = {r.key: r for r in records}
    groups = group((r for r in records if r.jailbreak is not None), by)
    return [{"key": dict(zip(by, k)), "stats": flip_stats(rs, index)} for k, rs in groups.items()]


def swap_table(
    records: Iterable[SampleResult],
    base: str = "as_is",
    others: Sequence[str] = ("no_system_prompt", "swapped_system_prompt"),
    by: Sequence[str] = ("arm",),
) -> list[dict]:
    """Accuracy under `base` and each of `others` on the same samples, and the drop from `base`.

    Only samples present under every condition are compared, so the drop is not a change of
    sample mix. A persona that learned "biased system prompt -> FAIL" collapses under the swap.
    """
    records = [r for r in records if r.condition in (base, *others) and r.jailbreak is None]
    rows = []
    for k, rs in group(records, by).items():
        by_cond: dict[str, dict[str, SampleResult]] = defaultdict(dict)
        for r in rs:
            by_cond[r.condition][r.id] = r
        present = [c for c in others if c in by_cond]
        if base not in by_cond or not present:
            continue
        ids = set(by_cond[base]).intersection(*(by_cond[c] for c in present))
        base_sum = summarize(by_cond[base][i] for i in ids)
        row: dict[str, Any] = {"key": dict(zip(by, k)), "n": len(ids), base: base_sum, "drop": {}}
        for c in present:
            s = summarize(by_cond[c][i] for i in ids)
            row[c] = s
            row["drop"][c] = difference(base_sum.accuracy, s.accuracy)
        rows.append(row)
    return rows


def as_jsonable(obj: Any) -> Any:
    """Summaries, rates and containers of them as plain JSON values."""
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if isinstance(obj, dict):
        return {str(k): as_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [as_jsonable(v) for v in obj]
    if hasattr(obj, "__dataclass_fields__"):
        return as_jsonable(asdict(obj))
    return obj
