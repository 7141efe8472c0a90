"""The iterated quality filter: rate every sample on versioned criteria, drop, report, compare.

One command runs one iteration (`spt generate filter --iteration N`). Every sample — one
intervention on one response — is rated by Claude on every criterion (1-5 with a reason); a sample
is accepted when every score reaches its criterion's threshold. The iteration directory
`filter/iter_NNN/` keeps everything side by side with the earlier ones:

    criteria.yaml        the criteria used (an iteration cannot be rerun with different ones)
    decisions.jsonl      one line per sample: decision, failing criteria, every score and reason
    failure_modes.json   counts per criterion, score histograms, worst examples  (+ report.md)
    review_sheet.md      N random survivors and N random rejects, in full, for a human to read
    comparison.md/.json  against iteration N-1: what flipped, how each criterion's scores moved
    accepted/<topic>/    the surviving interventions in the release's batch format
    proposed_criteria_vK.yaml   with --propose-criteria: Claude's next version, for a human to adopt
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, field_validator

from splitpersona.data_gen.backend import Block, Request
from splitpersona.data_gen.runner import GenerationRun, StageResult, execute
from splitpersona.data_gen.prompts import render
from splitpersona.data_gen.schemas import CriteriaProposal, rating_answer
from splitpersona.config import StrictModel, load_config
from splitpersona.io import DataError, atomic_write, iter_jsonl, read_json, write_json, write_jsonl
from splitpersona.records import ReleaseBatch
from splitpersona.release import Slot, batch_stem, intervention_id, release_json, walk

log = logging.getLogger("splitpersona.data_gen.filter")

RATE_TOOL = "rate_sample"
PROPOSE_TOOL = "propose_criteria"


class Criterion(StrictModel):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]{1,40}$")
    question: str = Field(min_length=10)
    threshold: int | None = Field(None, ge=1, le=5, description="Lowest passing score; null: the file's threshold.")


class Criteria(StrictModel):
    version: int = Field(ge=1)
    threshold: int = Field(3, ge=1, le=5, description="Lowest passing score for criteria without their own.")
    description: str = ""
    rationale: str | None = Field(None, description="Why this version differs from the previous one.")
    criteria: list[Criterion] = Field(min_length=1)

    @field_validator("criteria")
    @classmethod
    def _unique(cls, v: list[Criterion]) -> list[Criterion]:
        names = [c.name for c in v]
        if len(set(names)) != len(names):
            raise ValueError(f"criterion names repeat: {sorted(n for n in names if names.count(n) > 1)}")
        return v

    def threshold_of(self, c: Criterion) -> int:
        return c.threshold if c.threshold is not None else self.threshold

    def as_text(self) -> str:
        return "\n".join(f"- **{c.name}** (passes at {self.threshold_of(c)} or more): {c.question}" for c in self.criteria)


def load_criteria(path: str | Path) -> Criteria:
    return load_config(Criteria, path)


@dataclass(frozen=True)
class Candidate:
    """One intervention up for rating: its id, the file it came from, and where in that file it sits."""

    id: str
    path: Path
    topic: str
    at: Slot

    @property
    def system(self) -> str:
        return (self.at.item.A if self.at.variant == "A" else self.at.item.B) or ""

    @property
    def error(self) -> bool:
        return self.at.record.P == "ERROR"

    def text(self) -> str:
        at, alt = self.at, self.at.item.B if self.at.variant == "A" else self.at.item.A
        return "\n".join([
            "## The sample", f"Topic: {self.topic}", f"Focus the review judges: {at.record.selected_review_focus}", "",
            "### System prompt the response was written under", self.system, "",
            "### The other system prompt of the pair (for reference; the model did not see it)",
            alt if alt is not None else "(none: this scenario has a single system prompt)", "",
            "### The user's message", at.item.T, "",
            "### The model's response", at.inference.S if at.inference.S.strip() else "(empty response)", "",
            "### Intervention (I)", at.record.I, "",
            "### Review (R)", at.record.R, "",
            f"### Verdict (P): {at.record.P}", "",
            f"Rate the sample on every criterion with the {RATE_TOOL} tool.",
        ])


def collect_samples(run: GenerationRun) -> list[Candidate]:
    keys = set(run.cfg.filter.intervention_keys or [f"{t}__{run.cfg.stage3.version}" for t in run.cfg.stage3.intervention_types])
    files = run.batch_files(run.cfg.filter.source)
    if not files:
        raise DataError(run.stage_dir(run.cfg.filter.source),
                        "no batch files to filter: run the earlier stages (and `tag`) first")
    out = []
    for path in files:
        batch = ReleaseBatch.model_validate(read_json(path))
        out += [Candidate(s.record.id_string or intervention_id(batch_stem(path), s), path, batch.topic, s)
                for s in walk(batch) if s.key in keys]
    return out


def rating_request(run: GenerationRun, criteria: Criteria, sample: Candidate) -> Request:
    p = run.prompts
    instructions = render(p.filter, str(p.root / "filter.md"), version=str(criteria.version), criteria=criteria.as_text())
    return Request(
        stage="filter", system=(Block(p.system(), cache=True),),
        user=(Block(instructions, cache=True), Block(sample.text())),
        schema=rating_answer(tuple(c.name for c in criteria.criteria)), tool_name=RATE_TOOL,
        tool_description="Submit a reason and a 1-5 score for every criterion.", max_tokens=run.cfg.filter.max_tokens,
        context={"sample_id": sample.id, "criteria_version": criteria.version},
    )


def decide(criteria: Criteria, sample: Candidate, row: dict[str, Any] | None) -> dict[str, Any]:
    at = sample.at
    base = {"id": sample.id, "topic": sample.topic, "key": at.key, "model": at.model, "variant": at.variant,
            "flag": at.record.P, "file": sample.path.name, "item": at.idx}
    unrated = {**base, "decision": "unrated", "accepted": False, "failed_criteria": [], "scores": {}}
    if sample.error:
        return {**unrated, "decision": "generation_failed"}
    if row is None:
        return unrated
    if row["status"] != "ok":
        return {**unrated, "decision": "rating_failed", "failure": row.get("failure")}
    scores = {c.name: row["value"][c.name] for c in criteria.criteria}
    failed = [c.name for c in criteria.criteria if scores[c.name]["score"] < criteria.threshold_of(c)]
    return {**base, "decision": "rejected" if failed else "accepted", "accepted": not failed, "failed_criteria": failed,
            "scores": scores, "min_score": min(s["score"] for s in scores.values())}


def failure_modes(criteria: Criteria, decisions: list[dict[str, Any]], worst: int) -> dict[str, Any]:
    rated = [d for d in decisions if d["scores"]]
    per: dict[str, Any] = {}
    for c in criteria.criteria:
        scores = [(d["scores"][c.name]["score"], d) for d in rated]
        hist = Counter(s for s, _ in scores)
        ranked = sorted(scores, key=lambda x: (x[0], x[1]["id"]))
        per[c.name] = {
            "threshold": criteria.threshold_of(c),
            "rejections": sum(1 for d in rated if c.name in d["failed_criteria"]),
            "sole_reason": sum(1 for d in rated if d["failed_criteria"] == [c.name]),
            "mean": round(sum(s for s, _ in scores) / len(scores), 3) if scores else None,
            "histogram": {str(k): hist.get(k, 0) for k in range(1, 6)},
            "worst": [{"id": d["id"], "score": s, "reason": d["scores"][c.name]["reason"]} for s, d in ranked[:worst]],
        }
    by = Counter(d["decision"] for d in decisions)
    return {
        "criteria_version": criteria.version,
        "samples": len(decisions),
        "decisions": dict(sorted(by.items())),
        "acceptance_rate": round(by["accepted"] / len(rated), 4) if rated else None,
        "per_criterion": per,
        "rejected_by_topic": dict(Counter(d["topic"] for d in decisions if d["decision"] == "rejected").most_common()),
        "rejected_by_flag": dict(Counter(d["flag"] for d in decisions if d["decision"] == "rejected").most_common()),
    }


def failure_mode_counts(modes: dict[str, Any]) -> dict[str, Any]:
    """The numbers of `failure_modes` (for W&B): samples, decisions, acceptance, rejections per criterion."""
    per = modes["per_criterion"]
    return {
        "samples": modes["samples"], "decisions": modes["decisions"], "acceptance_rate": modes["acceptance_rate"],
        "rejections": {n: c["rejections"] for n, c in per.items()},
        "sole_reason": {n: c["sole_reason"] for n, c in per.items()},
        "mean_score": {n: c["mean"] for n, c in per.items() if c["mean"] is not None},
        "rejected_by_topic": modes["rejected_by_topic"], "rejected_by_flag": modes["rejected_by_flag"],
    }


def accepted_rows(run: GenerationRun, iteration: int) -> list[dict[str, Any]]:
    """One row per sample the filter accepted in `iteration`: the conversation, the intervention, review and flag,
    and the criteria's scores."""
    decisions = {row["id"]: row for _, row in iter_jsonl(iteration_dir(run, iteration) / "decisions.jsonl")
                 if row.get("accepted")}
    rows = []
    for c in collect_samples(run):
        d = decisions.get(c.id)
        if d is None:
            continue
        at = c.at
        rows.append({"id": c.id, "topic": c.topic, "model": at.model, "variant": at.variant, "intervention_key": at.key,
                     "system": c.system, "user": at.item.T, "response": at.inference.S, "intervention": at.record.I,
                     "review": at.record.R, "flag": at.record.P, "min_score": d["min_score"],
                     **{f"score/{k}": v["score"] for k, v in d["scores"].items()}})
    return rows


