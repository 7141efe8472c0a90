"""Detection in the field's currency: every reviewer as a continuous score of FAIL.

Lie- and deception-detection work compares detectors by the score each gives a sample
(`SampleResult.score`), not by one thresholded verdict: AUROC with DeLong's 95% interval; recall at
a fixed low false-positive rate, its threshold fixed on calibration samples (expected PASS, left out
of that recall and its achieved FPR); expected calibration error for scores that are probabilities.
AUROC, ECE and the paired tests fit nothing, so they are over every labelled sample: the samples
the accuracies are over, so the two can be read side by side. FAIL is the positive class;
expected-AMBIGUOUS samples and records without a finite score are left out.

Two arms on the same samples are compared paired, never as independent: McNemar's test
(accuracy), DeLong's paired test (AUROC), a class-stratified paired bootstrap (balanced accuracy).
Edge cases have defined values, never a crash (with one class absent AUROC and recall are None and
`note` says why). At AUROC 0 or 1 DeLong's variance is 0, so the interval has no width: a known
limit of the method, worth reading together with n. These tests are written here with numpy:
neither sklearn nor our other dependencies provide them.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from splitpersona.eval.config import CalibrationConfig
from splitpersona.eval.metrics import Z95, Rate, group
from splitpersona.eval.results import SampleResult

EXACT_BELOW = 25  # discordant pairs under which McNemar's test is the exact binomial
BINS = 10


def _normal_p(z: float) -> float:
    """Two-sided p-value of a standard normal statistic."""
    return math.erfc(abs(z) / math.sqrt(2))


def _split(scores: Sequence[float], labels: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    s, y = np.asarray(scores, dtype=float), np.asarray(labels, dtype=bool)
    if s.shape != y.shape or s.ndim != 1:
        raise ValueError(f"scores and labels must be two equal-length lists, got {s.shape} and {y.shape}")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite numbers")
    return s[y], s[~y]


def _midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing the mean of their ranks."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    return (np.cumsum(counts) - (counts - 1) / 2)[inverse]


def _components(pos: np.ndarray, neg: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """AUC and DeLong's structural components: V10 per positive, V01 per negative (ties count 1/2)."""
    m, n = len(pos), len(neg)
    both = _midranks(np.concatenate([pos, neg]))
    within_pos, within_neg = _midranks(pos), _midranks(neg)
    v10 = (both[:m] - within_pos) / n  # share of negatives below each positive
    v01 = 1 - (both[m:] - within_neg) / m  # share of positives above each negative
    return float(v10.mean()), v10, v01


def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """Area under the ROC curve (labels True = FAIL); None unless both classes are present."""
    auc = delong(scores, labels)
    return None if auc is None else auc.value


@dataclass(frozen=True)
class Auc:
    """AUROC with its DeLong standard error and 95% interval (None below two samples per class)."""

    value: float
    se: float | None
    low: float | None
    high: float | None
    n_pos: int
    n_neg: int

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "se": self.se, "low": self.low, "high": self.high, "n_pos": self.n_pos,
                "n_neg": self.n_neg, "method": "DeLong"}

    def __str__(self) -> str:
        if self.low is None:
            return f"{self.value:.3f} (n={self.n_pos}+{self.n_neg})"
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


def delong(scores: Sequence[float], labels: Sequence[bool]) -> Auc | None:
    """AUROC with DeLong's 95% interval; None unless both classes are present."""
    pos, neg = _split(scores, labels)
    m, n = len(pos), len(neg)
    if not m or not n:
        return None
    auc, v10, v01 = _components(pos, neg)
    if m < 2 or n < 2:
        return Auc(auc, None, None, None, m, n)
    se = math.sqrt(v10.var(ddof=1) / m + v01.var(ddof=1) / n)
    return Auc(auc, se, max(0.0, auc - Z95 * se), min(1.0, auc + Z95 * se), m, n)


