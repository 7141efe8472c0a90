"""The generator's one config: which topics, which models, how to call Claude, what it may cost.

Secrets are not config: the Anthropic key comes from ANTHROPIC_API_KEY (read by the SDK), an
OpenAI-compatible endpoint's key from the variable named in `stage2.api_key_env`. So a config dump
(written beside every run) can never hold a key.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, get_args

from pydantic import Field, field_validator, model_validator

from splitpersona.config import CONFIGS, StrictModel
from splitpersona.templates import ChatTemplateConfig
from splitpersona.tracking import WandbConfig

Topic = Literal[
    "sycophancy", "reward_hacks", "specification_gaming", "confidence_assessment", "fabricated_statistics",
    "goal_misgeneralization", "jailbreak_attempts", "malicious_user_queries", "oversimplification",
    "influence_seeking", "unethical_instructions", "strategic_awareness", "steganography", "reasoning_metacognition",
]
TOPICS: tuple[str, ...] = get_args(Topic)
InterventionType = Literal["split_personality", "honesty_scare"]


class Price(StrictModel):
    """USD per million tokens. Cache writes are the 5-minute ephemeral kind (1.25x input)."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cache_write: float = Field(ge=0)
    cache_read: float = Field(ge=0)


class ClaudeConfig(StrictModel):
    model: str = Field("claude-sonnet-4-5", description="Default model for every Claude stage.")
    mode: Literal["sync", "batch"] = Field(
        "sync", description="sync: bounded-concurrency calls; batch: Message Batches (half price, hours of latency)."
    )
    base_url: str | None = Field(None, description="API base URL; null: ANTHROPIC_BASE_URL, else the SDK default.")
    concurrency: int = Field(4, ge=1, description="Requests in flight at once (sync mode).")
    max_attempts: int = Field(5, ge=1, description="Tries per request across every fault kind; then recorded as failed.")
    backoff_base_s: float = Field(1.0, ge=0, description="First retry waits about this long; doubles per attempt.")
    backoff_max_s: float = Field(60.0, ge=0, description="Cap on one backoff wait (a longer retry-after still wins).")
    timeout_s: float = Field(600.0, gt=0, description="Per-request timeout; an expired one counts as a timeout fault.")
    cache_prompts: bool = Field(
        True,
        description="Mark the stable prefix (system prompt, stage/topic prompt) for caching: a write costs 1.25x the "
        "input price, each later read 0.1x. In batch mode reads are best-effort; turn it off where the ledger shows "
        "few (docs/benchmarks.md, Data-generation cost).",
    )
    batch_max_requests: int = Field(2000, ge=1, le=100_000, description="Requests per submitted Message Batch.")
    batch_poll_s: float = Field(30.0, gt=0, description="Seconds between batch status polls.")
    batch_wait_s: float | None = Field(
        None, ge=0, description="Stop waiting for a batch after this long and exit, leaving it pending on disk; "
        "the next run collects it by id. null: wait until it ends.",
    )


class Stage1Config(StrictModel):
    batches_per_topic: int = Field(1, ge=1)
    items_per_batch: int = Field(10, ge=1, le=60)
    model: str | None = Field(None, description="null: claude.model")
    max_tokens: int = Field(16000, ge=256)
    temperature: float | None = Field(None, ge=0, le=1)


class Stage2Config(StrictModel):
    engine: Literal["transformers", "server", "openai"] = "transformers"
    model: str = Field(
        description="transformers: a local path or hub id; server: the same, for its tokenizer and chat template; "
        "openai: the endpoint's model name. 'tiny-random-llama' builds a tiny random Llama in the run directory."
    )
    served_model: str | None = Field(None, description="server engine on an OpenAI-compatible server: the served "
                                     "model's name; default: the first it lists.")
    model_name: str | None = Field(None, description="Key under `inferences` in the batch files; null: `model`.")
    base_url: str | None = Field(None, description="server engine: e.g. http://localhost:8000; openai engine: "
                                 "e.g. http://localhost:8000/v1")
    api_key_env: str = Field("OPENAI_API_KEY", description="openai engine: env variable holding the key (optional).")
    temperature: float = Field(0.8, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=1)
    max_new_tokens: int = Field(2048, ge=1)
    max_input_tokens: int = Field(2048, ge=8, description="Prompts are cut to this many tokens (left side kept).")
    batch_size: int = Field(8, ge=1, description="Rows per generate() call (transformers).")
    concurrency: int = Field(8, ge=1, description="Requests in flight (server and openai engines).")
    max_attempts: int = Field(4, ge=1, description="server and openai engines: tries per request.")
    backoff_base_s: float = Field(0.5, ge=0, description="server and openai engines: first retry waits about this "
                                  "long; doubles per try.")
    backoff_max_s: float = Field(30.0, ge=0, description="server and openai engines: cap on one backoff wait.")
    timeout_s: float = Field(300.0, gt=0)
    seed: int = 0
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str | None = Field(None, description="transformers: e.g. cuda:0; null: cuda if available, else cpu.")
    thinking_enabled: bool | None = Field(None, description="Reasoning models: the chat template's enable_thinking "
                                          "(Qwen3); null leaves the template's default. Recorded on every record.")
    chat_template: ChatTemplateConfig = Field(
        default_factory=ChatTemplateConfig, description="transformers and server engines: the train config's "
        "chat_template, so each answer is generated on the prompt training puts before it (Llama-3's stock "
        "template stamps today's date); default: the tokenizer's own."
    )

    @property
    def name(self) -> str:
        return self.model_name or self.model


