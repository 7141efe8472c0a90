"""The one model-client layer, for the generator, the external judge and the stage-2 endpoint.

One retry policy, ours rather than the SDK's (`max_retries=0`), since the SDK retries only HTTP
faults and hides the failed attempts: HTTP faults (429 with retry-after, 529, 5xx, dropped
connections, timeouts) and answer faults (no tool call, invalid tool input, cut off at
max_tokens) alike, with backoff and jitter, every attempt handed to the caller (for a ledger).
A structured answer is one forced tool call whose schema is the pydantic model's own.
"""

from __future__ import annotations

import copy
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from splitpersona.io import describe_validation_error

T = TypeVar("T")
log = logging.getLogger("splitpersona.clients")

# Fault kinds, as a ledger counts them; these are worth another attempt.
RETRYABLE = ("rate_limit", "overloaded", "server_error", "connection", "timeout", "malformed", "truncated", "expired")


class Fault(Exception):
    """One failed attempt: its kind (a RETRYABLE kind, "bad_request", "auth", "refused") and why."""

    def __init__(self, kind: str, detail: str, retry_after: float | None = None):
        self.kind, self.detail, self.retry_after = kind, detail, retry_after
        super().__init__(f"{kind} ({detail})")


def _retry_after(headers: Any) -> float | None:
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        try:
            return max(0.0, float(headers[name]) * scale)
        except (KeyError, TypeError, ValueError):
            continue
    return None


def status_fault(status: int, headers: Any = None, message: str = "") -> Fault:
    """The fault an HTTP error status means, with the server's retry-after where it sent one."""
    detail = f"HTTP {status}"
    if status == 429:
        return Fault("rate_limit", detail, _retry_after(headers))
    if status == 529:
        return Fault("overloaded", detail, _retry_after(headers))
    if status == 408:
        return Fault("timeout", detail)
    if status >= 500 or status == 409:
        return Fault("server_error", detail, _retry_after(headers))
    if status in (401, 403):
        return Fault("auth", f"{detail}: the API refused the credentials")
    return Fault("bad_request", f"{detail}: {message[:300]}")


def call_fault(exc: BaseException) -> Fault:
    """The fault an `anthropic` or `httpx` exception means; anything else is re-raised."""
    import anthropic
    import httpx

    if isinstance(exc, (anthropic.APITimeoutError, httpx.TimeoutException)):
        return Fault("timeout", "request timed out")
    if isinstance(exc, (anthropic.APIConnectionError, httpx.TransportError)):
        return Fault("connection", type(exc.__cause__ or exc).__name__)
    if isinstance(exc, anthropic.APIStatusError):
        return status_fault(exc.status_code, exc.response.headers, getattr(exc, "message", ""))
    raise exc


@dataclass
class Tried(Generic[T]):
    """What a retried call came to: a value, or the faults of its attempts (`stopped`: the caller said stop)."""

    value: T | None
    faults: list[Fault]
    attempts: int
    stopped: bool = False

    @property
    def fault(self) -> Fault | None:
        """Why it failed (None if it did not): a final fault, else the latest of the kind that recurred most."""
        if len(self.faults) < self.attempts or not self.faults:
            return None
        if self.faults[-1].kind not in RETRYABLE:
            return self.faults[-1]
        counts = Counter(f.kind for f in self.faults)
        return max(reversed(self.faults), key=lambda f: counts[f.kind])

    @property
    def failure(self) -> str:
        gave_up = f"; gave up after {self.attempts} attempts" if self.fault.kind in RETRYABLE else ""
        return f"{self.fault}{gave_up}"


