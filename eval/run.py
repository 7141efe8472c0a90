"""`spt eval run`: every arm on the same items, into one resumable results file.

    spt eval run --config configs/eval/tiny.yaml [key=value ...]

Items are (sample, condition) pairs from the configured sets (eval.sets); arms are eval.arms (the
persona and its controls), eval.external and eval.probe. The generative arms go batch by batch:
each batch's conversations are prefilled once with the adapter off, and every arm that reads the
conversation with LoRA off starts from a copy of that cache, as a deployed persona would start
from the main model's. Each verdict is appended and fsynced as soon as its batch ends; a rerun
with the same config skips what the file already holds (eval.results.ResultsWriter).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

from eval.arms import GENERATIVE, can_reuse, run_generative
from eval.config import EvalConfig
from eval.external import ClaudeJudge, TextClassifier, describe, run_external
from eval.probe import fit, run_probe, training_rows
from eval.results import ResultsMetadata, ResultsWriter
from eval.sets import EvalItem, load_sets
from splitpersona.persona import DEFAULT_INTERVENTION, Persona
from splitpersona.run import ADAPTER_DIR, load_run_info


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


def run_eval(cfg: EvalConfig) -> Path:
    """Run the configured arms over every item; returns the results file's path."""
    info = load_run_info(cfg.run)
    loaded = load_sets(cfg, cfg.trained_topics)
    items = loaded.items
    persona = None
    if any(a in GENERATIVE or a == "probe" for a in cfg.arms) or (
        "external" in cfg.arms and cfg.external.kind == "base_model"
    ):
        persona = Persona.load(
            cfg.run, cfg.base_model, dtype=cfg.dtype, device=cfg.device, max_new_tokens=cfg.max_new_tokens,
            batch_size=cfg.batch_size, max_prompt_length=cfg.max_prompt_length,
        )
    probe = None
    if "probe" in cfg.arms:  # fitted first: a bad probe config fails before hours of generation
        records, excluded = training_rows(cfg.probe, items)
        with _progress(cfg.progress) as progress:
            task = progress.add_task("probe (fit)", total=len(records))
            probe = fit(persona, cfg.probe, records, excluded, progress=lambda n: progress.advance(task, n))
    judge = classifier = None
    if "external" in cfg.arms and cfg.external.kind == "claude":  # a missing key fails here, not after the local arms
        judge = ClaudeJudge(cfg.external, info.format.review_prefix, info.format.flag_prefix)
    if "external" in cfg.arms and cfg.external.kind == "text_classifier":
        classifier = TextClassifier(cfg.external, items)
    conditions = list(dict.fromkeys(it.condition for it in items))
    metadata = ResultsMetadata.start(
        label=cfg.label,
        model=str(cfg.base_model or info.base_model),
        run_dir=str(cfg.run),
        adapter=str(Path(cfg.run) / ADAPTER_DIR),
        elicitation=info.format.elicitation,
        lora_mask=info.lora_mask,
        flag_prefix=info.format.flag_prefix,
        arms=list(cfg.arms),
        conditions=conditions,
        eval_sets=loaded.files,
        trained_topics=cfg.trained_topics,
        eval_config=cfg.resume_dump(),
        generation={
            "decoding": "greedy", "max_new_tokens": cfg.max_new_tokens, "batch_size": cfg.batch_size,
            "max_prompt_length": cfg.max_prompt_length, "dtype": cfg.dtype, "device": cfg.device,
            "reuse_cache": cfg.reuse_cache, "never_generated": [info.tokens.split_token, info.tokens.control_token],
        },
        train_provenance=info.provenance,
        extra={
            "arms": {a: GENERATIVE[a].describe() for a in cfg.arms if a in GENERATIVE},
            "external": describe(cfg.external) | ({} if classifier is None else {"fit": classifier.describe()}),
            "default_intervention": DEFAULT_INTERVENTION,
            "skipped": dict(loaded.skipped),
            "probe": None if probe is None else probe.describe(),
        },
    )
    with ResultsWriter(cfg.output, metadata, overwrite=cfg.overwrite) as writer, _progress(cfg.progress) as progress:
        pending = {a: [it for it in items if not writer.is_done(it.id, it.condition, a)] for a in cfg.arms}
        tasks = {
            a: progress.add_task(a, total=len(items), completed=len(items) - len(pending[a])) for a in cfg.arms
        }
        _generative(cfg, persona, items, pending, writer, progress, tasks)
        if pending.get("external"):
            size = cfg.batch_size if judge is None else 4 * cfg.external.concurrency  # keep the API's threads busy
            for chunk in _chunks(pending["external"], size):
                records = run_external(
                    chunk, cfg=cfg.external, persona=persona, judge=judge, flag_prefix=info.format.flag_prefix,
                    classifier=classifier,
                )
                writer.write_many(records)
                progress.advance(tasks["external"], len(chunk))
        if pending.get("probe"):
            for chunk in _chunks(pending["probe"], cfg.batch_size):
                writer.write_many(run_probe(persona, probe, chunk))
                progress.advance(tasks["probe"], len(chunk))
    return Path(cfg.output)


def _generative(cfg, persona, items, pending, writer, progress, tasks) -> None:
    arms = [a for a in cfg.arms if a in GENERATIVE]
    todo = {a: {it.key for it in pending[a]} for a in arms}
    reusing = [a for a in arms if cfg.reuse_cache and can_reuse(GENERATIVE[a], persona)]
    work = [it for it in items if any(it.key in todo[a] for a in arms)]
    for chunk in _chunks(work, cfg.batch_size):
        needs_cache = [it for it in chunk if any(it.key in todo[a] for a in reusing)]
        prefills = {it.key: persona.prefill(it.messages, it.response) for it in needs_cache}
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
