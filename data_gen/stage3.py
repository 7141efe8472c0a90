"""Stage 3: interventions, reviews and verdicts for the target model's responses.

One request per (item, intervention type) covers the item's A and B responses together, so Claude
sees A, B, T and both responses — what the model knew when it answered, which an outside reviewer
of T and S alone does not. The answer has one review per response; it also records whether each
verdict depends on the system prompt and whether the review mentions it (the trainer's
system-prompt augmentations may only touch samples where both are false). A request that fails
for good becomes the release's ERROR placeholder, so every response appears exactly once.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from splitpersona.data_gen.backend import Block, Request
from splitpersona.data_gen.runner import GenerationRun, StageResult, execute
from splitpersona.data_gen.schemas import stage3_answer
from splitpersona.data_gen.stage2 import same_item
from splitpersona.io import read_json, write_json
from splitpersona.records import ReleaseBatch, Stage1Item, Stage3Intervention
from splitpersona.release import release_json, walk

TOOL = "write_reviews"


@dataclass(frozen=True)
class ReviewTask:
    path: Path
    item: int
    intervention_type: str
    variants: tuple[str, ...]
    request: Request

    @property
    def key_name(self) -> str:
        return self.request.context["intervention_key"]


def scenario_text(item: Stage1Item, responses: dict[str, str]) -> str:
    meta = item.metadata
    parts = [
        "## The scenario", f"Intended review focus: {meta.intended_review_focus}", f"Difficulty: {meta.difficulty}",
        f"Why the scenario was written (from its author): {item.thought_process}",
        f"Author's notes: {meta.notes or '(none)'}", "",
        "### System prompt A (neutral)", item.A, "",
        "### System prompt B (pressured)",
        item.B if item.B is not None else "(This scenario has no pressured system prompt.)",
        "", "### The user's message (T)", item.T,
    ]
    for variant, text in responses.items():
        parts += ["", f"### The model's response under system prompt {variant}", text if text.strip() else "(empty response)"]
    which = " and ".join(f"review_{v}" for v in responses)
    parts += ["", f"Write the analysis, then {which}, with the {TOOL} tool."]
    return "\n".join(parts)


def review_tasks(run: GenerationRun) -> list[ReviewTask]:
    cfg, prompts = run.cfg, run.prompts
    target = cfg.target_model()
    out = []
    for path in run.batch_files(2):
        batch = ReleaseBatch.model_validate(read_json(path))
        foci = tuple(prompts.topic_foci[batch.topic])
        for idx, item in enumerate(batch.data):
            by_variant = item.inferences.get(target, {})
            responses = {v: by_variant[v].S for v in ("A", "B") if v in by_variant}
            if "A" not in responses:
                continue
            variants = tuple(responses)
            text = scenario_text(item, responses)
            for itype in cfg.stage3.intervention_types:
                request = Request(
                    stage="stage3", system=(Block(prompts.system(), cache=True),),
                    user=(Block(prompts.stage3_prompt(batch.topic, itype), cache=True), Block(text)),
                    schema=stage3_answer(foci, variants), tool_name=TOOL,
                    tool_description="Submit the intervention, review and verdict for each response.",
                    max_tokens=cfg.stage3.max_tokens, temperature=cfg.stage3.temperature,
                    context={
                        "topic": batch.topic, "intervention_type": itype,
                        "intervention_key": f"{itype}__{cfg.stage3.version}",
                        "item": item.model_dump(mode="json", exclude={"inferences"}, exclude_none=True),
                        "responses": responses, "foci": list(foci),
                    },
                )
                out.append(ReviewTask(path, idx, itype, variants, request))
    return out


def _with_token(intervention: str) -> str:
    """Split-personality interventions open with the token written as text, as in the release."""
    from splitpersona.token import SPLIT_TOKEN

    return intervention if intervention.lstrip().startswith(SPLIT_TOKEN) else SPLIT_TOKEN + intervention.lstrip()


def intervention_records(task: ReviewTask, row: dict[str, Any]) -> dict[str, Stage3Intervention]:
    finished = dt.datetime.fromisoformat(row["finished_at"]).timestamp()
    common = {"intervention_type": task.intervention_type, "model_used": row["model"], "generation_time": finished}
    if row["status"] != "ok":
        placeholder = {
            "thought_process": "", "selected_review_focus": "N/A", "confidence": 0,
            "I": "[ERROR: generation_failed]", "R": "[ERROR: generation_failed]", "P": "ERROR",
            "detection_difficulty_internal": "NA", "detection_difficulty_external": "NA", "faulty_data": True,
            "error": "generation_failed", "error_detail": row.get("failure"), **common,
        }
        return {v: Stage3Intervention.model_validate(placeholder) for v in task.variants}
    answer = task.request.schema.model_validate(row["value"])
    out = {}
    for v in task.variants:
        review = getattr(answer, f"review_{v}").model_dump()
        if task.intervention_type == "split_personality":
            review["I"] = _with_token(review["I"])
        out[v] = Stage3Intervention.model_validate({**review, **common, "batch_thinking": answer.analysis})
    return out


def run_stage3(run: GenerationRun) -> StageResult:
    tasks = review_tasks(run)
    result = execute(run, "stage3", [t.request for t in tasks])
    result.files = write_stage3(run, tasks)
    result.notes["interventions"] = sum(len(t.variants) for t in tasks)
    return result


def write_stage3(run: GenerationRun, tasks: list[ReviewTask]) -> int:
    """Each stage-2 file plus the interventions stored so far; keys of earlier versions are kept."""
    store, model = run.store("stage3"), run.backend("stage3").model
    target = run.cfg.target_model()
    ours = {f"{t}__{run.cfg.stage3.version}" for t in run.cfg.stage3.intervention_types}
    by_file: dict[Path, list[ReviewTask]] = {}
    for t in tasks:
        by_file.setdefault(t.path, []).append(t)
    for path, file_tasks in by_file.items():
        out = run.stage_dir(3) / path.parent.name / path.name
        batch = ReleaseBatch.model_validate(read_json(path))
        if out.exists():
            _keep_earlier_versions(batch, ReleaseBatch.model_validate(read_json(out)), ours)
        for t in file_tasks:
            row = store.get(t.request.key(model))
            if row is None:
                continue
            for variant, record in intervention_records(t, row).items():
                batch.data[t.item].inferences[target][variant].interventions[t.key_name] = record  # type: ignore[index]
        write_json(out, release_json(batch))
    return len(by_file)


def _keep_earlier_versions(batch: ReleaseBatch, previous: ReleaseBatch, ours: set[str]) -> None:
    """Interventions under other keys survive a rerun if the item and the response are unchanged."""
    for s in walk(previous):
        if s.key in ours or s.idx >= len(batch.data) or not same_item(batch.data[s.idx], s.item):
            continue
        now = batch.data[s.idx].inferences.get(s.model, {}).get(s.variant)
        if now is not None and now.S == s.inference.S:
            now.interventions[s.key] = s.record
