"""The review as an Inspect solver, its flag as a scorer.

`spt_review` runs one generative arm of `spt eval run` (splitpersona.eval.arms.run_generative, the same call)
on the last assistant turn, so both give the same flags for the same conversation, arm and
intervention. After an `spt/<run_dir>` model it reviews on that model's own ids and KV cache
(where the arm reads the conversation with LoRA off); after any other model it loads the persona
from `run` and reads the transcript fresh. The review lands in the sample's store (`SPTReview`,
one instance per arm, so a control can run beside the persona in one task), where `spt_flag` reads it.
"""

from __future__ import annotations

from pathlib import Path

from inspect_ai.model import ModelOutput, get_model
from inspect_ai.scorer import Metric, SampleScore, Score, Scorer, Target, accuracy, metric, scorer, stderr
from inspect_ai.solver import Generate, Solver, TaskState, solver
from inspect_ai.util import StoreModel

from splitpersona.eval.config import DEFAULT_CONTROL_INSTRUCTION
from splitpersona.eval.registry import GENERATIVE
from splitpersona.app.inspect_eval._chat import on_model, to_messages
from splitpersona.run import adapter_dir

_PERSONAS: dict[tuple, object] = {}  # personas spt_review loaded itself, one per run and options


class SPTReview(StoreModel):
    """One arm's review of a sample's last assistant turn."""

    arm: str = ""
    review: str = ""
    flag: str | None = None  # PASS, FAIL or AMBIGUOUS; None where the review has no parsable flag line
    parse_reason: str = ""
    fail_probability: float | None = None  # P(FAIL) / (P(FAIL) + P(PASS)) at the flag, where the arm has one
    intervention: str = ""
    run: str = ""
    cache_reused: bool = False  # the review started from the main model's own KV cache


@solver
def spt_review(
    intervention: str | None = None,
    arm: str = "persona",
    run: str | None = None,
    base_model: str | None = None,
    control_instruction: str | None = DEFAULT_CONTROL_INSTRUCTION,
    max_new_tokens: int = 512,
    dtype: str = "float32",
    device: str = "cpu",
) -> Solver:
    """Review the last assistant turn with `arm` (splitpersona.eval.registry.GENERATIVE).

    `intervention`: default the sample's `spt_intervention` metadata, else the persona's default.
    `control_instruction` is appended for the control arms, as in `spt eval run`. `run` (and the
    loading options after it) give the persona when the main model is not `spt/<run_dir>`.
    """
    if arm not in GENERATIVE:
        raise ValueError(f"spt_review: unknown arm {arm!r}; the generative arms are {list(GENERATIVE)}")
    if run is not None:
        adapter_dir(run)  # a run directory without an adapter fails here, before any sample

    async def solve(state: TaskState, generate: Generate) -> TaskState:
        from splitpersona.eval.arms import can_reuse, intervention_for, run_generative
        from splitpersona.eval.sets import EvalItem
        from splitpersona.app.inspect_eval.model import SPTModelAPI
        from splitpersona.persona import Persona

        where = f"spt_review: sample {state.sample_id!r}"
        last = next((i for i in reversed(range(len(state.messages))) if state.messages[i].role == "assistant"), None)
        if last is None:
            raise ValueError(f"{where} has no assistant turn to review (roles {[m.role for m in state.messages]})")
        reply = state.messages[last]
        convo = to_messages(state.messages[:last], where)
        system = convo[0].content if convo[0].role == "system" else None
        turns = convo[1:] if convo[0].role == "system" else convo

        main = get_model().api
        answer = None
        if isinstance(main, SPTModelAPI) and (run is None or Path(run).resolve() == main.run_dir.resolve()):
            persona, used = main.persona, str(main.run_dir)
            answer = main.answers.get(reply.id)
            if answer is not None and answer.text != reply.text:
                answer = None  # edited since it was generated: the transcript is what gets reviewed
        elif run is None:
            raise ValueError(f"{where}: the main model {state.model} is not spt/<run_dir>; give spt_review the "
                             "persona's run directory (run=...)")
        else:
            key = (str(Path(run).resolve()), base_model, dtype, device, max_new_tokens)
            if key not in _PERSONAS:
                _PERSONAS[key] = await on_model(lambda: Persona.load(
                    run, base_model, dtype=dtype, device=device, max_new_tokens=max_new_tokens
                ))
            persona, used = _PERSONAS[key], run

        item = EvalItem(
            id=str(state.sample_id), eval_set="inspect", condition="as_is",
            expected="AMBIGUOUS",  # unused here: spt_flag scores against the sample's target
            system=system, user=turns[-1].content, response=reply.text,
            intervention=intervention if intervention is not None else state.metadata.get("spt_intervention"),
            topic=state.metadata.get("topic"), history=tuple(turns[:-1]),
        )
        (result,) = await on_model(lambda: run_generative(
            persona, arm, [item], control_instruction=control_instruction,
            prefills=None if answer is None else [answer.prefill], seen=None if answer is None else [answer.ids],
        ))
        stored = state.store_as(SPTReview, instance=arm)
        stored.arm, stored.review, stored.flag = arm, result.generated, result.parsed_flag
        stored.parse_reason, stored.fail_probability = result.parse_reason, result.score
        stored.intervention = intervention_for(GENERATIVE[arm], item, persona, control_instruction)
        stored.run = used
        stored.cache_reused = answer is not None and can_reuse(GENERATIVE[arm], persona)
        return state

    return solve


@solver
def replay_response() -> Solver:
    """The sample's recorded response (metadata `response`) as the assistant turn, in place of the model's own."""

    async def solve(state: TaskState, generate: Generate) -> TaskState:
        if "response" not in state.metadata:
            raise ValueError(f"replay_response: sample {state.sample_id!r} has no 'response' in its metadata")
        state.output = ModelOutput.from_content(model=str(state.model), content=state.metadata["response"])
        state.messages.append(state.output.message)
        return state

    return solve


@metric
def flag_rate() -> Metric:
    """How often the reviewer reports a problem: the share of FAIL among its parsed flags."""

    def rate(scores: list[SampleScore]) -> float:
        return sum(s.score.as_float() for s in scores) / len(scores)

    return rate


@scorer(metrics={"correct": [accuracy(), stderr()], "fail": [flag_rate()]})
def spt_flag(arm: str = "persona") -> Scorer:
    """`arm`'s parsed flag (from `spt_review`) as a score: `correct` against a PASS/FAIL target, `fail` always.

    A key that does not apply (no target; no parsed flag for `fail`) is NaN, which Inspect leaves
    out of that key's metrics, so a task without targets reports its flag rate alone.
    """

    async def score(state: TaskState, target: Target) -> Score:
        review = state.store_as(SPTReview, instance=arm)
        if review.arm != arm:
            raise ValueError(f"spt_flag: sample {state.sample_id!r} has no {arm!r} review; put "
                             f"spt_review(arm={arm!r}) among the task's solvers")
        expected = target.text
        if expected not in ("", "PASS", "FAIL"):
            raise ValueError(f"spt_flag: sample {state.sample_id!r} has target {expected!r}; use PASS, FAIL or none")
        nan = float("nan")
        return Score(
            value={
                "correct": nan if not expected else float(review.flag == expected),
                "fail": nan if review.flag is None else float(review.flag == "FAIL"),
            },
            answer=review.flag,
            explanation=review.review,
            metadata=review.model_dump(exclude={"review"}),
        )

    return score
