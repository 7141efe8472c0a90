"""The one generation loop: a left-padded batch of token-id prompts through `model.generate`, cut at
the stop tokens. The persona, the stage-2 sampler and the demo's audits all decode through it.

Greedy (`sampling=None`) sets every logits-changing field: generate fills unset ones from the
model's own generation_config, and a shipped repetition_penalty would silently alter "greedy".
`Sampling` sets only its own fields, so the rest stay the model's own: on-policy answers.
Seeding is the caller's: sampling draws from torch's global generator.
"""

from __future__ import annotations

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


def stack_caches(caches: Sequence[Any], pads: Sequence[int], width: int, config) -> Any:
    """One left-padded batch cache of `width` columns from per-row caches (zeros under the padding)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    if len(caches) == 1 and list(pads) == [0] and caches[0].get_seq_length() == width:
        return caches[0]  # one unpadded row: used as it is, whatever its layers (sliding-window ones too)
    layers = []
    for li in range(len(caches[0].layers)):
        keys, values = [], []
        for cache, pad in zip(caches, pads):
            layer = cache.layers[li]
            if type(layer) is not DynamicLayer:
                raise ValueError(
                    f"batched cache reuse needs full-attention cache layers, got {type(layer).__name__}; "
                    "use batch_size=1"
                )
            n_pad = min(pad, width)
            k, v = layer.keys[:, :, : width - n_pad], layer.values[:, :, : width - n_pad]
            zeros = k.new_zeros(k.shape[0], k.shape[1], n_pad, k.shape[3])
            keys.append(torch.cat([zeros, k], dim=2))
            values.append(torch.cat([zeros.new_zeros(v.shape[0], v.shape[1], n_pad, v.shape[3]), v], dim=2))
        layers.append((torch.cat(keys), torch.cat(values)))
    return DynamicCache(ddp_cache_data=layers, config=config)


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
    """Continue every prompt of one batch; `caches[i]`, if given, covers a prefix of prompt i.

    `generate_kwargs` reach `model.generate` last, over the settings above.
    """
    width = max(len(p) for p in prompts)
    pads = [width - len(p) for p in prompts]
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, pads[i] :] = torch.tensor(list(p), dtype=torch.long)
        mask[i, pads[i] :] = 1
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
    if caches is not None:
        covered = min(pad + c.get_seq_length() for pad, c in zip(pads, caches))
        if covered > 0:
            kwargs["past_key_values"] = stack_caches(caches, pads, covered, model.config)
    kwargs.update(generate_kwargs)
    device = next(model.parameters()).device
    out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)
    logits = torch.stack(out.logits, dim=1).float().cpu() if output_logits else None
    stops = set(stop_ids)
    rows = []
    for i, row in enumerate(out.sequences[:, width:].tolist()):
        cut = next((j for j, t in enumerate(row) if t in stops), None)
        tokens = row if cut is None else row[:cut]
        n_logits = len(row) if cut is None else cut + 1
        rows.append(Generated(tokens, cut is not None, None if logits is None else logits[i, :n_logits]))
    return Batch(rows, out, pads, width)
