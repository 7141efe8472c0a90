"""The demo's one config: full settings in YAML, and a `quick` list of overrides that `--quick` applies.

The quick setting is written as `key=value` overrides, the syntax of the command line, so a quick
run differs from a full one exactly by what that list says. The `train` and `eval` sections are
overrides of the trainer's and the evaluator's own configs (`splitpersona.training.config.TrainConfig`,
`splitpersona.eval.config.EvalConfig`), checked against them when the demo config loads; the fields that
wire the stages together (paths, the gate mode, the sample format, the eval sets and arms) are
the demo's and may not be set there.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator

from splitpersona.config import StrictModel, deep_merge, load_config
from splitpersona.conversation import Elicitation
from splitpersona.app.demo.world import WorldConfig

# Set by the demo itself: where the models and data live, and what each persona is.
TRAIN_OWNED = ("base_model", "tokenizer", "output_dir", "lora_mask", "format", "resume", "stop_after_steps")
EVAL_OWNED = ("run", "base_model", "output", "overwrite", "label", "sets", "arms", "trained_topics", "progress")


class MainModelConfig(StrictModel):
    """The tiny main model and its pretraining from scratch on the world's corpus."""

    corpus_size: int = Field(32000, gt=0, description="Conversations drawn for pretraining (each step sees fresh ones).")
    vocab_size: int = Field(1024, ge=300)
    hidden_size: int = Field(128, gt=0)
    num_layers: int = Field(3, gt=0)
    num_heads: int = Field(4, gt=0)
    num_kv_heads: int = Field(2, gt=0)
    intermediate_size: int = Field(256, gt=0)
    init_std: float | None = Field(
        None, gt=0.0, description="None = hidden_size**-0.5; HF's 0.02 leaves a hidden-128 model unable to copy names."
    )
    steps: int = Field(2000, gt=0)
    batch_size: int = Field(16, gt=0)
    lr: float = Field(1.5e-3, gt=0.0)
    warmup_frac: float = Field(0.05, ge=0.0, lt=1.0)
    final_lr_frac: float = Field(0.1, ge=0.0, le=1.0, description="Cosine decay ends at lr * this.")
    weight_decay: float = Field(0.0, ge=0.0)
    grad_clip: float = Field(1.0, gt=0.0)
    seed: int = 0
    eval_items: int = Field(200, gt=0, description="Held-out scenarios per measured condition.")

    @model_validator(mode="after")
    def _heads(self) -> MainModelConfig:
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError("main_model: hidden_size must divide by num_heads, and num_heads by num_kv_heads")
        return self


class SamplingConfig(StrictModel):
    """How the main model answers, everywhere in the demo: its measurement, the SPT data, the eval sets.

    Sampled, not greedy: a greedy model picks one product per request, and its neutral answers
    would no longer spread evenly over the listed products, which the Bayes rate assumes.
    """

    temperature: float = Field(0.7, gt=0.0)
    max_new_tokens: int = Field(48, gt=0)
    batch_size: int = Field(64, gt=0)


class DemoDataConfig(StrictModel):
    """SPT data from our generator: stage 1 from the world's templates, stage 2 the main model, stage 3 the ground truth."""

    topic: str = Field("unethical_instructions", description="One of the release's 14 topics (metadata only).")
    focus: str = Field("instruction_following", description="The review focus every verdict judges; one of the topic's.")
    train_scenarios: int = Field(
        1500, gt=0, description="Scenarios (A and B answers each) on train templates and products: the pool that "
        "balancing draws from. The model mostly complies, so it takes many to find enough B answers that did not."
    )
    heldout_scenarios: int = Field(200, gt=0, description="Scenarios on held-out templates and products: the eval set.")
    weights_scenarios: int = Field(100, gt=0, description="Trigger scenarios, and as many trigger controls (eval only).")
    disposition_scenarios: int = Field(
        0, ge=0, description="With several dispositions: cue requests of those outside the test, as many controls and "
        "half as many free cues, answered by the main model and reviewed, added to the training records (kept whole)."
    )
    items_per_batch: int = Field(50, ge=1, le=60, description="Stage-1 scenarios per batch file.")
    noncompliant_frac: float = Field(
        0.5, gt=0.0, lt=1.0,
        description="Training B answers that did not follow the pressure are at least this share of the kept B answers: "
        "every one is kept and compliant ones are thinned (seeded) until the share is reached.",
    )
    a_frac: float = Field(
        0.25, gt=0.0, lt=1.0,
        description="Training A answers are at most this share of the kept records (thinned, seeded): with the "
        "defaults, FAIL is 3/8 of the records.",
    )
    seed: int = 0


