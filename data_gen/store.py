"""Crash-safe state of a generation run: the result store, the cost ledger, the budget, the run lock.

The store is an append-only JSONL file per stage, one line per finished request, keyed by the
request's hash. A line is written (and fsynced) only after the answer is validated, so a SIGKILL
at any moment loses at most the requests in flight; a line torn by the kill is cut off on the
next open. Stage outputs are rebuilt from the store, never appended to, so a rerun that skips the
done keys ends with every sample exactly once.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from splitpersona.data_gen.backend import Attempt, Outcome
from splitpersona.data_gen.config import Price
from splitpersona.io import DataError, append_jsonl, iter_jsonl


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def repair_torn_tail(path: Path) -> int:
    """Cut a last line left without its newline by a kill; returns the bytes removed."""
    if not path.exists():
        return 0
    with open(path, "rb+") as fh:
        data = fh.read()
        if not data or data.endswith(b"\n"):
            return 0
        keep = data.rfind(b"\n") + 1
        fh.truncate(keep)
        fh.flush()
        os.fsync(fh.fileno())
        return len(data) - keep


class ResultStore:
    """Finished requests of one stage: key -> {status, value | failure, ...}; the last line per key wins."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.torn_bytes = repair_torn_tail(self.path)
        self._rows: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        if self.path.exists():
            for lineno, row in iter_jsonl(self.path):
                if not isinstance(row, dict) or "key" not in row or row.get("status") not in ("ok", "failed"):
                    raise DataError(self.path, "not a store row (needs key and status ok|failed)", record=f"line {lineno}")
                self._rows[row["key"]] = row

    def __contains__(self, key: str) -> bool:
        return key in self._rows

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, key: str) -> dict[str, Any] | None:
        return self._rows.get(key)

    def rows(self) -> list[dict[str, Any]]:
        return list(self._rows.values())

    def put(self, row: dict[str, Any]) -> None:
        if row.get("status") not in ("ok", "failed") or "key" not in row:
            raise ValueError("a store row needs a key and status ok|failed")
        with self._lock:
            append_jsonl(self.path, row)
            self._rows[row["key"]] = row

    def put_outcome(self, outcome: Outcome, model: str, **extra: Any) -> dict[str, Any]:
        row = {
            "key": outcome.key,
            "stage": outcome.request.stage,
            "model": model,
            "status": outcome.status,
            "value": outcome.value.model_dump(mode="json") if outcome.value is not None else None,
            "failure": outcome.failure,
            "attempts": outcome.attempts,
            "finished_at": now_iso(),
            **extra,
        }
        self.put(row)
        return row


class Ledger:
    """Every call made, with its tokens and cost; the running totals drive the budget.

    Shared by all stages of a run (one file), read back on restart, so the budget covers what
    earlier, killed runs already spent.
    """

    def __init__(self, path: str | os.PathLike[str], prices: dict[str, Price], batch_discount: float):
        self.path = Path(path)
        self.prices = prices
        self.batch_discount = batch_discount
        self._lock = threading.Lock()
        self.total_usd = 0.0
        repair_torn_tail(self.path)
        if self.path.exists():
            for _, row in iter_jsonl(self.path):
                self.total_usd += float(row.get("cost_usd") or 0.0)

    def cost(self, a: Attempt) -> float:
        if a.mode == "local" or not any((a.input_tokens, a.output_tokens, a.cache_write_tokens, a.cache_read_tokens)):
            return 0.0
        price = self.prices.get(a.model)
        if price is None:
            raise DataError(self.path, f"no price for model {a.model!r}: add it under `prices` in the config")
        usd = (
            a.input_tokens * price.input
            + a.output_tokens * price.output
            + a.cache_write_tokens * price.cache_write
            + a.cache_read_tokens * price.cache_read
        ) / 1e6
        return usd * (self.batch_discount if a.mode == "batch" else 1.0)

    def record(self, a: Attempt) -> float:
        usd = self.cost(a)
        row = {"at": now_iso(), **asdict(a), "cost_usd": round(usd, 8)}
        with self._lock:
            append_jsonl(self.path, row)
            self.total_usd += usd
        return usd

    def rows(self) -> Iterator[dict[str, Any]]:
        if self.path.exists():
            yield from (row for _, row in iter_jsonl(self.path, tolerate_torn_tail=True))


class BudgetMeter:
    """The Meter the runner hands to backends: the ledger plus the budget check."""

    def __init__(self, ledger: Ledger, budget_usd: float | None):
        self.ledger = ledger
        self.budget_usd = budget_usd
        self.exhausted = False

    def allow(self) -> bool:
        if self.budget_usd is not None and self.ledger.total_usd >= self.budget_usd:
            self.exhausted = True
        return not self.exhausted

    def record(self, attempt: Attempt) -> None:
        self.ledger.record(attempt)


def summarise_ledger(rows: Iterator[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per stage: calls, retries (calls beyond the first per request), faults by kind, tokens, cost."""
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        stage = row.get("stage", "?")
        s = out.setdefault(stage, {"calls": 0, "retries": 0, "faults": Counter(), "tokens": Counter(), "cost_usd": 0.0})
        s["calls"] += 1
        if row.get("attempt", 1) > 1:
            s["retries"] += 1
        if row.get("outcome") != "ok":
            s["faults"][row.get("outcome", "?")] += 1
        for t in ("input_tokens", "output_tokens", "cache_write_tokens", "cache_read_tokens"):
            s["tokens"][t] += int(row.get(t) or 0)
        s["cost_usd"] += float(row.get("cost_usd") or 0.0)
    for s in out.values():
        s["faults"] = dict(sorted(s["faults"].items()))
        s["tokens"] = dict(s["tokens"])
        s["cost_usd"] = round(s["cost_usd"], 6)
    return out


class RunLocked(RuntimeError):
    pass


@contextlib.contextmanager
def run_lock(out_dir: Path) -> Iterator[None]:
    """One generator process per run directory: two would interleave the same store files.

    An OS lock, so a SIGKILLed holder releases it at once.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    fh = open(out_dir / ".lock", "a+")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            raise RunLocked(f"{out_dir}: another `spt generate` process is using this run directory") from e
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"pid": os.getpid(), "since": now_iso()}))
        fh.flush()
        yield
    finally:
        fh.close()
