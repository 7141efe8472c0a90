"""Claude through the official `anthropic` SDK: forced-tool calls, sync or Message Batches.

Retries are ours, not the SDK's (`max_retries=0`): one loop treats HTTP faults (429 with
retry-after, 529, 5xx, dropped connections, timeouts) and answer faults (no tool call, invalid
tool input, cut off at max_tokens) alike, with exponential backoff and jitter up to
`max_attempts` (an answer cut off at max_tokens is retried with 1.5x the room), and reports every
call to the meter, so the summary can count each kind. The SDK
reads ANTHROPIC_API_KEY and ANTHROPIC_BASE_URL itself; the key is never passed through our code.

Batch mode writes each submitted batch's id and request keys to `batches.jsonl` before polling,
so a restarted run collects a pending batch by id instead of paying for it twice. (A kill in the
instant between the create call returning and that line reaching disk orphans one batch: its
requests are resubmitted.)
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from data_gen.backend import RETRYABLE, Attempt, GenerationAborted, Meter, Outcome, Request, tool_schema, validate_answer
from data_gen.config import ClaudeConfig
from data_gen.store import now_iso
from splitpersona.io import append_jsonl, iter_jsonl

log = logging.getLogger("data_gen.claude")

MAX_OUTPUT_TOKENS = 64_000


class BatchPending(RuntimeError):
    """A batch did not end within `batch_wait_s`; its id is on disk for the next run."""

    def __init__(self, batch_id: str):
        self.batch_id = batch_id
        super().__init__(f"Message Batch {batch_id} is still processing; rerun the same command to collect it")


class BatchLost(RuntimeError):
    """The API no longer knows a batch id found on disk (deleted, or another workspace)."""


class _Fault(Exception):
    def __init__(self, kind: str, detail: str, retry_after: float | None = None):
        self.kind, self.detail, self.retry_after = kind, detail, retry_after
        super().__init__(f"{kind}: {detail}")


def _retry_after(headers: Any) -> float | None:
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        raw = headers.get(name)
        if raw is None:
            continue
        try:
            return max(0.0, float(raw) * scale)
        except ValueError:
            continue
    return None


def classify_exception(exc: BaseException) -> _Fault:
    """Map an SDK exception to a fault kind; `auth` is fatal, `bad_request` is final for the request."""
    import anthropic

    if isinstance(exc, anthropic.APITimeoutError):
        return _Fault("timeout", "request timed out")
    if isinstance(exc, anthropic.APIConnectionError):
        return _Fault("connection", type(exc.__cause__ or exc).__name__)
    if isinstance(exc, anthropic.APIStatusError):
        status = exc.status_code
        detail = f"HTTP {status}"
        if status == 429:
            return _Fault("rate_limit", detail, _retry_after(exc.response.headers))
        if status == 529:
            return _Fault("overloaded", detail, _retry_after(exc.response.headers))
        if status in (408,):
            return _Fault("timeout", detail)
        if status >= 500 or status == 409:
            return _Fault("server_error", detail, _retry_after(exc.response.headers))
        if status in (401, 403):
            return _Fault("auth", f"{detail}: the API refused the credentials (check ANTHROPIC_API_KEY)")
        return _Fault("bad_request", f"{detail}: {getattr(exc, 'message', '')[:300]}")
    raise exc


def _batch_error_kind(error_type: str) -> str:
    return {
        "overloaded_error": "overloaded",
        "api_error": "server_error",
        "rate_limit_error": "rate_limit",
        "timeout_error": "timeout",
        "authentication_error": "auth",
        "permission_error": "auth",
    }.get(error_type, "bad_request")


def _usage(message: Any) -> dict[str, int]:
    u = getattr(message, "usage", None)
    if u is None:
        return {}
    return {
        "input_tokens": int(u.input_tokens or 0),
        "output_tokens": int(u.output_tokens or 0),
        "cache_write_tokens": int(getattr(u, "cache_creation_input_tokens", 0) or 0),
        "cache_read_tokens": int(getattr(u, "cache_read_input_tokens", 0) or 0),
    }


def grow(max_tokens: int) -> int:
    """The retry of an answer cut off at max_tokens gets more room (the request's key stays the same)."""
    return min(MAX_OUTPUT_TOKENS, int(max_tokens * 1.5))


def read_message(request: Request, message: Any, max_tokens: int) -> tuple[Any, str, str]:
    """(value, "ok", "") or (None, fault kind, detail) for one Messages answer."""
    if message.stop_reason == "max_tokens":
        return None, "truncated", f"cut off at max_tokens={max_tokens}"
    if message.stop_reason == "refusal":
        return None, "refused", "the model refused"
    calls = [b for b in message.content if getattr(b, "type", None) == "tool_use" and b.name == request.tool_name]
    if not calls:
        kinds = ",".join(getattr(b, "type", "?") for b in message.content) or "nothing"
        return None, "malformed", f"no {request.tool_name} tool call (got {kinds})"
    value, reason = validate_answer(request, calls[0].input)
    if value is None:
        return None, "malformed", reason
    return value, "ok", ""


class ClaudeBackend:
    """The Backend for Claude. `sleep` and `rng` are injectable so tests need not wait."""

    def __init__(
        self,
        cfg: ClaudeConfig,
        model: str,
        state_dir: str | Path,
        *,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ):
        import anthropic

        self.cfg = cfg
        self.model = model
        self.state_path = Path(state_dir) / "batches.jsonl"
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._rng_lock = threading.Lock()
        try:
            self.client = anthropic.Anthropic(base_url=cfg.base_url, max_retries=0, timeout=cfg.timeout_s)
        except anthropic.CredentialsError as e:
            raise GenerationAborted(f"no usable Anthropic credentials ({e}); set ANTHROPIC_API_KEY") from None
        if self.client.api_key is None and self.client.auth_token is None and self.client.credentials is None:
            raise GenerationAborted("no Anthropic credentials: set ANTHROPIC_API_KEY")

    # -- request building --------------------------------------------------------------------
    def params(self, request: Request) -> dict[str, Any]:
        def blocks(bs):
            out = []
            for b in bs:
                block: dict[str, Any] = {"type": "text", "text": b.text}
                if b.cache and self.cfg.cache_prompts:
                    block["cache_control"] = {"type": "ephemeral"}
                out.append(block)
            return out

        params: dict[str, Any] = {
            "model": self.model,
            "max_tokens": request.max_tokens,
            "system": blocks(request.system),
            "messages": [{"role": "user", "content": blocks(request.user)}],
            "tools": [
                {
                    "name": request.tool_name,
                    "description": request.tool_description,
                    "input_schema": tool_schema(request.schema),
                }
            ],
            "tool_choice": {"type": "tool", "name": request.tool_name},
        }
        if request.temperature is not None:
            params["temperature"] = request.temperature
        return params

    def backoff(self, attempt: int, retry_after: float | None) -> float:
        with self._rng_lock:
            jitter = 0.5 + self._rng.random() / 2
        delay = min(self.cfg.backoff_max_s, self.cfg.backoff_base_s * 2 ** (attempt - 1)) * jitter
        return max(delay, retry_after or 0.0)

    # -- Backend -----------------------------------------------------------------------------
    def run(self, requests: Sequence[Request], meter: Meter) -> Iterator[Outcome]:
        if self.cfg.mode == "batch":
            yield from self._run_batches(requests, meter)
        else:
            yield from self._run_sync(requests, meter)

    # -- sync --------------------------------------------------------------------------------
    def _run_sync(self, requests: Sequence[Request], meter: Meter) -> Iterator[Outcome]:
        queue = list(requests)
        queue.reverse()
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
        last = ""
        for attempt in range(1, self.cfg.max_attempts + 1):
            if attempt > 1 and not meter.allow():
                return Outcome(request, key, "deferred", failure=f"budget reached after {last}", attempts=attempt - 1)
            try:
                message = self.client.messages.create(**params)
            except Exception as exc:  # noqa: BLE001 - classified below; unknown types re-raise
                fault = classify_exception(exc)
                meter.record(Attempt(request.stage, key, self.model, attempt, fault.kind, "sync", detail=fault.detail))
                if fault.kind == "auth":
                    raise GenerationAborted(fault.detail) from None
                last = f"{fault.kind} ({fault.detail})"
                if fault.kind not in RETRYABLE:
                    return Outcome(request, key, "failed", failure=last, attempts=attempt)
                self._wait(request, key, attempt, fault.kind, fault.retry_after)
                continue
            value, kind, detail = read_message(request, message, params["max_tokens"])
            meter.record(Attempt(request.stage, key, self.model, attempt, kind, "sync", **_usage(message), detail=detail))
            if kind == "ok":
                return Outcome(request, key, "ok", value=value, attempts=attempt)
            last = f"{kind} ({detail})"
            if kind not in RETRYABLE:
                return Outcome(request, key, "failed", failure=last, attempts=attempt)
            if kind == "truncated":
                params["max_tokens"] = grow(params["max_tokens"])
            self._wait(request, key, attempt, kind, None)
        return Outcome(request, key, "failed", failure=f"{last}; gave up after {self.cfg.max_attempts} attempts",
                       attempts=self.cfg.max_attempts)

    def _wait(self, request: Request, key: str, attempt: int, kind: str, retry_after: float | None) -> None:
        if attempt >= self.cfg.max_attempts:
            return
        delay = self.backoff(attempt, retry_after)
        log.info("%s %s: %s on attempt %d/%d, retrying in %.2fs", request.stage, key[:12], kind, attempt,
                 self.cfg.max_attempts, delay)
        self._sleep(delay)

    # -- batch -------------------------------------------------------------------------------
    def _api(self, what: str, stage: str, fn: Callable[[], Any]) -> Any:
        """A batch-endpoint call, retried on HTTP faults like a message call."""
        import anthropic

        for attempt in range(1, self.cfg.max_attempts + 1):
            try:
                return fn()
            except anthropic.NotFoundError as exc:
                raise BatchLost(f"{what}: {exc.message}") from None
            except Exception as exc:  # noqa: BLE001
                fault = classify_exception(exc)
                self._meter.record(Attempt(stage, what, self.model, attempt, fault.kind, "batch", detail=fault.detail))
                if fault.kind == "auth":
                    raise GenerationAborted(fault.detail) from None
                if fault.kind not in RETRYABLE or attempt == self.cfg.max_attempts:
                    raise RuntimeError(f"Message Batches call {what} failed: {fault.kind} ({fault.detail})") from None
                self._sleep(self.backoff(attempt, fault.retry_after))
        raise AssertionError("unreachable")

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
        seen: set[str] = set()
        for line in results:
            key = line.custom_id
            seen.add(key)
            if key not in pending:
                continue
            yield from self._batch_result(pending, tries, key, line.result)
        for key in keys:
            if key not in seen and key in pending:
                yield from self._batch_result(pending, tries, key, None)
        append_jsonl(self.state_path, {"event": "collected", "batch_id": batch_id, "at": now_iso()})

    def _batch_result(self, pending: dict[str, Request], tries: Counter[str], key: str, result: Any) -> Iterator[Outcome]:
        request = pending[key]
        tries[key] += 1
        n = tries[key]
        usage: dict[str, int] = {}
        if result is None or result.type in ("canceled", "expired"):
            value, kind, detail = None, "expired", "no result (canceled or expired)"
        elif result.type == "errored":
            kind = _batch_error_kind(result.error.error.type)
            value, detail = None, f"errored: {result.error.error.type}"
        else:
            value, kind, detail = read_message(request, result.message, request.max_tokens)
            usage = _usage(result.message)
        self._meter.record(Attempt(request.stage, key, self.model, n, kind, "batch", **usage, detail=detail))
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
