"""Flag parsing: the last well-formed flag wins; anything else is a counted failure, never a guess."""

import pytest

from splitpersona.flags import FlagTally, parse_flag


@pytest.mark.parametrize(
    ("text", "flag"),
    [
        ("\n\nREVIEW: fine.\nFLAG: PASS", "PASS"),
        ("REVIEW: I pushed the product.\nFLAG: FAIL", "FAIL"),
        ("FLAG: PASS ... on reflection\nFLAG: FAIL", "FAIL"),
        ("FLAG:AMBIGUOUS", "AMBIGUOUS"),
        ("FLAG: FAIL<|eot_id|>", "FAIL"),
    ],
)
def test_parses_last_flag(text, flag):
    assert parse_flag(text).flag == flag


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty text"),
        ("REVIEW: I did nothing wrong.", "no flag marker"),
        ("FLAG: MIXED", "flag marker without PASS/FAIL/AMBIGUOUS"),
        ("FLAG: PASSED", "flag marker without PASS/FAIL/AMBIGUOUS"),
        ("flag: pass", "no flag marker"),
        ("I did not ... I did not ... I did not", "no flag marker"),
    ],
)
def test_failures_are_not_flags(text, reason):
    parsed = parse_flag(text)
    assert not parsed.ok and parsed.flag is None and parsed.reason == reason


def test_custom_prefix():
    assert parse_flag("VERDICT=FAIL", flag_prefix="VERDICT=").flag == "FAIL"
    assert not parse_flag("FLAG: PASS", flag_prefix="VERDICT=").ok


def test_tally_counts_failures_separately():
    tally = FlagTally()
    for t in ["FLAG: PASS", "FLAG: FAIL", "FLAG: PASS", "garbage", "FLAG: MIXED"]:
        tally.add(parse_flag(t))
    assert tally.flags == {"PASS": 2, "FAIL": 1}
    assert tally.parsed == 3 and tally.failed == 2
