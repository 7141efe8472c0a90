"""Training data: records in, validation split, system-prompt augmentations, assembled samples, batches.

Everything here is a deterministic function of the config and the seed, so every process of a
distributed run computes the same split and the same batch order without talking to the others,
and a resumed run recomputes exactly the order it stopped in.
"""

from __future__ import annotations

import logging
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import torch

from splitpersona.assemble import FormatConfig, Sample, SampleTooLong, assemble_record
from splitpersona.io import DataError, read_jsonl
from splitpersona.records import TrainingRecord
from splitpersona.token import SpecialTokens, UntrustedTextError
from splitpersona.training.config import DataConfig

log = logging.getLogger("spt.train")

IGNORE = -100


@dataclass
class Item:
    """A record with the file it came from and the system prompt it will be trained with."""

    record: TrainingRecord
    source: str
    system: str | None
    augmentation: str | None = None  # "excluded" | "swapped"


@dataclass
class PreparedData:
    train: list[Sample]
    val: list[Sample]
    stats: dict = field(default_factory=dict)
    split: dict = field(default_factory=dict)


def load_items(files: list[str]) -> list[Item]:
    """Read every file; a bad record, an empty file or an id seen twice is a DataError naming file and record."""
    items: list[Item] = []
    seen: dict[str, str] = {}
    for f in files:
        for rec in read_jsonl(f, TrainingRecord):
            if rec.id in seen:
                raise DataError(f, f"duplicate record id (first seen in {seen[rec.id]})", record=rec.id)
            seen[rec.id] = f
            items.append(Item(rec, f, rec.system))
    return items


def split_items(items: list[Item], cfg: DataConfig, seed: int) -> tuple[list[Item], list[Item]]:
    """Hold out whole topics, or a fraction of each topic's conversations.

    A conversation is the topic and user turn: the A and B variants of one task and every
    intervention on them land on the same side, so no task leaks from training into validation.
    """
    if cfg.val_topics:
        known = {it.record.topic for it in items}
        missing = sorted(set(cfg.val_topics) - known)
        if missing:
            raise DataError(", ".join(cfg.train_files), f"val_topics {missing} match no record (topics: {sorted(known)})")
        held = set(cfg.val_topics)
        return [it for it in items if it.record.topic not in held], [it for it in items if it.record.topic in held]
    if not cfg.val_fraction:
        return list(items), []
    groups: dict[str, dict[str, list[Item]]] = defaultdict(lambda: defaultdict(list))
    for it in items:
        groups[it.record.topic][it.record.user].append(it)
    val_keys: set[tuple[str, str]] = set()
    for topic in sorted(groups):
        keys = sorted(groups[topic])
        random.Random(f"{seed}:val:{topic}").shuffle(keys)
        n_val = max(1, round(cfg.val_fraction * len(keys))) if len(keys) > 1 else 0
        val_keys.update((topic, k) for k in keys[:n_val])
    train = [it for it in items if (it.record.topic, it.record.user) not in val_keys]
    val = [it for it in items if (it.record.topic, it.record.user) in val_keys]
    return train, val


def eligible_for_augmentation(rec: TrainingRecord) -> bool:
    """The verdict must be known not to hinge on the system prompt, and the review must not cite it."""
    return bool(rec.system) and rec.verdict_depends_on_system_prompt is False and rec.review_mentions_system_prompt is not True


def augment_system_prompts(items: list[Item], cfg: DataConfig, seed: int) -> dict:
    """Swap, then exclude, system prompts on exact, seeded counts of eligible samples (in place).

    Counts are round(fraction x eligible); a sample gets at most one of the two. Swapping needs the
    other variant's prompt (`alt_system`); when fewer samples have one than asked, the shortfall is
    reported rather than made up from ineligible samples.
    """
    eligible = sorted((it for it in items if eligible_for_augmentation(it.record)), key=lambda it: it.record.id)
    n = len(eligible)
    want_swap = round(cfg.swap_system_prompt_frac * n)
    want_exclude = round(cfg.exclude_system_prompt_frac * n)
    rng = random.Random(f"{seed}:system_prompt")
    swappable = [it for it in eligible if it.record.alt_system and it.record.alt_system != it.record.system]
    swapped = rng.sample(swappable, min(want_swap, len(swappable)))
    for it in swapped:
        it.system, it.augmentation = it.record.alt_system, "swapped"
    rest = [it for it in eligible if it.augmentation is None]
    excluded = rng.sample(rest, min(want_exclude, len(rest)))
    for it in excluded:
        it.system, it.augmentation = None, "excluded"
    report = {
        "eligible": n,
        "ineligible": len(items) - n,
        "swapped": len(swapped),
        "excluded": len(excluded),
        "swap_requested": want_swap,
        "exclude_requested": want_exclude,
    }
    if len(swapped) < want_swap or len(excluded) < want_exclude:
        log.warning("system-prompt augmentation fell short of the requested counts: %s", report)
    return report


