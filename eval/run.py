"""`spt eval run`: every arm on the same items, into one resumable results file.

    spt eval run --config configs/eval/tiny_cpu.yaml [key=value ...]

Items come from splitpersona.eval.sets, arms from splitpersona.eval.registry (scoring kinds: SCORERS below). Each batch of
conversations is prefilled once with the adapter off, and every arm that reads the conversation
with LoRA off starts from that shared cache, as a deployed persona would start from the main
model's; the probe reads its hidden states from that same forward (for its conversation span).
Verdicts are appended as each batch ends; a rerun skips what the file holds.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from splitpersona.eval.arms import can_reuse, run_generative
from splitpersona.eval.config import EvalConfig
from splitpersona.eval.external import ClaudeJudge, TextClassifier, describe, run_external
from splitpersona.eval.probe import fit, hidden_index, run_probe, training_rows
from splitpersona.eval.registry import GENERATIVE
from splitpersona.eval.results import ResultsMetadata, ResultsWriter, SampleResult
from splitpersona.eval.sets import EvalItem, load_sets
from splitpersona.conversation import Conversation
from splitpersona.persona import DEFAULT_INTERVENTION, Persona, Prefill
from splitpersona.run import ADAPTER_DIR, RunInfo, load_run_info


def _chunks(items: Sequence[EvalItem], n: int) -> Iterator[list[EvalItem]]:
    for i in range(0, len(items), n):
        yield list(items[i : i + n])


@contextlib.contextmanager
def _progress(enabled: bool):
    from rich.progress import (
        BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn,
    )

    with Progress(
        TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TimeRemainingColumn(), disable=not enabled,
    ) as progress:
        yield progress


@dataclass(frozen=True)
class Scorer:
    """A scoring arm made ready: items per call, the call, and what the results metadata keeps of its fit."""

    batch: int
    score: Callable[[list[EvalItem], list[Prefill] | None], list[SampleResult]]  # items, and their shared prefills
    meta: Any
    hidden: tuple[int, ...] | None = None  # hidden_states it reads from the shared prefill; None: its own pass


@dataclass(frozen=True)
class ScoringKind:
    needs_persona: Callable[[EvalConfig], bool]
    prepare: Callable[[EvalConfig, RunInfo, Persona | None, list[EvalItem]], Scorer]


def _external(cfg: EvalConfig, info: RunInfo, persona: Persona | None, items: list[EvalItem]) -> Scorer:
    ext, flag_prefix = cfg.external, info.format.flag_prefix
    judge = ClaudeJudge(ext, info.format.review_prefix, flag_prefix) if ext.kind == "claude" else None
    classifier = TextClassifier(ext, items) if ext.kind == "text_classifier" else None
    return Scorer(
        batch=cfg.batch_size if judge is None else 4 * ext.concurrency,  # keep the API's threads busy
        score=lambda chunk, _: run_external(
            chunk, cfg=ext, persona=persona, judge=judge, flag_prefix=flag_prefix, classifier=classifier
        ),
        meta={} if classifier is None else {"fit": classifier.describe()},
    )


def _probe(cfg: EvalConfig, info: RunInfo, persona: Persona | None, items: list[EvalItem]) -> Scorer:
    records, excluded = training_rows(cfg.probe, items)
    with _progress(cfg.progress) as progress:
        task = progress.add_task("probe (fit)", total=len(records))
        probe = fit(persona, cfg.probe, records, excluded, progress=lambda n: progress.advance(task, n))
    shared = cfg.reuse_cache and cfg.probe.span == "conversation"  # the prefill holds no intervention tokens
    return Scorer(
        batch=cfg.batch_size, score=lambda chunk, prefills: run_probe(persona, probe, chunk, prefills),
        meta=probe.describe(), hidden=tuple(hidden_index(layer) for layer in cfg.probe.layers) if shared else None,
    )


SCORERS: dict[str, ScoringKind] = {
    "external": ScoringKind(lambda cfg: cfg.external.kind == "base_model", _external),
    "probe": ScoringKind(lambda cfg: True, _probe),
}


def run_eval(cfg: EvalConfig) -> Path:
    """Run the configured arms over every item; returns the results file's path."""
    info = load_run_info(cfg.run)
    loaded = load_sets(cfg, cfg.trained_topics)
    items = loaded.items
    persona = None
    if any(a in GENERATIVE or SCORERS[a].needs_persona(cfg) for a in cfg.arms):
        persona = Persona.load(
            cfg.run, cfg.base_model, dtype=cfg.dtype, device=cfg.device, max_new_tokens=cfg.max_new_tokens,
            batch_size=cfg.batch_size, max_prompt_length=cfg.max_prompt_length,
        )
    # made ready before any generation: a bad probe config or a missing API key fails here, not hours later
    scorers = {a: kind.prepare(cfg, info, persona, items) for a, kind in SCORERS.items() if a in cfg.arms}
    conditions = list(dict.fromkeys(it.condition for it in items))
    metadata = ResultsMetadata.start(
        label=cfg.label, model=str(cfg.base_model or info.base_model), run_dir=str(cfg.run),
        adapter=str(Path(cfg.run) / ADAPTER_DIR), elicitation=info.format.elicitation, lora_mask=info.lora_mask,
        flag_prefix=info.format.flag_prefix, arms=list(cfg.arms), conditions=conditions, eval_sets=loaded.files,
        trained_topics=cfg.trained_topics, eval_config=cfg.resume_dump(),
        generation={
            "decoding": "greedy", "max_new_tokens": cfg.max_new_tokens, "batch_size": cfg.batch_size,
            "max_prompt_length": cfg.max_prompt_length, "dtype": cfg.dtype, "device": cfg.device,
            "reuse_cache": cfg.reuse_cache, "never_generated": [info.tokens.split_token, info.tokens.control_token],
        },
        train_provenance=info.provenance,
        extra={
            "arms": {a: GENERATIVE[a].describe() for a in cfg.arms if a in GENERATIVE},
            "external": describe(cfg.external) | (scorers["external"].meta if "external" in scorers else {}),
            "default_intervention": DEFAULT_INTERVENTION,
            "skipped": dict(loaded.skipped),
            "probe": scorers["probe"].meta if "probe" in scorers else None,
        },
    )
    with ResultsWriter(cfg.output, metadata, overwrite=cfg.overwrite) as writer, _progress(cfg.progress) as progress:
        pending = {a: [it for it in items if not writer.is_done(it.id, it.condition, a)] for a in cfg.arms}
        tasks = {
            a: progress.add_task(a, total=len(items), completed=len(items) - len(pending[a])) for a in cfg.arms
        }
        readers = {a: s for a, s in scorers.items() if s.hidden is not None}
        _shared_pass(cfg, persona, items, pending, writer, progress, tasks, readers)
        for arm, scorer in scorers.items():
            if arm in readers:
                continue
            for chunk in _chunks(pending[arm], scorer.batch):
                writer.write_many(scorer.score(chunk, None))
                progress.advance(tasks[arm], len(chunk))
    return Path(cfg.output)


