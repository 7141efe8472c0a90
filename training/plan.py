"""`spt train --plan`: what a run needs on each GPU, worked out before a GPU is rented.

The model is built on torch's meta device from its architecture (no weights, no memory, nothing
downloaded when `plan.model_arch` names a configs/models/ file) and the run's LoRA config is put
in with peft, so the parameter counts are peft's own, not a formula's. Model states per GPU follow
DeepSpeed's own accounting of ZeRO (its estimators, which tests/test_plan.py checks this against,
only cover full fine-tunes, so the trainable/frozen split is done here). Activations come from a
per-token count of the tensors autograd keeps in a bf16 decoder layer with fp32 LoRA on every linear
layer and SDPA attention (measured with saved-tensor hooks; tests/test_plan.py re-measures it).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

from splitpersona.adapter import LoraSettings
from splitpersona.config import ConfigError, load_yaml
from splitpersona.training.config import TrainConfig

GIB = 2**30

# Bytes autograd keeps per token and decoder layer, in bf16 with fp32 LoRA on every linear layer (peft
# casts each adapted layer's input to the adapter's fp32): coefficients of the hidden size, query width
# (heads x head_dim), key width (keys and values together), MLP width, LoRA rank and attention heads (SDPA's log-sum-exp).
ACT_PER_HIDDEN, ACT_PER_QUERY, ACT_PER_KV, ACT_PER_MLP, ACT_PER_RANK, ACT_PER_HEAD = 18, 6, 4, 8, 14, 4
# Logits, per position and vocabulary entry: the model's logits, the fp32 copy the loss reads, the fp32
# log-softmax kept for backward and its fp32 gradient.
LOGIT_FP32_BYTES = 4 + 4 + 4


@dataclass(frozen=True)
class Params:
    """Parameter counts of the adapted model (tied weights once)."""

    total: int
    trainable: int
    persistent_frozen: int = 0  # under ZeRO-3, parameters below the persistence threshold stay whole on every GPU
    persistent_trainable: int = 0
    largest_module: int = 0  # parameters of the largest single module (ZeRO-3 gathers one at a time)
    largest_module_trainable: int = 0

    @property
    def frozen(self) -> int:
        return self.total - self.trainable


@dataclass(frozen=True)
class ModelStates:
    """Bytes per GPU of what lives for the whole run."""

    weights: int
    gradients: int
    optimizer: int
    gathered: int  # ZeRO-3: the largest module gathered whole (16-bit weights and gradients)


def model_states(params: Params, *, stage: int | None, gpus: int, weight_bytes: int) -> ModelStates:
    """Model states per GPU. `stage` None is our plain-torch engine: the adapter's fp32 weights, fp32
    gradients and AdamW's two fp32 moments, nothing partitioned. Under DeepSpeed the module is cast to
    the run's precision and ZeRO keeps an fp32 master copy, fp32 gradients and the moments; stage 1
    partitions the optimizer states, 2 also the gradients, 3 also the weights (DeepSpeed's accounting:
    2 + 18/N bytes per parameter at stage 2, 18/N plus the gathered largest layer at 3, in bf16)."""
    w, t = weight_bytes, params.trainable
    if stage is None:
        return ModelStates(weights=params.frozen * w + t * 4, gradients=t * 4, optimizer=t * 8, gathered=0)
    if stage == 3:
        whole = (params.persistent_frozen + params.persistent_trainable) * w
        weights = whole + (params.total * w - whole) // gpus
        return ModelStates(
            weights=weights, gradients=t * 4 // gpus, optimizer=t * 12 // gpus,
            gathered=w * (params.largest_module + params.largest_module_trainable),
        )
    grads = t * (w + 4)
    return ModelStates(
        weights=params.total * w, gradients=grads // gpus if stage == 2 else grads,
        optimizer=t * 12 // gpus if stage >= 1 else t * 12, gathered=0,
    )


def layer_activation_bytes(arch, lora_r: int, weight_bytes: int) -> int:
    """Bytes autograd keeps per token for one decoder layer (fp32 runs keep about twice the bf16 figure)."""
    heads = arch.num_attention_heads
    head_dim = getattr(arch, "head_dim", None) or arch.hidden_size // heads
    kv = getattr(arch, "num_key_value_heads", None) or heads
    per_token = (
        ACT_PER_HIDDEN * arch.hidden_size + ACT_PER_QUERY * heads * head_dim + ACT_PER_KV * kv * head_dim
        + ACT_PER_MLP * arch.intermediate_size + ACT_PER_RANK * lora_r + ACT_PER_HEAD * heads
    )
    return per_token * weight_bytes // 2


@dataclass(frozen=True)
class Plan:
    source: str
    base_model: str
    arch_source: str
    arch_type: str
    layers: int
    hidden: int
    params: Params
    lora: str
    engine: str  # "torch" or "ZeRO-<stage>"
    gpus: int
    gpu_memory_gib: float
    headroom: float
    precision: str
    micro_batch: int
    accumulation: int
    max_length: int
    states: ModelStates
    buffers: int
    activations_on: int  # with gradient checkpointing
    activations_off: int
    logits: int
    checkpointing: bool

    @property
    def tokens_per_step(self) -> int:
        return self.micro_batch * self.accumulation * self.gpus * self.max_length

    @property
    def activations(self) -> int:
        return (self.activations_on if self.checkpointing else self.activations_off) + self.logits

    @property
    def total(self) -> int:
        s = self.states
        return s.weights + s.gradients + s.optimizer + s.gathered + self.buffers + self.activations

    @property
    def usable(self) -> float:
        return self.gpu_memory_gib * (1 - self.headroom) * GIB

    @property
    def fits(self) -> bool:
        return self.total <= self.usable

    @property
    def total_without_checkpointing(self) -> int:
        return self.total - self.activations_on + self.activations_off

    @property
    def fits_without_checkpointing(self) -> bool:
        return self.total_without_checkpointing <= self.usable

    def render(self) -> str:
        s, p = self.states, self.params

        def g(b: int) -> str:
            return f"{b / GIB:9.2f}"

        lines = [
            f"plan for {self.source}",
            f"model: {self.base_model} ({self.arch_type} from {self.arch_source}): {self.layers} layers, hidden {self.hidden}",
            (f"parameters: {p.total / 1e9:.2f}B with the adapter, {p.trainable / 1e6:.1f}M trainable "
             f"({p.trainable / p.total:.2%}; {self.lora}, counted by peft on the meta device)"),
            (f"tokens per optimizer step: {self.tokens_per_step:,} = micro-batch {self.micro_batch} x accumulation "
             f"{self.accumulation} x {self.gpus} GPU(s) x max_length {self.max_length}"),
            f"memory per GPU (GiB), {self.engine} on {self.gpus} GPU(s), {self.precision} weights:",
            f"  weights           {g(s.weights)}",
            f"  gradients         {g(s.gradients)}",
            f"  optimizer states  {g(s.optimizer)}",
        ]
        if s.gathered:
            lines.append(f"  ZeRO-3 gathered   {g(s.gathered)}   (largest module, gathered whole)")
        if self.buffers:
            lines.append(f"  ZeRO buffers      {g(self.buffers)}   (reduce/gather buckets)")
        on, off = "(used)" if self.checkpointing else "", "" if self.checkpointing else "(used)"
        lines += [
            f"  activations       {g(self.activations_on)}   gradient checkpointing on {on}",
            f"                    {g(self.activations_off)}   gradient checkpointing off {off}",
            f"  logits            {g(self.logits)}   (every position a target: the worst case)",
            (f"  total             {g(self.total)}   of {self.usable / GIB:.2f} usable ({self.gpu_memory_gib:g} GiB, "
             f"{self.headroom:.0%} kept free)"),
        ]
        lines.append("fits" if self.fits else
                     f"does not fit: {self.total / GIB:.2f} GiB per GPU > {self.usable / GIB:.2f} GiB usable")
        if self.checkpointing and self.fits_without_checkpointing:
            lines.append(f"fits without gradient checkpointing too ({self.total_without_checkpointing / GIB:.2f} GiB): "
                         "gradient_checkpointing=false saves its recomputation, about a quarter of the step time")
        return "\n".join(lines)


def load_arch_file(path: str | Path):
    """A configs/models/*.yaml file as its transformers config class (model_type picks the class)."""
    from transformers import AutoConfig

    fields = load_yaml(path)
    kind = fields.pop("model_type", None)
    if not kind:
        raise ConfigError(f"{path}: no model_type")
    try:
        return AutoConfig.for_model(kind, **fields)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{path}: {e}") from e


def load_arch(cfg: TrainConfig):
    """The run's model config and where it came from: `plan.model_arch`, else base_model's config.json."""
    from transformers import AutoConfig

    if cfg.plan.model_arch is not None:
        return load_arch_file(cfg.plan.model_arch), cfg.plan.model_arch
    try:
        return AutoConfig.from_pretrained(cfg.base_model), f"{cfg.base_model}/config.json"
    except (OSError, ValueError) as e:
        raise ConfigError(f"no architecture for {cfg.base_model!r}: set plan.model_arch "
                          f"(configs/models/*.yaml) ({e})") from e


def meta_model(arch, lora: LoraSettings, lora_mask: bool, strategy: str):
    """The run's adapted model on the meta device: shapes only, no memory."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from splitpersona.adapter import build_lora_config
    from splitpersona.token import SpecialTokens

    # Any two ids inside the vocabulary: they place the gate and the trainable row, not the counts.
    tokens = SpecialTokens(strategy=strategy, split_token="split", split_id=arch.vocab_size - 2,
                           control_token="control", control_id=arch.vocab_size - 1)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(arch)
        return get_peft_model(model, build_lora_config(lora, lora_mask=lora_mask, tokens=tokens))


def count_params(model, persistence_threshold: int = 0) -> Params:
    def count(ps, trainable: bool | None = None) -> int:
        return sum(p.numel() for p in ps if trainable is None or p.requires_grad == trainable)

    params = list(model.parameters())  # shared (tied) parameters come once
    small = [p for p in params if p.numel() < persistence_threshold]
    largest = max(model.modules(), key=lambda m: count(m.parameters(recurse=False)))
    own = list(largest.parameters(recurse=False))
    return Params(
        total=count(params), trainable=count(params, True), persistent_frozen=count(small, False),
        persistent_trainable=count(small, True), largest_module=count(own), largest_module_trainable=count(own, True),
    )


@functools.lru_cache(maxsize=8)
def _adapted_params(arch_json: str, lora_json: str, lora_mask: bool, strategy: str, threshold: int) -> Params:
    """Counted once per architecture and adapter: peft takes seconds to wrap a 70B model, even on meta."""
    from transformers import AutoConfig

    fields = json.loads(arch_json)
    arch = AutoConfig.for_model(fields.pop("model_type"), **fields)
    lora = LoraSettings.model_validate_json(lora_json)
    return count_params(meta_model(arch, lora, lora_mask, strategy), threshold)


def _zero(cfg: TrainConfig, gpus: int):
    """The DeepSpeed file's ZeRO settings with DeepSpeed's defaults, after the trainer's own checks of it."""
    if cfg.deepspeed is None:
        return None
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    from splitpersona.training.engine import deepspeed_config

    ds = deepspeed_config(cfg.deepspeed, cfg, gpus)
    try:
        return DeepSpeedZeroConfig(**ds.get("zero_optimization", {}))
    except ValueError as e:
        raise ConfigError(f"{cfg.deepspeed}: zero_optimization: {e}") from e


def make_plan(cfg: TrainConfig, source: str = "") -> Plan:
    """Raises ConfigError where the config cannot describe a run on its planned GPUs at all."""
    gpus = cfg.plan.gpus
    if cfg.deepspeed is None and gpus > 1:
        raise ConfigError(f"plan.gpus is {gpus} but no deepspeed config is set: the plain-torch engine runs one process")
    try:
        accumulation = cfg.accumulation_steps(gpus)
    except ValueError as e:
        raise ConfigError(f"plan.gpus {gpus}: {e}") from e
    zero = _zero(cfg, gpus)
    arch, arch_source = load_arch(cfg)
    stage = None if zero is None else int(zero.stage)
    threshold = zero.param_persistence_threshold if stage == 3 else 0
    params = _adapted_params(arch.to_json_string(), cfg.lora.model_dump_json(), cfg.lora_mask, cfg.tokens.strategy, threshold)
    w = 2 if cfg.precision == "bf16" else 4
    states = model_states(params, stage=stage, gpus=gpus, weight_bytes=w)
    buffers = 0
    if stage is not None and stage >= 1:
        gather = min(zero.prefetch_bucket_size, params.total) if stage == 3 else min(zero.allgather_bucket_size, params.trainable)
        buffers = (min(zero.reduce_bucket_size, params.trainable) + gather) * w
    tokens = cfg.micro_batch_size * cfg.max_length
    layer = layer_activation_bytes(arch, cfg.lora.r, w)
    layers = arch.num_hidden_layers
    targets = cfg.lora.target_modules
    return Plan(
        source=source or "the config", base_model=cfg.base_model, arch_source=arch_source, arch_type=arch.model_type,
        layers=layers, hidden=arch.hidden_size, params=params,
        lora=f"LoRA r {cfg.lora.r} on {targets if isinstance(targets, str) else ', '.join(targets)}",
        engine="plain torch" if stage is None else f"ZeRO-{stage}", gpus=gpus, gpu_memory_gib=cfg.plan.gpu_memory_gib,
        headroom=cfg.plan.headroom, precision=cfg.precision, micro_batch=cfg.micro_batch_size, accumulation=accumulation,
        max_length=cfg.max_length, states=states, buffers=buffers,
        activations_on=tokens * (layers * arch.hidden_size * w + layer), activations_off=tokens * layers * layer,
        logits=tokens * arch.vocab_size * (w + LOGIT_FP32_BYTES), checkpointing=cfg.gradient_checkpointing,
    )


def plan_path(path: str | Path, overrides: list[str] | None = None) -> Plan:
    from splitpersona.config import load_config

    return make_plan(load_config(TrainConfig, path, overrides or []), source=str(path))
