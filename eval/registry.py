"""The arms, one registry: every name an eval config may ask for, in the order reports show them.

The generative arms are the persona and the controls a prompt alone could reach, on the same items.
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

The scoring arms give each item a score instead of a review: `external` (splitpersona.eval.external, a reviewer
that sees only the task and the response) and `probe` (splitpersona.eval.probe, a linear probe on the base
model's activations); each registers here how it is made ready.

This module imports nothing heavy, so configs and reports can name the arms without loading torch;
a scoring arm's module is imported when the arm is made ready.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from splitpersona.assemble import Marker
    from splitpersona.conversation import Elicitation
    from splitpersona.eval.config import EvalConfig
    from splitpersona.eval.results import SampleResult
    from splitpersona.eval.sets import EvalItem
    from splitpersona.persona import AdapterMode
    from splitpersona.prefill import Prefill


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
CONTROLS: tuple[str, ...] = tuple(a for a in GENERATIVE if a != "persona")


@dataclass(frozen=True)
class Scorer:
    """A scoring arm made ready: items per call, the call, and what the results metadata keeps of its fit."""

    batch: int
    score: Callable[[list[EvalItem], list[Prefill] | None], list[SampleResult]]  # items, and their shared prefills
    meta: Any
    hidden: tuple[int, ...] | None = None  # hidden_states it reads from the shared prefill; None: its own pass


@dataclass(frozen=True)
class ScoringSpec:
    needs_persona: Callable[[EvalConfig], bool]  # runs on the in-process (or served) model
    prepare: Callable[..., Scorer]  # (cfg, run info, persona, items, progress bars) -> Scorer


def _prepare_external(*args: Any) -> Scorer:
    from splitpersona.eval.external import prepare

    return prepare(*args)


def _prepare_probe(*args: Any) -> Scorer:
    from splitpersona.eval.probe import prepare

    return prepare(*args)


SCORING: dict[str, ScoringSpec] = {
    "external": ScoringSpec(lambda cfg: cfg.external.kind == "base_model", _prepare_external),
    "probe": ScoringSpec(lambda cfg: True, _prepare_probe),
}
ARMS: tuple[str, ...] = (*GENERATIVE, *SCORING)
ArmName = Literal[ARMS]
