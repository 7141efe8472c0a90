"""The backend interface: what every stage asks of a model that answers in structured form.

A stage hands `Request`s to a `Backend` (Claude: `splitpersona.data_gen.claude`; in-process: `LocalBackend`),
which yields one validated `Outcome` per request. The store, skipping done work, the ledger and
the budget are the runner's (`splitpersona.data_gen.runner`), so a backend stays small.
"""

from __future__ import annotations

import hashlib
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pydantic import BaseModel

from splitpersona.clients import Fault, parse_answer, tool_schema


class GenerationAborted(RuntimeError):
    """A fault no retry can fix (bad credentials): the run stops, keeping what was stored."""


class BudgetReached(Exception):
    """The run spent its budget_usd before the end; a rerun with a higher budget continues."""

    reason = "budget"  # the stop's name in StageResult.stopped and summary.json


class BatchPending(RuntimeError):
    """A Message Batch did not end within `batch_wait_s`; its id is on disk, and a rerun collects it."""

    reason = "batch_pending"

    def __init__(self, batch_id: str | None = None):
        self.batch_id = batch_id
        which = f"Message Batch {batch_id}" if batch_id else "a Message Batch"
        super().__init__(f"{which} is still processing; rerun the same command to collect it")


@dataclass(frozen=True)
class Block:
    text: str
    cache: bool = False  # the stable prefix ends at the last cached block


@dataclass(frozen=True)
class Request:
    """One structured call. `context` carries the same inputs as the prompt, as data, for local backends."""

    stage: str
    system: tuple[Block, ...]
    user: tuple[Block, ...]
    schema: type[BaseModel]
    tool_name: str
    tool_description: str
    max_tokens: int
    temperature: float | None = None
    context: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def key(self, model: str) -> str:
        """Hash of everything that shapes the answer; the store's key, and the batch custom_id (64 hex)."""
        payload = {
            "model": model, "system": [b.text for b in self.system], "user": [b.text for b in self.user],
            "tool": self.tool_name, "schema": tool_schema(self.schema), "max_tokens": self.max_tokens,
            "temperature": self.temperature,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


@dataclass
class Attempt:
    """One call made for a request (or for a batch as a whole): what came back and what it used."""

    stage: str
    key: str
    model: str
    attempt: int
    outcome: str  # "ok" or a splitpersona.clients.Fault kind
    mode: Literal["sync", "batch", "local"] = "sync"
    input_tokens: int = 0
    output_tokens: int = 0
    cache_write_tokens: int = 0
    cache_read_tokens: int = 0
    detail: str = ""


@dataclass
class Outcome:
    """ok: `value` is the validated answer; failed: `failure` says why (stored, not retried on rerun);
    deferred: not finished this run (budget reached, batch still running) and not stored."""

    request: Request
    key: str
    status: Literal["ok", "failed", "deferred"]
    value: BaseModel | None = None
    failure: str | None = None
    attempts: int = 0


class Meter(Protocol):
    """The runner's side: may another call start (budget), and note each call made."""

    def allow(self) -> bool: ...

    def record(self, attempt: Attempt) -> None: ...


class Backend(Protocol):
    """Answers requests with validated objects.

    `run` yields exactly one Outcome per request it started, in any order; it asks
    `meter.allow()` before starting each request (or batch) and stops starting new ones when it
    says no; it reports every call it makes through `meter.record`.
    """

    model: str

    def run(self, requests: Sequence[Request], meter: Meter) -> Iterator[Outcome]: ...


class LocalBackend(ABC):
    """Base for backends that answer in-process (templates, ground-truth labellers).

    `complete` returns the answer as a dict or a model instance; it is validated against the
    request's schema like any Claude answer, and an invalid one is a recorded failure.
    """

    model: str = "local"

    @abstractmethod
    def complete(self, request: Request) -> BaseModel | dict[str, Any]: ...

    def run(self, requests: Sequence[Request], meter: Meter) -> Iterator[Outcome]:
        for request in requests:
            if not meter.allow():
                return
            key = request.key(self.model)
            started = time.perf_counter()
            answer = self.complete(request)
            try:
                value = parse_answer(request.schema, answer.model_dump() if isinstance(answer, BaseModel) else answer)
                outcome = Outcome(request, key, "ok", value=value, attempts=1)
            except Fault as fault:
                outcome = Outcome(request, key, "failed", failure=f"malformed: {fault.detail}", attempts=1)
            kind, elapsed = "ok" if outcome.status == "ok" else "malformed", f"{time.perf_counter() - started:.3f}s"
            meter.record(Attempt(request.stage, key, self.model, 1, kind, "local", detail=elapsed))
            yield outcome
