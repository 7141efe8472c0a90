"""Trainer data: split, system-prompt augmentations, assembly limits, bad input, batching and padding."""

from __future__ import annotations

import pytest
import torch
from train_fixtures import make_records, write_records

from splitpersona.assemble import FormatConfig
from splitpersona.io import DataError
from splitpersona.training.config import DataConfig
from splitpersona.training.data import (
    Item,
    augment_system_prompts,
    collate,
    eligible_for_augmentation,
    epoch_plan,
    load_items,
    prepare_data,
    rank_share,
    split_items,
)


def items_of(records, source="mem.jsonl"):
    return [Item(r, source, r.system) for r in records]


def data_cfg(path, **kw):
    return DataConfig(train_files=[str(path)], **kw)


# --- split -------------------------------------------------------------------------------------


def test_fraction_split_is_deterministic_and_keeps_conversations_whole(tmp_path):
    items = items_of(make_records(12))
    cfg = data_cfg(tmp_path / "x.jsonl", val_fraction=0.25)
    train, val = split_items(items, cfg, seed=3)
    train2, val2 = split_items(items_of(make_records(12)), cfg, seed=3)
    assert [i.record.id for i in val] == [i.record.id for i in val2]
    assert len(train) + len(val) == len(items)
    # both variants of a task (same topic + user turn) land on the same side
    assert {(i.record.topic, i.record.user) for i in train}.isdisjoint({(i.record.topic, i.record.user) for i in val})
    # every topic is represented in validation
    assert {i.record.topic for i in val} == {i.record.topic for i in items}
    other = {i.record.id for i in split_items(items, cfg, seed=4)[1]}
    assert other != {i.record.id for i in val}, "the split should depend on the seed"


def test_topic_split_holds_out_whole_topics(tmp_path):
    items = items_of(make_records(9))
    train, val = split_items(items, data_cfg(tmp_path / "x.jsonl", val_topics=["reward_hacks"]), seed=0)
    assert {i.record.topic for i in val} == {"reward_hacks"}
    assert "reward_hacks" not in {i.record.topic for i in train}
    with pytest.raises(DataError, match="match no record"):
        split_items(items, data_cfg(tmp_path / "x.jsonl", val_topics=["no_such_topic"]), seed=0)


def test_split_options_are_exclusive(tmp_path):
    with pytest.raises(ValueError, match="not both"):
        data_cfg(tmp_path / "x.jsonl", val_fraction=0.1, val_topics=["a"])


# --- system-prompt augmentations ---------------------------------------------------------------


def test_augmentation_counts_and_eligibility():
    eligible = make_records(10, eligible=True)  # 20 records, verdict known not to depend on the prompt
    unknown = make_records(5, eligible=None)  # field absent: never eligible
    dependent = make_records(5, eligible=False)
    mentions = [r.model_copy(update={"id": r.id + "/m", "review_mentions_system_prompt": True}) for r in eligible[:4]]
    items = items_of(eligible + unknown + dependent + mentions)
    assert sum(eligible_for_augmentation(i.record) for i in items) == 20

    cfg = DataConfig(train_files=["x"], swap_system_prompt_frac=0.25, exclude_system_prompt_frac=0.5)
    report = augment_system_prompts(items, cfg, seed=1)
    assert report == {
        "eligible": 20, "ineligible": 24, "swapped": 5, "excluded": 10, "swap_requested": 5, "exclude_requested": 10,
    }
    swapped = [i for i in items if i.augmentation == "swapped"]
    excluded = [i for i in items if i.augmentation == "excluded"]
    assert all(i.system == i.record.alt_system != i.record.system for i in swapped)
    assert all(i.system is None for i in excluded)
    assert not {id(i) for i in swapped} & {id(i) for i in excluded}
    assert all(eligible_for_augmentation(i.record) for i in swapped + excluded)
    untouched = [i for i in items if i.augmentation is None]
    assert all(i.system == i.record.system for i in untouched)

    again = items_of(eligible + unknown + dependent + mentions)
    augment_system_prompts(again, cfg, seed=1)
    assert [i.augmentation for i in again] == [i.augmentation for i in items], "same seed, same choice"


def test_swap_needs_the_other_prompt_and_reports_the_shortfall():
    items = items_of(make_records(4, eligible=True, with_alt=False))
    report = augment_system_prompts(items, DataConfig(train_files=["x"], swap_system_prompt_frac=0.5), seed=0)
    assert report["swap_requested"] == 4 and report["swapped"] == 0


def test_augmentation_reaches_the_tokens(tmp_path, tokenizer, special_tokens):
    path = write_records(tmp_path / "r.jsonl", make_records(6, eligible=True))
    cfg = data_cfg(path, exclude_system_prompt_frac=1.0)
    data = prepare_data(cfg, 0, tokenizer, FormatConfig(), special_tokens, 256)
    assert data.stats["system_prompt_augmentation"]["excluded"] == 12
    assert len(data.split["excluded_ids"]) == 12
    assert all("system" not in tokenizer.decode(s.input_ids) for s in data.train)


