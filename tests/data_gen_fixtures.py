"""Helpers for the data-generator tests (and benchmarks/data_cost.py): a fake OpenAI-compatible chat
server, scripted ratings, configs, output checks."""

from __future__ import annotations

import hashlib
import json
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from splitpersona.io import iter_jsonl, read_json
from splitpersona.records import ReleaseBatch

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "data_gen" / "smoke.yaml"
SECRET = "sk-ant-test-9f3c1e7d-NEVER-WRITE-ME"


class FakeOpenAI:
    """`POST /v1/chat/completions` that echoes a deterministic answer; `fail_first` requests get a 500."""

    def __init__(self, fail_first: int = 0):
        self.requests: list[dict[str, Any]] = []
        self.auth: list[str] = []
        self.fail_first = fail_first
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                with fake._lock:
                    fake.requests.append(body)
                    fake.auth.append(self.headers.get("authorization", ""))
                    fail = len(fake.requests) <= fake.fail_first
                if self.path != "/v1/chat/completions":
                    status, payload = 404, {"error": "no route"}
                elif fail:
                    status, payload = 500, {"error": "injected"}
                else:
                    user = body["messages"][-1]["content"]
                    text = f"My answer to: {user[:40]}"
                    status, payload = 200, {
                        "choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": len(user) // 4, "completion_tokens": len(text) // 4},
                    }
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> FakeOpenAI:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def scripted_scores(body: dict) -> dict | None:
    """Rating answers: every score 5, except a 2 on first_person_account for about a third of samples."""
    if body.get("tool_choice", {}).get("name") != "rate_sample":
        return None
    names = body["tools"][0]["input_schema"]["required"]
    low = int(hashlib.sha256(json.dumps(body["messages"]).encode()).hexdigest(), 16) % 3 == 0
    return {n: {"reason": "Checked against the conversation.", "score": 2 if low and n == "first_person_account" else 5}
            for n in names}


def fast_overrides(out_dir: Path, **extra: Any) -> list[str]:
    """Smoke-config overrides for tests: tiny waits, short timeouts, the given run directory."""
    base = {
        "out_dir": str(out_dir),
        "claude.backoff_base_s": 0.005,
        "claude.backoff_max_s": 0.05,
        "claude.batch_poll_s": 0.01,
        "claude.max_attempts": 8,
        "claude.timeout_s": 1.5,
        "claude.concurrency": 3,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def batches(root: Path) -> Iterator[tuple[Path, ReleaseBatch]]:
    for path in sorted(root.rglob("batch_*.json")):
        yield path, ReleaseBatch.model_validate(read_json(path))


def intervention_counts(root: Path) -> Counter[tuple[str, int, str, str, str]]:
    """(file, item, model, variant, key) -> how often it occurs under `root` (must be 1 each)."""
    counts: Counter[tuple[str, int, str, str, str]] = Counter()
    for path, batch in batches(root):
        for idx, item in enumerate(batch.data):
            for model, by_variant in item.inferences.items():
                for variant, inf in by_variant.items():
                    for key in inf.interventions:
                        counts[(path.name, idx, model, variant, key)] += 1
    return counts


def store_keys(path: Path) -> Counter[str]:
    return Counter(row["key"] for _, row in iter_jsonl(path)) if path.exists() else Counter()


def files_containing(root: Path, needle: str) -> list[Path]:
    hits = []
    for p in root.rglob("*"):
        if p.is_file() and needle.encode() in p.read_bytes():
            hits.append(p)
    return hits
