"""Stage 2: the target model's own answers to T under A and under B (the on-policy responses).

Three responders (`stage2.engine` picks one) behind one method, `generate(chats, seeds) -> (index,
Generation | failure reason)`:
- transformers: the model loaded here, batched and left-padded;
- server: a completions server (`vllm serve` with tensor parallelism, SGLang, llama-server) through
  the one server client, a seed per request (from its task key, so a rerun writes the same answers),
  `concurrency` requests in flight;
- openai: an OpenAI-compatible chat endpoint that takes text only (OpenRouter, a hosted API).
Both token-id engines prompt with the assembler's ids (`assemble.prompt_ids`), the prefix training later
puts before the answer. Each answer is stored the moment it is done, keyed by a hash of the chat and the
sampling settings, and every record carries those settings. `thinking_enabled` reaches the chat template
(Qwen3's `enable_thinking`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from splitpersona.data_gen.config import Stage2Config
from splitpersona.data_gen.runner import GenerationRun, StageResult, progress, still_to_do
from splitpersona.data_gen.store import now_iso
from splitpersona.clients import Fault, RetryPolicy, call_fault, status_fault
from splitpersona.conversation import Message
from splitpersona.io import read_json, write_json
from splitpersona.records import ReleaseBatch, Stage2Inference
from splitpersona.release import release_json
from splitpersona.templates import ChatTemplateConfig, apply_chat_template

log = logging.getLogger("splitpersona.data_gen.stage2")

TINY_MODEL = "tiny-random-llama"
Chat = list[dict[str, str]]


@dataclass
class Generation:
    text: str
    input_tokens: int
    output_tokens: int
    seconds: float
    finish_reason: str | None = None


def sampling(cfg: Stage2Config) -> dict[str, Any]:
    """The settings recorded on every record: the effective ones (top_p 1.0 and top_k 0 mean off)."""
    return {
        "temperature": cfg.temperature,
        "top_p": cfg.top_p if cfg.top_p is not None else 1.0,
        "top_k": cfg.top_k or 0,
        "max_new_tokens": cfg.max_new_tokens,
        "seed": cfg.seed,
        "thinking_enabled": cfg.thinking_enabled,
    }


def chat_ids(tok, chat: Chat, thinking: bool | None) -> list[int]:
    """The model's own prompt, as the trainer's assembler tokenizes it (`assemble.prompt_ids`); a template
    without a system role (Gemma 2) gets the system prompt folded into the user turn."""
    from splitpersona.assemble import prompt_ids

    options = {} if thinking is None else {"enable_thinking": thinking}
    try:
        return prompt_ids(tok, chat, **options)
    except ValueError as e:
        if chat[0]["role"] != "system":
            raise
        log.debug("chat template refused a system turn (%s); folding it into the user turn", e)
        merged = [{"role": "user", "content": chat[0]["content"] + "\n\n" + chat[1]["content"]}]
        return prompt_ids(tok, merged, **options)


def load_tokenizer(path: str, template: ChatTemplateConfig):
    """The target model's tokenizer with the chat template training will use, padding on the left for batches."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    apply_chat_template(tok, template)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def prompt_ids(tok, cfg: Stage2Config, chats: Sequence[Chat]) -> list[list[int]]:
    """Each chat's prompt, cut from the left to `max_input_tokens` (the generation header stays)."""
    return [chat_ids(tok, c, cfg.thinking_enabled)[-cfg.max_input_tokens:] for c in chats]