@dataclass
class RetryPolicy:
    """Up to `max_attempts` tries; before try n+1 a wait of `backoff_base_s * 2**(n-1)`, capped at
    `backoff_max_s`, times a jitter in [0.5, 1), or the server's longer retry-after."""

    max_attempts: int = 5
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    sleep: Callable[[float], None] = time.sleep
    rng: random.Random = field(default_factory=random.Random)
    log: logging.Logger = log
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        with self._lock:
            jitter = 0.5 + self.rng.random() / 2
        return max(min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1)) * jitter, retry_after or 0.0)

    def run(self, attempt: Callable[[int], T], *, label: str = "", keep_going: Callable[[], bool] | None = None) -> Tried[T]:
        """Call `attempt(n)` until it returns or raises a Fault that is final or the last allowed.

        `keep_going` is asked before every retry (a budget); other exceptions propagate.
        """
        faults: list[Fault] = []
        for n in range(1, self.max_attempts + 1):
            if n > 1 and keep_going is not None and not keep_going():
                return Tried(None, faults, n - 1, stopped=True)
            try:
                return Tried(attempt(n), faults, n)
            except Fault as fault:
                faults.append(fault)
                if fault.kind not in RETRYABLE:
                    return Tried(None, faults, n)
            if n < self.max_attempts:
                wait = self.delay(n, faults[-1].retry_after)
                self.log.info("%s: %s on attempt %d/%d, retrying in %.2fs", label, faults[-1].kind, n, self.max_attempts, wait)
                self.sleep(wait)
        return Tried(None, faults, self.max_attempts)


def anthropic_client(*, base_url: str | None, timeout_s: float, api_key: str | None = None) -> Any:
    """An `anthropic.Anthropic` with the SDK's retries off (ours apply), or a ValueError if it has no
    credentials. Without `api_key` the SDK finds them (ANTHROPIC_API_KEY, ANTHROPIC_AUTH_TOKEN, a profile)."""
    import anthropic

    try:
        client = anthropic.Anthropic(api_key=api_key, base_url=base_url, max_retries=0, timeout=timeout_s)
    except anthropic.CredentialsError as e:
        raise ValueError(f"no usable Anthropic credentials ({e}); set ANTHROPIC_API_KEY") from None
    if client.api_key is None and client.auth_token is None and client.credentials is None:
        raise ValueError("no Anthropic credentials: set ANTHROPIC_API_KEY")
    return client


def tool_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with `$ref`s inlined: one self-contained input_schema per tool."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                target = copy.deepcopy(defs[node["$ref"].split("/")[-1]])
                rest = {k: v for k, v in node.items() if k != "$ref"}
                return inline({**target, **rest})
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    return inline(schema)


def tool(name: str, description: str, model: type[BaseModel]) -> dict[str, Any]:
    """A Messages API tool whose input is `model`."""
    return {"name": name, "description": description, "input_schema": tool_schema(model)}


def parse_answer(model: type[BaseModel], data: Any) -> BaseModel:
    """The single place a structured answer is accepted; a `malformed` Fault otherwise."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise Fault("malformed", describe_validation_error(e)[:500]) from None


def tool_answer(message: Any, name: str, model: type[BaseModel], max_tokens: int) -> BaseModel:
    """The validated input of the forced tool call in one Messages answer, or the Fault it is."""
    if message.stop_reason == "max_tokens":
        raise Fault("truncated", f"cut off at max_tokens={max_tokens}")
    if message.stop_reason == "refusal":
        raise Fault("refused", "the model refused")
    call = next((b for b in message.content if getattr(b, "type", None) == "tool_use" and b.name == name), None)
    if call is None:
        raise Fault("malformed", f"no {name} tool call")
    return parse_answer(model, call.input)


USAGE = {"input_tokens": "input_tokens", "output_tokens": "output_tokens",
         "cache_write_tokens": "cache_creation_input_tokens", "cache_read_tokens": "cache_read_input_tokens"}


def usage(message: Any) -> dict[str, int]:
    """A Messages answer's token counts (ours: the SDK's), prompt-cache writes and reads included."""
    u = getattr(message, "usage", None)
    return {} if u is None else {ours: int(getattr(u, sdk, 0) or 0) for ours, sdk in USAGE.items()}
