"""The trainer's one config: every field here is read by the trainer (the `plan` section by
`spt train --plan`), and no other key is accepted.

Batch size is the global batch (samples per optimizer step), as published hyper-parameters state
it; gradient accumulation is derived from it, the micro-batch and the number of processes, so a
config means the same training on one GPU or eight.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from splitpersona.adapter import LoraSettings
from splitpersona.assemble import FormatConfig
from splitpersona.config import StrictModel
from splitpersona.templates import ChatTemplateConfig
from splitpersona.token import TokenConfig
from splitpersona.tracking import WandbConfig


class DataConfig(StrictModel):
    train_files: list[str] = Field(..., min_length=1, description="Training records (JSONL, TrainingRecord schema).")
    val_fraction: float = Field(
        0.0, ge=0.0, lt=1.0, description="Hold out this fraction of each topic's conversations for validation."
    )
    val_topics: list[str] = Field(default_factory=list, description="Hold out these whole topics for validation.")
    exclude_system_prompt_frac: float = Field(
        0.0, ge=0.0, le=1.0, description="Fraction of eligible training samples whose system prompt is removed."
    )
    swap_system_prompt_frac: float = Field(
        0.0, ge=0.0, le=1.0, description="Fraction of eligible training samples given the other variant's system prompt."
    )

    @model_validator(mode="after")
    def _consistent(self) -> DataConfig:
        if self.val_fraction and self.val_topics:
            raise ValueError("data: set val_fraction or val_topics, not both")
        if self.exclude_system_prompt_frac + self.swap_system_prompt_frac > 1.0:
            raise ValueError("data: exclude_system_prompt_frac + swap_system_prompt_frac must not exceed 1")
        return self


class OptimConfig(StrictModel):
    """AdamW over the adapter's parameters (kept in fp32 whatever the model's precision)."""

    lr: float = Field(1e-5, gt=0.0)
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = Field(1e-8, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    max_grad_norm: float = Field(1.0, ge=0.0, description="Clip the global gradient norm to this; 0 disables clipping.")


class ScheduleConfig(StrictModel):
    """Linear warmup from the floor, constant, then a cosine cooldown to `min_lr_ratio` x lr (the published
    shape, through transformers' get_wsd_schedule)."""

    warmup_frac: float = Field(0.1, ge=0.0, le=1.0)
    cooldown_frac: float = Field(0.5, ge=0.0, le=1.0)
    min_lr_ratio: float = Field(0.05, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _fits(self) -> ScheduleConfig:
        if self.warmup_frac + self.cooldown_frac > 1.0:
            raise ValueError("schedule: warmup_frac + cooldown_frac must not exceed 1")
        return self


class PlanConfig(StrictModel):
    """The hardware a run is meant for, checked by `spt train --plan` before any GPU is rented.

    Training itself runs on whatever the launcher gives it; only the plan reads these.
    """

    model_arch: str | None = Field(
        None, description="Architecture YAML of base_model (configs/models/*.yaml); None reads base_model's config.json."
    )
    gpus: int = Field(1, gt=0, description="GPUs the run is meant for (its DeepSpeed world size).")
    gpu_memory_gib: float = Field(80.0, gt=0.0, description="Memory of one GPU, GiB.")
    headroom: float = Field(
        0.1, ge=0.0, lt=1.0, description="Fraction of each GPU kept free: CUDA context, NCCL buffers, allocator fragmentation."
    )


class TrainConfig(StrictModel):
    base_model: str = Field(..., description="Hub id or local path of the base model.")
    tokenizer: str | None = Field(None, description="Hub id or path of the tokenizer; defaults to base_model.")
    tokens: TokenConfig = Field(default_factory=TokenConfig)
    chat_template: ChatTemplateConfig = Field(
        default_factory=ChatTemplateConfig, description="A family's chat template with its dates fixed; default: the tokenizer's own."
    )
    format: FormatConfig = Field(default_factory=FormatConfig)
    data: DataConfig
    lora: LoraSettings = Field(default_factory=LoraSettings)
    lora_mask: bool = Field(True, description="Adapter off before the split token (peft activated LoRA).")
    max_length: int = Field(2048, gt=0)
    batch_size: int = Field(16, gt=0, description="Global batch: samples per optimizer step, over all processes.")
    micro_batch_size: int = Field(1, gt=0, description="Samples per forward pass on one process.")
    epochs: int = Field(1, gt=0)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="Frozen base weights; the adapter trains in fp32 in every engine (engine.PRECISION_POLICY)."
    )
    deepspeed: str | None = Field(None, description="DeepSpeed config (YAML/JSON); None trains with plain torch.")
    gradient_checkpointing: bool = False
    dist_timeout_minutes: float = Field(
        120.0, gt=0.0, description="Collective timeout: ranks wait this long at the first collective while a 70B loads "
        "from slow storage (DeepSpeed 0.19 defaults to 10 minutes)."
    )
    checkpoints_per_epoch: int = Field(1, ge=1)
    save_every_minutes: float | None = Field(
        None, gt=0.0, description="Also checkpoint at the first step boundary this long after the last checkpoint "
        "(rank 0's clock): bounds the work a kill without warning loses."
    )
    val_per_epoch: int = Field(1, ge=0, description="Validation passes per epoch (one more runs at the end).")
    seed: int = 42
    output_dir: str
    resume: bool = Field(False, description="Continue from the last complete checkpoint in output_dir.")
    stop_after_steps: int | None = Field(
        None, gt=0, description="Checkpoint and stop after this optimizer step (the schedule still spans all epochs)."
    )
    wandb: WandbConfig = Field(default_factory=WandbConfig)
    license: str = Field("other", description="The model card's license (a Hugging Face license id; 'other': the "
                         "base model's terms).")
    plan: PlanConfig = Field(default_factory=PlanConfig)

    @model_validator(mode="after")
    def _batch(self) -> TrainConfig:
        if self.batch_size % self.micro_batch_size:
            raise ValueError(f"batch_size {self.batch_size} is not a multiple of micro_batch_size {self.micro_batch_size}")
        return self

    def accumulation_steps(self, world_size: int) -> int:
        per_step = self.micro_batch_size * world_size
        if self.batch_size % per_step:
            raise ValueError(
                f"batch_size {self.batch_size} is not a multiple of micro_batch_size {self.micro_batch_size} "
                f"x {world_size} processes"
            )
        return self.batch_size // per_step


# Keys that may differ between a run and its resumption: they change where and how long it runs, not what it learns.
RESUMABLE_KEYS = frozenset(
    {"resume", "stop_after_steps", "wandb", "plan", "dist_timeout_minutes", "save_every_minutes", "license"}
)
