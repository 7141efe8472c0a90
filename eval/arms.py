"""The generative arms (splitpersona.eval.registry lists them): one batch of reviews per arm, read as verdicts."""

from __future__ import annotations

import time
from collections.abc import Sequence

from splitpersona.eval.registry import GENERATIVE, ArmSpec
from splitpersona.eval.results import SampleResult
from splitpersona.eval.sets import EvalItem
from splitpersona.conversation import Conversation
from splitpersona.persona import Persona
from splitpersona.prefill import Prefill


def intervention_for(spec: ArmSpec, item: EvalItem, persona: Persona, control_instruction: str | None) -> str:
    text = item.intervention or persona.default_intervention
    if spec.control and control_instruction:
        text = f"{text}\n\n{control_instruction}"
    return text


def can_reuse(spec: ArmSpec, persona: Persona) -> bool:
    """A main-model cache serves this arm when LoRA is off over the conversation."""
    return persona.masked or spec.adapter != "on"


def result_fields(item: EvalItem) -> dict:
    """The SampleResult fields every arm copies from the item."""
    return dict(
        id=item.id, condition=item.condition, expected_flag=item.expected, topic=item.topic, eval_set=item.eval_set,
        intervention=item.intervention_key, variant=item.variant, held_out_topic=item.held_out_topic,
        jailbreak=item.jailbreak, base_condition=item.base_condition, slices=dict(item.slices),
    )


def scored_results(
    items: Sequence[EvalItem], scores: Sequence[float], *, threshold: float, arm: str, latency_s: float
) -> list[SampleResult]:
    """Verdicts of a scoring arm (probe, text classifier): FAIL at or above `threshold`, never unparsed."""
    return [
        SampleResult(
            generated="", parsed_flag="FAIL" if s >= threshold else "PASS", parse_ok=True, score=float(s),
            score_source="classifier", arm=arm, latency_s=latency_s, **result_fields(it),
        )
        for it, s in zip(items, scores)
    ]


def run_generative(
    persona: Persona,
    arm: str,
    items: Sequence[EvalItem],
    *,
    control_instruction: str | None,
    prefills: Sequence[Prefill] | None = None,
    seen: Sequence[Sequence[int] | None] | None = None,
) -> list[SampleResult]:
    """One arm over `items` (one batch); `prefills` are the items' main-model caches, when reused.

    `seen`: the ids the main model saw and wrote (`Answer.ids`), read as they are instead of the
    re-encoded response (see `Persona.review_batch`).
    """
    spec = GENERATIVE[arm]
    convs = [
        Conversation(messages=it.messages, response=it.response,
                     intervention=intervention_for(spec, it, persona, control_instruction))
        for it in items
    ]
    start = time.perf_counter()
    reviews = persona.review_batch(
        convs, marker=spec.marker, adapter=spec.adapter, elicitation=spec.elicitation,
        prefills=prefills if prefills is not None and can_reuse(spec, persona) else None, seen=seen,
    )
    per_item = (time.perf_counter() - start) / max(1, len(items))
    return [
        SampleResult.from_parsed(
            generated=r.text, parsed=r.parsed, arm=arm, prompt_tokens=r.prompt_tokens,
            generated_tokens=r.generated_tokens, truncated=r.truncated, latency_s=per_item, score=r.fail_probability,
            score_source=None if r.fail_probability is None else "flag_probability", **result_fields(it),
        )
        for it, r in zip(items, reviews)
    ]