@dataclass(frozen=True)
class PairedTest:
    """A difference a - b between two arms on the same samples, with the test that produced it."""

    method: str
    diff: float
    n: int
    p: float | None = None
    low: float | None = None
    high: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "diff": self.diff, "n": self.n, "p": self.p, "low": self.low,
                "high": self.high, **self.detail}

    def __str__(self) -> str:
        ci = "" if self.low is None else f" [{self.low:+.3f}, {self.high:+.3f}]"
        p = "" if self.p is None else f", p={self.p:.3g}"
        return f"{self.diff:+.3f}{ci}{p} ({self.method}, n={self.n})"


def delong_paired(a: Sequence[float], b: Sequence[float], labels: Sequence[bool]) -> PairedTest | None:
    """AUROC(a) - AUROC(b) on the same samples: DeLong's paired z-test and its 95% interval."""
    pa, na = _split(a, labels)
    pb, nb = _split(b, labels)
    m, n = len(pa), len(na)
    if m < 2 or n < 2:
        return None
    auc_a, v10a, v01a = _components(pa, na)
    auc_b, v10b, v01b = _components(pb, nb)
    s10, s01 = np.cov(np.stack([v10a, v10b])), np.cov(np.stack([v01a, v01b]))
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n
    diff = auc_a - auc_b
    se = math.sqrt(max(var, 0.0))
    p = _normal_p(diff / se) if se else float(diff == 0)
    return PairedTest("DeLong paired", diff, m + n, p, diff - Z95 * se, diff + Z95 * se,
                      {"a": auc_a, "b": auc_b, "se": se})


def _binom_cdf_half(k: int, n: int) -> float:
    """P(X <= k) for X ~ Binomial(n, 1/2), summed in log space so large n cannot overflow."""
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2) for i in range(k + 1)]
    return float(sum(math.exp(v) for v in logs))


def mcnemar(a_correct: Sequence[bool], b_correct: Sequence[bool]) -> PairedTest:
    """Accuracy(a) - accuracy(b) on the same samples with McNemar's test on the discordant pairs."""
    if len(a_correct) != len(b_correct):
        raise ValueError(f"paired verdicts must align, got {len(a_correct)} and {len(b_correct)}")
    n = len(a_correct)
    only_a = sum(bool(x) and not y for x, y in zip(a_correct, b_correct))
    only_b = sum(bool(y) and not x for x, y in zip(a_correct, b_correct))
    d = only_a + only_b
    diff = (only_a - only_b) / n if n else 0.0
    if d == 0:
        return PairedTest("McNemar exact", diff, n, 1.0, detail={"only_a": 0, "only_b": 0})
    if d < EXACT_BELOW:
        p = min(1.0, 2 * _binom_cdf_half(min(only_a, only_b), d))
        method = "McNemar exact"
    else:
        chi2 = (abs(only_a - only_b) - 1) ** 2 / d
        p = math.erfc(math.sqrt(chi2 / 2))
        method = "McNemar chi2 (continuity-corrected)"
    return PairedTest(method, diff, n, p, detail={"only_a": only_a, "only_b": only_b})


def _balanced(correct: np.ndarray, labels: np.ndarray) -> float:
    return (correct[labels].mean() + correct[~labels].mean()) / 2


def paired_bootstrap_balanced(
    a_correct: Sequence[bool], b_correct: Sequence[bool], labels: Sequence[bool], *, resamples: int = 2000,
    seed: int = 0,
) -> PairedTest | None:
    """Balanced accuracy(a) - (b) on the same samples; 95% percentile interval of a paired,
    class-stratified bootstrap (the same resampled samples for both arms)."""
    a, b, y = (np.asarray(v, dtype=bool) for v in (a_correct, b_correct, labels))
    if not (len(a) == len(b) == len(y)):
        raise ValueError(f"paired verdicts must align, got {len(a)}, {len(b)} and {len(y)} samples")
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    if not len(pos) or not len(neg):
        return None
    diff = _balanced(a, y) - _balanced(b, y)
    rng = np.random.default_rng(seed)
    ip = pos[rng.integers(0, len(pos), (resamples, len(pos)))]
    ineg = neg[rng.integers(0, len(neg), (resamples, len(neg)))]
    delta = a.astype(float) - b.astype(float)
    draws = (delta[ip].mean(1) + delta[ineg].mean(1)) / 2
    low, high = np.percentile(draws, [2.5, 97.5])
    return PairedTest(f"paired stratified bootstrap ({resamples} resamples, seed {seed})", float(diff), len(y),
                      None, float(low), float(high))