class TransformersResponder:
    def __init__(self, cfg: Stage2Config, path: str):
        import torch
        from transformers import AutoModelForCausalLM

        from splitpersona.generation import stop_ids

        self.cfg = cfg
        self.torch = torch
        self.tok = load_tokenizer(path, cfg.chat_template)
        dtype = "auto" if cfg.dtype == "auto" else getattr(torch, cfg.dtype)
        device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
        self.eos = stop_ids(self.model, self.tok)

    def generate(self, chats: Sequence[Chat], seeds: Sequence[int] | None = None) -> Iterator[tuple[int, Generation | str]]:
        """Seeded per batch (torch samples a batch from one generator); per-request `seeds` are a server's."""
        from splitpersona.generation import Sampling, generate

        cfg = self.cfg
        sampling = Sampling(cfg.temperature, cfg.top_p or 1.0, cfg.top_k or 0) if cfg.temperature > 0 else None
        for start in range(0, len(chats), cfg.batch_size):
            chunk = chats[start : start + cfg.batch_size]
            prompts = prompt_ids(self.tok, cfg, chunk)
            self.torch.manual_seed(cfg.seed + start)
            t0 = time.perf_counter()
            batch = generate(
                self.model, prompts, pad_id=self.tok.pad_token_id, stop_ids=self.eos,
                max_new_tokens=cfg.max_new_tokens, sampling=sampling,
            )
            seconds = (time.perf_counter() - t0) / len(chunk)
            for row, (ids, gen) in enumerate(zip(prompts, batch.rows)):
                yield start + row, Generation(
                    text=self.tok.decode(gen.tokens, skip_special_tokens=True).strip(),
                    input_tokens=len(ids),
                    output_tokens=len(gen.tokens) + gen.finished,
                    seconds=seconds,
                    finish_reason="stop" if gen.finished else "length",
                )


class ServerResponder:
    """A completions server through the one server client (`splitpersona.serving`): token-id prompts, so
    the server computes on exactly the prompt the transformers responder would."""

    def __init__(self, cfg: Stage2Config, tokenizer: str, *, sleep=time.sleep):
        from splitpersona.serving import ServerClient

        if not cfg.base_url:
            raise ValueError("stage2.engine 'server' needs stage2.base_url (the server's address, e.g. http://localhost:8000)")
        self.cfg = cfg
        self.tok = load_tokenizer(tokenizer, cfg.chat_template)
        retry = RetryPolicy(cfg.max_attempts, cfg.backoff_base_s, cfg.backoff_max_s, sleep, random.Random(cfg.seed), log)
        self.client = ServerClient(cfg.base_url, model=cfg.served_model, timeout_s=cfg.timeout_s, retry=retry)

    def _one(self, ids: list[int], seed: int) -> Generation | str | None:
        """The answer, why the server refused it, or None while the server cannot be reached (not stored:
        a rerun asks again)."""
        from splitpersona.generation import Sampling
        from splitpersona.serving import ServerError

        cfg = self.cfg
        sampling = Sampling(cfg.temperature, cfg.top_p or 1.0, cfg.top_k or 0) if cfg.temperature > 0 else None
        t0 = time.perf_counter()
        try:
            comp = self.client.complete(ids, max_tokens=cfg.max_new_tokens, sampling=sampling, seed=seed)
        except ServerError as e:
            if e.unreachable:
                log.warning("stage2: %s", e)
                return None
            return str(e)
        return Generation(self.tok.decode(comp.tokens, skip_special_tokens=True).strip(), len(ids),
                          len(comp.tokens) + comp.finished, time.perf_counter() - t0,
                          "stop" if comp.finished else "length")

    def generate(self, chats: Sequence[Chat], seeds: Sequence[int] | None = None) -> Iterator[tuple[int, Generation | str | None]]:
        """`seeds`: one per chat (default: stage2.seed for every one)."""
        prompts = prompt_ids(self.tok, self.cfg, chats)
        seeds = [self.cfg.seed] * len(chats) if seeds is None else seeds
        with ThreadPoolExecutor(max_workers=self.cfg.concurrency, thread_name_prefix="stage2") as pool:
            futures = {pool.submit(self._one, ids, seed): i for i, (ids, seed) in enumerate(zip(prompts, seeds))}
            for fut in as_completed(futures):
                yield futures[fut], fut.result()


