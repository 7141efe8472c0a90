"""The public SPT release's format: its one traversal and id rule, and the importer (tagged stage-3
batches in, flat training records out).

The release nests one item's data as item -> model -> variant (A/B) -> intervention key; `walk`
is the one traversal of that nesting and `intervention_id` the one id rule. A training sample is
one surviving (item, model, variant, key): the variant's system prompt, the task, that model's
response, and the intervention's I, R, P. `ReleaseFilter` decides survival the way the published
stats script does (topic, key, and the intervention's own tags); variant-level tags are checked
too where `tag_levels` names them.

Every file is read and validated before anything is written, so a truncated or malformed file
stops the import with a message naming it, and the output (written atomically) is never partial.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from splitpersona.config import CONFIGS, StrictModel, load_config
from splitpersona.io import DataError, describe_validation_error, read_json, write_jsonl
from splitpersona.records import ReleaseBatch, TrainingRecord

RELEASE_FILTER = CONFIGS / "filters" / "spt_release.yaml"
BATCH_SUFFIXES = (".json.xz", ".json")
SOURCE_PREFIX = "spt_release"
VARIANTS = ("A", "B")


class ReleaseFilter(StrictModel):
    """Which stage-3 interventions become training records."""

    train_topics: list[str] = Field(description="Batch topics to import.")
    intervention_keys: list[str] = Field(description="Exact intervention keys, e.g. split_personality__version_4.")
    tags_to_filter: list[str] = Field(default_factory=list, description="An intervention carrying any of these is dropped.")
    tag_levels: list[Literal["intervention", "variant"]] = Field(
        default_factory=lambda: ["intervention"],
        min_length=1,
        description="Where tags_to_filter looks: the intervention's own tags (the published filter), "
        "and/or its variant's tags (adds generation_exceeded_token_limit and no_a_b_separation).",
    )
    models: list[str] | None = Field(None, description="Inference models to import; null means all.")


def load_filter(path: str | os.PathLike[str] = RELEASE_FILTER) -> ReleaseFilter:
    return load_config(ReleaseFilter, path)


def batch_stem(path: Path) -> str:
    """`batch_x.json.xz` -> `batch_x`: the stem the release's ids are built from."""
    return next((path.name[: -len(s)] for s in BATCH_SUFFIXES if path.name.endswith(s)), path.stem)


def find_batch_files(sources: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Batch files under each source: a directory is searched recursively for `batch_*.json[.xz]`,
    a file is taken as given. Order is sorted within a directory and otherwise as listed."""
    found: list[Path] = []
    for src in map(Path, sources):
        if src.is_dir():
            files = sorted(p for p in src.rglob("batch_*") if p.is_file() and p.name.endswith(BATCH_SUFFIXES))
            if not files:
                raise DataError(src, "no batch_*.json or batch_*.json.xz files in this directory")
            found += files
        elif src.is_file():
            found.append(src)
        else:
            raise DataError(src, "no such file or directory")
    unique = list(dict.fromkeys(p.resolve() for p in found))
    by_stem: dict[str, Path] = {}
    for path in unique:
        other = by_stem.setdefault(batch_stem(path), path)
        if other != path:
            raise DataError(path, f"the same batch is also at {other} (its records would be imported twice)")
    return unique


def read_batch(path: str | os.PathLike[str]) -> ReleaseBatch:
    """Read and validate one batch; errors name the file and, where one is at fault, the item."""
    raw = read_json(path)
    if not isinstance(raw, dict):
        raise DataError(path, f"top level is a {type(raw).__name__}, not a batch object")
    try:
        return ReleaseBatch.model_validate(raw)
    except ValidationError as e:
        items = sorted({err["loc"][1] for err in e.errors() if err["loc"][:1] == ("data",) and len(err["loc"]) > 1})
        record = None if not items else f"item {items[0]}" if len(items) == 1 else "items " + ", ".join(map(str, items))
        raise DataError(path, describe_validation_error(e), record=record) from e


def iter_batches(paths: Iterable[Path]) -> Iterator[tuple[Path, ReleaseBatch]]:
    for path in paths:
        yield path, read_batch(path)


@dataclass
class ImportStats:
    files: int = 0
    items: int = 0
    interventions: int = 0
    candidates: int = 0  # topic, model and key pass the filter
    rejected: int = 0  # candidates dropped for a tag
    rejected_by_tag: Counter[str] = field(default_factory=Counter)  # not exclusive: one rejection may count under several
    error_placeholders: int = 0  # surviving candidates with P == ERROR (failed stage-3 generations), never emitted
    seen: dict[str, set[str]] = field(default_factory=lambda: {"topics": set(), "models": set(), "keys": set()})

    @property
    def written(self) -> int:
        return self.candidates - self.rejected - self.error_placeholders


@dataclass(frozen=True)
class Slot:
    """One place in a batch: item `idx`, `model`'s answer under `variant`, and (unless walked by
    variant) intervention `key` on it. Works on a ReleaseBatch and on its plain JSON dict alike."""

    idx: int
    item: Any
    model: str
    variant: str
    inference: Any
    key: str = ""
    record: Any = None


def _children(node: Any, name: str) -> dict[str, Any]:
    return node.get(name, {}) if isinstance(node, dict) else getattr(node, name)


def walk(batch: ReleaseBatch | dict[str, Any], *, interventions: bool = True) -> Iterator[Slot]:
    """item -> model -> variant (A before B) -> intervention key, in file order; `interventions=False`
    stops at the variant. The caller may change what a slot points to once it has moved past it."""
    data = batch["data"] if isinstance(batch, dict) else batch.data
    for idx, item in enumerate(data):
        for model, by_variant in _children(item, "inferences").items():
            for variant in VARIANTS:
                inference = by_variant.get(variant)
                if inference is None:
                    continue
                if not interventions:
                    yield Slot(idx, item, model, variant, inference)
                    continue
                for key, record in list(_children(inference, "interventions").items()):
                    yield Slot(idx, item, model, variant, inference, key, record)


def intervention_id(stem: str, slot: Slot) -> str:
    """The release's readable id: unique across a dataset because batch file stems are."""
    return f"{stem}__idx{slot.idx}__{slot.model.replace('/', '_')}_{slot.variant}__{slot.key}"


