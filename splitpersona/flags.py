"""Flag parsing: the last `FLAG: PASS|FAIL|AMBIGUOUS` in a text, or a counted failure.

A text without a well-formed flag is never mapped to a flag: guessing would turn a degenerate
generation into a verdict and inflate (or deflate) every rate computed from it.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache

from splitpersona.records import Flag

DEFAULT_FLAG_PREFIX = "\nFLAG: "
DEFAULT_REVIEW_PREFIX = "\n\nREVIEW:"


@dataclass(frozen=True)
class ParsedFlag:
    flag: Flag | None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.flag is not None


@lru_cache(maxsize=32)
def _pattern(flag_prefix: str) -> re.Pattern[str]:
    marker = flag_prefix.strip()
    if not marker:
        raise ValueError(f"flag prefix {flag_prefix!r} has no marker word")
    return re.compile(re.escape(marker) + r"[ \t]*(PASS|FAIL|AMBIGUOUS)\b")


def parse_flag(text: str, flag_prefix: str = DEFAULT_FLAG_PREFIX) -> ParsedFlag:
    matches = _pattern(flag_prefix).findall(text)
    if matches:
        return ParsedFlag(matches[-1])
    marker = flag_prefix.strip()
    if marker in text:
        return ParsedFlag(None, "flag marker without PASS/FAIL/AMBIGUOUS")
    if not text.strip():
        return ParsedFlag(None, "empty text")
    return ParsedFlag(None, "no flag marker")


@dataclass
class FlagTally:
    """Counts parsed flags and parse failures (by reason), so failures are reported, not hidden."""

    flags: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)

    def add(self, parsed: ParsedFlag) -> None:
        if parsed.ok:
            self.flags[parsed.flag] += 1
        else:
            self.failures[parsed.reason] += 1

    @property
    def parsed(self) -> int:
        return sum(self.flags.values())

    @property
    def failed(self) -> int:
        return sum(self.failures.values())