class OpenAIResponder:
    """Any OpenAI-compatible `/chat/completions` endpoint, with bounded concurrency and the one retry policy.
    The prompt cannot be cut to `max_input_tokens` here (no tokenizer); the server's limit applies."""

    def __init__(self, cfg: Stage2Config, *, sleep=time.sleep):
        import httpx

        if not cfg.base_url:
            raise ValueError("stage2.engine 'openai' needs stage2.base_url (e.g. http://localhost:8000/v1)")
        self.cfg = cfg
        self.url = cfg.base_url.rstrip("/") + "/chat/completions"
        headers = {"content-type": "application/json"}
        key = os.environ.get(cfg.api_key_env)
        if key:
            headers["authorization"] = f"Bearer {key}"
        self.http = httpx.Client(headers=headers, timeout=cfg.timeout_s)
        self.retry = RetryPolicy(cfg.max_attempts, cfg.backoff_base_s, cfg.backoff_max_s, sleep, random.Random(cfg.seed), log)

    def body(self, chat: Chat) -> dict[str, Any]:
        cfg = self.cfg
        body: dict[str, Any] = {"model": cfg.model, "messages": chat, "temperature": cfg.temperature,
                                "max_tokens": cfg.max_new_tokens, "seed": cfg.seed}
        if cfg.top_p is not None:
            body["top_p"] = cfg.top_p
        if cfg.top_k is not None:
            body["top_k"] = cfg.top_k  # not OpenAI's, but vLLM, TGI and OpenRouter accept it
        return body

    def _one(self, chat: Chat) -> Generation | str:
        def attempt(n: int) -> Generation:
            t0 = time.perf_counter()
            try:
                resp = self.http.post(self.url, json=self.body(chat))
            except Exception as exc:  # noqa: BLE001 - classified; unknown types re-raise
                raise call_fault(exc) from None
            if resp.status_code != 200:
                raise status_fault(resp.status_code, resp.headers, resp.text)
            try:
                data = resp.json()
                choice = data["choices"][0]
                text = choice["message"].get("content") or ""
                usage = data.get("usage") or {}
                return Generation(text.strip(), int(usage.get("prompt_tokens") or 0),
                                  int(usage.get("completion_tokens") or 0), time.perf_counter() - t0,
                                  choice.get("finish_reason"))
            except (ValueError, KeyError, IndexError, TypeError) as e:
                raise Fault("malformed", f"{type(e).__name__}: {e}") from None

        tried = self.retry.run(attempt, label="stage2")
        return tried.value if tried.fault is None else tried.failure

    def generate(self, chats: Sequence[Chat], seeds: Sequence[int] | None = None) -> Iterator[tuple[int, Generation | str]]:
        """The endpoint gets stage2.seed on every request: a text-only API takes no per-request seed of ours."""
        with ThreadPoolExecutor(max_workers=self.cfg.concurrency, thread_name_prefix="stage2") as pool:
            futures = {pool.submit(self._one, chat): i for i, chat in enumerate(chats)}
            for fut in as_completed(futures):
                yield futures[fut], fut.result()


def build_tiny_model(path: Path, seed: int) -> None:
    """A tiny random Llama with a tokenizer trained on our own prompts: smoke runs need no download."""
    from splitpersona.data_gen.prompts import load_prompts
    from splitpersona.tiny import tiny_llama, train_tokenizer

    prompts = load_prompts("v1")
    corpus = [line for text in (prompts.base, *prompts.briefs.values()) for line in text.splitlines() if line.strip()]
    tok = train_tokenizer(corpus * 3, 600)
    model = tiny_llama(tok, seed=seed)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-", dir=path.parent))
    tok.save_pretrained(tmp)
    model.save_pretrained(tmp)
    if path.exists():  # another process finished first
        shutil.rmtree(tmp)
    else:
        os.replace(tmp, path)


def make_responder(run: GenerationRun):
    cfg = run.cfg.stage2
    if cfg.engine == "openai":
        return OpenAIResponder(cfg)
    path = cfg.model
    if path == TINY_MODEL:
        target = run.out / TINY_MODEL
        if not target.exists():
            build_tiny_model(target, run.cfg.seed)
        path = str(target)
    return TransformersResponder(cfg, path) if cfg.engine == "transformers" else ServerResponder(cfg, path)


@dataclass(frozen=True)
class Task:
    path: Path
    item: int
    variant: str
    chat: tuple[Message, ...]
    key: str

    def messages(self) -> Chat:
        return [m.model_dump() for m in self.chat]

    def seed(self, base: int) -> int:
        """This request's sampling seed: from its key, so it does not depend on what else runs beside it."""
        return (base * 1_000_003 + int(self.key[:12], 16)) % 2**31