# --- assembly limits and bad input -------------------------------------------------------------


def test_long_response_is_cut_and_persona_overflow_is_skipped(tmp_path, tokenizer, special_tokens):
    records = make_records(3)
    long_response = records[0].model_copy(update={"id": "long-response", "response": "The trail runner. " * 40})
    long_review = records[1].model_copy(update={"id": "long-review", "review": " I flattered the user." * 60})
    path = write_records(tmp_path / "r.jsonl", [long_response, long_review, *records[2:]])
    data = prepare_data(data_cfg(path), 0, tokenizer, FormatConfig(), special_tokens, 160)
    stats = data.stats["train"]
    assert stats["cut"] >= 1 and stats["cut_tokens"] > 0
    assert stats["skipped_too_long"] == 1 and data.split["skipped_ids"] == ["long-review"]
    cut = next(s for s in data.train if s.meta["id"] == "long-response")
    assert len(cut) == 160 and cut.truncated > 0
    assert cut.input_ids.count(special_tokens.split_id) == 1


def test_missing_field_names_file_and_record(tmp_path):
    path = write_records(tmp_path / "r.jsonl", make_records(2))
    lines = path.read_text().splitlines()
    lines[2] = lines[2].replace('"review":', '"reveiw":')
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        load_items([str(path)])
    assert str(path) in str(err.value) and "line 3" in str(err.value) and "review" in str(err.value)


def test_empty_file_and_duplicate_ids(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="empty.jsonl: file holds no records"):
        load_items([str(empty)])
    a = write_records(tmp_path / "a.jsonl", make_records(1))
    b = write_records(tmp_path / "b.jsonl", make_records(1))
    with pytest.raises(DataError, match=r"b\.jsonl \(record sycophancy/0/A\): duplicate record id \(first seen in .*a\.jsonl\)"):
        load_items([str(a), str(b)])


def test_nothing_left_to_train_is_an_error(tmp_path, tokenizer, special_tokens):
    path = write_records(tmp_path / "r.jsonl", make_records(2))
    with pytest.raises(DataError, match="no training sample left"):
        prepare_data(data_cfg(path), 0, tokenizer, FormatConfig(), special_tokens, 20)


# --- batching and padding ----------------------------------------------------------------------


def test_epoch_plan_covers_each_sample_once_and_groups_by_length():
    lengths = [5, 50, 7, 48, 6, 49, 8, 47, 9, 46, 100]
    plan = epoch_plan(lengths, epoch=0, seed=0, batch_size=4, micro_batch_size=2)
    assert len(plan) == 2  # 11 samples, batch 4: three samples sit this epoch out
    flat = [i for step in plan for mb in step for i in mb]
    assert len(flat) == len(set(flat)) == 8
    for step in plan:
        ls = [lengths[i] for mb in step for i in mb]
        assert ls == sorted(ls)
    assert plan == epoch_plan(lengths, epoch=0, seed=0, batch_size=4, micro_batch_size=2)
    assert plan != epoch_plan(lengths, epoch=1, seed=0, batch_size=4, micro_batch_size=2)
    step = plan[0]
    assert rank_share(step, 0, 2) + rank_share(step, 1, 2) == [step[0], step[1]]


def test_collate_builds_attention_from_lengths_not_ids(tokenizer, special_tokens):
    from splitpersona.assemble import assemble

    bang = tokenizer("!", add_special_tokens=False).input_ids
    assert len(bang) == 1
    s1 = assemble(tokenizer, FormatConfig(), special_tokens, messages=[{"role": "user", "content": "Sure!"}], response="Yes!",
                  intervention="Review.", review=" Fine!", flag="PASS")
    s2 = assemble(tokenizer, FormatConfig(), special_tokens, messages=[{"role": "user", "content": "Sure"}], response="Yes",
                  intervention="Review.", review=" Fine", flag="PASS")
    # fill the padding with the id of "!" itself: only lengths decide what is attended
    batch = collate([s1, s2], fill_id=bang[0])
    assert batch.attention_mask[0].tolist() == [1] * len(s1)
    assert batch.attention_mask[1].tolist() == [1] * len(s2) + [0] * (len(s1) - len(s2))
    assert (batch.input_ids[0] == bang[0]).sum() == 3
    assert batch.labels[1, len(s2):].eq(-100).all()
    assert batch.padded_tokens == len(s1) - len(s2) and batch.real_tokens == len(s1) + len(s2)
    assert torch.equal(batch.labels[0], torch.tensor(s1.labels()))
