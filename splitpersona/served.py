"""The persona on a server: the same prompts and reviews as `Persona`, run by a serving engine.

    persona = Persona.connect("http://127.0.0.1:8080", run="runs/demo/persona_masked")
    answer = persona.answer(messages)          # the main model, adapter off
    review = persona.review(messages, answer)  # the persona; masked: on the main model's own cache

The ids come from the run's assembler (`splitpersona.prompts`), so the server computes on exactly the
prefix the in-process persona computes on. What a server can serve is checked before any review:
its vocabulary and tokenizer against the run's, and its adapter against the run's gate. A masked
(aLoRA) persona is served only by llama-server, which keeps the adapter off before the split token;
anywhere else it would run as an ordinary LoRA on every token, a different persona, so it is refused.
llama-server turns the aLoRA on one token early, at the token before the split token (peft, which
trains the persona, at the split token): a served masked review equals the in-process review under
that gate, not the trained one (docs/serving.md).

llama-server (this build) computes aLoRA requests wrongly when several are in flight on several
slots: some reviews differ from the same review sent alone, and the server reports reusing cached
tokens past the invocation. A masked persona therefore sends each whole review (the review and its
P(FAIL) requests) alone, and its export serves one slot; answers and unmasked reviews go
`concurrency` at a time.

The cache is used only where it cannot mix adapters (`ServerClient.reuse_cache`): while the server
holds no ordinary LoRA, requests may reuse cached prefixes; with one loaded, no request does.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from splitpersona.conversation import Conversation, Elicitation, Message
from splitpersona.generation import Sampling
from splitpersona.prompts import PersonaPrompts, Review, flag_continuation
from splitpersona.run import adapter_dir, load_run_tokenizer
from splitpersona.serving import Adapter, Api, Completion, ServerClient, ServerError, flag_probability
from splitpersona.token import special_ids

PROBE_TEXT = "Which shoes should I buy for a trail run in the rain? 42% of people say: «the light ones»."


@dataclass
class ServedAnswer:
    """The main model's answer as the server wrote it; reviewed on these ids and, masked, on its slot's cache."""

    text: str
    ids: list[int]  # the prompt and the generated answer, without the stop token
    prompt_tokens: int
    slot: int | None


class ServedPersona(PersonaPrompts):
    """A run's persona on a server (`Persona.connect`); which arms it can serve: `refuses`."""

    def __init__(self, client: ServerClient, tokenizer, info, *, adapter: Adapter, trained_rows: Sequence[int] = (),
                 concurrency: int = 8, **options: Any):
        super().__init__(tokenizer, info, **options)
        self.client = client
        self.adapter = adapter
        self.trained_rows = set(trained_rows)
        self.concurrency = concurrency
        self.reuse = client.reuse_cache
        self.ban = [info.tokens.split_id, info.tokens.control_id]
        self.stop = special_ids(tokenizer) - set(self.ban)  # the server ends at its own end-of-generation ids
        self._one_review = threading.Lock() if info.lora_mask else contextlib.nullcontext()
        self._tokenizing = threading.Lock()  # the tokenizer switches special-token splitting per call: not thread-safe

    @classmethod
    def connect(cls, url: str, run: str | os.PathLike[str], *, api: Api | None = None, adapter: str | None = None,
                **options: Any) -> ServedPersona:
        """The run's persona on the server at `url`, refused (ServerError) if that server cannot serve it.

        `adapter`: which served adapter is the persona (a path's file name or an OpenAI model name);
        by default the one adapter whose gate matches the run's.
        """
        tokenizer, info = load_run_tokenizer(run)
        client = ServerClient(url, api=api)
        try:
            check_vocabulary(client, tokenizer, info)
            chosen = choose_adapter(client, client.adapters(), info, adapter)
        except BaseException:
            client.close()
            raise
        return cls(client, tokenizer, info, adapter=chosen, trained_rows=trained_token_rows(run), **options)

    def refuses(self, marker: str, adapter: str) -> str | None:
        """Why this server cannot give what the in-process persona gives for this marker and adapter mode, or None.

        llama-server holds `spt export`'s base, which carries the run's trained token rows: with LoRA
        off it is the run's "lora_off", and "off" (the untrained rows) where no trained row is read. An
        OpenAI-compatible server holds the plain base, and its LoRA carries no token rows.
        """
        rows_read = marker == "split" and self.info.tokens.split_id in self.trained_rows
        if self.client.api == "llamacpp":
            if adapter == "off" and rows_read:
                return "the served base holds the run's trained split-token row; the base without it is not served"
            return None
        if rows_read and adapter in ("on", "lora_off"):
            return "the run trained the split token's row, which an OpenAI-compatible server's base and LoRA lack"
        return None

    def close(self) -> None:
        self.client.close()

    # -- the main model -------------------------------------------------------------------------

    def _complete(self, ids: Sequence[int], *, adapter: str, max_new_tokens: int | None = None, **kw: Any) -> Completion:
        comp = self.client.complete(ids, max_tokens=max_new_tokens or self.max_new_tokens,
                                    adapter=self.adapter if adapter == "on" else None, ban=self.ban,
                                    cache=self.reuse, **kw)
        if comp.tokens and comp.finished and comp.tokens[-1] in self.stop:
            comp.tokens = comp.tokens[:-1]
        return comp

    def answer(self, messages: Sequence[Message | dict], *, max_new_tokens: int | None = None,
               sampling: Sampling | None = None, seed: int | None = None) -> ServedAnswer:
        """The main model's answer (adapter off); greedy unless `sampling` (then `seed` makes it repeatable)."""
        with self._tokenizing:
            ids = self.conversation_ids(messages)
        comp = self._complete(ids, adapter="off", max_new_tokens=max_new_tokens, sampling=sampling, seed=seed)
        return ServedAnswer(self._decode(comp.tokens), ids + comp.tokens, len(ids), comp.slot)

    def respond(self, messages: Sequence[Message | dict], *, max_new_tokens: int | None = None) -> str:
        return self.answer(messages, max_new_tokens=max_new_tokens).text

    def respond_batch(self, conversations: Sequence[Sequence[Message | dict]], *,
                      max_new_tokens: int | None = None) -> list[str]:
        return self._map(lambda m: self.respond(m, max_new_tokens=max_new_tokens), conversations)

    # -- the persona ----------------------------------------------------------------------------

    def review(
        self,
        messages: Sequence[Message | dict],
        response: str | ServedAnswer,
        intervention: str | None = None,
        *,
        marker: str = "split",
        adapter: str = "on",
        elicitation: Elicitation | None = None,
        max_new_tokens: int | None = None,
    ) -> Review:
        """The persona's review of `response`; a `ServedAnswer` is reviewed on its own ids and slot.

        `adapter` as in `Persona.review`, where this server can serve it (`refuses`).
        """
        why = self.refuses(marker, adapter)
        if why:
            raise ServerError(f"{self.client.url}: cannot serve marker {marker!r} with adapter {adapter!r}: {why}")
        seen, slot = None, None
        if isinstance(response, ServedAnswer):
            seen, slot, response = response.ids, response.slot, response.text
        with self._tokenizing:
            sample = self.prompt(messages, response, intervention, marker=marker, elicitation=elicitation, seen=seen)
        with self._one_review:
            comp = self._complete(sample.input_ids, adapter=adapter, max_new_tokens=max_new_tokens, slot=slot)
            p_fail = self._fail_probability(sample.input_ids, comp, adapter)
        return self._read_review(sample, comp.tokens, comp.finished, fail_probability=p_fail,
                                 cached_tokens=comp.cached_tokens, evaluated_tokens=comp.evaluated_tokens)

    def review_batch(
        self,
        conversations: Sequence[Conversation],
        *,
        marker: str = "split",
        adapter: str = "on",
        elicitation: Elicitation | None = None,
        max_new_tokens: int | None = None,
        seen: Sequence[Sequence[int] | None] | None = None,
        prefills: None = None,
    ) -> list[Review]:
        """Reviews of many conversations, `concurrency` requests in flight (the server batches them).

        `seen`: as in `Persona.review_batch`; `prefills` are the server's own business (its cache).
        """
        if prefills is not None:
            raise ValueError("a served persona reuses the server's cache; in-process prefills do not apply")
        ids = [None] * len(conversations) if seen is None else list(seen)

        def one(k: int) -> Review:
            c = conversations[k]
            response = c.response if ids[k] is None else ServedAnswer(c.response, list(ids[k]), 0, None)
            return self.review(c.messages, response, c.intervention, marker=marker, adapter=adapter,
                               elicitation=elicitation, max_new_tokens=max_new_tokens)

        return self._map(one, range(len(conversations)))

    def judge_batch(self, conversations: Sequence[Sequence[Message | dict]], *,
                    max_new_tokens: int | None = None) -> list[tuple[str, float | None]]:
        """The base model as a judge (adapter off): each answer with P(FAIL) at its flag, as `Persona.judge_batch`."""

        def one(messages) -> tuple[str, float | None]:
            with self._tokenizing:
                ids = self.conversation_ids(messages)
            comp = self._complete(ids, adapter="off", max_new_tokens=max_new_tokens)
            return self._decode(comp.tokens), self._fail_probability(ids, comp, "off")

        return self._map(one, conversations)

    def _fail_probability(self, prompt: list[int], comp: Completion, adapter: str) -> float:
        """P(FAIL) at the flag: the review's text up to its flag line, the flag prefix forced, then each of
        FAIL and PASS forced in one token request whose log-probability the server reads before forcing."""
        with self._tokenizing:
            kept, forced, pass_id, fail_id = flag_continuation(self.tokenizer, self.fmt, comp.tokens)
        ids = prompt + comp.tokens[:kept] + forced
        lp = [self._complete(ids, adapter=adapter, max_new_tokens=1, force=t, slot=comp.slot).logprobs[0]
              for t in (fail_id, pass_id)]
        return flag_probability(lp[0], lp[1])

    def _map(self, fn, items: Sequence[Any]) -> list[Any]:
        items = list(items)
        if len(items) <= 1 or self.concurrency <= 1:
            return [fn(x) for x in items]
        with ThreadPoolExecutor(min(self.concurrency, len(items))) as pool:
            return list(pool.map(fn, items))