def tasks(run: GenerationRun) -> list[Task]:
    cfg = run.cfg.stage2
    settings = {"engine": cfg.engine, "model": cfg.model, "max_input_tokens": cfg.max_input_tokens, **sampling(cfg)}
    if cfg.chat_template.family is not None:  # the tokenizer's own template keeps the keys earlier runs stored under
        settings["chat_template"] = cfg.chat_template.model_dump(mode="json")
    out = []
    for path in run.batch_files(1):
        batch = ReleaseBatch.model_validate(read_json(path))
        for idx, item in enumerate(batch.data):
            for variant, system in (("A", item.A), ("B", item.B)):
                if system is None:
                    continue
                chat = (Message(role="system", content=system), Message(role="user", content=item.T))
                keyed = [[m.role, m.content] for m in chat]  # the key stored answers are found by
                key = hashlib.sha256(json.dumps({"chat": keyed, **settings}, sort_keys=True).encode()).hexdigest()
                out.append(Task(path, idx, variant, chat, key))
    return out


def run_stage2(run: GenerationRun) -> StageResult:
    store = run.store("stage2")
    result = StageResult("stage2")
    all_tasks = tasks(run)
    todo = still_to_do(run, store, [(t.key, t) for t in all_tasks], result)
    if todo:
        log.info("stage2: %d responses to generate with %s (%s)", len(todo), run.cfg.stage2.model, run.cfg.stage2.engine)
        responder = make_responder(run)
        with progress(f"stage2 ({run.cfg.stage2.name})", len(todo)) as advance:
            for i, gen in responder.generate([t.messages() for t in todo], [t.seed(run.cfg.stage2.seed) for t in todo]):
                t = todo[i]
                if gen is None:  # the server was not reached: nothing to store, a rerun asks again
                    result.not_done += 1
                    advance()
                    continue
                row = {"key": t.key, "stage": "stage2", "model": run.cfg.stage2.name, "finished_at": now_iso()}
                if isinstance(gen, Generation):
                    value = {"S": gen.text, "input_tokens": gen.input_tokens, "output_tokens": gen.output_tokens,
                             "string_length": len(gen.text), "generation_time": round(gen.seconds, 4),
                             "finish_reason": gen.finish_reason}
                    store.put({**row, "status": "ok", "value": value, "failure": None})
                    result.ok += 1
                else:
                    store.put({**row, "status": "failed", "value": None, "failure": gen})
                    result.failed += 1
                    result.failures[gen.split(" ")[0]] += 1
                    log.warning("stage2 %s item %d %s failed: %s", t.path.name, t.item, t.variant, gen)
                advance()
    result.files = write_stage2(run, all_tasks)
    return result


def same_item(a: Any, b: Any) -> bool:
    return (a.A, a.B, a.T) == (b.A, b.B, b.T)


def keep_other_models(batch: ReleaseBatch, previous: ReleaseBatch, exclude: str) -> None:
    """Carry the other models' responses of a previous file over, where its items are unchanged."""
    for item, old in zip(batch.data, previous.data):
        if same_item(item, old):
            for model, by_variant in old.inferences.items():
                if model != exclude:
                    item.inferences[model] = by_variant


def write_stage2(run: GenerationRun, all_tasks: list[Task]) -> int:
    """Each stage-1 file plus this model's responses; other models' responses already there are kept."""
    cfg = run.cfg.stage2
    store = run.store("stage2")
    record_extra = {"engine": cfg.engine, **sampling(cfg)}
    by_file: dict[Path, list[Task]] = {}
    for t in all_tasks:
        by_file.setdefault(t.path, []).append(t)
    for path, file_tasks in by_file.items():
        out = run.stage_dir(2) / path.parent.name / path.name
        batch = ReleaseBatch.model_validate(read_json(path))
        if out.exists():
            keep_other_models(batch, ReleaseBatch.model_validate(read_json(out)), exclude=cfg.name)
        for t in file_tasks:
            row = store.get(t.key)
            if row is None or row["status"] != "ok":
                continue
            v = dict(row["value"])
            inference = Stage2Inference(**v, **record_extra)
            batch.data[t.item].inferences.setdefault(cfg.name, {})[t.variant] = inference  # type: ignore[index]
        write_json(out, release_json(batch))
    return len(by_file)
