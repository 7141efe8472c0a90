"""The generative arms: the persona and the controls a prompt alone could reach, on the same items.

They differ only in what opens the reviewer's part and whether the adapter is on, so together
they form a ladder:
- `follow_up`: the intervention as a plain user question (ur layout, no token), base model;
- `meaningless_token`: the never-trained control token, then the intervention, base model;
- `no_adapter`: the split token as the run left it (its trained embedding row, if any), LoRA off;
- `persona`: the split token and the trained adapter, in the run's own layout.
Each step adds one thing: a token at all, the trained token, the LoRA weights. With
`strategy: new` the split and control tokens start from the same row, so `no_adapter` and
`meaningless_token` differ exactly by what training did to the split token's embedding.

`control_token_adapter` asks the converse: the trained adapter on, but the never-trained control
token in the split token's place. A masked adapter is gated on the split token, so here its gate
never opens and the arm reads as the base model; an unmasked adapter acts everywhere, so this arm
asks whether any token would do.

The control arms get `control_instruction` appended to the intervention so that they know the
answer format; the persona gets its intervention unchanged, as trained.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from eval.results import SampleResult
from eval.sets import EvalItem
from splitpersona.assemble import Marker
from splitpersona.persona import AdapterMode, Conversation, Elicitation, Persona, Prefill


@dataclass(frozen=True)
class ArmSpec:
    marker: Marker
    adapter: AdapterMode
    elicitation: Elicitation | None  # None: the run's own
    control: bool  # gets the control instruction

    def describe(self) -> dict:
        return {"marker": self.marker, "adapter": self.adapter, "elicitation": self.elicitation or "run",
                "control_instruction": self.control}


GENERATIVE: dict[str, ArmSpec] = {
    "persona": ArmSpec("split", "on", None, False),
    "no_adapter": ArmSpec("split", "lora_off", None, True),
    "follow_up": ArmSpec("none", "off", "ur", True),
    "meaningless_token": ArmSpec("control", "off", None, True),
    "control_token_adapter": ArmSpec("control", "on", None, False),
}


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
) -> list[SampleResult]:
    """One arm over `items` (one batch); `prefills` are the items' main-model caches, when reused."""
    spec = GENERATIVE[arm]
    convs = [
        Conversation(messages=it.messages, response=it.response,
                     intervention=intervention_for(spec, it, persona, control_instruction))
        for it in items
    ]
    start = time.perf_counter()
    reviews = persona.review_batch(
        convs, marker=spec.marker, adapter=spec.adapter, elicitation=spec.elicitation,
        prefills=prefills if prefills is not None and can_reuse(spec, persona) else None,
    )
    per_item = (time.perf_counter() - start) / max(1, len(items))
    return [
        SampleResult.from_text(
            generated=r.text, flag_prefix=persona.fmt.flag_prefix, arm=arm, prompt_tokens=r.prompt_tokens,
            generated_tokens=r.generated_tokens, truncated=r.truncated, latency_s=per_item, score=r.fail_probability,
            score_source=None if r.fail_probability is None else "flag_probability", **result_fields(it),
        )
        for it, r in zip(items, reviews)
    ]