def assemble_items(
    items: list[Item], tokenizer, fmt: FormatConfig, tokens: SpecialTokens, max_length: int, split: str
) -> tuple[list[Sample], dict, list[str]]:
    """Samples over max_length lose the left of their response; those that cannot fit are skipped and counted."""
    samples: list[Sample] = []
    skipped: list[str] = []
    cut = cut_tokens = 0
    for it in items:
        try:
            s = assemble_record(tokenizer, fmt, tokens, it.record, max_length=max_length, system=it.system)
        except SampleTooLong as e:
            skipped.append(it.record.id)
            log.warning("%s (record %s): skipped from %s: %s", it.source, it.record.id, split, e)
            continue
        except (UntrustedTextError, ValueError) as e:
            raise DataError(it.source, f"cannot assemble: {e}", record=it.record.id) from e
        if s.flag_position is None:
            raise DataError(it.source, "assembled sample has no flag position", record=it.record.id)
        if s.truncated:
            cut += 1
            cut_tokens += s.truncated
        s.meta["source"] = it.source
        samples.append(s)
    stats = {"samples": len(samples), "cut": cut, "cut_tokens": cut_tokens, "skipped_too_long": len(skipped)}
    if cut or skipped:
        log.info("%s: %d samples cut to max_length %d (%d tokens), %d skipped", split, cut, max_length, cut_tokens, len(skipped))
    return samples, stats, skipped


def prepare_data(cfg: DataConfig, seed: int, tokenizer, fmt: FormatConfig, tokens: SpecialTokens, max_length: int) -> PreparedData:
    items = load_items(cfg.train_files)
    train_items, val_items = split_items(items, cfg, seed)
    augmentation = augment_system_prompts(train_items, cfg, seed)
    train, train_stats, train_skipped = assemble_items(train_items, tokenizer, fmt, tokens, max_length, "train")
    val, val_stats, val_skipped = assemble_items(val_items, tokenizer, fmt, tokens, max_length, "val")
    if not train:
        raise DataError(", ".join(cfg.train_files), "no training sample left after the split and the length limit")
    stats = {
        "records": len(items),
        "train": train_stats,
        "val": val_stats,
        "flags": dict(Counter(it.record.flag for it in train_items)),
        "system_prompt_augmentation": augmentation,
    }
    split = {
        "train_ids": [s.meta["id"] for s in train],
        "val_ids": [s.meta["id"] for s in val],
        "skipped_ids": train_skipped + val_skipped,
        "swapped_ids": sorted(it.record.id for it in train_items if it.augmentation == "swapped"),
        "excluded_ids": sorted(it.record.id for it in train_items if it.augmentation == "excluded"),
    }
    return PreparedData(train, val, stats, split)


# --- batches -----------------------------------------------------------------------------------


def steps_per_epoch(n_samples: int, batch_size: int) -> int:
    return n_samples // batch_size


def epoch_plan(lengths: list[int], epoch: int, seed: int, batch_size: int, micro_batch_size: int) -> list[list[list[int]]]:
    """Steps of micro-batches of sample indices for one epoch, the same on every process.

    The epoch's order is a seeded shuffle; the remainder that does not fill a last global batch
    sits this epoch out (another epoch's shuffle includes it). Within a step the samples are
    sorted by length before they are cut into micro-batches: that cuts padding without changing
    which samples one optimizer step sees, and the loss is normalised over the whole step.
    """
    order = list(range(len(lengths)))
    random.Random(f"{seed}:epoch:{epoch}").shuffle(order)
    steps = []
    for s in range(steps_per_epoch(len(lengths), batch_size)):
        chunk = sorted(order[s * batch_size : (s + 1) * batch_size], key=lambda i: (lengths[i], i))
        steps.append([chunk[k : k + micro_batch_size] for k in range(0, batch_size, micro_batch_size)])
    return steps


def rank_share(micro_batches: list[list[int]], rank: int, world_size: int) -> list[list[int]]:
    """Neighbouring (similar-length) micro-batches go to different ranks, which sync on every micro-step."""
    return micro_batches[rank::world_size]


@dataclass
class MicroBatch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    keep_from: int  # first position whose logits are needed (every target lies after it)
    flag_positions: list[int]
    real_tokens: int
    padded_tokens: int

    def to(self, device) -> MicroBatch:
        self.input_ids = self.input_ids.to(device)
        self.attention_mask = self.attention_mask.to(device)
        self.labels = self.labels.to(device)
        return self


def collate(samples: list[Sample], fill_id: int) -> MicroBatch:
    """Right-pad to the longest sample; attention comes from the lengths, never from a token id.

    `fill_id` only occupies padded slots, which no position attends to and no loss reads; it
    must not be the split token, which peft searches for from the end of each row.
    """
    T = max(len(s) for s in samples)
    ids = torch.full((len(samples), T), fill_id, dtype=torch.long)
    attn = torch.zeros((len(samples), T), dtype=torch.long)
    labels = torch.full((len(samples), T), IGNORE, dtype=torch.long)
    for b, s in enumerate(samples):
        n = len(s)
        ids[b, :n] = torch.tensor(s.input_ids)
        attn[b, :n] = 1
        labels[b, :n] = torch.tensor(s.labels(IGNORE))
    real = sum(len(s) for s in samples)
    return MicroBatch(
        input_ids=ids,
        attention_mask=attn,
        labels=labels,
        keep_from=max(0, min(s.prompt_length for s in samples) - 1),
        flag_positions=[s.flag_position for s in samples],
        real_tokens=real,
        padded_tokens=T * len(samples) - real,
    )


def target_tokens(samples: list[Sample]) -> int:
    return sum(sum(s.loss_mask) for s in samples)

