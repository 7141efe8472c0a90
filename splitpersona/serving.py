"""The one server client: token ids in; generated ids, their log-probabilities and the server's cache counts out.

Scale comes from a serving engine (llama-server on one machine; vLLM or SGLang with tensor parallelism
and continuous batching), never from a loop of ours. Two protocols:
- "llamacpp", llama-server's native `/completion`: per-request adapter scales, the slot a request ran
  in, and how many prompt tokens came from the cache and how many were computed;
- "openai", an OpenAI-compatible `/v1/completions` (vLLM, SGLang, llama-server): an adapter is a
  served model name; no aLoRA.
Prompts are always token ids, never text the server re-tokenizes. Requests go through the one retry
policy (`splitpersona.clients.RetryPolicy`); a server that stays down is one line naming its URL.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from splitpersona.clients import Fault, RetryPolicy, status_fault
from splitpersona.generation import Sampling

Api = Literal["llamacpp", "openai"]


class ServerError(RuntimeError):
    """A server that cannot be used: unreachable after the retries, or refusing what it was sent.

    `kind`: the fault that ended the retries (`splitpersona.clients` kinds), None for a refusal of ours."""

    def __init__(self, message: str, kind: str | None = None):
        super().__init__(message)
        self.kind = kind

    @property
    def unreachable(self) -> bool:
        return self.kind in ("connection", "timeout", "server_error")


@dataclass
class Completion:
    tokens: list[int]  # generated ids, up to (not including) an end-of-generation token
    finished: bool  # an end-of-generation token ended it, not the token limit
    prompt_tokens: int
    cached_tokens: int | None = None  # prompt tokens taken from the server's cache (llama-server)
    evaluated_tokens: int | None = None  # prompt tokens the server computed (llama-server)
    logprobs: list[float] = field(default_factory=list)  # each generated id's log-probability before sampling
    slot: int | None = None  # the llama-server slot that holds this request's cache


@dataclass(frozen=True)
class Adapter:
    """An adapter the server holds: its llama-server id (or served model name) and its aLoRA invocation."""

    id: int | str
    path: str
    invocation: tuple[int, ...] = ()


class ServerClient:
    """One server at `url`; `api` None asks the server which protocol it speaks (llama-server answers /props)."""

    def __init__(self, url: str, *, api: Api | None = None, model: str | None = None, timeout_s: float = 600.0,
                 retry: RetryPolicy | None = None):
        import httpx

        self.url = url.rstrip("/")
        self.retry = retry or RetryPolicy(max_attempts=4, backoff_base_s=0.5, backoff_max_s=8.0)
        self.http = httpx.Client(base_url=self.url, timeout=timeout_s)
        self.api: Api = api or self._detect()
        self.model = model or (self._served_models()[0] if self.api == "openai" else None)
        # every request names every adapter the server holds, with its scale: llama-server applies adapters
        # a request leaves out at their global scale, which is 1 even when started "without apply"
        self.loaded: list[Adapter] = self.adapters() if self.api == "llamacpp" else []
        # a cached prefix is reused only where it cannot have been computed under another adapter: no ordinary
        # LoRA held (aLoRAs the server keeps off before their invocation); llama.cpp has restored caches across adapters
        self.reuse_cache = all(a.invocation for a in self.loaded)

    def close(self) -> None:
        self.http.close()

    # -- transport --------------------------------------------------------------------------------

    def _call(self, method: str, path: str, body: dict | None = None) -> Any:
        import httpx

        def attempt(_: int) -> Any:
            try:
                r = self.http.request(method, path, json=body)
            except httpx.TimeoutException:
                raise Fault("timeout", "no answer in time") from None
            except httpx.TransportError as e:
                raise Fault("connection", type(e).__name__) from None
            if r.status_code == 503:  # llama-server: still loading the model
                raise Fault("server_error", "HTTP 503 (loading)")
            if r.status_code >= 400:
                raise status_fault(r.status_code, r.headers, r.text)
            return r.json()

        tried = self.retry.run(attempt, label=f"{self.url}{path}")
        if tried.fault is not None:
            raise ServerError(f"{self.url}{path}: {tried.failure}", tried.fault.kind)
        return tried.value

    def _detect(self) -> Api:
        try:
            props = self._call("GET", "/props")
        except ServerError as e:
            if e.kind == "bad_request":  # an answer, but not llama-server's
                return "openai"
            raise
        return "llamacpp" if isinstance(props, dict) and "default_generation_settings" in props else "openai"

    def _served_models(self) -> list[str]:
        data = self._call("GET", "/v1/models").get("data") or []
        if not data:
            raise ServerError(f"{self.url}/v1/models lists no model")
        return [m["id"] for m in data]

    # -- what the server holds --------------------------------------------------------------------

    def adapters(self) -> list[Adapter]:
        """The adapters the server can apply: llama-server's loaded LoRAs, or an OpenAI server's other models."""
        if self.api == "openai":
            return [Adapter(name, name) for name in self._served_models() if name != self.model]
        return [
            Adapter(a["id"], a.get("path", ""), tuple(a.get("alora_invocation_tokens") or ()))
            for a in self._call("GET", "/lora-adapters")
        ]

    def vocab_size(self) -> int | None:
        """The served model's vocabulary size where the server says it: llama-server lists its one model, an
        OpenAI-compatible server each model by id."""
        models = self._call("GET", "/v1/models").get("data") or []
        mine = models[:1] if self.api == "llamacpp" else [m for m in models if m.get("id") == self.model]
        n = next(((m.get("meta") or {}).get("n_vocab") for m in mine), None)
        return None if n is None else int(n)

    def detokenize(self, ids: Sequence[int]) -> str | None:
        """The server's own text of `ids` (llama-server's and vLLM's /detokenize), None where it has no such call."""
        if self.api == "llamacpp":
            return self._call("POST", "/detokenize", {"tokens": list(ids)})["content"]
        try:
            return self._call("POST", "/detokenize", {"model": self.model, "tokens": list(ids)}).get("prompt")
        except ServerError:
            return None

    # -- completions ------------------------------------------------------------------------------

    def complete(
        self,
        prompt: Sequence[int],
        *,
        max_tokens: int,
        adapter: Adapter | None = None,
        ban: Sequence[int] = (),
        force: int | None = None,
        logprobs: bool = False,
        sampling: Sampling | None = None,
        seed: int | None = None,
        cache: bool | None = None,
        slot: int | None = None,
    ) -> Completion:
        """Continue `prompt` greedily (or with `sampling`); `adapter` on, every other adapter the server holds off.

        `ban`: ids never generated; `force`: the one id generated (its log-probability is then the
        model's own, read before the forcing bias); `cache`: whether the server may reuse a cached prefix
        (None: where `reuse_cache` allows; True is refused where it does not).
        """
        cache = self.reuse_cache if cache is None else cache and self.reuse_cache
        if self.api == "llamacpp":
            return self._native(prompt, max_tokens, adapter, ban, force, logprobs, sampling, seed, cache, slot)
        return self._openai(prompt, max_tokens, adapter, ban, force, logprobs, sampling, seed)

    def _native(self, prompt, max_tokens, adapter, ban, force, logprobs, sampling, seed, cache, slot):
        body: dict[str, Any] = {
            "prompt": list(prompt), "n_predict": max_tokens, "cache_prompt": cache, "return_tokens": True,
            # every loaded adapter named, with its scale: nothing rests on the server's initial state
            "lora": [{"id": a.id, "scale": 1.0 if adapter is not None and a.id == adapter.id else 0.0}
                     for a in self.loaded],
            "logit_bias": [[t, False] for t in ban] + ([[force, 1e6]] if force is not None else []),
            "n_probs": 1 if (logprobs or force is not None) else 0,
            # samplers that change nothing at these settings are listed out, so greedy is argmax
            "repeat_penalty": 1.0, "dry_multiplier": 0.0, "min_p": 0.0, "top_p": 1.0, "typical_p": 1.0,
        }
        if sampling is None:
            body |= {"temperature": 0.0, "top_k": 1}
        else:
            body |= {"temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": sampling.top_k}
        if seed is not None:
            body["seed"] = seed
        if slot is not None:
            body["id_slot"] = slot
        out = self._call("POST", "/completion", body)
        tokens = list(out.get("tokens") or [])
        probs = out.get("completion_probabilities") or []
        timings = out.get("timings") or {}
        finished = out.get("stop_type") == "eos"
        return Completion(
            tokens=tokens, finished=finished, prompt_tokens=len(prompt),
            cached_tokens=timings.get("cache_n"), evaluated_tokens=timings.get("prompt_n"),
            logprobs=[float(p["logprob"]) for p in probs], slot=out.get("id_slot"),
        )

    def _openai(self, prompt, max_tokens, adapter, ban, force, logprobs, sampling, seed):
        bias = {str(t): -100 for t in ban} | ({str(force): 100} if force is not None else {})
        body: dict[str, Any] = {
            "model": adapter.id if adapter is not None else self.model, "prompt": list(prompt),
            "max_tokens": max_tokens, "logit_bias": bias, "return_token_ids": True, "return_tokens_as_token_ids": True,
            "temperature": 0.0 if sampling is None else sampling.temperature,
        }
        if sampling is not None:
            body["top_p"] = sampling.top_p
            if sampling.top_k:
                body["top_k"] = sampling.top_k
        if logprobs or force is not None:
            body["logprobs"] = 1
        if seed is not None:
            body["seed"] = seed
        choice = self._call("POST", "/v1/completions", body)["choices"][0]
        tokens = choice.get("token_ids") or _ids_from_logprobs(choice.get("logprobs"))
        if tokens is None:
            raise ServerError(f"{self.url}/v1/completions returns no token ids (vLLM: return_token_ids)")
        lp = (choice.get("logprobs") or {}).get("token_logprobs") or []
        return Completion(tokens=list(tokens), finished=choice.get("finish_reason") == "stop",
                          prompt_tokens=len(prompt), logprobs=[float(x) for x in lp])


def _ids_from_logprobs(logprobs: dict | None) -> list[int] | None:
    """vLLM's `return_tokens_as_token_ids` spells each token "token_id:N"."""
    tokens = (logprobs or {}).get("tokens")
    if not tokens or not all(isinstance(t, str) and t.startswith("token_id:") for t in tokens):
        return None
    return [int(t.split(":", 1)[1]) for t in tokens]


def flag_probability(fail_logprob: float, pass_logprob: float) -> float:
    """P(FAIL) / (P(FAIL) + P(PASS)) from the two ids' log-probabilities at the flag."""
    return 1.0 / (1.0 + math.exp(pass_logprob - fail_logprob))
