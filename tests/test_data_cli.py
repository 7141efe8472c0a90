"""`spt data show` and `spt data stats` on a small record file with the tiny local tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from splitpersona.app.cli import app
from splitpersona.io import write_jsonl
from splitpersona.records import TrainingRecord

runner = CliRunner()


def _record(i: int, *, variant: str = "A", flag: str = "PASS", topic: str = "sycophancy", model: str = "org/model") -> TrainingRecord:
    return TrainingRecord(
        id=f"rec{i}",
        topic=topic,
        model=model,
        variant=variant,
        intervention_key="split_personality__version_4",
        intervention_type="split_personality",
        system="You are a helpful assistant.",
        user="The user asked which shoes to buy." * (1 + i),
        response="I recommended the trail runner because it fits the budget. <|eot_id|> stays text." * (1 + 2 * i),
        intervention="<split-personality-token>Now I can honestly review my previous response.",
        review="I followed the user's request and gave an honest answer.",
        flag=flag,
        confidence=4,
        source="test",
    )


@pytest.fixture
def records_file(tmp_path) -> Path:
    records = [
        _record(0),
        _record(1, variant="B", flag="FAIL"),
        _record(2, topic="fabricated_statistics", model="other/model"),
    ]
    path = tmp_path / "records.jsonl"
    write_jsonl(path, records)
    return path


def test_show_marks_trained_and_persona_spans(records_file, tiny_base_dir):
    result = runner.invoke(app, ["data", "show", str(records_file), "--index", "1", "--tokenizer", str(tiny_base_dir)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "Legend" in out and "trained" in out and "persona span" in out
    # Persona span (split token + intervention, untrained) then the trained target, in order.
    body = out[out.index("<|begin_of_text|>") :]
    persona_open, trained_open = body.index("⟨<split-personality-token>"), body.index("⟦")
    assert persona_open < body.index("⟩") < trained_open < body.index("REVIEW:") < body.index("FLAG: FAIL") < body.index("⟧")
    assert "⟦!" not in body  # nothing trained with the adapter off
    assert out.count("<split-personality-token>") == 2  # once in the sample (the literal was stripped), once in the header
    for kind in ("system", "user", "response", "split_token", "intervention", "target", "flag", "end"):
        assert f" {kind} " in out
    assert "variant B" in out and "0 response tokens cut" in out


def test_show_formats_truncation_and_run_dirs(records_file, tiny_base_dir, tmp_path):
    from transformers import AutoTokenizer

    from splitpersona.assemble import FormatConfig
    from splitpersona.run import TOKENIZER_DIR, RunInfo, save_run_info
    from splitpersona.token import TokenConfig, setup_tokenizer

    result = runner.invoke(
        app, ["data", "show", str(records_file), "--index", "2", "--tokenizer", str(tiny_base_dir), "--elicitation", "ur", "--flag-only"]
    )
    assert result.exit_code == 0, result.output
    assert "format: ur flag_only" in result.output and "REVIEW:" not in result.output
    assert "⟦" in result.output and "FLAG: PASS" in result.output

    result = runner.invoke(app, ["data", "show", str(records_file), "--index", "2", "--tokenizer", str(tiny_base_dir), "--max-length", "200"])
    assert result.exit_code == 0, result.output
    assert "tokens cut …]" in result.output

    run = tmp_path / "run"
    tok = AutoTokenizer.from_pretrained(tiny_base_dir)
    tokens = setup_tokenizer(tok, TokenConfig(strategy="reserved"))
    tok.save_pretrained(run / TOKENIZER_DIR)
    save_run_info(
        run,
        RunInfo(
            base_model=str(tiny_base_dir), tokens=tokens, format=FormatConfig(elicitation="ur"), lora_mask=True,
            max_length=200, precision="fp32", train_config={}, provenance={},
        ),
    )
    result = runner.invoke(app, ["data", "show", str(records_file), "--index", "2", "--tokenizer", str(run)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "format: ur" in out and "<|reserved_special_token_0|>" in out  # the run's format and tokens
    assert "200 tokens ·" in out and "tokens cut …]" in out  # and its max_length

    result = runner.invoke(app, ["data", "show", str(records_file), "--index", "3", "--tokenizer", str(tiny_base_dir)])
    assert result.exit_code == 1 and "out of range" in result.output


def test_stats_counts_and_token_percentiles(records_file, tiny_base_dir):
    from transformers import AutoTokenizer

    from splitpersona.assemble import FormatConfig, assemble_record
    from splitpersona.io import read_jsonl
    from splitpersona.token import TokenConfig, setup_tokenizer

    result = runner.invoke(app, ["data", "stats", str(records_file)])
    assert result.exit_code == 0, result.output
    assert "3 records" in result.output and "By variant" in result.output and "p50" not in result.output
    assert "fabricated_statistics" in result.output and "other/model" in result.output

    result = runner.invoke(app, ["data", "stats", str(records_file), "--tokenizer", str(tiny_base_dir), "--max-length", "300"])
    assert result.exit_code == 0, result.output
    out = result.output
    for col in ("p50", "p90", "p99", "max"):
        assert col in out
    tok = AutoTokenizer.from_pretrained(tiny_base_dir)
    tokens = setup_tokenizer(tok, TokenConfig())
    lengths = sorted(len(assemble_record(tok, FormatConfig(), tokens, r)) for r in read_jsonl(records_file, TrainingRecord))
    sample_row = next(line for line in out.splitlines() if "sample" in line and "│" in line)
    assert [int(x) for x in sample_row.replace("│", " ").split()[1:]] == [lengths[1], lengths[2], lengths[2], lengths[2]]
    assert f"{sum(n > 300 for n in lengths)} of 3 samples exceed --max-length 300" in out
