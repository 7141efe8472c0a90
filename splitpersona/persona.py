"""The persona at inference: the main model answers with the adapter off, the persona reviews.

Masked runs reuse the main model's cache of the conversation for every review of it
(`splitpersona.prefill`); a review's P(FAIL) is read from its own generation's cache
(`splitpersona.flag_probability`); its prompt is built in `splitpersona.prompts`.

What opens the persona part is chosen per call, because the evaluation arms differ only there:
`marker` (the split token, the never-trained control token, or nothing) and `adapter`:
- "on": the trained adapter (LoRA and, if trained, the split token's embedding row);
- "lora_off": LoRA off, the run's split-token row kept (what the token alone carries);
- "off": the base model exactly (`disable_adapter`: LoRA and the trained row off).

Standalone questions (`ask`) use the trained layout with an empty task: no system prompt, an empty
user turn and an empty response, then the split token and the question as the intervention. The
persona sees the structure it was trained on (the token after an assistant turn) and no content.

Decoding is greedy (deterministic evals) unless `answer` is given a sampling; the split and control
tokens are never generated.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from splitpersona.assemble import Marker
from splitpersona.conversation import Conversation, Elicitation, Message
from splitpersona.flag_probability import fail_probabilities
from splitpersona.generation import Batch, Sampling, generate, stop_ids
from splitpersona.io import DataError
from splitpersona.prefill import Prefill, prefill_caches, reusable
from splitpersona.prompts import PersonaPrompts, Review, persona_start
from splitpersona.run import RunInfo, adapter_dir, load_run_tokenizer
from splitpersona.token import fit_embeddings

AdapterMode = Literal["on", "lora_off", "off"]


@dataclass
class Answer:
    """The main model's answer, the ids it saw and wrote, and its own cache of them.

    Given to `Persona.review` in place of a response text, `ids` are the review's conversation part
    token for token (no re-encoding of `text`), and `prefill` its reusable cache.
    """

    text: str
    ids: list[int]  # the prompt and the generated answer, without the stop token
    prefill: Prefill
    prompt_tokens: int  # the prompt's share of `ids`


def _dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(table)}")
    return table[dtype]


class Persona(PersonaPrompts):
    """A base model with a persona adapter, its tokenizer and the run's record of tokens and format."""

    def __init__(self, model, tokenizer, info: RunInfo, **options: Any):
        """`options`: PersonaPrompts' (max_new_tokens, batch_size, max_prompt_length, default_intervention)."""
        from peft import PeftModel
        from peft.tuners.lora import LoraLayer
        from peft.utils import AuxiliaryTrainingWrapper

        if not isinstance(model, PeftModel):
            raise TypeError(f"Persona needs a PeftModel, got {type(model).__name__}")
        base = model.get_base_model()
        if base.is_activation_checkpointing:  # peft's aLoRA raises under checkpointing on a second forward
            base.activation_checkpointing_disable()
        self.model = model.eval()
        super().__init__(tokenizer, info, **options)
        self._lora_layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
        self._hooked = [m for m in model.modules() if isinstance(m, (LoraLayer, AuxiliaryTrainingWrapper))]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise ValueError("the tokenizer has neither a pad nor an eos token")
        self.pad_id = pad
        self.stop_ids = stop_ids(model, tokenizer)
        if not self.stop_ids:
            raise ValueError("no end-of-turn token: neither the tokenizer nor the model's generation config names one")

    @classmethod
    def load(
        cls,
        run_dir: str | os.PathLike[str],
        base_model: str | os.PathLike[str] | None = None,
        *,
        dtype: str | torch.dtype = "float32",
        device: str = "cpu",
        **options: Any,
    ) -> Persona:
        """Base model + adapter + tokenizer from a training run's directory (layout: splitpersona.run).

        `base_model` overrides the one recorded in run.json (a local copy, another mirror). `device`
        is where the base model is loaded ("cpu", "cuda", "cuda:1", or "auto" to spread it over GPUs).
        """
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        tokenizer, info = load_run_tokenizer(run_dir)
        adapter = adapter_dir(run_dir)
        base = AutoModelForCausalLM.from_pretrained(
            str(base_model or info.base_model), dtype=_dtype(dtype), device_map=str(device)
        )
        fit_embeddings(base, tokenizer, info.tokens)
        model = PeftModel.from_pretrained(base, adapter)
        invocation = model.peft_config[model.active_adapter].alora_invocation_tokens
        expected = [info.tokens.split_id] if info.lora_mask else None
        if invocation != expected:
            raise DataError(adapter, f"adapter gate {invocation} does not match run.json "
                            f"(lora_mask={info.lora_mask}, split id {info.tokens.split_id})")
        return cls(model, tokenizer, info, **options)

    @staticmethod
    def connect(url: str, run: str | os.PathLike[str], **options: Any):
        """The run's persona on a server (llama-server, or an OpenAI-compatible one): `served.ServedPersona`."""
        from splitpersona.served import ServedPersona

        return ServedPersona.connect(url, run, **options)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # -- adapter state --------------------------------------------------------------------------

    @contextlib.contextmanager
    def adapter_mode(self, mode: AdapterMode) -> Iterator[None]:
        """Run the model with the adapter on, LoRA off, or off; always leaves it as it found it.

        peft registers aLoRA offset hooks without try/finally, so an exception inside forward or
        generate leaves them behind and a later call silently uses stale offsets.
        Every hook added while this context is open is removed when it closes.
        """
        if mode not in ("on", "lora_off", "off"):
            raise ValueError(f"adapter mode {mode!r}; use 'on', 'lora_off' or 'off'")
        before = [set(m._forward_pre_hooks) for m in self._hooked]
        grads = [(p, p.requires_grad) for p in self.model.parameters()]  # peft's re-enabling sets requires_grad
        try:
            if mode == "off":
                with self.model.disable_adapter():
                    yield
            elif mode == "lora_off":
                for m in self._lora_layers:
                    m.enable_adapters(False)
                try:
                    yield
                finally:
                    for m in self._lora_layers:
                        m.enable_adapters(True)
            else:
                yield
        finally:
            for p, g in grads:
                p.requires_grad_(g)
            for m, keys in zip(self._hooked, before):
                for k in set(m._forward_pre_hooks) - keys:
                    del m._forward_pre_hooks[k]
                    m._forward_pre_hooks_with_kwargs.pop(k, None)

    def leaked_hooks(self) -> int:
        """Forward pre-hooks currently on adapter layers (0 between calls)."""
        return sum(len(m._forward_pre_hooks) for m in self._hooked)

    # -- the main model -------------------------------------------------------------------------

    def respond(self, messages: Sequence[Message | dict], *, max_new_tokens: int | None = None) -> str:
        """The main model's answer (adapter off)."""
        return self.respond_batch([messages], max_new_tokens=max_new_tokens)[0]

    def respond_batch(
        self, conversations: Sequence[Sequence[Message | dict]], *, max_new_tokens: int | None = None
    ) -> list[str]:
        return self._main_batch(conversations, max_new_tokens, with_flag=False)

    def judge_batch(
        self, conversations: Sequence[Sequence[Message | dict]], *, max_new_tokens: int | None = None
    ) -> list[tuple[str, float | None]]:
        """The base model as a judge: its answers to prompts that ask for a flag line, each with P(FAIL)
        at its flag, read from the generation's own cache as a review's is (`_flag_probabilities`)."""
        return self._main_batch(conversations, max_new_tokens, with_flag=True)

    def _main_batch(self, conversations: Sequence[Sequence[Message | dict]], max_new_tokens: int | None,
                    *, with_flag: bool) -> list:
        """The main model's answers (adapter off), `batch_size` at a time; with each one's P(FAIL) if `with_flag`."""
        prompts = [self.conversation_ids(m) for m in conversations]
        out: list = []
        for start in range(0, len(prompts), self.batch_size):
            chunk = prompts[start : start + self.batch_size]
            batch = self._generate(chunk, adapter="off", max_new_tokens=max_new_tokens)
            texts = [self._decode(g.tokens) for g in batch.rows]
            out += zip(texts, self._flag_probabilities(batch, chunk, "off")) if with_flag else texts
        return out

    def answer(
        self,
        messages: Sequence[Message | dict],
        *,
        max_new_tokens: int | None = None,
        sampling: Sampling | None = None,
        stop: Sequence[str] = (),
    ) -> Answer:
        """The main model's answer together with its own KV cache of prompt and answer.

        `sampling` None is greedy (seeding is the caller's); `stop` strings end the answer and stay
        in it, so that its text and ids are what the main model wrote.
        """
        ids = self.conversation_ids(messages)
        kwargs: dict[str, Any] = {}
        if stop:
            from transformers import StopStringCriteria

            kwargs["stopping_criteria"] = [StopStringCriteria(self.tokenizer, list(stop))]
        batch = self._generate([ids], adapter="off", max_new_tokens=max_new_tokens, sampling=sampling, **kwargs)
        (gen,), out = batch.rows, batch.output
        cache = out.past_key_values
        seen = (ids + out.sequences[0, len(ids) :].tolist())[: cache.get_seq_length()]
        return Answer(self._decode(gen.tokens), ids + gen.tokens, Prefill(seen, cache), len(ids))

    def prefill(
        self,
        messages: Sequence[Message | dict],
        response: str,
        *,
        marker: Marker = "split",
        elicitation: Elicitation | None = None,
    ) -> Prefill:
        """The base-model cache of a conversation, up to (not including) where the persona part starts."""
        conv = Conversation(messages=list(messages), response=response)
        return self.prefill_batch([conv], marker=marker, elicitation=elicitation)[0]

    def prefill_batch(
        self,
        conversations: Sequence[Conversation],
        *,
        marker: Marker = "split",
        elicitation: Elicitation | None = None,
        hidden: Sequence[int] = (),
    ) -> list[Prefill]:
        """`prefill` of many conversations, `batch_size` rows to one left-padded base-model forward.

        `hidden`: indices into the forward's hidden_states (0 the embeddings) that each Prefill keeps
        for its tokens, so a probe reads the same pass instead of its own.
        """
        samples = [self.prompt(c.messages, c.response, marker=marker, elicitation=elicitation) for c in conversations]
        return prefill_caches(self.model, [s.input_ids[: persona_start(s)] for s in samples], pad_id=self.pad_id,
                              batch_size=self.batch_size, base=lambda: self.adapter_mode("off"), hidden=hidden)

    # -- the persona ----------------------------------------------------------------------------

    def review(
        self,
        messages: Sequence[Message | dict],
        response: str | Answer,
        intervention: str | None = None,
        *,
        marker: Marker = "split",
        adapter: AdapterMode = "on",
        elicitation: Elicitation | None = None,
        prefill: Prefill | None = None,
        max_new_tokens: int | None = None,
        return_logits: bool = False,
    ) -> Review:
        """The persona's review of `response`, ending in a flag line (parsed into `Review.flag`).

        An `Answer` (from `answer`) is reviewed on the ids the main model saw and wrote, and on its
        cache where this arm may reuse one.
        """
        seen = None
        if isinstance(response, Answer):
            seen = [response.ids]
            if prefill is None and (self.masked or adapter != "on"):
                prefill = response.prefill
            response = response.text
        conv = Conversation(messages=list(messages), response=response, intervention=intervention)
        return self.review_batch(
            [conv], marker=marker, adapter=adapter, elicitation=elicitation,
            prefills=None if prefill is None else [prefill], max_new_tokens=max_new_tokens, return_logits=return_logits,
            seen=seen,
        )[0]

    def review_batch(
        self,
        conversations: Sequence[Conversation],
        *,
        marker: Marker = "split",
        adapter: AdapterMode = "on",
        elicitation: Elicitation | None = None,
        prefills: Sequence[Prefill | None] | None = None,
        max_new_tokens: int | None = None,
        return_logits: bool = False,
        seen: Sequence[Sequence[int] | None] | None = None,
    ) -> list[Review]:
        """Reviews of many conversations, `batch_size` at a time with left padding.

        With `prefills` (one per conversation, None where there is none), each row starts from its
        main-model cache, whatever its length (what a cache lacks is computed in the batch's own
        prefill, all rows together); allowed wherever the conversation is read with LoRA off (masked runs,
        or adapter 'off'/'lora_off'), refused for an unmasked adapter. `seen` (one per
        conversation, None where there is none): the ids the main model saw and wrote (`Answer.ids`).
        """
        if seen is not None and len(seen) != len(conversations):
            raise ValueError(f"{len(seen)} id sequences for {len(conversations)} conversations")
        if prefills is not None:
            if len(prefills) != len(conversations):
                raise ValueError(f"{len(prefills)} prefills for {len(conversations)} conversations")
            if adapter == "on" and not self.masked:
                raise ValueError("this run is unmasked: its persona re-reads the conversation with the adapter on, "
                                 "so a base-model cache cannot be reused")
        samples = [
            self.prompt(c.messages, c.response, c.intervention, marker=marker, elicitation=elicitation,
                        seen=None if seen is None else seen[i])
            for i, c in enumerate(conversations)
        ]
        reviews: list[Review | None] = [None] * len(samples)
        order = sorted(range(len(samples)), key=lambda i: -len(samples[i]))  # similar lengths share a batch
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            caches = None
            if prefills is not None:
                caches = [reusable(samples[i].input_ids[: persona_start(samples[i])], prefills[i]) for i in rows]
            batch = self._generate(
                [samples[i].input_ids for i in rows], adapter=adapter, caches=caches,
                max_new_tokens=max_new_tokens, output_logits=return_logits,
            )
            gens = batch.rows
            fail_p = self._flag_probabilities(batch, [samples[i].input_ids for i in rows], adapter)
            for i, gen, p_fail in zip(rows, gens, fail_p):
                reviews[i] = self._read_review(samples[i], gen.tokens, gen.finished, logits=gen.logits,
                                               fail_probability=p_fail)
        return reviews  # type: ignore[return-value]

    # -- generation -----------------------------------------------------------------------------

    def _generate(
        self,
        prompts: list[list[int]],
        *,
        adapter: AdapterMode,
        caches: list | None = None,
        max_new_tokens: int | None = None,
        output_logits: bool = False,
        **generate_kwargs: Any,
    ) -> Batch:
        """One batch under `adapter`; `caches[i]` (or None) covers a prefix of prompt i.

        Greedy unless `generate_kwargs` bring a `sampling` (the main model's answer may sample).
        """
        with self.adapter_mode(adapter):
            return generate(
                self.model, prompts, pad_id=self.pad_id, stop_ids=self.stop_ids,
                max_new_tokens=max_new_tokens or self.max_new_tokens,
                suppress_ids=[self.info.tokens.split_id, self.info.tokens.control_id], caches=caches,
                output_logits=output_logits, **generate_kwargs,
            )

    def _flag_probabilities(self, batch: Batch, prompts: list[list[int]], adapter: AdapterMode) -> list[float | None]:
        """P(FAIL) at each row's flag (`flag_probability.fail_probabilities`), under the mode it was generated in."""
        return fail_probabilities(self.model, self.tokenizer, self.fmt, batch, prompts, pad_id=self.pad_id,
                                  masked=self.masked, mode=lambda: self.adapter_mode(adapter))