def flatten(batches: Iterable[tuple[Path, ReleaseBatch]], filt: ReleaseFilter) -> tuple[list[TrainingRecord], ImportStats]:
    """One record per surviving (item, model, variant, key), in file, item, model, A/B, key order."""
    stats = ImportStats()
    records: list[TrainingRecord] = []
    topics, keys = set(filt.train_topics), set(filt.intervention_keys)
    models = None if filt.models is None else set(filt.models)
    blocked = set(filt.tags_to_filter)
    origin: dict[str, Path] = {}
    for path, batch in batches:
        stats.files += 1
        stats.items += len(batch.data)
        stats.seen["topics"].add(batch.topic)
        stats.seen["models"].update(m for item in batch.data for m in item.inferences)
        stem = batch_stem(path)
        source = f"{SOURCE_PREFIX}:{batch.topic}/{path.name}"
        for s in walk(batch, interventions=False):
            if s.variant == "B" and s.item.B is None:
                raise DataError(path, f"{s.model} has a B response but the item has no B prompt", record=f"item {s.idx}")
        for s in walk(batch):
            iv, item = s.record, s.item
            stats.interventions += 1
            stats.seen["keys"].add(s.key)
            if batch.topic not in topics or s.key not in keys or (models is not None and s.model not in models):
                continue
            stats.candidates += 1
            checked = set(iv.tags if "intervention" in filt.tag_levels else ())
            if "variant" in filt.tag_levels:
                checked.update(s.inference.tags)
            hits = checked & blocked
            if hits:
                stats.rejected += 1
                stats.rejected_by_tag.update(hits)
                continue
            if iv.P == "ERROR":
                stats.error_placeholders += 1
                continue
            rid = iv.id_string or intervention_id(stem, s)
            if rid in origin:
                raise DataError(path, f"record id {rid!r} already came from {origin[rid]}", record=f"item {s.idx}")
            origin[rid] = path
            system, alt_system = (item.A, item.B) if s.variant == "A" else (item.B, item.A)
            records.append(TrainingRecord(
                id=rid, topic=batch.topic, model=s.model, variant=s.variant, intervention_key=s.key,
                intervention_type=iv.intervention_type, system=system, alt_system=alt_system, user=item.T,
                response=s.inference.S, intervention=iv.I, review=iv.R, flag=iv.P, confidence=iv.confidence,
                tags=sorted(set(iv.tags) | set(s.inference.tags)), source=source,
                verdict_depends_on_system_prompt=iv.verdict_depends_on_system_prompt,
                review_mentions_system_prompt=iv.review_mentions_system_prompt,
            ))
    return records, stats


def release_json(batch: ReleaseBatch, *, strip_empty: bool = True) -> dict[str, Any]:
    """A batch as the release stores it: absent fields left out, and (before tagging) no empty
    `interventions` or `tags`, so a response still waiting for its review is a variant without
    interventions, which the tagger drops, as the release's did."""
    data = batch.model_dump(mode="json", exclude_none=True)
    if strip_empty:
        for s in walk(data, interventions=False):
            for key in ("interventions", "tags"):
                if not s.inference.get(key):
                    s.inference.pop(key, None)
        for s in walk(data):
            if not s.record.get("tags"):
                s.record.pop("tags", None)
    return data


def import_release(
    sources: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    filt: ReleaseFilter,
    progress: Callable[[list[Path]], Iterable[Path]] = iter,
) -> tuple[list[TrainingRecord], ImportStats]:
    """Read every batch under `sources`, filter, and write the records to `out` (JSONL, atomically).

    Nothing is written if any file is bad or no record survives. `progress` wraps the file list
    (e.g. `rich.progress.track`).
    """
    records, stats = flatten(iter_batches(progress(find_batch_files(sources))), filt)
    if not records:
        raise DataError(out, f"no record survived the filter ({stats.candidates} candidates, {stats.rejected} rejected for tags)")
    write_jsonl(out, records)
    return records, stats
