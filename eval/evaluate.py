"""`spt eval run`: every arm on the same items, into one resumable results file.

    spt eval run --config configs/eval/tiny_cpu.yaml [key=value ...]

Items come from splitpersona.eval.sets, arms from splitpersona.eval.registry. Each batch of conversations is prefilled once with the adapter off, and every arm that reads the conversation
with LoRA off starts from that shared cache, as a deployed persona would start from the main
model's; the probe reads its hidden states from that same forward (for its conversation span).
Verdicts are appended as each batch ends; a rerun skips what the file holds.

With `engine: server` the generative arms and the base-model judge go to a server
(`splitpersona.served`): the server's own cache does what the shared prefill does here, and an arm the
server cannot serve as the in-process persona would is refused by name before anything runs. The
probe and the text classifier still run here, on the model loaded here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

from splitpersona.eval.arms import can_reuse, run_generative
from splitpersona.eval.config import EvalConfig
from splitpersona.eval.external import describe
from splitpersona.eval.registry import GENERATIVE, SCORING, Scorer
from splitpersona.eval.results import ResultsMetadata, ResultsWriter
from splitpersona.eval.sets import EvalItem, load_sets
from splitpersona.conversation import Conversation
from splitpersona.persona import Persona
from splitpersona.prompts import DEFAULT_INTERVENTION
from splitpersona.run import ADAPTER_DIR, load_run_info
from splitpersona.serving import ServerError


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
    options = dict(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, max_prompt_length=cfg.max_prompt_length)
    persona = served = None
    if cfg.engine == "server":
        served = _connect(cfg, options)
    local_arms = [a for a in cfg.arms if (a in GENERATIVE or SCORING[a].needs_persona(cfg)) and not _on_server(a, cfg)]
    if local_arms:
        persona = Persona.load(cfg.run, cfg.base_model, dtype=cfg.dtype, device=cfg.device, **options)
    # made ready before any generation: a bad probe config or a missing API key fails here, not hours later
    scorers = {a: spec.prepare(cfg, info, served if _on_server(a, cfg) else persona, items, _progress)
               for a, spec in SCORING.items() if a in cfg.arms}
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
            "engine": cfg.engine, **({"server": served.client.url, "api": served.client.api} if served else {}),
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
        _shared_pass(cfg, served or persona, items, pending, writer, progress, tasks, readers)
        for arm, scorer in scorers.items():
            if arm in readers:
                continue
            for chunk in _chunks(pending[arm], scorer.batch):
                writer.write_many(scorer.score(chunk, None))
                progress.advance(tasks[arm], len(chunk))
    if cfg.wandb.enabled:
        from splitpersona.eval.tracked import log_results

        log_results(cfg.output, cfg.wandb)
    return Path(cfg.output)


def _on_server(arm: str, cfg: EvalConfig) -> bool:
    return cfg.engine == "server" and (arm in GENERATIVE or (arm == "external" and cfg.external.kind == "base_model"))


def _connect(cfg: EvalConfig, options: dict):
    """The served persona, refused before anything runs where it cannot serve an arm as the in-process one would."""
    from splitpersona.served import ServedPersona

    s = cfg.server
    served = ServedPersona.connect(s.url, cfg.run, api=s.api, adapter=s.adapter, concurrency=s.concurrency, **options)
    refused = {a: served.refuses(GENERATIVE[a].marker, GENERATIVE[a].adapter) for a in cfg.arms if a in GENERATIVE}
    refused = {a: why for a, why in refused.items() if why}
    if refused:
        served.close()
        raise ServerError(f"{s.url} cannot serve arm(s) " + "; ".join(f"{a}: {why}" for a, why in refused.items())
                          + " (drop them from `arms`, or run them with engine: in_process)")
    return served


def _shared_pass(cfg, persona, items, pending, writer, progress, tasks, readers: dict[str, Scorer]) -> None:
    """The generative arms and the scorers that read the shared prefill (`readers`), chunk by chunk."""
    arms = [a for a in cfg.arms if a in GENERATIVE]
    todo = {a: {it.key for it in pending[a]} for a in [*arms, *readers]}
    shared = cfg.reuse_cache and cfg.engine == "in_process"
    reusing = [a for a in arms if shared and can_reuse(GENERATIVE[a], persona)] + list(readers)
    work = [it for it in items if any(it.key in keys for keys in todo.values())]
    for chunk in _chunks(work, cfg.batch_size):
        needs_cache = [it for it in chunk if any(it.key in todo[a] for a in reusing)]
        convs = [Conversation(messages=it.messages, response=it.response) for it in needs_cache]
        read = any(it.key in todo[a] for a in readers for it in chunk)
        hidden = sorted({h for s in readers.values() for h in s.hidden}) if read else []
        prefills = dict(zip((it.key for it in needs_cache), persona.prefill_batch(convs, hidden=hidden))) if convs else {}
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
