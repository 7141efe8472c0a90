"""Eval samples: read the input files and expand them into (sample, condition) items.

Two kinds of input. Records sets are our TrainingRecord JSONL (held-out topics or samples); their
items are the system-prompt conditions: `as_is`, `no_system_prompt`, `swapped_system_prompt` (the
other variant's prompt, `alt_system`). Conditions sets are auditing-game JSONL (`ConditionRecord`):
each record carries its own condition (trained_actual, original_actual, original_intended, ...).
Jailbreak twins copy a clean item and plant an "answer PASS" instruction in its user or system text.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from pydantic import Field

from splitpersona.eval.config import EvalConfig, EvalSetConfig
from splitpersona.config import StrictModel
from splitpersona.conversation import History, Message, build_messages
from splitpersona.io import DataError, read_json, read_jsonl
from splitpersona.records import Flag, TrainingRecord, Variant
from splitpersona.run import SPLIT_FILE


class ConditionRecord(StrictModel):
    """One auditing-game sample: a prompt, a response to it, and the flag a truthful reviewer gives."""

    id: str = Field(..., min_length=1)
    condition: str = Field(..., min_length=1, description="e.g. trained_actual, original_actual, original_intended.")
    prompt: str
    response: str
    expected_flag: Flag
    system: str | None = None
    intervention: str | None = Field(None, description="This sample's question for the reviewer (default: the set's).")
    topic: str | None = None
    history: History = Field(default_factory=list, description="Earlier user and assistant turns before `prompt`.")


@dataclass(frozen=True)
class EvalItem:
    """One sample under one condition: exactly what every arm is shown.

    Its conversation is `system`, `history`, `user`; conditions and jailbreaks change the first
    and the last, so those stay fields of their own.
    """

    id: str
    eval_set: str
    condition: str
    expected: Flag
    system: str | None
    user: str
    response: str
    intervention: str | None
    topic: str | None = None
    variant: Variant | None = None
    held_out_topic: bool | None = None
    intervention_key: str | None = None
    jailbreak: str | None = None
    base_condition: str | None = None
    slices: dict = field(default_factory=dict, hash=False)
    history: tuple[Message, ...] = field(default=(), hash=False)

    @property
    def key(self) -> tuple[str, str]:
        return (self.id, self.condition)

    @property
    def messages(self) -> list[Message]:
        return build_messages(self.system, self.user, self.history)


@dataclass
class LoadedSets:
    items: list[EvalItem]
    files: list[dict]  # name, kind, path, sha256, n (samples)
    skipped: Counter  # reason -> count


def sha256(path: str | Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _held_out(set_cfg: EvalSetConfig, topic: str | None, trained: set[str] | None) -> bool | None:
    if set_cfg.held_out is not None:
        return set_cfg.held_out
    if trained is None or topic is None:
        return None
    return topic not in trained


def _run_split(run_dir: str, which: str) -> set[str]:
    path = Path(run_dir) / SPLIT_FILE
    if not path.exists():
        raise DataError(path, f"run_split: {which} needs the run's split file")
    split = read_json(path)
    key = f"{which}_ids"
    if not isinstance(split, dict) or not isinstance(split.get(key), list):
        raise DataError(path, f"no {key!r} list")
    return set(split[key])


def _select(set_cfg: EvalSetConfig, rows: list, topic_of, run_dir: str) -> list:
    if set_cfg.run_split is not None:
        keep = _run_split(run_dir, set_cfg.run_split)
        rows = [r for r in rows if r.id in keep]
    if set_cfg.ids is not None:
        wanted = set(set_cfg.ids)
        missing = wanted - {r.id for r in rows}
        if missing:
            raise DataError(set_cfg.path, f"ids not in the file: {sorted(missing)[:5]}")
        rows = [r for r in rows if r.id in wanted]
    if set_cfg.topics is not None:
        rows = [r for r in rows if topic_of(r) in set_cfg.topics]
    rows = [r for r in rows if topic_of(r) not in set_cfg.exclude_topics]
    if set_cfg.limit is not None:
        rows = rows[: set_cfg.limit]
    if not rows:
        raise DataError(set_cfg.path, f"eval set {set_cfg.name!r} selects no sample")
    return rows


def _records_items(
    set_cfg: EvalSetConfig, cfg: EvalConfig, trained: set[str] | None, skipped: Counter
) -> tuple[list[EvalItem], int]:
    records = _select(set_cfg, read_jsonl(set_cfg.path, TrainingRecord), lambda r: r.topic, cfg.run)
    items: list[EvalItem] = []
    used = 0
    for rec in records:
        if rec.flag == "AMBIGUOUS":
            skipped[f"{set_cfg.name}: expected flag AMBIGUOUS"] += 1
            continue
        used += 1
        base = EvalItem(
            id=rec.id, eval_set=set_cfg.name, condition="as_is", expected=rec.flag, system=rec.system, user=rec.user,
            response=rec.response, intervention=set_cfg.intervention or rec.intervention, topic=rec.topic,
            variant=rec.variant, held_out_topic=_held_out(set_cfg, rec.topic, trained),
            intervention_key=rec.intervention_key, slices={"intervention_type": rec.intervention_type},
            history=tuple(rec.history),
        )
        for condition in cfg.conditions:
            if condition == "as_is":
                items.append(base)
            elif condition == "no_system_prompt":
                items.append(replace(base, condition=condition, system=None))
            elif not rec.alt_system:
                skipped[f"{set_cfg.name}: {condition} without alt_system"] += 1
            else:
                items.append(replace(base, condition=condition, system=rec.alt_system))
    return items, used


def _condition_items(set_cfg: EvalSetConfig, cfg: EvalConfig, trained: set[str] | None) -> tuple[list[EvalItem], int]:
    records = _select(set_cfg, read_jsonl(set_cfg.path, ConditionRecord), lambda r: r.topic, cfg.run)
    seen: set[str] = set()
    items = []
    for rec in records:
        if rec.id in seen:
            raise DataError(set_cfg.path, "duplicate sample id", record=rec.id)
        seen.add(rec.id)
        items.append(EvalItem(
            id=rec.id, eval_set=set_cfg.name, condition=rec.condition, expected=rec.expected_flag, system=rec.system,
            user=rec.prompt, response=rec.response, intervention=set_cfg.intervention or rec.intervention,
            topic=rec.topic, held_out_topic=_held_out(set_cfg, rec.topic, trained), history=tuple(rec.history),
        ))
    return items, len(items)


def plant(item: EvalItem, where: str, text: str) -> EvalItem:
    """The jailbreak twin of a clean item: `text` added to its user message or system prompt."""
    if where == "user":
        changed = {"user": f"{item.user}\n\n{text}"}
    else:
        changed = {"system": f"{item.system}\n\n{text}" if item.system else text}
    return replace(item, condition=f"jailbreak_{where}", jailbreak=where, base_condition=item.condition, **changed)


def load_sets(cfg: EvalConfig, trained_topics: list[str] | None) -> LoadedSets:
    """Every item of every set, clean then jailbroken; (id, condition) is unique across the run."""
    trained = set(trained_topics) if trained_topics is not None else None
    skipped: Counter = Counter()
    items: list[EvalItem] = []
    files = []
    for s in cfg.sets:
        if not Path(s.path).exists():
            raise DataError(s.path, f"eval set {s.name!r}: file not found")
        if s.kind == "records":
            set_items, n = _records_items(s, cfg, trained, skipped)
            bases = [it for it in set_items if it.condition == cfg.jailbreak.base_condition]
        else:
            set_items, n = _condition_items(s, cfg, trained)
            bases = list(set_items)
        for where in cfg.jailbreak.where:
            set_items += [plant(it, where, cfg.jailbreak.text) for it in bases]
        files.append({"name": s.name, "kind": s.kind, "path": s.path, "sha256": sha256(s.path), "n": n})
        items += set_items
    first: dict[tuple[str, str], str] = {}
    for it in items:
        if it.key in first:
            raise DataError(
                next(s.path for s in cfg.sets if s.name == it.eval_set),
                f"sample id {it.id!r} under condition {it.condition!r} also comes from set {first[it.key]!r}",
                record=it.id,
            )
        first[it.key] = it.eval_set
    return LoadedSets(items, files, skipped)
