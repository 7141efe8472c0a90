"""Stage 1: scenarios (A, optional B, T and metadata) per topic, one request per batch file.

Batches of one topic are independent requests (they run in parallel or in one Message Batch), so
each gets its own slice of the domain rotation to keep them from writing the same scenarios.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from splitpersona.data_gen.backend import Block, Request
from splitpersona.data_gen.runner import GenerationRun, StageResult, execute
from splitpersona.data_gen.schemas import stage1_answer
from splitpersona.io import write_json
from splitpersona.records import ReleaseBatch, Stage1Item, Stage1Metadata
from splitpersona.release import release_json

TOOL = "write_samples"
DOMAINS_PER_BATCH = 4


@dataclass(frozen=True)
class BatchSpec:
    topic: str
    index: int  # 0-based
    request: Request

    def batch_id(self, run_name: str) -> str:
        return f"{self.topic}_{run_name}_batch_{self.index + 1:03d}"


def batch_specs(run: GenerationRun) -> list[BatchSpec]:
    cfg, prompts = run.cfg, run.prompts
    n, count = cfg.stage1.items_per_batch, cfg.stage1.batches_per_topic
    specs = []
    for topic in cfg.topics:
        foci = tuple(prompts.topic_foci[topic])
        for b in range(count):
            domains = random.Random(f"{cfg.seed}:{topic}:{b}").sample(prompts.domains, DOMAINS_PER_BATCH)
            ask = (
                f"Write exactly {n} samples for this batch (batch {b + 1} of {count} for this topic; other batches "
                f"are written in parallel, so stay within your domains). Draw the scenarios mainly from these "
                f"domains: {', '.join(domains)}. Give about half of the samples a B prompt and make about one in "
                f"ten an FPT case. Answer with the {TOOL} tool."
            )
            request = Request(
                stage="stage1", system=(Block(prompts.system(), cache=True),),
                user=(Block(prompts.stage1_prompt(topic), cache=True), Block(ask)), schema=stage1_answer(foci, n),
                tool_name=TOOL, tool_description=f"Submit {n} new training scenarios for the topic {topic}.",
                max_tokens=cfg.stage1.max_tokens, temperature=cfg.stage1.temperature,
                context={"topic": topic, "batch_index": b, "num_samples": n, "domains": domains, "foci": list(foci)},
            )
            specs.append(BatchSpec(topic, b, request))
    return specs


def to_batch(spec: BatchSpec, row: dict, run_name: str, n: int) -> ReleaseBatch:
    answer = spec.request.schema.model_validate(row["value"])
    items = [
        Stage1Item(
            thought_process=s.thought_process, A=s.A, B=s.B if s.B and s.B.strip() else None, T=s.T,
            metadata=Stage1Metadata(
                alignment_issue_type=spec.topic, difficulty=s.metadata.difficulty,
                intended_review_focus=", ".join(s.metadata.intended_review_focus), notes=s.metadata.notes,
            ),
        )
        for s in answer.samples[:n]
    ]
    return ReleaseBatch(
        batch_id=spec.batch_id(run_name), generation_timestamp=row["finished_at"], model_used=row["model"], stage=1,
        topic=spec.topic, data=items, project_feedback=answer.project_feedback or None,
    )


def run_stage1(run: GenerationRun) -> StageResult:
    specs = batch_specs(run)
    result = execute(run, "stage1", [s.request for s in specs])
    store, model = run.store("stage1"), run.backend("stage1").model
    for spec in specs:
        row = store.get(spec.request.key(model))
        if row is None or row["status"] != "ok":
            continue
        batch = to_batch(spec, row, run.cfg.name, run.cfg.stage1.items_per_batch)
        path = run.stage_dir(1) / spec.topic / f"batch_{batch.batch_id}.json"
        write_json(path, release_json(batch))
        result.files += 1
        result.notes["items"] = result.notes.get("items", 0) + len(batch.data)
    return result
