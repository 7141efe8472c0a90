"""P(FAIL) at a generated flag: the reviewer's verdict as a score, for AUROC and low-FPR thresholds.

Read from generate's own cache in one extra forward, so a score costs no second prefill.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch

from splitpersona.assemble import FormatConfig
from splitpersona.generation import Batch
from splitpersona.prompts import flag_continuation


def fail_probabilities(
    model,
    tokenizer,
    fmt: FormatConfig,
    batch: Batch,
    prompts: list[list[int]],
    *,
    pad_id: int,
    masked: bool,
    mode: Callable[[], AbstractContextManager],
) -> list[float | None]:
    """P(FAIL) / (P(FAIL) + P(PASS)) at each row's flag, read from generate's own cache in one forward.

    `mode()` runs the model as the batch was generated (`Persona.adapter_mode`). Each row keeps its
    prompt and the review part of its generation (`flag_continuation`); the cache is cut after the
    longest such part (in place: it is generate's own), each row's later columns are masked, and
    only what a row's cache lacks plus its forced flag prefix runs, the rows left-padded into one
    block. None where the cache holds layers that do not keep every position (sliding windows):
    those would need a second prefill.
    """
    from peft.tuners.lora.variants import calculate_alora_offsets
    from transformers.cache_utils import DynamicLayer

    cache, width = batch.output.past_key_values, batch.width
    if cache is None or any(type(layer) is not DynamicLayer for layer in cache.layers):
        return [None] * len(prompts)
    device = next(model.parameters()).device
    new = batch.output.sequences[:, width:].tolist()
    conts = [flag_continuation(tokenizer, fmt, gen.tokens) for gen in batch.rows]
    held = [min(kept, cache.get_seq_length() - width) for kept, _, _, _ in conts]
    rests = [new[r][h:kept] + forced for r, (h, (kept, forced, _, _)) in enumerate(zip(held, conts))]
    cut, block = width + max(held), max(len(rest) for rest in rests)
    cache.crop(cut - cache.get_seq_length())
    ids = torch.full((len(rests), block), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rests), cut + block), dtype=torch.long)
    mask[:, :width] = batch.mask
    for r, (h, rest) in enumerate(zip(held, rests)):
        ids[r, block - len(rest) :] = torch.tensor(rest)
        mask[r, width : width + h] = mask[r, cut + block - len(rest) :] = 1
    kwargs: dict[str, Any] = {}
    if masked:  # the split token is in the cache, so peft must be told where the adapter starts
        seqs = [prompt + new[r][: conts[r][0]] + conts[r][1] for r, prompt in enumerate(prompts)]
        longest = max(len(seq) for seq in seqs)
        full = torch.tensor([[pad_id] * (longest - len(seq)) + seq for seq in seqs])
        kwargs["alora_offsets"] = calculate_alora_offsets(model.peft_config, model.active_adapter, full)
    with torch.no_grad(), mode():
        logits = model(
            input_ids=ids.to(device), attention_mask=mask.to(device),
            position_ids=(mask.cumsum(-1) - 1).clamp(min=0)[:, cut:].to(device),
            past_key_values=cache, use_cache=True, **kwargs,
        ).logits[:, -1].float()
    return [
        torch.sigmoid(logits[r, fail_id] - logits[r, pass_id]).item()
        for r, (_, _, pass_id, fail_id) in enumerate(conts)
    ]
