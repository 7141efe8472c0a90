"""The results file: append-only writing, resuming after a crash, and errors that name the bad record."""

from __future__ import annotations

import json

import pytest

from splitpersona.eval.results import ResultsMetadata, ResultsWriter, SampleResult, load_results
from splitpersona.io import DataError


def meta(**kw) -> ResultsMetadata:
    return ResultsMetadata.start(model="tiny", eval_config={"set": "x"}, **kw)


def rec(i: int, arm: str = "persona", flag: str | None = "FAIL") -> SampleResult:
    text = "" if flag is None else f"REVIEW: ok\nFLAG: {flag}"
    return SampleResult.from_text(generated=text, id=f"s{i}", condition="as_is", arm=arm, expected_flag="FAIL")


def test_round_trip_keeps_metadata_and_records(tmp_path):
    path = tmp_path / "r.jsonl"
    m = meta(label="masked", lora_mask=True, elicitation="hp")
    with ResultsWriter(path, m) as w:
        w.write_many([rec(0), rec(1, flag="PASS"), rec(2, flag=None)])
    res = load_results(path)
    assert res.metadata == m and res.label == "masked"
    assert res.metadata.provenance["git"].keys() >= {"commit", "dirty"}
    assert [r.parsed_flag for r in res.records] == ["FAIL", "PASS", None]
    assert res.records[2].parse_reason == "empty text" and not res.records[2].parse_ok
    assert [r.correct for r in res.records] == [True, False, False]


def test_resume_skips_done_keys_and_repairs_a_torn_line(tmp_path):
    path = tmp_path / "r.jsonl"
    with ResultsWriter(path, meta()) as w:
        w.write_many([rec(0), rec(1)])
    with open(path, "a", encoding="utf-8") as fh:  # a crash mid-write
        fh.write('{"id": "s2", "condition": "as_')
    with pytest.raises(DataError, match="line 4"):
        load_results(path)
    w = ResultsWriter(path, meta())
    assert w.done == {("s0", "as_is", "persona"), ("s1", "as_is", "persona")}
    assert w.is_done("s1", "as_is", "persona") and not w.is_done("s2", "as_is", "persona")
    with pytest.raises(ValueError, match="already written"):
        w.write(rec(1))
    w.write(rec(2))
    w.close()
    assert [r.id for r in load_results(path).records] == ["s0", "s1", "s2"]


def test_resume_refuses_a_file_from_another_run(tmp_path):
    path = tmp_path / "r.jsonl"
    ResultsWriter(path, meta()).close()
    other = ResultsMetadata.start(model="tiny", eval_config={"set": "y"})
    with pytest.raises(DataError, match="eval_config"):
        ResultsWriter(path, other)
    with ResultsWriter(path, other, overwrite=True) as w:
        w.write(rec(0))
    assert load_results(path).metadata.eval_config == {"set": "y"}


def test_corrupt_record_names_file_line_and_id(tmp_path):
    path = tmp_path / "r.jsonl"
    with ResultsWriter(path, meta()) as w:
        w.write_many([rec(0), rec(1)])
    lines = path.read_text().splitlines()
    bad = json.loads(lines[2])
    bad["parsed_flag"] = "MAYBE"
    lines[2] = json.dumps(bad)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as e:
        load_results(path)
    assert str(path) in str(e.value) and "line 3, id 's1'" in str(e.value) and "parsed_flag" in str(e.value)


def test_files_written_before_scores_still_load(tmp_path):
    path = tmp_path / "r.jsonl"
    with ResultsWriter(path, meta()) as w:
        w.write_many([rec(0), rec(1, arm="external", flag="PASS")])
    header, *records = path.read_text().splitlines()
    old = [json.dumps({k: v for k, v in json.loads(line).items() if k not in ("score", "score_source")})
           for line in records]
    path.write_text("\n".join([header, *old]) + "\n")
    res = load_results(path)
    assert [(r.arm, r.parsed_flag, r.score, r.score_source) for r in res.records] == [
        ("persona", "FAIL", None, None), ("external", "PASS", None, None)]


def test_inconsistent_or_duplicate_records_are_refused(tmp_path):
    with pytest.raises(ValueError, match="contradicts"):
        SampleResult(id="a", condition="as_is", arm="persona", expected_flag="FAIL", generated="",
                     parsed_flag="FAIL", parse_ok=False)
    with pytest.raises(ValueError, match="base_condition"):
        SampleResult.model_validate({**rec(0).model_dump(), "jailbreak": "user"})
    path = tmp_path / "r.jsonl"
    with ResultsWriter(path, meta()) as w:
        w.write(rec(0))
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(rec(0).model_dump_json() + "\n")
    with pytest.raises(DataError, match="duplicate"):
        load_results(path)


def test_not_a_results_file(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"id": "x"}\n')
    with pytest.raises(DataError, match="not an eval results file"):
        load_results(path)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="empty"):
        load_results(empty)


def test_error_records_count_as_parse_failures():
    r = SampleResult.from_text(generated="FLAG: PASS", error="API timeout after 3 retries",
                               id="a", condition="as_is", arm="external", expected_flag="PASS")
    assert r.parsed_flag is None and not r.parse_ok and r.parse_reason == "error"


def test_writer_restarts_a_torn_header_but_never_clobbers_a_foreign_file(tmp_path):
    torn = tmp_path / "torn.jsonl"
    torn.write_text('{"format":"splitpersona-eval-res')  # crash while writing the first line
    with ResultsWriter(torn, meta()) as w:
        assert w.done == set()
        w.write(rec(0))
    assert len(load_results(torn).records) == 1
    foreign = tmp_path / "train.jsonl"
    foreign.write_text('{"id": "x", "topic": "t"}')
    with pytest.raises(DataError, match="not an eval results file"):
        ResultsWriter(foreign, meta())
    assert foreign.read_text() == '{"id": "x", "topic": "t"}'
