"""Claude through the official `anthropic` SDK: forced-tool calls, sync or Message Batches.

Every call goes through `splitpersona.clients` (its one retry policy, tool schemas from the answer
models) and is reported to the meter, so the summary can count each fault kind; an answer cut
off at max_tokens is retried with 1.5x the room. The SDK reads ANTHROPIC_API_KEY and
ANTHROPIC_BASE_URL itself; the key is never passed through our code.

Batch mode writes each submitted batch's id and request keys to `batches.jsonl` before polling,
so a restarted run collects a pending batch by id instead of paying for it twice. (A kill in the
instant between the create call returning and that line reaching disk orphans one batch: its
requests are resubmitted.)
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from splitpersona.data_gen.backend import Attempt, BatchPending, GenerationAborted, Meter, Outcome, Request
from splitpersona.data_gen.config import ClaudeConfig
from splitpersona.data_gen.store import now_iso
from splitpersona.clients import RETRYABLE, Fault, RetryPolicy, anthropic_client, call_fault, tool, tool_answer, usage
from splitpersona.io import append_jsonl, iter_jsonl

log = logging.getLogger("splitpersona.data_gen.claude")

MAX_OUTPUT_TOKENS = 64_000


class BatchLost(RuntimeError):
    """The API no longer knows a batch id found on disk (deleted, or another workspace)."""


BATCH_ERROR_KINDS = {  # an errored batch result's error type -> our fault kind; others are bad_request
    "overloaded_error": "overloaded", "api_error": "server_error", "rate_limit_error": "rate_limit",
    "timeout_error": "timeout", "authentication_error": "auth", "permission_error": "auth",
}


def grow(max_tokens: int) -> int:
    """The retry of an answer cut off at max_tokens gets more room (the request's key stays the same)."""
    return min(MAX_OUTPUT_TOKENS, int(max_tokens * 1.5))


class ClaudeBackend:
    """The Backend for Claude. `sleep` and `rng` are injectable so tests need not wait."""

    def __init__(self, cfg: ClaudeConfig, model: str, state_dir: str | Path, *,
                 sleep: Callable[[float], None] = time.sleep, rng: random.Random | None = None):
        self.cfg = cfg
        self.model = model
        self.state_path = Path(state_dir) / "batches.jsonl"
        self._sleep = sleep
        self.retry = RetryPolicy(cfg.max_attempts, cfg.backoff_base_s, cfg.backoff_max_s, sleep, rng or random.Random(), log)
        try:
            self.client = anthropic_client(base_url=cfg.base_url, timeout_s=cfg.timeout_s)
        except ValueError as e:
            raise GenerationAborted(str(e)) from None

    # -- request building --------------------------------------------------------------------
    def params(self, request: Request) -> dict[str, Any]:
        def blocks(bs):
            cached = {"cache_control": {"type": "ephemeral"}} if self.cfg.cache_prompts else {}
            return [{"type": "text", "text": b.text, **(cached if b.cache else {})} for b in bs]

        params: dict[str, Any] = {
            "model": self.model,
            "max_tokens": request.max_tokens,
            "system": blocks(request.system),
            "messages": [{"role": "user", "content": blocks(request.user)}],
            "tools": [tool(request.tool_name, request.tool_description, request.schema)],
            "tool_choice": {"type": "tool", "name": request.tool_name},
        }
        if request.temperature is not None:
            params["temperature"] = request.temperature
        return params

    # -- Backend -----------------------------------------------------------------------------
    def run(self, requests: Sequence[Request], meter: Meter) -> Iterator[Outcome]:
        if self.cfg.mode == "batch":
            yield from self._run_batches(requests, meter)
        else:
            yield from self._run_sync(requests, meter)

    # -- sync --------------------------------------------------------------------------------
    def _run_sync(self, requests: Sequence[Request], meter: Meter) -> Iterator[Outcome]:
        queue = list(reversed(requests))  # popped from the end: sent in order
        with ThreadPoolExecutor(max_workers=self.cfg.concurrency, thread_name_prefix="claude") as pool:
            running: set[Future[Outcome]] = set()
            try:
                while queue or running:
                    while queue and len(running) < self.cfg.concurrency and meter.allow():
                        running.add(pool.submit(self._call, queue.pop(), meter))
                    if not running:
                        break  # budget reached with work left
                    done, running = wait(running, return_when=FIRST_COMPLETED)
                    for fut in done:
                        yield fut.result()
            finally:
                for fut in running:
                    fut.cancel()

    def _call(self, request: Request, meter: Meter) -> Outcome:
        key = request.key(self.model)
        params = self.params(request)

        def attempt(n: int) -> Any:
            try:
                message = self.client.messages.create(**params)
            except Exception as exc:  # noqa: BLE001 - classified; unknown types re-raise
                raise self._fault(meter, request.stage, key, n, call_fault(exc), "sync") from None
            try:
                value = tool_answer(message, request.tool_name, request.schema, params["max_tokens"])
            except Fault as fault:
                meter.record(Attempt(request.stage, key, self.model, n, fault.kind, "sync", **usage(message), detail=fault.detail))
                if fault.kind == "truncated":
                    params["max_tokens"] = grow(params["max_tokens"])
                raise
            meter.record(Attempt(request.stage, key, self.model, n, "ok", "sync", **usage(message)))
            return value

        tried = self.retry.run(attempt, label=f"{request.stage} {key[:12]}", keep_going=meter.allow)
        if tried.stopped:
            return Outcome(request, key, "deferred", failure=f"budget reached after {tried.fault}", attempts=tried.attempts)
        if tried.fault is not None:
            return Outcome(request, key, "failed", failure=tried.failure, attempts=tried.attempts)
        return Outcome(request, key, "ok", value=tried.value, attempts=tried.attempts)

    def _fault(self, meter: Meter, stage: str, key: str, n: int, fault: Fault, mode: str) -> Fault:
        """Report a failed call; bad credentials end the run, since every later call would fail alike."""
        meter.record(Attempt(stage, key, self.model, n, fault.kind, mode, detail=fault.detail))
        if fault.kind == "auth":
            raise GenerationAborted(f"{fault.detail} (check ANTHROPIC_API_KEY)") from None
        return fault

    # -- batch -------------------------------------------------------------------------------
    def _api(self, what: str, stage: str, fn: Callable[[], Any]) -> Any:
        """A batch-endpoint call, retried on HTTP faults like a message call."""
        import anthropic

        def attempt(n: int) -> Any:
            try:
                return fn()
            except anthropic.NotFoundError as exc:
                raise BatchLost(f"{what}: {exc.message}") from None
            except Exception as exc:  # noqa: BLE001
                raise self._fault(self._meter, stage, what, n, call_fault(exc), "batch") from None

        tried = self.retry.run(attempt, label=f"{stage} {what}")
        if tried.fault is not None:
            raise RuntimeError(f"Message Batches call {what} failed: {tried.fault}")
        return tried.value

    def _open_batches(self) -> list[dict[str, Any]]:
        if not self.state_path.exists():
            return []
        submitted: dict[str, dict[str, Any]] = {}
        for _, row in iter_jsonl(self.state_path, tolerate_torn_tail=True):
            if row.get("event") == "submitted" and row.get("model") == self.model:
                submitted[row["batch_id"]] = row
            elif row.get("event") == "collected":
                submitted.pop(row["batch_id"], None)
        return list(submitted.values())

    def _run_batches(self, requests: Sequence[Request], meter: Meter) -> Iterator[Outcome]:
        self._meter = meter
        pending: dict[str, Request] = {r.key(self.model): r for r in requests}
        tries: Counter[str] = Counter()
        if not pending:
            return
        stage = next(iter(pending.values())).stage
        for rec in self._open_batches():
            if not pending.keys() & set(rec["keys"]):
                continue
            log.info("%s: resuming Message Batch %s (%d requests)", stage, rec["batch_id"], len(rec["keys"]))
            try:
                yield from self._collect(rec["batch_id"], rec["keys"], pending, tries, stage)
            except BatchLost as e:
                log.warning("%s: Message Batch %s is gone (%s); its requests are submitted again", stage, rec["batch_id"], e)
                append_jsonl(self.state_path, {"event": "collected", "batch_id": rec["batch_id"], "lost": True, "at": now_iso()})
        while pending:
            todo = list(pending.items())
            for start in range(0, len(todo), self.cfg.batch_max_requests):
                chunk = todo[start : start + self.cfg.batch_max_requests]
                if not meter.allow():
                    return
                body = [{"custom_id": key, "params": self.params(r)} for key, r in chunk]
                batch = self._api("batch-create", stage, lambda: self.client.messages.batches.create(requests=body))
                keys = [b["custom_id"] for b in body]
                append_jsonl(self.state_path, {"event": "submitted", "batch_id": batch.id, "stage": stage,
                                               "model": self.model, "keys": keys, "at": now_iso()})
                log.info("%s: submitted Message Batch %s (%d requests)", stage, batch.id, len(keys))
                yield from self._collect(batch.id, keys, pending, tries, stage)

    def _collect(
        self, batch_id: str, keys: list[str], pending: dict[str, Request], tries: Counter[str], stage: str
    ) -> Iterator[Outcome]:
        started = time.monotonic()
        while True:
            batch = self._api(batch_id, stage, lambda: self.client.messages.batches.retrieve(batch_id))
            if batch.processing_status == "ended":
                break
            if self.cfg.batch_wait_s is not None and time.monotonic() - started >= self.cfg.batch_wait_s:
                raise BatchPending(batch_id)
            self._sleep(self.cfg.batch_poll_s)
        results = self._api(batch_id, stage, lambda: list(self.client.messages.batches.results(batch_id)))
        got = {line.custom_id: line.result for line in results}
        for key in [*got, *(k for k in keys if k not in got)]:  # a key without a result line counts as expired
            if key in pending:
                yield from self._batch_result(pending, tries, key, got.get(key))
        append_jsonl(self.state_path, {"event": "collected", "batch_id": batch_id, "at": now_iso()})

    def _batch_result(self, pending: dict[str, Request], tries: Counter[str], key: str, result: Any) -> Iterator[Outcome]:
        request = pending[key]
        tries[key] += 1
        n = tries[key]
        used: dict[str, int] = {}
        if result is None or result.type in ("canceled", "expired"):
            value, kind, detail = None, "expired", "no result (canceled or expired)"
        elif result.type == "errored":
            kind = BATCH_ERROR_KINDS.get(result.error.error.type, "bad_request")
            value, detail = None, f"errored: {result.error.error.type}"
        else:
            used = usage(result.message)
            try:
                value, kind, detail = tool_answer(result.message, request.tool_name, request.schema, request.max_tokens), "ok", ""
            except Fault as fault:
                value, kind, detail = None, fault.kind, fault.detail
        self._meter.record(Attempt(request.stage, key, self.model, n, kind, "batch", **used, detail=detail))
        if kind == "ok":
            del pending[key]
            yield Outcome(request, key, "ok", value=value, attempts=n)
        elif kind == "auth":
            raise GenerationAborted(detail)
        elif kind not in RETRYABLE or n >= self.cfg.max_attempts:
            del pending[key]
            suffix = f"; gave up after {n} attempts" if kind in RETRYABLE else ""
            yield Outcome(request, key, "failed", failure=f"{kind} ({detail}){suffix}", attempts=n)
        else:
            if kind == "truncated":
                pending[key] = dataclasses.replace(request, max_tokens=grow(request.max_tokens))
            log.info("%s %s: %s in batch result (attempt %d), resubmitting", request.stage, key[:12], kind, n)