def low_fpr_threshold(negatives: Sequence[float], fpr: float) -> float | None:
    """The threshold t with FAIL iff score > t whose false-positive rate on `negatives` is at most
    `fpr`: the (floor(fpr * n) + 1)-th highest negative score. None without negatives."""
    if not 0 <= fpr < 1:
        raise ValueError(f"a false-positive rate is in [0, 1), got {fpr}")
    s = np.sort(np.asarray(negatives, dtype=float))[::-1]
    if not len(s):
        return None
    return float(s[min(math.floor(fpr * len(s) + 1e-9), len(s) - 1)])


@dataclass(frozen=True)
class RecallAtFpr:
    """Recall on the reported samples at a threshold fixed on calibration negatives."""

    target: float
    threshold: float
    tpr: Rate
    fpr: Rate  # achieved on the reported negatives
    n_calibration: int

    def to_dict(self) -> dict[str, Any]:
        return {"target_fpr": self.target, "threshold": self.threshold, "tpr": self.tpr.to_dict(),
                "fpr": self.fpr.to_dict(), "n_calibration": self.n_calibration}

    def __str__(self) -> str:
        if not self.tpr.n:
            return "n/a"
        return f"{100 * self.tpr.value:.1f}% (FPR {100 * self.fpr.value:.1f}%)" if self.fpr.n else \
            f"{100 * self.tpr.value:.1f}%"


def recall_at_fpr(
    scores: Sequence[float], labels: Sequence[bool], calibration: Sequence[float], fpr: float
) -> RecallAtFpr | None:
    t = low_fpr_threshold(calibration, fpr)
    if t is None:
        return None
    pos, neg = _split(scores, labels)
    return RecallAtFpr(fpr, t, Rate(int((pos > t).sum()), len(pos)), Rate(int((neg > t).sum()), len(neg)),
                       len(calibration))


@dataclass(frozen=True)
class ReliabilityBin:
    low: float
    high: float
    n: int
    mean_score: float | None
    fail_rate: float | None


