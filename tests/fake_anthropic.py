"""A local fake of the Anthropic Messages API, for driving the real `anthropic` SDK over loopback.

    with FakeAnthropic(seed=0, fault_rate=0.2) as fake:
        client = anthropic.Anthropic(base_url=fake.base_url, api_key="test-key", max_retries=0)
        ...
        fake.fault_counts   # Counter of injected faults by kind
        fake.calls          # list of RecordedCall (path, body, auth kind) in arrival order

What it serves:
- `POST /v1/messages`: answers a forced tool (`tool_choice: {"type": "tool", "name": X}`) with an
  input generated from that tool's `input_schema`, deterministic given `seed` and the request
  body. Without a forced tool it answers with a short text block. `responder(body) -> dict | str |
  None` overrides the answer: a dict is the tool input, a str a text answer, None falls back to
  the schema-generated input (so tests can script PASS/FAIL verdicts for chosen requests).
- `POST /v1/messages/batches`, `GET /v1/messages/batches/{id}`, `GET .../{id}/results`,
  `POST .../{id}/cancel`: a batch ends after `batch_polls_to_end` retrieves (or at once when
  `end_batches()` is called); results are JSONL in the SDK's format.
- Auth: `x-api-key` or `Authorization: Bearer`; neither gives 401. Keys seen are kept in
  `fake.auth_keys` so a test can check the client sent the one it was given.
- Usage: input/output token counts (about 4 characters a token) and prompt caching as the API
  reports it: the prefix (tools, system, messages) up to a `cache_control` mark, if it reaches
  `min_cache_tokens`, is written on first sight (`cache_creation_input_tokens`) and read afterwards
  (`cache_read_input_tokens`); `input_tokens` counts only the rest. Batch requests are answered in
  order when the batch is created, so within a batch the first of a shared prefix writes it and the
  others read it: the best case of the API, which works through a batch concurrently and hits the
  cache only on a best-effort basis. The cache never expires. Marks change what a request costs,
  never its answer: answers are drawn from the request without them.

Faults (`fault_rate` per request, kinds from `faults`), decided per (request body, n-th time seen)
so a retried request can succeed and a run is reproducible whatever the thread interleaving
(`fault_sequence` instead scripts the faults of the next `/v1/messages` calls in arrival order,
"" for none; `required_key` makes any other key a 401):
`rate_limit` (429 + retry-after), `overloaded` (529), `server_error` (500), `drop` (connection
closed without a response), `timeout` (answer withheld for `stall_s`), `malformed` (tool input
violating the schema, or no tool call at all), `truncated` (`stop_reason: max_tokens` and a cut
input). Batch results get the per-result kinds (`overloaded`/`server_error` as errored results,
`malformed`, `truncated`); batch endpoints get the HTTP kinds except `timeout`, at
`batch_http_fault_rate` (default: `fault_rate`).

Run `python tests/fake_anthropic.py [--port N] [--fault-rate X]` to serve it by hand.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import hashlib
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import accumulate
from typing import Any

ALL_FAULTS = ("rate_limit", "overloaded", "server_error", "drop", "timeout", "malformed", "truncated")
HTTP_FAULTS = ("rate_limit", "overloaded", "server_error", "drop")
RESULT_FAULTS = ("overloaded", "server_error", "malformed", "truncated")

Responder = Callable[[dict], "dict | str | None"]

_WORDS = (
    "the user asked for advice about a plan and I answered with care while noting the risks budget "
    "deadline data evidence honest review clear careful response task team client report study "
    "result question answer concern option choice reason detail context goal"
).split()


@dataclass
class RecordedCall:
    method: str
    path: str
    body: Any
    auth: str  # "x-api-key" | "bearer" | "none"
    fault: str | None = None


@dataclass
class _Batch:
    id: str
    created_at: str
    expires_at: str
    results: list[dict]
    polls: int = 0
    ended: bool = False
    canceled: bool = False
    counts: Counter = field(default_factory=Counter)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _iso(t: dt.datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _resolve(schema: dict, root: dict) -> dict:
    while "$ref" in schema:
        name = schema["$ref"].split("/")[-1]
        schema = {**root.get("$defs", {}).get(name, {}), **{k: v for k, v in schema.items() if k != "$ref"}}
    return schema


def instance_from_schema(schema: dict, rng: random.Random, root: dict | None = None) -> Any:
    """A value valid under `schema` (the subset of JSON Schema pydantic emits), chosen by `rng`."""
    root = schema if root is None else root
    schema = _resolve(schema, root)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return rng.choice(schema["enum"])
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return instance_from_schema(rng.choice(schema[key]), rng, root)
    if "allOf" in schema:
        return instance_from_schema(schema["allOf"][0], rng, root)
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        props = schema.get("properties", {})
        required = set(schema.get("required", props))
        return {
            name: instance_from_schema(sub, rng, root)
            for name, sub in props.items()
            if name in required or rng.random() < 0.5
        }
    if kind == "array":
        lo = schema.get("minItems", 1)
        hi = schema.get("maxItems", lo + 2)
        items = schema.get("items", {"type": "string"})
        return [instance_from_schema(items, rng, root) for _ in range(rng.randint(lo, max(lo, hi)))]
    if kind == "string":
        lo, hi = schema.get("minLength", 1), schema.get("maxLength", 400)
        text = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 14)))
        text = text[0].upper() + text[1:] + "."
        while len(text) < lo:
            text += " " + rng.choice(_WORDS)
        return text[:hi]
    if kind == "integer":
        lo = schema.get("minimum", schema.get("exclusiveMinimum", -1) + 1 if "exclusiveMinimum" in schema else 0)
        hi = schema.get("maximum", lo + 10)
        return rng.randint(lo, hi)
    if kind == "number":
        lo = schema.get("minimum", 0.0)
        return round(rng.uniform(lo, schema.get("maximum", lo + 1.0)), 3)
    if kind == "boolean":
        return rng.random() < 0.5
    return None


def _corrupt(value: dict, schema: dict, rng: random.Random) -> Any:
    """A tool input that must fail validation: a required key removed, or a wrong type."""
    required = list(_resolve(schema, schema).get("required", []))
    bad = copy.deepcopy(value)
    if required and rng.random() < 0.5:
        bad.pop(rng.choice(required), None)
    elif required:
        bad[rng.choice(required)] = {"unexpected": [1, 2, 3]}
    else:
        bad = ["not", "an", "object"]
    return bad


def _unmarked(obj: Any) -> Any:
    """`obj` without its `cache_control` marks."""
    if isinstance(obj, dict):
        return {k: _unmarked(v) for k, v in obj.items() if k != "cache_control"}
    if isinstance(obj, list):
        return [_unmarked(v) for v in obj]
    return obj


def _text_of(content: Any) -> list[tuple[str, bool]]:
    if isinstance(content, str):
        return [(content, False)]
    out = []
    for block in content or []:
        text = block.get("text") or json.dumps(block.get("content", block.get("input", "")))
        out.append((text, bool(block.get("cache_control"))))
    return out


class FakeAnthropic:
    """The fake server; a context manager that starts it on 127.0.0.1 at a free port."""

    def __init__(
        self,
        *,
        seed: int = 0,
        responder: Responder | None = None,
        fault_rate: float = 0.0,
        faults: tuple[str, ...] = ALL_FAULTS,
        retry_after_s: float = 0.01,
        stall_s: float = 2.0,
        latency_s: float = 0.0,
        batch_polls_to_end: int = 1,
        fault_sequence: list[str] | None = None,
        required_key: str | None = None,
        batch_http_fault_rate: float | None = None,
        min_cache_tokens: int = 1024,
        port: int = 0,
    ):
        unknown = set(faults) - set(ALL_FAULTS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {ALL_FAULTS}")
        self.seed = seed
        self.responder = responder
        self.fault_rate = fault_rate
        self.faults = tuple(faults)
        self.retry_after_s = retry_after_s
        self.stall_s = stall_s
        self.latency_s = latency_s
        self.batch_polls_to_end = batch_polls_to_end
        self.fault_sequence = list(fault_sequence or [])
        self.required_key = required_key
        self.min_cache_tokens = min_cache_tokens
        self.batch_http_fault_rate = fault_rate if batch_http_fault_rate is None else batch_http_fault_rate
        self.calls: list[RecordedCall] = []
        self.fault_counts: Counter[str] = Counter()
        self.auth_keys: set[str] = set()
        self.batches: dict[str, _Batch] = {}
        self._seen: Counter[str] = Counter()
        self._cache: set[str] = set()
        self._lock = threading.Lock()
        self._ids = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler_class())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeAnthropic:
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-anthropic", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeAnthropic:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- helpers for tests -------------------------------------------------------------------
    def end_batches(self) -> None:
        """Let every open batch end at its next retrieve."""
        with self._lock:
            for b in self.batches.values():
                b.ended = True

    def message_calls(self) -> list[RecordedCall]:
        return [c for c in self.calls if c.path == "/v1/messages"]

    # -- core --------------------------------------------------------------------------------
    def _next_id(self, prefix: str) -> str:
        with self._lock:
            self._ids += 1
            return f"{prefix}_{self.seed:04d}{self._ids:08d}"

    def _pick_fault(self, key: str, kinds: tuple[str, ...]) -> str | None:
        with self._lock:
            if key.startswith("message:") and self.fault_sequence:
                kind = self.fault_sequence.pop(0)
                if kind:
                    self.fault_counts[kind] += 1
                return kind or None
            n = self._seen[key]
            self._seen[key] += 1
        rng = random.Random(f"{self.seed}:{key}:{n}")
        kinds = tuple(k for k in self.faults if k in kinds)
        rate = self.batch_http_fault_rate if key.startswith(("batch-create:", "GET:", "POST:")) else self.fault_rate
        if not kinds or rng.random() >= rate:
            return None
        kind = rng.choice(kinds)
        with self._lock:
            self.fault_counts[kind] += 1
        return kind

    def _usage(self, body: dict, output: Any) -> dict:
        """Token counts with the API's caching rule: the prefix (tools, system, messages, in that order)
        up to each `cache_control` mark is a cache entry if it holds `min_cache_tokens`; the longest
        entry seen before is read, the rest up to the last entry is written."""
        pieces = [(json.dumps(_unmarked(t)), bool(t.get("cache_control"))) for t in body.get("tools", [])]
        pieces += _text_of(body.get("system", []))
        for msg in body.get("messages", []):
            pieces += _text_of(msg.get("content"))
        tokens = [n // 4 for n in accumulate(len(t) for t, _ in pieces)]
        total = tokens[-1] if tokens else 0
        prefixes = [(_digest([body.get("model"), [t for t, _ in pieces[: i + 1]]]), tokens[i])
                    for i, (_, marked) in enumerate(pieces) if marked and tokens[i] >= self.min_cache_tokens]
        read = write = 0
        with self._lock:
            hits = [n for digest, n in prefixes if digest in self._cache]
            read = max(hits, default=0)
            if prefixes:
                write = prefixes[-1][1] - read
            self._cache.update(digest for digest, _ in prefixes)
        return {
            "input_tokens": max(1, total - read - write),
            "output_tokens": max(1, len(json.dumps(output)) // 4),
            "cache_creation_input_tokens": write,
            "cache_read_input_tokens": read,
        }

    def answer(self, body: dict, fault: str | None) -> dict:
        """The Message for `body`, shaped by a content-level fault (`malformed`, `truncated`) if any."""
        plain = _unmarked(body)
        rng = random.Random(f"{self.seed}:{_digest(plain)}")
        choice = plain.get("tool_choice") or {}
        tools = {t["name"]: t for t in plain.get("tools", [])}
        tool = tools.get(choice.get("name")) if choice.get("type") == "tool" else None
        scripted = self.responder(plain) if self.responder else None
        content: list[dict]
        stop = "tool_use"
        if isinstance(scripted, str) or (tool is None and scripted is None):
            text = scripted if isinstance(scripted, str) else "I have read the request."
            content, stop = [{"type": "text", "text": text}], "end_turn"
        else:
            if tool is None:
                tool = next(iter(tools.values()), {"name": "answer", "input_schema": {"type": "object"}})
            schema = tool.get("input_schema", {"type": "object"})
            value = scripted if scripted is not None else instance_from_schema(schema, rng)
            if fault == "malformed":
                if rng.random() < 0.25:
                    content, stop = [{"type": "text", "text": "Here is my answer in prose instead."}], "end_turn"
                else:
                    value = _corrupt(value, schema, rng)
            if fault == "truncated":
                keys = list(value)[: max(0, len(value) // 2)] if isinstance(value, dict) else []
                value, stop = {k: value[k] for k in keys}, "max_tokens"
            if not (fault == "malformed" and stop == "end_turn"):
                content = [{"type": "tool_use", "id": self._next_id("toolu"), "name": tool["name"], "input": value}]
        return {
            "id": self._next_id("msg"),
            "type": "message",
            "role": "assistant",
            "model": body.get("model", "unknown"),
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": self._usage(body, content),
        }

    def _create_batch(self, body: dict) -> dict:
        created = _now()
        results = []
        counts: Counter[str] = Counter()
        for req in body.get("requests", []):
            params = req["params"]
            fault = self._pick_fault("batch-result:" + _digest(params), RESULT_FAULTS)
            if fault in ("overloaded", "server_error"):
                err = "overloaded_error" if fault == "overloaded" else "api_error"
                result = {"type": "errored", "error": {"type": "error", "error": {"type": err, "message": "injected"}}}
                counts["errored"] += 1
            else:
                result = {"type": "succeeded", "message": self.answer(params, fault)}
                counts["succeeded"] += 1
            results.append({"custom_id": req["custom_id"], "result": result})
        batch = _Batch(
            id=self._next_id("msgbatch"),
            created_at=_iso(created),
            expires_at=_iso(created + dt.timedelta(hours=24)),
            results=results,
            counts=counts,
        )
        with self._lock:
            self.batches[batch.id] = batch
        return self._batch_json(batch)

    def _batch_json(self, b: _Batch) -> dict:
        n = len(b.results)
        ended = b.ended or b.canceled
        counts = {"processing": 0 if ended else n, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        if ended:
            counts.update({k: v for k, v in b.counts.items()})
        return {
            "id": b.id,
            "type": "message_batch",
            "processing_status": "ended" if ended else "in_progress",
            "request_counts": counts,
            "created_at": b.created_at,
            "expires_at": b.expires_at,
            "ended_at": _iso(_now()) if ended else None,
            "cancel_initiated_at": None,
            "archived_at": None,
            "results_url": f"{self.base_url}/v1/messages/batches/{b.id}/results" if ended else None,
        }

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def _auth(self) -> tuple[str, str]:
                """(header kind, key) of this request; kind "none" when neither header carries a key."""
                key = self.headers.get("x-api-key")
                if key:
                    kind = "x-api-key"
                else:
                    bearer = self.headers.get("authorization", "")
                    key = bearer[7:].strip() if bearer.lower().startswith("bearer ") else ""
                    kind = "bearer" if key else "none"
                if key:
                    with fake._lock:
                        fake.auth_keys.add(key)
                return kind, key

            def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None, raw: bytes | None = None):
                data = raw if raw is not None else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json" if raw is None else "application/binary")
                    self.send_header("content-length", str(len(data)))
                    self.send_header("request-id", fake._next_id("req"))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _error(self, status: int, kind: str, message: str, headers: dict[str, str] | None = None):
                self._send(status, {"type": "error", "error": {"type": kind, "message": message}}, headers)

            def _http_fault(self, fault: str | None) -> bool:
                """Serve an HTTP-level fault; True when the request is answered by it."""
                if fault == "rate_limit":
                    self._error(429, "rate_limit_error", "injected rate limit", {"retry-after": str(fake.retry_after_s)})
                elif fault == "overloaded":
                    self._error(529, "overloaded_error", "injected overload")
                elif fault == "server_error":
                    self._error(500, "api_error", "injected server error")
                elif fault == "drop":
                    self.close_connection = True
                    try:
                        self.connection.shutdown(2)
                    except OSError:
                        pass
                else:
                    return False
                return True

            def _handle(self, method: str) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except json.JSONDecodeError:
                    self._error(400, "invalid_request_error", "body is not JSON")
                    return
                path = self.path.split("?")[0]
                auth, key = self._auth()
                call = RecordedCall(method, path, body, auth)
                with fake._lock:
                    fake.calls.append(call)
                if auth == "none":
                    self._error(401, "authentication_error", "missing x-api-key or Authorization header")
                    return
                if fake.required_key is not None and key != fake.required_key:
                    self._error(401, "authentication_error", "invalid x-api-key")
                    return
                if fake.latency_s:
                    time.sleep(fake.latency_s)
                if method == "POST" and path == "/v1/messages":
                    self._messages(body, call)
                elif method == "POST" and path == "/v1/messages/batches":
                    call.fault = fake._pick_fault("batch-create:" + _digest(body), HTTP_FAULTS)
                    if not self._http_fault(call.fault):
                        self._send(200, fake._create_batch(body))
                elif path.startswith("/v1/messages/batches/"):
                    self._batch_get(method, path, call)
                else:
                    self._error(404, "not_found_error", f"no route {method} {path}")

            def _messages(self, body: dict, call: RecordedCall) -> None:
                if not isinstance(body, dict) or "model" not in body or "messages" not in body:
                    self._error(400, "invalid_request_error", "model and messages are required")
                    return
                call.fault = fake._pick_fault("message:" + _digest(body), ALL_FAULTS)
                if self._http_fault(call.fault):
                    return
                if call.fault == "timeout":
                    time.sleep(fake.stall_s)
                self._send(200, fake.answer(body, call.fault))

            def _batch_get(self, method: str, path: str, call: RecordedCall) -> None:
                parts = path.rstrip("/").split("/")  # ['', 'v1', 'messages', 'batches', id, (results|cancel)?]
                batch = fake.batches.get(parts[4])
                if batch is None:
                    self._error(404, "not_found_error", f"no batch {parts[4]}")
                    return
                call.fault = fake._pick_fault(f"{method}:{path}:{batch.polls}", HTTP_FAULTS)
                if self._http_fault(call.fault):
                    return
                tail = parts[5] if len(parts) > 5 else ""
                if method == "GET" and tail == "":
                    with fake._lock:
                        batch.polls += 1
                        if batch.polls >= fake.batch_polls_to_end:
                            batch.ended = True
                    self._send(200, fake._batch_json(batch))
                elif method == "GET" and tail == "results":
                    if not (batch.ended or batch.canceled):
                        self._error(400, "invalid_request_error", "batch has not ended")
                        return
                    lines = "".join(json.dumps(r) + "\n" for r in batch.results).encode()
                    self._send(200, None, raw=lines)
                elif method == "POST" and tail == "cancel":
                    batch.canceled = True
                    self._send(200, fake._batch_json(batch))
                else:
                    self._error(404, "not_found_error", f"no route {method} {path}")

            def do_POST(self) -> None:
                self._handle("POST")

            def do_GET(self) -> None:
                self._handle("GET")

        return Handler


def main() -> None:
    ap = argparse.ArgumentParser(description="Serve the fake Anthropic Messages API on 127.0.0.1.")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fault-rate", type=float, default=0.0)
    args = ap.parse_args()
    with FakeAnthropic(seed=args.seed, fault_rate=args.fault_rate, port=args.port) as fake:
        print(f"ANTHROPIC_BASE_URL={fake.base_url}", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