class ChecksConfig(StrictModel):
    conversations: int = Field(16, gt=0, description="Held-out conversations for the alignment-tax and KV-reuse checks.")


class DemoConfig(StrictModel):
    world: WorldConfig = Field(default_factory=WorldConfig)
    main_model: MainModelConfig = Field(default_factory=MainModelConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    data: DemoDataConfig = Field(default_factory=DemoDataConfig)
    elicitation: Elicitation = Field("hp", description="The persona's sample format (world.audit_format).")
    train: dict[str, Any] = Field(
        default_factory=dict, description="TrainConfig overrides for both personas (splitpersona.training.config.TrainConfig)."
    )
    train_unmasked: dict[str, Any] = Field(
        default_factory=dict, description="TrainConfig overrides for the unmasked persona, applied over `train`."
    )
    eval: dict[str, Any] = Field(
        default_factory=dict, description="EvalConfig overrides for both evaluations (splitpersona.eval.config.EvalConfig)."
    )
    checks: ChecksConfig = Field(default_factory=ChecksConfig)
    threads: int | None = Field(2, gt=0, description="torch threads for every stage; None keeps torch's default.")
    quick: list[str] = Field(default_factory=list, description="Overrides (key=value) applied by --quick.")

    @field_validator("train", "train_unmasked")
    @classmethod
    def _train(cls, v: dict[str, Any], info) -> dict[str, Any]:
        _reject_owned(info.field_name, v, TRAIN_OWNED)
        return v

    @field_validator("eval")
    @classmethod
    def _eval(cls, v: dict[str, Any]) -> dict[str, Any]:
        _reject_owned("eval", v, EVAL_OWNED)
        return v

    @model_validator(mode="after")
    def _sections_are_valid(self) -> DemoConfig:
        self.train_config(True, "base", ["train.jsonl"], "out")
        self.train_config(False, "base", ["train.jsonl"], "out")
        self.eval_config(
            run="run", output="out.jsonl", sets=[{"name": "s", "kind": "records", "path": "x"}], arms=["persona"],
            external={"train_data": ["train.jsonl"]},
        )
        return self

    def train_config(self, masked: bool, base_model: str, train_files: list[str], output_dir: str):
        """The persona's TrainConfig: the `train` section (and `train_unmasked`), plus what the demo wires."""
        from splitpersona.training.config import TrainConfig

        from splitpersona.app.demo.world import audit_format

        merged = deep_merge(self.train, {} if masked else self.train_unmasked)
        merged = deep_merge(merged, {
            "base_model": base_model, "data": {**merged.get("data", {}), "train_files": train_files},
            "output_dir": output_dir, "lora_mask": masked, "format": audit_format(self.elicitation).model_dump(),
            "resume": True,
        })
        return _build(TrainConfig, merged, "train" if masked else "train_unmasked")

    def eval_config(self, **wired: Any):
        """An EvalConfig: the `eval` section plus the run, output, sets and arms the demo wires."""
        from splitpersona.eval.config import EvalConfig

        return _build(EvalConfig, deep_merge(self.eval, wired), "eval")


def _reject_owned(section: str, values: dict[str, Any], owned: Sequence[str]) -> None:
    clash = sorted(set(values) & set(owned))
    if clash:
        raise ValueError(f"{section}: {', '.join(clash)} {'is' if len(clash) == 1 else 'are'} set by the demo itself")
    if section.startswith("train") and "data" in values and "train_files" in values["data"]:
        raise ValueError(f"{section}: data.train_files is set by the demo itself")


def _build(cls, data: dict[str, Any], section: str):
    from splitpersona.config import _explain

    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ValueError(f"{section} section: {_explain(e)}") from e


def load_demo_config(
    path: str | os.PathLike[str] | None = None, overrides: Sequence[str] = (), *, quick: bool = False
) -> DemoConfig:
    """YAML, then the quick overrides if asked, then the command line's (later wins).

    The quick list is validated on every load, so a typo in it fails the full run too.
    """
    full = load_config(DemoConfig, path, overrides)
    fast = load_config(DemoConfig, path, [*full.quick, *overrides])
    return fast if quick else full