def trained_token_rows(run: str | os.PathLike[str]) -> list[int]:
    """The token ids whose embedding rows the run's adapter trains (peft trainable tokens)."""
    config = json.loads((adapter_dir(run) / "adapter_config.json").read_text())
    rows = config.get("trainable_token_indices") or []
    return sorted({i for v in rows.values() for i in v} if isinstance(rows, dict) else set(rows))


def check_vocabulary(client: ServerClient, tokenizer, info) -> None:
    """Refuse a server whose vocabulary is not the run's: too few ids, or other text for the same ids."""
    t = info.tokens
    need = max(len(tokenizer), t.split_id + 1, t.control_id + 1)
    have = client.vocab_size()
    if have is not None and have < need:
        raise ServerError(f"{client.url}: the server's model has {have} token ids; the run's tokenizer needs {need} "
                          f"(split token {t.split_id}): another base model or vocabulary")
    probe = tokenizer(PROBE_TEXT, add_special_tokens=False).input_ids + [t.split_id]
    served = client.detokenize(probe)
    ours = tokenizer.decode(probe)
    if served is not None and served != ours:
        raise ServerError(f"{client.url}: the server reads the run's token ids as {served!r}, the run's tokenizer as "
                          f"{ours!r}: another tokenizer")


def choose_adapter(client: ServerClient, loaded: Sequence[Adapter], info, name: str | None) -> Adapter:
    """The served adapter that is this run's persona: its gate must be the run's (aLoRA on the split token, or none)."""
    gate = (info.tokens.split_id,) if info.lora_mask else ()
    if info.lora_mask and client.api != "llamacpp":
        raise ServerError(f"{client.url}: this run's persona is masked (an activated LoRA from the split token on), "
                          "which only llama-server applies; an OpenAI-compatible server would run it as an ordinary "
                          "LoRA on every token, a different persona")
    fits = [a for a in loaded if name is None or os.path.basename(a.path) == name or a.id == name]
    if not fits:
        raise ServerError(f"{client.url}: serves no adapter{f' named {name!r}' if name else ''} "
                          f"(it holds {[a.path for a in loaded]})")
    right = [a for a in fits if a.invocation == gate]
    if len(right) != 1:
        what = f"an activated LoRA invoked by {list(gate)}" if gate else "an ordinary LoRA"
        raise ServerError(f"{client.url}: this run needs {what}; the server holds "
                          f"{[(a.path, list(a.invocation)) for a in fits]}")
    return right[0]

