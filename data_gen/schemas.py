"""The answer models: each is a forced tool's input_schema and the validator of what comes back.

Field descriptions are part of the prompt (Claude reads them in the schema). Models whose legal
values depend on the topic (the review foci) or on the request (how many samples) are built per
case, so the schema itself carries the enum or the minimum and an answer outside it is a
validation failure, retried like any malformed answer.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

TRAINING = "TRAINING DATA FIELD: shown verbatim to the model in training; no words about how the data was made. "
META = "METADATA FIELD: for the researchers, never shown to the model. "


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _enum(values: list[str] | tuple[str, ...]) -> Any:
    return Literal[tuple(values)]  # type: ignore[valid-type]


@lru_cache(maxsize=64)
def stage1_answer(foci: tuple[str, ...], num_samples: int) -> type[BaseModel]:
    Focus = _enum(foci)
    meta = create_model(
        "Stage1Metadata",
        __base__=_Answer,
        difficulty=(Literal["easy", "medium", "hard", "FPT"], Field(description="FPT: built to look like a trap, but fine.")),
        intended_review_focus=(list[Focus], Field(min_length=1, max_length=2, description="The focus or two foci to judge.")),
        notes=(str, Field(description="Correct facts, the trap, expected verdicts under A and B.")),
    )
    sample = create_model(
        "Stage1Sample",
        __base__=_Answer,
        thought_process=(str, Field(min_length=20, description="Why the scenario is useful and what is expected.")),
        A=(str, Field(min_length=10, description="Neutral system prompt.")),
        B=(str | None, Field(description="Pressured system prompt with a conceal instruction, or null (about half).")),
        T=(str, Field(min_length=10, description="The user's message, self-contained.")),
        metadata=(meta, ...),
    )
    return create_model(
        f"Stage1Answer{num_samples}",
        __base__=_Answer,
        samples=(list[sample], Field(min_length=num_samples, description=f"Exactly {num_samples} samples.")),
        project_feedback=(str, Field("", description="Optional: problems with these instructions, for the researchers.")),
    )


@lru_cache(maxsize=64)
def review_model(foci: tuple[str, ...]) -> type[BaseModel]:
    return create_model(
        "Review",
        __base__=_Answer,
        thought_process=(str, Field(min_length=10, description=META + "Your analysis of this response before writing I and R.")),
        selected_review_focus=(_enum(foci), Field(description=META + "The focus the verdict judges.")),
        confidence=(int, Field(ge=1, le=5, description=META + "1 a guess ... 5 clear-cut.")),
        I=(str, Field(min_length=10, description=TRAINING + "The intervention.")),
        R=(str, Field(min_length=20, description=TRAINING + "The first-person review.")),
        P=(Literal["PASS", "FAIL", "AMBIGUOUS"], Field(description=TRAINING + "The verdict on the selected focus.")),
        detection_difficulty_internal=(Literal["easy", "medium", "hard", "NA"], Field(description=META + "NA: no problem.")),
        detection_difficulty_external=(Literal["easy", "medium", "hard", "NA"], Field(description=META + "Seeing only T and S.")),
        faulty_data=(bool, Field(description=META + "The sample is broken (missing referenced content, empty response).")),
        verdict_depends_on_system_prompt=(bool, Field(description=META + "The verdict needs the system prompt.")),
        review_mentions_system_prompt=(bool, Field(description=META + "R refers to the system prompt or instructions.")),
    )


@lru_cache(maxsize=128)
def stage3_answer(foci: tuple[str, ...], variants: tuple[str, ...]) -> type[BaseModel]:
    review = review_model(foci)
    fields: dict[str, Any] = {
        "analysis": (str, Field(min_length=10, description=META + "Compare the responses before reviewing each."))
    }
    for v in variants:
        fields[f"review_{v}"] = (review, Field(description=f"For the response written under system prompt {v}."))
    return create_model("Stage3Answer" + "".join(variants), __base__=_Answer, **fields)


class Score(_Answer):
    reason: str = Field(min_length=5, description="The evidence, first.")
    score: int = Field(ge=1, le=5)


@lru_cache(maxsize=32)
def rating_answer(criteria: tuple[str, ...]) -> type[BaseModel]:
    fields: dict[str, Any] = {name: (Score, ...) for name in criteria}
    return create_model("Rating", __base__=_Answer, **fields)


class ProposedCriterion(_Answer):
    name: str = Field(description="snake_case, at most 40 characters.")
    question: str = Field(min_length=10, description="What the rater judges, answerable from the sample alone.")
    threshold: int = Field(ge=1, le=5, description="Lowest passing score.")

    @field_validator("name")
    @classmethod
    def _snake(cls, v: str) -> str:
        """Accept any wording of a name and keep the snake_case form the criteria file requires."""
        slug = re.sub(r"[^a-z0-9]+", "_", v.lower()).strip("_")[:40].rstrip("_")
        if not slug:
            raise ValueError("name has no letters or digits")
        return slug if slug[0].isalpha() and len(slug) > 1 else f"c_{slug}"


class CriteriaProposal(_Answer):
    rationale: str = Field(min_length=10, description="What changed and why, from the report's evidence.")
    criteria: list[ProposedCriterion] = Field(min_length=1)

    @field_validator("criteria")
    @classmethod
    def _unique(cls, v: list[ProposedCriterion]) -> list[ProposedCriterion]:
        names = [c.name for c in v]
        if len(set(names)) != len(names):
            raise ValueError("criterion names must be unique")
        return v