def report_markdown(iteration: int, modes: dict[str, Any]) -> str:
    lines = [f"# Quality filter, iteration {iteration} (criteria v{modes['criteria_version']})", "",
             f"Samples: {modes['samples']}; decisions: {json.dumps(modes['decisions'])}; "
             f"acceptance among rated: {modes['acceptance_rate']}", "",
             "| criterion | threshold | rejections | sole reason | mean | 1 | 2 | 3 | 4 | 5 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, c in modes["per_criterion"].items():
        h = c["histogram"]
        lines.append(f"| {name} | {c['threshold']} | {c['rejections']} | {c['sole_reason']} | {c['mean']} | "
                     + " | ".join(str(h[k]) for k in "12345") + " |")
    lines += ["", f"Rejected by topic: {json.dumps(modes['rejected_by_topic'])}",
              f"Rejected by verdict: {json.dumps(modes['rejected_by_flag'])}", "", "## Worst examples per criterion"]
    for name, c in modes["per_criterion"].items():
        lines += ["", f"### {name}"]
        lines += [f"- `{w['id']}` — {w['score']}: {w['reason']}" for w in c["worst"]] or ["- (none rated)"]
    return "\n".join(lines) + "\n"


def review_sheet(iteration: int, decisions: list[dict[str, Any]], samples: dict[str, Candidate], n: int, seed: int) -> str:
    rng = random.Random(f"{seed}:review:{iteration}")
    accepted = [d for d in decisions if d["decision"] == "accepted"]
    rejected = [d for d in decisions if d["decision"] == "rejected"]
    lines = [f"# Manual review sheet, iteration {iteration}", "",
             f"{min(n, len(accepted))} random survivors of {len(accepted)} and {min(n, len(rejected))} random rejects "
             f"of {len(rejected)}. For each, do you agree with the decision?", ""]
    for title, group in (("Survivors", accepted), ("Rejects", rejected)):
        lines += [f"## {title}", ""]
        for d in rng.sample(group, min(n, len(group))):
            s = samples[d["id"]]
            lines += [f"### `{d['id']}` — {d['decision']}" + (f" (failed: {', '.join(d['failed_criteria'])})" if d["failed_criteria"] else ""),
                      "", "| criterion | score | reason |", "|---|---|---|"]
            lines += [f"| {k} | {v['score']} | {v['reason'].replace('|', '/')} |" for k, v in d["scores"].items()]
            at = s.at
            lines += ["", f"**System ({at.variant}):** {s.system}", "", f"**User:** {at.item.T}", "",
                      f"**Response:** {at.inference.S}", "", f"**Intervention:** {at.record.I}", "",
                      f"**Review:** {at.record.R}", "", f"**Flag:** {at.record.P} (focus: {at.record.selected_review_focus})",
                      "", "---", ""]
    return "\n".join(lines)


def compare(previous: list[dict[str, Any]], current: list[dict[str, Any]], prev_iter: int) -> dict[str, Any]:
    before = {d["id"]: d for d in previous}
    transitions: Counter[str] = Counter()
    flips: dict[str, list[str]] = {"newly_rejected": [], "newly_accepted": []}
    for d in current:
        old = before.get(d["id"])
        was = old["decision"] if old else "absent"
        transitions[f"{was} -> {d['decision']}"] += 1
        if was == "accepted" and d["decision"] == "rejected":
            flips["newly_rejected"].append(d["id"])
        elif was == "rejected" and d["decision"] == "accepted":
            flips["newly_accepted"].append(d["id"])

    def means(ds: list[dict[str, Any]]) -> dict[str, float]:
        sums: dict[str, list[int]] = {}
        for d in ds:
            for k, v in d["scores"].items():
                sums.setdefault(k, []).append(v["score"])
        return {k: round(sum(v) / len(v), 3) for k, v in sums.items()}

    return {"previous_iteration": prev_iter, "transitions": dict(sorted(transitions.items())),
            "mean_scores_before": means(previous), "mean_scores_after": means(current), **flips}


def comparison_markdown(iteration: int, comp: dict[str, Any]) -> str:
    lines = [f"# Iteration {iteration} against iteration {comp['previous_iteration']}", "", "| before -> after | samples |",
             "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in comp["transitions"].items()]
    lines += ["", "| criterion | mean before | mean after |", "|---|---|---|"]
    for k in sorted(set(comp["mean_scores_before"]) | set(comp["mean_scores_after"])):
        lines.append(f"| {k} | {comp['mean_scores_before'].get(k, '-')} | {comp['mean_scores_after'].get(k, '-')} |")
    for name in ("newly_rejected", "newly_accepted"):
        lines += ["", f"{name.replace('_', ' ').capitalize()}: {len(comp[name])}"]
        lines += [f"- `{i}`" for i in comp[name][:50]]
    return "\n".join(lines) + "\n"


def iteration_dir(run: GenerationRun, iteration: int) -> Path:
    return run.out / "filter" / f"iter_{iteration:03d}"


def write_accepted(run: GenerationRun, it_dir: Path, samples: list[Candidate], decisions: list[dict[str, Any]]) -> int:
    """The source batches with every intervention that was not accepted removed."""
    keep = {d["id"] for d in decisions if d["accepted"]}
    accepted = {(c.path, c.at.idx, c.at.model, c.at.variant, c.at.key) for c in samples if c.id in keep}
    paths = list(dict.fromkeys(c.path for c in samples))
    for path in paths:
        batch = ReleaseBatch.model_validate(read_json(path))
        for s in walk(batch):
            if (path, s.idx, s.model, s.variant, s.key) not in accepted:
                del s.inference.interventions[s.key]
        write_json(it_dir / "accepted" / path.parent.name / path.name, release_json(batch, strip_empty=False))
    return len(paths)


def run_filter(run: GenerationRun, iteration: int, propose: bool = False) -> StageResult:
    if iteration < 1:
        raise ValueError("--iteration starts at 1")
    criteria = load_criteria(run.cfg.filter.criteria)
    it_dir = iteration_dir(run, iteration)
    used = it_dir / "criteria.yaml"
    dumped = yaml.safe_dump(criteria.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
    if used.exists() and load_criteria(used) != criteria:
        raise DataError(used, f"iteration {iteration} was run with other criteria; start a new iteration number")
    with atomic_write(used) as fh:
        fh.write(f"# Criteria used by filter iteration {iteration} (from {run.cfg.filter.criteria})\n{dumped}")

    samples = collect_samples(run)
    requests = {s.id: rating_request(run, criteria, s) for s in samples if not s.error}
    result = execute(run, "filter", list(requests.values()))
    store, model = run.store("filter"), run.backend("filter").model
    decisions = [decide(criteria, s, store.get(requests[s.id].key(model)) if s.id in requests else None) for s in samples]
    write_jsonl(it_dir / "decisions.jsonl", decisions)
    modes = failure_modes(criteria, decisions, run.cfg.filter.worst_examples)
    write_json(it_dir / "failure_modes.json", modes)
    report = report_markdown(iteration, modes)
    with atomic_write(it_dir / "report.md") as fh:
        fh.write(report)
    with atomic_write(it_dir / "review_sheet.md") as fh:
        fh.write(review_sheet(iteration, decisions, {s.id: s for s in samples}, run.cfg.filter.review_samples, run.cfg.seed))
    prev = iteration_dir(run, iteration - 1) / "decisions.jsonl"
    if iteration > 1 and prev.exists():
        comp = compare([row for _, row in iter_jsonl(prev)], decisions, iteration - 1)
        write_json(it_dir / "comparison.json", comp)
        with atomic_write(it_dir / "comparison.md") as fh:
            fh.write(comparison_markdown(iteration, comp))
        result.notes["comparison"] = comp["transitions"]
    result.files = write_accepted(run, it_dir, samples, decisions)
    result.notes.update(iteration=iteration, criteria_version=criteria.version, decisions=modes["decisions"])
    if propose and result.stopped is None:
        result.notes["proposed_criteria"] = str(propose_criteria(run, criteria, report, it_dir))
    return result


def propose_criteria(run: GenerationRun, criteria: Criteria, report: str, it_dir: Path) -> Path:
    p = run.prompts
    current = yaml.safe_dump(criteria.model_dump(mode="json", exclude_none=True), sort_keys=False, allow_unicode=True)
    text = render(p.propose, str(p.root / "propose_criteria.md"), version=str(criteria.version),
                  next_version=str(criteria.version + 1), criteria_yaml=current.strip(), report=report)
    request = Request(
        stage="propose", system=(Block(p.system(), cache=True),), user=(Block(text),), schema=CriteriaProposal,
        tool_name=PROPOSE_TOOL, tool_description="Submit the next version of the quality criteria.",
        max_tokens=run.cfg.filter.max_tokens, context={"criteria": criteria.model_dump(mode="json"), "report": report},
    )
    result = execute(run, "propose", [request])
    row = run.store("propose").get(request.key(run.backend("propose").model))
    if row is None or row["status"] != "ok":
        raise DataError(it_dir, f"Claude gave no usable criteria proposal ({result.failures or 'not sent'})")
    proposal = CriteriaProposal.model_validate(row["value"])
    nxt = Criteria(version=criteria.version + 1, threshold=criteria.threshold, description=criteria.description,
                   rationale=proposal.rationale,
                   criteria=[Criterion(name=c.name, question=c.question, threshold=c.threshold) for c in proposal.criteria])
    path = it_dir / f"proposed_criteria_v{nxt.version}.yaml"
    with atomic_write(path) as fh:
        fh.write(f"# Proposed by {row['model']} after filter iteration {it_dir.name}; review it, then run\n"
                 f"#   spt generate filter --iteration N --config <config> filter.criteria={path}\n")
        fh.write(yaml.safe_dump(nxt.model_dump(mode="json"), sort_keys=False, allow_unicode=True))
    return path
