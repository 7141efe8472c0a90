"""The release importer on ../shared/reference: the counts the release publishes, exactly; the
filter overrides, and bad files that must stop the import without writing anything."""

from __future__ import annotations

import json
import lzma
import shutil
from collections import Counter
from pathlib import Path

import pytest
from conftest import shared_path
from typer.testing import CliRunner

from splitpersona.config import ConfigError
from splitpersona.app.cli import app
from splitpersona.io import read_jsonl
from splitpersona.records import TrainingRecord
from splitpersona.release import ReleaseFilter, find_batch_files, flatten, iter_batches, load_filter

runner = CliRunner()

TOPICS = {
    "sycophancy": 1888,
    "jailbreak_attempts": 1050,
    "specification_gaming": 954,
    "confidence_assessment": 399,
    "fabricated_statistics": 192,
    "unethical_instructions": 153,
}
MODELS = {  # (PASS, FAIL); the 4 AMBIGUOUS make up the rest of each total
    "google/gemma-3-27b-it": (1250, 896, 353),
    "google/gemma-3-12b-it": (1237, 858, 379),
    "qwen/qwen3-next-80b-a3b-instruct": (573, 413, 160),
    "meta-llama/llama-3.3-70b-instruct": (568, 379, 188),
    "qwen/qwen3-32b": (537, 361, 174),
    "qwen/qwen3-14b": (471, 351, 120),
}


@pytest.fixture(scope="module")
def release_dir() -> Path:
    return shared_path("reference", "stage_3_tagged")


@pytest.fixture(scope="module")
def batches(release_dir):
    return list(iter_batches(find_batch_files([release_dir])))


