"""The persona adapter: how the gate defined in `splitpersona.gate` is put into peft.

In masked mode the adapter acts from the last split-personality token onward and nowhere before
it. We use peft's activated LoRA (`alora_invocation_tokens`) because it is exactly this
gate, is saved inside the adapter's own config (a loaded adapter cannot drift from training),
and works with `generate` and a reused base-model KV cache. Unmasked mode is plain LoRA, on at
every position of the persona's sequence.
"""

from __future__ import annotations

import torch
from peft import LoraConfig
from pydantic import Field, model_validator

from splitpersona.config import StrictModel
from splitpersona.token import SpecialTokens


class LoraSettings(StrictModel):
    r: int = Field(16, gt=0)
    alpha: float | None = Field(None, description="Defaults to r (alpha = r).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | str = Field(
        "all-linear", description="'all-linear' = every linear projection of attention and MLP (not lm_head)."
    )
    use_rslora: bool = False
    train_split_embedding: bool = Field(
        True, description="Train the split token's embedding row (peft trainable_token_indices); the rest stays frozen."
    )

    @model_validator(mode="after")
    def _targets_nonempty(self) -> LoraSettings:
        if not self.target_modules:
            raise ValueError("lora.target_modules must not be empty")
        return self


def build_lora_config(settings: LoraSettings, *, lora_mask: bool, tokens: SpecialTokens) -> LoraConfig:
    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha if settings.alpha is not None else settings.r,
        lora_dropout=settings.dropout,
        target_modules=settings.target_modules,
        use_rslora=settings.use_rslora,
        alora_invocation_tokens=[tokens.split_id] if lora_mask else None,
        trainable_token_indices=[tokens.split_id] if settings.train_split_embedding else None,
        task_type="CAUSAL_LM",
    )


def peft_gate(model, input_ids: torch.Tensor) -> torch.Tensor:
    """The positions peft itself will adapt for `input_ids` [B, T] (True = adapter on).

    Read from peft's own offset computation, so a test can compare it with `gate_mask` and prove
    that what training sees is what inference sees.
    """
    from peft.tuners.lora.variants import calculate_alora_offsets

    T = input_ids.shape[1]
    config = model.peft_config[model.active_adapter]
    if not getattr(config, "alora_invocation_tokens", None):
        return torch.ones_like(input_ids, dtype=torch.bool)
    offsets = calculate_alora_offsets(model.peft_config, model.active_adapter, input_ids)
    rows = []
    for off in offsets:
        k = 0 if off is None else min(off, T)
        rows.append(torch.arange(T) >= T - k)
    return torch.stack(rows)
