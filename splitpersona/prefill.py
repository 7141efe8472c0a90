"""The main model's KV cache of a conversation, computed once and reused by every review of it.

Masked runs (peft aLoRA) keep the adapter off for every token before the split token, so the KV
cache of the conversation is the main model's own. A review then reuses it (`Persona.prefill`,
`Persona.answer`) and computes only the split token, the intervention and the review with the
adapter. Reuse stops strictly before the split token: a base cache that covers the token would hide
it from peft, which computes the adapter's offsets from the new tokens alone and so leaves the
adapter off. Unmasked runs re-read the conversation with the adapter on, so nothing can be reused.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch

from splitpersona.generation import adopt_cache, fork_cache, full_attention


@dataclass
class Prefill:
    """A base-model (adapter-off) KV cache of `input_ids`: the main model's view of a conversation.

    A review extends a fork of it (`generation.fork_cache`: same tensors, no copy) and leaves it as
    it was, so one prefill serves many reviews.
    """

    input_ids: list[int]
    cache: Any  # transformers DynamicCache, batch size 1
    hidden: dict[int, torch.Tensor] | None = None  # hidden_states index -> [len(input_ids), hidden size], if asked

    def __post_init__(self) -> None:
        if self.cache.get_seq_length() != len(self.input_ids):
            raise ValueError(f"cache holds {self.cache.get_seq_length()} tokens, input_ids {len(self.input_ids)}")


def prefill_caches(
    model,
    prefixes: list[list[int]],
    *,
    pad_id: int,
    batch_size: int,
    base: Callable[[], AbstractContextManager],
    hidden: Sequence[int] = (),
) -> list[Prefill]:
    """Base-model caches of `prefixes`: one left-padded forward per `batch_size` rows, each row a view of it.

    `base()` runs the model as the base model (`Persona.adapter_mode("off")`). Positions count from
    each row's first token, so a row's keys and values are those it has alone. Models with
    sliding-window layers go one row a forward (their caches do not slice by row).
    """
    from transformers import DynamicCache

    device = next(model.parameters()).device
    size = batch_size if full_attention(model.config) else 1
    out: list[Prefill | None] = [None] * len(prefixes)
    order = sorted(range(len(prefixes)), key=lambda i: -len(prefixes[i]))
    for start in range(0, len(order), size):
        rows = order[start : start + size]
        width = len(prefixes[rows[0]])
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for j, i in enumerate(rows):
            ids[j, width - len(prefixes[i]) :] = torch.tensor(prefixes[i])
            mask[j, width - len(prefixes[i]) :] = 1
        padded = {}
        if not bool(mask.all()):
            padded = {"attention_mask": mask.to(device), "position_ids": (mask.cumsum(-1) - 1).clamp(min=0).to(device)}
        cache = DynamicCache(config=model.config)
        with torch.no_grad(), base():
            states = model(input_ids=ids.to(device), past_key_values=cache, use_cache=True, logits_to_keep=1,
                           output_hidden_states=bool(hidden), **padded).hidden_states
        for j, i in enumerate(rows):
            pad = width - len(prefixes[i])
            row = cache if len(rows) == 1 else adopt_cache(
                [(layer.keys[j : j + 1, :, pad:], layer.values[j : j + 1, :, pad:]) for layer in cache.layers]
            )
            out[i] = Prefill(list(prefixes[i]), row, {h: states[h][j, pad:] for h in hidden} if hidden else None)
    return out  # type: ignore[return-value]


def reusable(ids: list[int], prefill: Prefill | None) -> Any:
    """A fork of `prefill`'s cache cut to its longest prefix of `ids`, or None where nothing is reusable.

    Generation computes the rest of `ids` in its own prefill, the batch's rows together.
    """
    if prefill is None:
        return None
    rows = {layer.keys.shape[0] for layer in prefill.cache.layers if layer.is_initialized}
    if rows - {1}:
        raise ValueError(f"a prefill holds one conversation, got a cache of batch size {sorted(rows)}")
    keep = len(os.path.commonprefix([list(prefill.input_ids), list(ids)]))  # compares lists element by element
    if not keep:
        return None
    cache = fork_cache(prefill.cache)
    surplus = cache.get_seq_length() - keep
    if surplus:
        try:
            cache.crop(-surplus)
        except RuntimeError:  # a sliding-window layer past its window keeps no past to roll back to
            return None
    return cache