@pytest.fixture(scope="module")
def imported(release_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("import") / "spt_release.jsonl"
    result = runner.invoke(app, ["data", "import", str(release_dir.parent), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return result.output, read_jsonl(out, TrainingRecord)


def test_import_reproduces_the_published_counts(imported):
    output, records = imported
    assert len(records) == 4636
    assert Counter(r.flag for r in records) == {"PASS": 3258, "FAIL": 1374, "AMBIGUOUS": 4}
    assert Counter(r.topic for r in records) == TOPICS
    by_model = Counter(r.model for r in records)
    model_flags = Counter((r.model, r.flag) for r in records)
    for model, (total, n_pass, n_fail) in MODELS.items():
        assert (by_model[model], model_flags[(model, "PASS")], model_flags[(model, "FAIL")]) == (total, n_pass, n_fail)
    assert Counter((r.variant, r.flag) for r in records) == {
        ("A", "PASS"): 3249, ("A", "FAIL"): 330, ("A", "AMBIGUOUS"): 4, ("B", "FAIL"): 1044, ("B", "PASS"): 9,
    }
    assert Counter(r.intervention_key for r in records) == {
        "split_personality__version_3": 1731, "split_personality__version_4": 2905,
    }
    assert len({r.id for r in records}) == len(records)
    for text in ("By topic", "By model", "sycophancy", "4,636", "3,258", "1,374", "8,761"):
        assert text in output


def _stored(batches):
    for path, batch in batches:
        for item in batch.data:
            for by_variant in item.inferences.values():
                for variant, inference in by_variant.items():
                    for iv in inference.interventions.values():
                        yield path, batch, item, variant, inference, iv


def test_records_carry_the_release_fields(imported, batches):
    _, records = imported
    by_id = {r.id: r for r in records}
    checked = Counter()
    for path, batch, item, variant, inference, iv in _stored(batches):
        record = by_id.get(iv.id_string)
        if record is None:
            continue
        checked[variant] += 1
        assert record.system == (item.A if variant == "A" else item.B)
        assert record.alt_system == (item.B if variant == "A" else item.A)
        assert (record.user, record.response) == (item.T, inference.S)
        assert (record.intervention, record.review, record.flag) == (iv.I, iv.R, iv.P)
        assert record.tags == sorted(set(iv.tags) | set(inference.tags))
        assert record.source == f"spt_release:{batch.topic}/{path.name}"
        assert record.intervention.startswith("<split-personality-token>")  # stored as-is; the assembler strips it
    assert checked == {"A": 3583, "B": 1053}
    a_only = next(r for r in records if "no_a_b_separation" in r.tags)
    assert a_only.alt_system is None


def test_variant_level_tags_and_error_placeholders(batches):
    filt = load_filter()
    filt.tag_levels = ["intervention", "variant"]
    records, stats = flatten(batches, filt)
    assert (len(records), stats.candidates) == (4585, 8761)
    assert Counter(r.intervention_key for r in records) == {
        "split_personality__version_3": 1705, "split_personality__version_4": 2880,
    }
    everything = ReleaseFilter(
        train_topics=sorted(TOPICS),
        intervention_keys=[f"{t}__version_{v}" for t in ("split_personality", "honesty_scare") for v in (2, 3, 4)],
    )
    records, stats = flatten(batches, everything)
    assert stats.error_placeholders == 20  # failed stage-3 generations: never a training record
    assert len(records) == 22154 - 20 == stats.written


def test_fallback_ids_equal_the_release_ids(batches):
    path, batch = batches[0]
    stripped = batch.model_copy(deep=True)
    for item in stripped.data:
        for by_variant in item.inferences.values():
            for inference in by_variant.values():
                for iv in inference.interventions.values():
                    iv.id_string = None
    filt = load_filter()
    want, _ = flatten([(path, batch)], filt)
    got, _ = flatten([(path, stripped)], filt)
    assert [r.id for r in got] == [r.id for r in want]


def test_filter_overrides(release_dir, batches, tmp_path):
    out = tmp_path / "two_topics.jsonl"
    result = runner.invoke(
        app, ["data", "import", str(release_dir), "--out", str(out), "--topics", "sycophancy, unethical_instructions"]
    )
    assert result.exit_code == 0, result.output
    records = read_jsonl(out, TrainingRecord)
    assert Counter(r.topic for r in records) == {"sycophancy": 1888, "unethical_instructions": 153}

    filt = load_filter()
    filt.intervention_keys = ["split_personality__version_3"]
    assert len(flatten(batches, filt)[0]) == 1731
    filt = load_filter()
    filt.models = ["qwen/qwen3-14b"]
    assert len(flatten(batches, filt)[0]) == 471

    one_file = sorted(release_dir.glob("sycophancy/*.json.xz"))[0]
    result = runner.invoke(app, ["data", "import", str(one_file), "--out", str(tmp_path / "none.jsonl"), "--topics", "no_such_topic"])
    assert result.exit_code == 1
    assert "no record survived" in result.output
    assert not (tmp_path / "none.jsonl").exists()


def test_filter_yaml_is_strict(tmp_path):
    bad = tmp_path / "filter.yaml"
    bad.write_text("train_topics: [a]\nintervention_keys: [k]\ntags_to_flter: [x]\n")
    with pytest.raises(ConfigError, match="tags_to_flter"):
        load_filter(bad)


def _assert_nothing_written(out: Path, sentinel: str | None) -> None:
    if sentinel is None:
        assert not out.exists()
    else:
        assert out.read_text() == sentinel
    assert [p.name for p in out.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_truncated_xz_stops_the_import_and_writes_nothing(release_dir, tmp_path):
    topic = tmp_path / "stage_3_tagged" / "sycophancy"
    topic.mkdir(parents=True)
    good, broken = sorted((release_dir / "sycophancy").glob("*.json.xz"))[:2]
    shutil.copy(good, topic / good.name)
    data = broken.read_bytes()
    (topic / broken.name).write_bytes(data[: len(data) // 2])
    out = tmp_path / "out" / "records.jsonl"
    out.parent.mkdir()
    for sentinel in (None, "previous output\n"):
        if sentinel is not None:
            out.write_text(sentinel)
        result = runner.invoke(app, ["data", "import", str(tmp_path / "stage_3_tagged"), "--out", str(out)])
        assert result.exit_code == 1
        assert broken.name in result.output and "not valid JSON" in result.output
        _assert_nothing_written(out, sentinel)


def test_malformed_item_names_the_file_and_the_item(release_dir, tmp_path):
    source = sorted((release_dir / "jailbreak_attempts").glob("*.json.xz"))[0]
    with lzma.open(source, "rt", encoding="utf-8") as fh:
        batch = json.load(fh)
    del batch["data"][7]["T"]
    bad = tmp_path / source.name.removesuffix(".xz")
    bad.write_text(json.dumps(batch))
    out = tmp_path / "records.jsonl"
    result = runner.invoke(app, ["data", "import", str(bad), "--out", str(out)])
    assert result.exit_code == 1
    assert bad.name in result.output and "item 7" in result.output and "data.7.T" in result.output
    _assert_nothing_written(out, None)

    batch["data"][7]["T"] = "restored"
    first_model = next(iter(batch["data"][3]["inferences"].values()))
    next(iter(first_model["A"]["interventions"].values()))["P"] = "MAYBE"
    bad.write_text(json.dumps(batch))
    result = runner.invoke(app, ["data", "import", str(bad), "--out", str(out)])
    assert result.exit_code == 1
    assert bad.name in result.output and "item 3" in result.output
    _assert_nothing_written(out, None)