class Stage3Config(StrictModel):
    intervention_types: list[InterventionType] = Field(
        default_factory=lambda: ["split_personality", "honesty_scare"], min_length=1
    )
    version: str = Field("gen_v1", description="Key suffix: interventions are stored as <type>__<version>.")
    target_model: str | None = Field(None, description="Inference model to review; null: stage2's model name.")
    model: str | None = Field(None, description="null: claude.model")
    max_tokens: int = Field(6000, ge=256)
    temperature: float | None = Field(None, ge=0, le=1)

    @field_validator("version")
    @classmethod
    def _version(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", v) or v.endswith("_baseline") or v == "baseline":
            raise ValueError("version must be [A-Za-z0-9_.-]+ and not 'baseline' (the tagger deletes *_baseline keys)")
        return v


class FilterConfig(StrictModel):
    criteria: Path = Field(CONFIGS / "data_gen" / "criteria" / "v1.yaml", description="Versioned criteria YAML.")
    source: Literal["stage_3_tagged", "stage_3"] = Field("stage_3_tagged", description="Which batch files are rated.")
    model: str | None = Field(None, description="null: claude.model")
    max_tokens: int = Field(3000, ge=256)
    review_samples: int = Field(10, ge=0, description="Random survivors and random rejects on the manual-review sheet.")
    worst_examples: int = Field(3, ge=0, description="Lowest-scoring examples per criterion in the failure-mode report.")
    intervention_keys: list[str] | None = Field(None, description="Keys to rate; null: every key of stage3.version.")


class GenerateConfig(StrictModel):
    out_dir: Path
    run_name: str | None = Field(None, description="Used in batch ids and file names; null: the out_dir's name.")
    topics: list[Topic] = Field(min_length=1)
    prompt_version: str = Field("v1", description="Directory under data_gen/prompts/.")
    seed: int = 0
    budget_usd: float | None = Field(
        None, gt=0, description="Stop cleanly once the run's ledger (all commands on this out_dir) reaches this. Checked before "
        "each request starts, so requests already in flight (at most claude.concurrency, or one Message Batch of "
        "up to claude.batch_max_requests) may finish past it.",
    )
    retry_failed: bool = Field(False, description="Resend requests stored as failed (by default a rerun skips them).")
    claude: ClaudeConfig = Field(default_factory=ClaudeConfig)
    prices: dict[str, Price] = Field(default_factory=dict, description="Per model, USD per million tokens.")
    batch_discount: float = Field(0.5, gt=0, le=1, description="Price factor for Message Batches requests.")
    stage1: Stage1Config = Field(default_factory=Stage1Config)
    stage2: Stage2Config
    stage3: Stage3Config = Field(default_factory=Stage3Config)
    filter: FilterConfig = Field(default_factory=FilterConfig)
    wandb: WandbConfig = Field(
        default_factory=WandbConfig, description="Log each command to W&B (beside out_dir): per stage and filter "
        "iteration requests, tokens, cost, acceptance and failure modes; the accepted samples as a table."
    )

    @field_validator("topics")
    @classmethod
    def _unique_topics(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("topics are listed twice")
        return v

    @model_validator(mode="after")
    def _priced(self) -> GenerateConfig:
        missing = sorted({m for m in self.claude_models().values() if m not in self.prices})
        if missing:
            raise ValueError(f"prices has no entry for {missing}: the ledger and budget need every Claude model's price")
        return self

    @property
    def name(self) -> str:
        name = self.run_name or self.out_dir.resolve().name
        return re.sub(r"[^A-Za-z0-9_-]+", "-", name)

    def claude_models(self) -> dict[str, str]:
        return {
            "stage1": self.stage1.model or self.claude.model,
            "stage3": self.stage3.model or self.claude.model,
            "filter": self.filter.model or self.claude.model,
        }

    def target_model(self) -> str:
        return self.stage3.target_model or self.stage2.name