def calibration_error(
    scores: Sequence[float], labels: Sequence[bool], bins: int = BINS
) -> tuple[float, list[ReliabilityBin]] | None:
    """Expected calibration error over equal-width bins, and the reliability table; None when
    there are no samples or a score lies outside [0, 1] (not a probability)."""
    s, y = np.asarray(scores, dtype=float), np.asarray(labels, dtype=bool)
    if not len(s) or s.min() < 0 or s.max() > 1:
        return None
    idx = np.minimum((s * bins).astype(int), bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        sel = idx == b
        k = int(sel.sum())
        mean_s = float(s[sel].mean()) if k else None
        rate = float(y[sel].mean()) if k else None
        if k:
            ece += k / len(s) * abs(mean_s - rate)
        table.append(ReliabilityBin(b / bins, (b + 1) / bins, k, mean_s, rate))
    return ece, table


def roc_curve(scores: Sequence[float], labels: Sequence[bool]) -> tuple[list[float], list[float]] | None:
    """(FPR, TPR) points from (0, 0) to (1, 1) (sklearn's); None with one class."""
    from sklearn.metrics import roc_curve as sk_roc_curve

    pos, neg = _split(scores, labels)
    if not len(pos) or not len(neg):
        return None
    fpr, tpr, _ = sk_roc_curve(np.asarray(labels, dtype=bool), np.asarray(scores, dtype=float))
    return fpr.tolist(), tpr.tolist()


# --- over results records ------------------------------------------------------------------------


def _labelled(records: Iterable[SampleResult]) -> list[SampleResult]:
    return [r for r in records if r.expected_flag in ("PASS", "FAIL")]


def calibration_split(
    records: Sequence[SampleResult], cfg: CalibrationConfig
) -> tuple[list[SampleResult], list[SampleResult]]:
    """(calibration, reported): calibration records are expected PASS, and no sample id of them is
    among the reported ones, in any arm or condition, so a threshold never sees the samples its recall
    and achieved FPR are measured on."""
    records = _labelled(records)
    if cfg.mode == "none":
        return [], records
    if cfg.mode == "set":
        held = {r.id for r in records if r.eval_set == cfg.eval_set}
    else:
        ids = sorted({r.id for r in records if r.expected_flag == "PASS"})
        rng = np.random.default_rng(cfg.seed)
        held = {ids[i] for i in rng.permutation(len(ids))[: round(cfg.fraction * len(ids))]}
    calibration = [r for r in records if r.id in held and r.expected_flag == "PASS"]
    return calibration, [r for r in records if r.id not in held]


@dataclass
class ArmDetection:
    """Score metrics of one arm under one condition: over every labelled sample, except recall at a fixed
    FPR, which is over the samples outside the calibration set."""

    arm: str
    condition: str
    n: int  # scored labelled samples
    n_pos: int
    n_neg: int
    unscored: int
    score_source: str | None
    auc: Auc | None
    recall: list[RecallAtFpr]
    ece: float | None
    reliability: list[ReliabilityBin]
    roc: tuple[list[float], list[float]] | None
    note: str = ""

    def recall_at(self, target: float) -> RecallAtFpr | None:
        return next((r for r in self.recall if math.isclose(r.target, target)), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "arm": self.arm, "condition": self.condition, "n": self.n, "n_pos": self.n_pos, "n_neg": self.n_neg,
            "unscored": self.unscored, "score_source": self.score_source,
            "auroc": None if self.auc is None else self.auc.to_dict(),
            "recall_at_fpr": [r.to_dict() for r in self.recall],
            "ece": self.ece,
            "reliability": [vars(b) for b in self.reliability],
            "note": self.note,
        }


def _has_score(r: SampleResult) -> bool:
    return r.score is not None and math.isfinite(r.score)


def _scored(records: Sequence[SampleResult]) -> tuple[list[float], list[bool]]:
    rs = [r for r in records if _has_score(r)]
    return [r.score for r in rs], [r.expected_flag == "FAIL" for r in rs]


def arm_detection(
    arm: str, condition: str, labelled: Sequence[SampleResult], calibration: Sequence[SampleResult],
    fprs: Sequence[float],
) -> ArmDetection:
    """`labelled`: every labelled record of the arm and condition, `calibration` among them."""
    scores, labels = _scored(labelled)
    held = {r.id for r in calibration}
    sources = sorted({r.score_source or "unrecorded" for r in labelled if _has_score(r)})
    pos, neg = sum(labels), len(labels) - sum(labels)
    notes = []
    if not scores:
        notes.append("no scores")
    elif not pos or not neg:
        notes.append("one class only: AUROC and recall undefined")
    cal = [r.score for r in calibration if _has_score(r)]
    recall = []
    if scores and pos:
        if cal:
            rep_scores, rep_labels = _scored([r for r in labelled if r.id not in held])
            recall = [x for f in fprs if (x := recall_at_fpr(rep_scores, rep_labels, cal, f)) is not None]
        else:
            notes.append("no calibration samples: recall at fixed FPR not reported")
    ece = calibration_error(scores, labels) if scores else None
    return ArmDetection(
        arm=arm, condition=condition, n=len(scores), n_pos=pos, n_neg=neg, unscored=len(labelled) - len(scores),
        score_source=", ".join(sources) or None, auc=delong(scores, labels) if scores else None, recall=recall,
        ece=None if ece is None else ece[0], reliability=[] if ece is None else ece[1],
        roc=roc_curve(scores, labels) if scores else None, note="; ".join(notes),
    )


def detection_table(records: Sequence[SampleResult], cfg: CalibrationConfig | None = None) -> list[ArmDetection]:
    """One `ArmDetection` per (arm, condition), thresholds from that arm and condition's calibration records."""
    cfg = cfg or CalibrationConfig()
    calibration, _ = calibration_split(records, cfg)
    cal = group(calibration, ("arm", "condition"))
    return [
        arm_detection(arm, cond, rs, cal.get((arm, cond), []), cfg.fprs)
        for (arm, cond), rs in group(_labelled(records), ("arm", "condition")).items()
    ]


@dataclass
class Comparison:
    """Arm a against arm b under one condition, on the labelled samples both have."""

    a: str
    b: str
    condition: str
    n: int
    accuracy: PairedTest | None
    auroc: PairedTest | None
    balanced: PairedTest | None

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "condition": self.condition, "n": self.n,
                **{k: None if v is None else v.to_dict()
                   for k, v in (("accuracy", self.accuracy), ("auroc", self.auroc), ("balanced", self.balanced))}}


