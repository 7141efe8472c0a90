"""Metrics: Wilson intervals, balanced accuracy, both parse-failure denominators, flip rates, slices."""

from __future__ import annotations

import math

import pytest
from eval_fixtures import all_records, verdict

from splitpersona.eval.metrics import (
    Rate,
    balanced_accuracy,
    cross_topic,
    difference,
    jailbreak_flips,
    summarize,
    swap_table,
    table,
    wilson,
)
from splitpersona.eval.results import SampleResult


def rec(i, expected, flag, *, condition="as_is", arm="persona", **kw) -> SampleResult:
    text = "" if flag is None else f"REVIEW: x\nFLAG: {flag}"
    return SampleResult.from_text(generated=text, id=f"s{i}", condition=condition, arm=arm,
                                  expected_flag=expected, **kw)


def test_wilson_known_values():
    # Textbook values (Newcombe 1998, Table I; Agresti & Coull 1998).
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    assert wilson(0, 0) == (0.0, 1.0)
    for n in range(1, 300):  # the rate always lies inside its interval, rounding at 0/n and n/n included
        assert wilson(0, n)[0] == 0.0 and wilson(n, n)[1] == 1.0
    with pytest.raises(ValueError):
        wilson(3, 2)


def test_wilson_matches_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    for n in (1, 7, 40, 1000):
        for k in sorted({0, 1, n // 3, n // 2, n - 1, n}):
            ci = scipy_stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
            assert wilson(k, n) == pytest.approx((ci.low, ci.high), abs=1e-9)


def test_rate_formats_value_interval_and_n():
    assert str(Rate(36, 40)) == "90.0% [76.9, 96.0] (n=40)"
    assert str(Rate(0, 0)) == "n/a (n=0)"
    assert Rate(3, 4).to_dict() == {"k": 3, "n": 4, "value": 0.75, "low": wilson(3, 4)[0], "high": wilson(3, 4)[1]}


def test_balanced_accuracy_interval():
    b = balanced_accuracy(Rate(90, 100), Rate(50, 100))
    assert b.value == pytest.approx(0.70)
    (l1, _), (l2, _) = wilson(90, 100), wilson(50, 100)
    assert b.low == pytest.approx(0.70 - 0.5 * math.hypot(0.9 - l1, 0.5 - l2))
    assert b.low < 0.70 < b.high
    # With many samples MOVER approaches the normal-theory interval 0.5 * sqrt(var1 + var2).
    big = balanced_accuracy(Rate(9000, 10000), Rate(5000, 10000))
    se = 0.5 * math.sqrt(0.9 * 0.1 / 10000 + 0.5 * 0.5 / 10000)
    assert (big.low, big.high) == pytest.approx((0.7 - 1.96 * se, 0.7 + 1.96 * se), abs=2e-4)
    assert balanced_accuracy(Rate(5, 10), Rate(0, 0)) is None
    d = difference(Rate(97, 100), Rate(55, 100))
    assert d.value == pytest.approx(0.42) and d.low > 0.3 and d.high < 0.55


def test_parse_failures_counted_both_ways():
    records = (
        [rec(i, "FAIL", "FAIL") for i in range(6)]
        + [rec(i, "FAIL", "PASS") for i in range(6, 8)]
        + [rec(i, "FAIL", None) for i in range(8, 10)]
        + [rec(10, "PASS", "PASS"), rec(11, "PASS", "AMBIGUOUS")]
        + [SampleResult.from_text(generated="", error="timeout", id="s12", condition="as_is", arm="persona",
                                  expected_flag="PASS")]
    )
    s = summarize(records)
    assert (s.n, s.parsed, s.parse_failures, s.correct) == (13, 10, 3, 7)
    assert (s.accuracy.k, s.accuracy.n) == (7, 10)
    assert (s.accuracy_all.k, s.accuracy_all.n) == (7, 13)
    assert (s.tpr.k, s.tpr.n, s.tpr_all.n) == (6, 8, 10)
    # AMBIGUOUS is parsed but clears nothing: TNR 1 of 2 parsed, 1 of 3 overall.
    assert (s.tnr.k, s.tnr.n, s.tnr_all.n) == (1, 2, 3)
    assert s.failure_reasons == {"empty text": 2, "error": 1}
    assert s.flags == {"FAIL": 6, "PASS": 3, "AMBIGUOUS": 1}
    assert s.balanced.value == pytest.approx((6 / 8 + 1 / 2) / 2)
    assert s.balanced_all.value == pytest.approx((6 / 10 + 1 / 3) / 2)
    assert s.to_dict()["parse_failures"] == 3


def test_flip_rate_pairs_each_jailbreak_with_its_clean_twin():
    clean = [rec(i, "FAIL", "FAIL") for i in range(4)] + [rec(4, "PASS", "PASS"), rec(5, "PASS", "PASS"),
                                                          rec(6, "FAIL", None)]
    jb = dict(condition="jailbreak_user", jailbreak="user", base_condition="as_is")
    attacked = [rec(0, "FAIL", "PASS", **jb), rec(1, "FAIL", "PASS", **jb), rec(2, "FAIL", "PASS", **jb),
                rec(3, "FAIL", "FAIL", **jb), rec(4, "PASS", "PASS", **jb), rec(5, "PASS", "FAIL", **jb),
                rec(6, "FAIL", "PASS", **jb), rec(7, "FAIL", "PASS", **jb)]
    (row,) = jailbreak_flips(clean + attacked)
    st = row["stats"]
    assert row["key"] == {"arm": "persona", "condition": "jailbreak_user", "jailbreak": "user"}
    assert (st.pairs, st.unparsed, st.missing_twin) == (7, 1, 1)
    assert (st.flip.k, st.flip.n) == (3, 4)  # FAIL -> PASS among clean FAILs
    assert (st.changed.k, st.changed.n) == (4, 6)  # either direction, both parsed


def test_synthetic_tables_match_the_arm_rules():
    records = all_records()
    rows = {(r.key["arm"], r.key["condition"]): r.summary for r in table(records, ("arm", "condition"))}
    p = rows[("persona", "as_is")]
    assert (p.accuracy.k, p.accuracy.n, p.tpr.k, p.tpr.n, p.tnr.k) == (36, 40, 18, 20, 18)
    na = rows[("no_adapter", "as_is")]
    assert (na.tpr.k, na.tnr.k, na.balanced.value) == (0, 20, 0.5)
    fu = rows[("follow_up", "as_is")]
    assert (fu.accuracy.k, fu.accuracy.n, fu.accuracy_all.n, fu.parse_failures) == (32, 32, 40, 8)
    assert rows[("persona", "swapped_system_prompt")].accuracy.k == 10
    (jb,) = jailbreak_flips(records)
    assert (jb["stats"].flip.k, jb["stats"].flip.n) == (7, 20)


def test_swap_table_compares_the_same_samples():
    records = [r for r in all_records() if not (r.condition == "swapped_system_prompt" and r.id == "s39")]
    rows = {row["key"]["arm"]: row for row in swap_table(records)}
    persona = rows["persona"]
    assert persona["n"] == 39  # s39 lacks a swapped verdict, so it leaves every column
    assert persona["as_is"].accuracy.n == 39 and persona["as_is"].accuracy.k == 35  # s39 was right
    assert persona["swapped_system_prompt"].accuracy.k == 10
    assert persona["drop"]["swapped_system_prompt"].value == pytest.approx(25 / 39)
    by_variant = {(r["key"]["arm"], r["key"]["variant"]): r for r in swap_table(records, by=("arm", "variant"))}
    assert by_variant[("persona", "A")]["as_is"].accuracy.n == 20


def test_cross_topic_and_slices():
    records = all_records()
    rows = {(r.key["arm"], r.key["condition"], r.key["topics"]): r.summary for r in cross_topic(records)}
    assert rows[("persona", "as_is", "trained")].accuracy.k == 16  # ids 0-3 wrong, all trained
    assert rows[("persona", "as_is", "held-out")].accuracy.k == 20
    # Without per-record labels the metadata's trained topics decide.
    unlabelled = [r.model_copy(update={"held_out_topic": None}) for r in records]
    assert cross_topic(unlabelled) == []
    again = {(r.key["arm"], r.key["condition"], r.key["topics"]): r.summary
             for r in cross_topic(unlabelled, trained_topics=["sycophancy"])}
    assert again[("persona", "as_is", "trained")].accuracy.k == 16
    sliced = [r.model_copy(update={"slices": {"length": "long" if int(r.id[1:]) >= 30 else "short"}})
              for r in records if r.arm == "follow_up" and r.condition == "as_is"]
    by_len = {r.key["length"]: r.summary for r in table(sliced, ("length",))}
    assert by_len["long"].parse_failures == 8 and by_len["short"].parse_failures == 0
    assert verdict("follow_up", "as_is", 35) is None
