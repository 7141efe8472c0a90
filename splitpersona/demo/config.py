"""The demo's one config: full settings in YAML, and a `quick` list of overrides that `--quick` applies.

The quick setting is written as `key=value` overrides, the syntax of the command line, so a quick
run differs from a full one exactly by what that list says.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from pydantic import Field, model_validator

from splitpersona.config import StrictModel, load_config
from splitpersona.demo.world import WorldConfig


class MainModelConfig(StrictModel):
    """The tiny main model and its pretraining from scratch on the world's corpus."""

    corpus_size: int = Field(16000, gt=0, description="Conversations drawn for pretraining (each step sees fresh ones).")
    vocab_size: int = Field(1024, ge=300)
    hidden_size: int = Field(128, gt=0)
    num_layers: int = Field(3, gt=0)
    num_heads: int = Field(4, gt=0)
    num_kv_heads: int = Field(2, gt=0)
    intermediate_size: int = Field(256, gt=0)
    init_std: float | None = Field(
        None, gt=0.0, description="None = hidden_size**-0.5; HF's 0.02 leaves a hidden-128 model unable to copy names."
    )
    steps: int = Field(1000, gt=0)
    batch_size: int = Field(16, gt=0)
    lr: float = Field(1.5e-3, gt=0.0)
    warmup_frac: float = Field(0.05, ge=0.0, lt=1.0)
    final_lr_frac: float = Field(0.1, ge=0.0, le=1.0, description="Cosine decay ends at lr * this.")
    weight_decay: float = Field(0.0, ge=0.0)
    grad_clip: float = Field(1.0, gt=0.0)
    seed: int = 0
    threads: int | None = Field(None, gt=0, description="torch threads; None keeps torch's default (OMP_NUM_THREADS).")
    eval_items: int = Field(200, gt=0, description="Held-out scenarios per measured condition.")
    eval_temperature: float = Field(0.7, ge=0.0, description="0 = greedy.")
    eval_batch_size: int = Field(64, gt=0)
    max_new_tokens: int = Field(48, gt=0)

    @model_validator(mode="after")
    def _heads(self) -> MainModelConfig:
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError("main_model: hidden_size must divide by num_heads, and num_heads by num_kv_heads")
        return self


class DemoConfig(StrictModel):
    world: WorldConfig = Field(default_factory=WorldConfig)
    main_model: MainModelConfig = Field(default_factory=MainModelConfig)
    quick: list[str] = Field(default_factory=list, description="Overrides (key=value) applied by --quick.")


def load_demo_config(
    path: str | os.PathLike[str] | None = None, overrides: Sequence[str] = (), *, quick: bool = False
) -> DemoConfig:
    """YAML, then the quick overrides if asked, then the command line's (later wins).

    The quick list is validated on every load, so a typo in it fails the full run too.
    """
    full = load_config(DemoConfig, path, overrides)
    fast = load_config(DemoConfig, path, [*full.quick, *overrides])
    return fast if quick else full