def compare(
    records: Sequence[SampleResult], a: str, b: str, condition: str, cfg: CalibrationConfig | None = None
) -> Comparison:
    """Paired tests of arm `a` against arm `b`: McNemar (accuracy), DeLong (AUROC), bootstrap (balanced)."""
    cfg = cfg or CalibrationConfig()
    labelled = _labelled(records)
    by = {arm: {r.id: r for r in labelled if r.arm == arm and r.condition == condition} for arm in (a, b)}
    ids = sorted(set(by[a]) & set(by[b]))
    ra, rb = [by[a][i] for i in ids], [by[b][i] for i in ids]
    labels = [r.expected_flag == "FAIL" for r in ra]
    ca, cb = [r.correct for r in ra], [r.correct for r in rb]
    both = [i for i, (x, y) in enumerate(zip(ra, rb)) if _has_score(x) and _has_score(y)]
    return Comparison(
        a, b, condition, len(ids),
        accuracy=mcnemar(ca, cb) if ids else None,
        auroc=delong_paired([ra[i].score for i in both], [rb[i].score for i in both], [labels[i] for i in both]),
        balanced=paired_bootstrap_balanced(ca, cb, labels, resamples=cfg.bootstrap_resamples, seed=cfg.seed),
    )


def best_baseline(table: Sequence[ArmDetection], condition: str, persona: str = "persona") -> str | None:
    """The other arm with the highest AUROC under `condition` (ties: the first in table order)."""
    rows = [d for d in table if d.condition == condition and d.arm != persona and d.auc is not None]
    return max(rows, key=lambda d: d.auc.value).arm if rows else None


def persona_vs_best(
    records: Sequence[SampleResult], table: Sequence[ArmDetection], cfg: CalibrationConfig | None = None,
    persona: str = "persona",
) -> list[Comparison]:
    """Per condition, the persona against the baseline with the highest AUROC, paired."""
    out = []
    for cond in dict.fromkeys(d.condition for d in table if d.arm == persona):
        best = best_baseline(table, cond, persona)
        if best is not None:
            out.append(compare(records, persona, best, cond, cfg))
    return out


def score_fields(records: Sequence[SampleResult], cfg: CalibrationConfig | None = None) -> dict[str, dict[str, dict]]:
    """Flat per-arm, per-condition score metrics ({arm: {condition: fields}}) for summaries such as the demo's:
    n, AUROC and its DeLong interval, recall and achieved FPR at each configured FPR, ECE, score source."""
    cfg = cfg or CalibrationConfig()
    out: dict[str, dict[str, dict]] = defaultdict(dict)
    for d in detection_table(records, cfg):
        auc = d.auc
        fields: dict[str, Any] = {
            "n": d.n, "auroc": auc and auc.value, "auroc_low": auc and auc.low, "auroc_high": auc and auc.high,
            "ece": d.ece, "score_source": d.score_source,
        }
        for f in cfg.fprs:
            r = d.recall_at(f)
            fields[f"tpr_at_{100 * f:g}pct_fpr"] = None if r is None else r.tpr.value
            fields[f"achieved_fpr_at_{100 * f:g}pct"] = None if r is None else r.fpr.value
        out[d.arm][d.condition] = fields
    return dict(out)
