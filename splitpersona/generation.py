"""The one generation loop: a left-padded batch of token-id prompts through `model.generate`, cut at
the stop tokens. The persona, the stage-2 sampler and the demo's audits all decode through it.

Greedy (`sampling=None`) sets every logits-changing field: generate fills unset ones from the
model's own generation_config, and a shipped repetition_penalty would silently alter "greedy".
`Sampling` sets only its own fields, so the rest stay the model's own: on-policy answers.
Seeding is the caller's: sampling draws from torch's global generator.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Sampling:
    temperature: float
    top_p: float = 1.0
    top_k: int = 0  # 0: off


@dataclass
class Generated:
    tokens: list[int]  # up to, not including, the first stop token
    finished: bool  # a stop token ended it, not max_new_tokens
    logits: torch.Tensor | None  # [len(tokens) + finished, vocab] (the stop token's step included), float32 on cpu


@dataclass
class Batch:
    rows: list[Generated]
    output: Any  # generate's output: `sequences` [rows, width + new] and the final `past_key_values`
    pads: list[int]  # left padding of each row; every prompt ends at column `width`
    width: int
    mask: torch.Tensor  # [rows, width]: 1 on each prompt's tokens, 0 on padding and on the gap after a row's cache


def stop_ids(model, tokenizer) -> list[int]:
    """End-of-turn ids: the model's generation config's and the tokenizer's eos (either may be unset)."""
    eos = model.generation_config.eos_token_id
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    return sorted({*eos, tokenizer.eos_token_id} - {None})


def fork_cache(cache: Any) -> Any:
    """A cache over the same tensors, for one generation to extend: no copy.

    Dynamic layers replace their tensors when they grow or crop (torch.cat, slicing) and never
    write into them, so the original stays as it was and can serve the next review.
    """
    fork = copy.copy(cache)
    fork.layers = [copy.copy(layer) for layer in cache.layers]
    return fork


def adopt_cache(layers: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> Any:
    """A full-attention DynamicCache holding these (keys, values) as they are (its constructor would copy them)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache()
    cache.layers = []
    for keys, values in layers:
        layer = DynamicLayer()
        layer.lazy_initialization(keys, values)
        layer.keys, layer.values = keys, values
        cache.layers.append(layer)
    return cache


def full_attention(config) -> bool:
    """Whether every cache layer of this model keeps every position (no sliding window, no linear attention)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    return all(type(layer) is DynamicLayer for layer in DynamicCache(config=config).layers)


def _room(model, caches: Sequence[Any | None] | None, ends: Sequence[int], rows: int, capacity: int) -> Any:
    """A StaticCache of `capacity` columns, row i's cache (if any) copied in right-aligned at `max(ends)`.

    Generation then writes each step in place; a dynamic cache would copy all of itself on every
    step (`torch.cat`), which on a long conversation costs more than the step's own arithmetic.
    None for models with layers a static cache does not hold whole (sliding windows, linear attention).
    """
    from transformers import StaticCache
    from transformers.cache_utils import DynamicLayer

    live = [(i, c) for i, c in enumerate(caches or ()) if c is not None and ends[i]]
    if not full_attention(model.config) or any(type(layer) is not DynamicLayer for _, c in live for layer in c.layers):
        return None
    room = StaticCache(config=model.config, max_cache_len=capacity)
    split = max(ends, default=0)
    for li, layer in enumerate(room.layers if live else ()):  # without a cache the first forward sizes the room
        keys, values = live[0][1].layers[li].keys, live[0][1].layers[li].values
        layer.lazy_initialization(keys.new_empty(rows, *keys.shape[1:]), values.new_empty(rows, *values.shape[1:]))
        for i, c in live:
            layer.keys[i, :, split - ends[i] : split] = c.layers[li].keys[0, :, : ends[i]]
            layer.values[i, :, split - ends[i] : split] = c.layers[li].values[0, :, : ends[i]]
        layer.cumulative_length.fill_(split)
    return room


@torch.no_grad()
def generate(
    model,
    prompts: Sequence[Sequence[int]],
    *,
    pad_id: int,
    stop_ids: Sequence[int],
    max_new_tokens: int,
    sampling: Sampling | None = None,
    suppress_ids: Sequence[int] = (),
    caches: Sequence[Any] | None = None,
    output_logits: bool = False,
    **generate_kwargs: Any,
) -> Batch:
    """Continue every prompt of one batch; `caches[i]` (or None), if given, covers a prefix of prompt i.

    Rows whose caches cover different lengths keep all of it: each cache is right-aligned at one
    column, each row's uncached rest at the batch's end, and the gap between is masked (generate
    counts positions from the mask, so no row sees the gap). `generate_kwargs` reach
    `model.generate` last, over the settings above.
    """
    cached = [0] * len(prompts) if caches is None else [0 if c is None else c.get_seq_length() for c in caches]
    split = max(cached)
    width = split + max(len(p) - a for p, a in zip(prompts, cached))
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, (p, a) in enumerate(zip(prompts, cached)):
        p = torch.tensor(list(p), dtype=torch.long)
        ids[i, split - a : split], ids[i, width - len(p) + a :] = p[:a], p[a:]
        mask[i, split - a : split] = mask[i, width - len(p) + a :] = 1
    pads = [int(m.argmax()) for m in mask]
    kwargs: dict[str, Any] = {
        "max_new_tokens": max_new_tokens, "eos_token_id": list(stop_ids), "pad_token_id": pad_id,
        "return_dict_in_generate": True, "output_logits": output_logits,
    }
    if sampling is None:
        kwargs.update(do_sample=False, num_beams=1, repetition_penalty=1.0, no_repeat_ngram_size=0)
    else:
        kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k)
    if suppress_ids:
        kwargs["suppress_tokens"] = list(suppress_ids)
    room = _room(model, caches, cached, len(prompts), width + max_new_tokens)
    if room is not None:
        kwargs["past_key_values"] = room
    elif split:  # a cache with sliding-window or linear-attention layers does not slice by row
        if len(prompts) > 1:
            raise ValueError("batched cache reuse needs full-attention cache layers; use batch_size=1")
        kwargs["past_key_values"] = caches[0]
    kwargs.update(generate_kwargs)
    device = next(model.parameters()).device
    # disable_compile: with a static cache generate would compile on a GPU, a new graph for each batch's shape
    out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), disable_compile=True, **kwargs)
    if room is not None:  # callers keep and extend what was written: views of it, grown by copy, never written into
        written = int(room.get_seq_length())
        out.past_key_values = adopt_cache([(layer.keys[:, :, :written], layer.values[:, :, :written])
                                           for layer in room.layers])
    logits = torch.stack(out.logits, dim=1).float().cpu() if output_logits else None
    stops = set(stop_ids)
    rows = []
    for i, row in enumerate(out.sequences[:, width:].tolist()):
        cut = next((j for j, t in enumerate(row) if t in stops), None)
        tokens = row if cut is None else row[:cut]
        n_logits = len(row) if cut is None else cut + 1
        rows.append(Generated(tokens, cut is not None, None if logits is None else logits[i, :n_logits]))
    return Batch(rows, out, pads, width, mask)
