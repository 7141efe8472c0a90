"""The probe arm: a linear probe on the base model's residual stream, the strongest published non-SPT baseline.

Input: the same prompt the persona arm reads, without any marker (the templated conversation, then
the intervention), through the base model with the adapter off; or, with `states: persona`, the
persona's own prompt and states (split token, adapter on). Features: hidden states at the
configured block outputs, mean- or last-pooled over the conversation or the intervention tokens,
concatenated over layers. The probe (standardised features, then logistic or ridge regression with
FAIL = 1) is fitted on training records and scored on the eval items; its verdict is FAIL when the
score reaches `threshold`. sklearn does the fitting; only feature extraction is ours, because it
must go through the one assembler to see exactly the persona's tokens.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from splitpersona.eval.arms import scored_results
from splitpersona.eval.config import EvalConfig, ExternalConfig, ProbeConfig
from splitpersona.eval.registry import Scorer
from splitpersona.eval.results import SampleResult
from splitpersona.eval.sets import EvalItem
from splitpersona.conversation import Message
from splitpersona.io import read_jsonl
from splitpersona.persona import Persona
from splitpersona.prefill import Prefill
from splitpersona.prompts import persona_start
from splitpersona.records import TrainingRecord
from splitpersona.run import RunInfo


def _tokens(persona: Persona, messages: list[Message], response: str, intervention: str | None, cfg: ProbeConfig):
    sample = persona.prompt(messages, response, intervention, marker="split" if cfg.states == "persona" else "none")
    span = cfg.span
    start = persona_start(sample)
    if span == "conversation":
        return sample.input_ids, (0, start)
    seg = next(s for s in sample.segments if s.kind == "intervention")
    return sample.input_ids, (seg.start, seg.end)


def hidden_index(layer: int) -> int:
    """A configured probe layer as an index into hidden_states (0 is the embeddings)."""
    return layer + 1 if layer >= 0 else layer


def features(
    persona: Persona,
    rows: Sequence[tuple[list[Message], str, str | None]],
    cfg: ProbeConfig,
    progress=None,
    prefills: Sequence[Prefill | None] | None = None,
) -> np.ndarray:
    """One feature row per (messages, response, intervention).

    A row whose prefill (`Persona.prefill_batch(..., hidden=...)`) holds the span's tokens and the
    probe's layers is read from it (base states only: a prefill runs with the adapter off); the others
    go through their own forward, `cfg.batch_size` rows at a time.
    """
    prepared = [_tokens(persona, m, r, i, cfg) for m, r, i in rows]
    n_blocks = persona.model.get_base_model().config.num_hidden_layers
    for layer in cfg.layers:
        if not -n_blocks <= layer < n_blocks:
            raise ValueError(f"probe layer {layer} out of range for a model with {n_blocks} blocks")
    index = [hidden_index(layer) for layer in cfg.layers]
    out: list[np.ndarray | None] = [None] * len(prepared)

    def pool(states: list[torch.Tensor]) -> np.ndarray:
        return torch.cat([h.float().mean(0) if cfg.pooling == "mean" else h[-1].float() for h in states]).cpu().numpy()

    for k, (ids, (s, e)) in enumerate(prepared):
        held = None if prefills is None or cfg.states == "persona" else prefills[k]
        if held is not None and held.hidden is not None and set(index) <= held.hidden.keys() \
                and held.input_ids[:e] == ids[:e]:
            out[k] = pool([held.hidden[h][s:e] for h in index])
    if progress is not None and prefills is not None:
        progress(sum(f is not None for f in out))
    todo = [k for k, f in enumerate(out) if f is None]
    for b in range(0, len(todo), cfg.batch_size):
        chunk = todo[b : b + cfg.batch_size]
        width = max(len(prepared[k][0]) for k in chunk)
        ids = torch.full((len(chunk), width), persona.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, k in enumerate(chunk):
            row = prepared[k][0]
            ids[i, width - len(row) :] = torch.tensor(row)
            mask[i, width - len(row) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # each row counts from its first real token
        # indices keep only those layers' outputs (transformers records them with hooks on the blocks), and
        # one logit row spares the [batch, length, vocab] head output nobody reads
        with torch.no_grad(), persona.adapter_mode("on" if cfg.states == "persona" else "off"):
            hidden = persona.model(
                input_ids=ids.to(persona.device), attention_mask=mask.to(persona.device),
                position_ids=positions.to(persona.device), output_hidden_states=index, logits_to_keep=1,
            ).hidden_states
        for i, k in enumerate(chunk):
            row, (s, e) = prepared[k]
            pad = width - len(row)
            out[k] = pool([hidden[h][i, pad + s : pad + e] for h in index])
        if progress is not None:
            progress(len(chunk))
    return np.stack(out)


@dataclass
class FittedProbe:
    pipeline: object
    cfg: ProbeConfig
    n_train: int
    n_fail: int
    excluded: int  # training records left out for overlapping the eval items

    def scores(self, x: np.ndarray) -> np.ndarray:
        if self.cfg.model == "logistic":
            return self.pipeline.predict_proba(x)[:, 1]
        return self.pipeline.predict(x)

    def describe(self) -> dict:
        return {"n_train": self.n_train, "n_train_fail": self.n_fail, "excluded_overlapping_eval": self.excluded}


def training_rows(cfg: ProbeConfig | ExternalConfig, items: Sequence[EvalItem]) -> tuple[list[TrainingRecord], int]:
    """The records to fit on (`cfg.train_data`, `cfg.train_limit`), and how many were left out for
    sharing an id or a user task with an eval item. Serves the probe and the text-classifier reviewer."""
    ids, tasks = {it.id for it in items}, {it.user for it in items if it.jailbreak is None}
    records, excluded = [], 0
    for path in cfg.train_data:
        for rec in read_jsonl(path, TrainingRecord):
            if rec.flag == "AMBIGUOUS":
                continue
            if rec.id in ids or rec.user in tasks:
                excluded += 1
                continue
            records.append(rec)
    if cfg.train_limit is not None:
        records = records[: cfg.train_limit]
    flags = {r.flag for r in records}
    if flags != {"PASS", "FAIL"}:
        raise ValueError(f"fitting needs PASS and FAIL training records; {cfg.train_data} give {sorted(flags)}")
    return records, excluded


def fit(
    persona: Persona, cfg: ProbeConfig, records: Sequence[TrainingRecord], excluded: int = 0, progress=None
) -> FittedProbe:
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rows = [(r.messages, r.response, r.intervention) for r in records]
    x = features(persona, rows, cfg, progress)
    y = np.array([r.flag == "FAIL" for r in records], dtype=float)
    head = LogisticRegression(C=cfg.c, max_iter=2000) if cfg.model == "logistic" else Ridge(alpha=cfg.alpha)
    pipeline = make_pipeline(StandardScaler(), head)
    pipeline.fit(x, y.astype(int) if cfg.model == "logistic" else y)
    return FittedProbe(pipeline, cfg, len(records), int(y.sum()), excluded)


def run_probe(
    persona: Persona, probe: FittedProbe, items: Sequence[EvalItem], prefills: Sequence[Prefill | None] | None = None
) -> list[SampleResult]:
    """Scores of `items`; where their `prefills` hold the probe's states, the shared pass is not repeated
    (the latency then counts only what the probe adds to it)."""
    start = time.perf_counter()
    x = features(persona, [(it.messages, it.response, it.intervention) for it in items], probe.cfg, prefills=prefills)
    scores = probe.scores(x)
    per_item = (time.perf_counter() - start) / max(1, len(items))
    return scored_results(items, scores, threshold=probe.cfg.threshold, arm="probe", latency_s=per_item)


def prepare(cfg: EvalConfig, info: RunInfo, persona: Persona | None, items: list[EvalItem], bars) -> Scorer:
    """The probe arm made ready: fitted on `cfg.probe.train_data` (`bars(enabled)`: the runner's progress display)."""
    records, excluded = training_rows(cfg.probe, items)
    with bars(cfg.progress) as progress:
        task = progress.add_task("probe (fit)", total=len(records))
        probe = fit(persona, cfg.probe, records, excluded, progress=lambda n: progress.advance(task, n))
    # the shared prefill holds no intervention tokens, and none is made where a server runs the other arms
    shared = cfg.reuse_cache and cfg.probe.span == "conversation" and cfg.engine == "in_process"
    return Scorer(
        batch=cfg.batch_size, score=lambda chunk, prefills: run_probe(persona, probe, chunk, prefills),
        meta=probe.describe(), hidden=tuple(hidden_index(layer) for layer in cfg.probe.layers) if shared else None,
    )