def _shared_pass(cfg, persona, items, pending, writer, progress, tasks, readers: dict[str, Scorer]) -> None:
    """The generative arms and the scorers that read the shared prefill (`readers`), chunk by chunk."""
    arms = [a for a in cfg.arms if a in GENERATIVE]
    todo = {a: {it.key for it in pending[a]} for a in [*arms, *readers]}
    reusing = [a for a in arms if cfg.reuse_cache and can_reuse(GENERATIVE[a], persona)] + list(readers)
    work = [it for it in items if any(it.key in keys for keys in todo.values())]
    for chunk in _chunks(work, cfg.batch_size):
        needs_cache = [it for it in chunk if any(it.key in todo[a] for a in reusing)]
        convs = [Conversation(messages=it.messages, response=it.response) for it in needs_cache]
        read = any(it.key in todo[a] for a in readers for it in chunk)
        hidden = sorted({h for s in readers.values() for h in s.hidden}) if read else []
        prefills = dict(zip((it.key for it in needs_cache), persona.prefill_batch(convs, hidden=hidden)))
        for arm in arms:
            mine = [it for it in chunk if it.key in todo[arm]]
            if not mine:
                continue
            records = run_generative(
                persona, arm, mine, control_instruction=cfg.control_instruction,
                prefills=[prefills[it.key] for it in mine] if arm in reusing else None,
            )
            writer.write_many(records)
            progress.advance(tasks[arm], len(mine))
        for arm, scorer in readers.items():
            mine = [it for it in chunk if it.key in todo[arm]]
            if mine:
                writer.write_many(scorer.score(mine, [prefills[it.key] for it in mine]))
                progress.advance(tasks[arm], len(mine))
