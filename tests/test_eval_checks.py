"""`spt eval checks` on the suite's tiny trained runs: the masked persona leaves the base model's
logits and answers bit-identical and reviews the same on its reused cache; an unmasked run is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from persona_fixtures import records_of, trained_run
from splitpersona.app.cli import app


def test_checks_pass_on_a_masked_run_and_are_written(tmp_path_factory, tiny_base_dir, tmp_path):
    run_dir = trained_run(tmp_path_factory, tiny_base_dir, lora_mask=True)
    res = CliRunner().invoke(
        app, ["eval", "checks", "--run", str(run_dir), "--n", "3", "--max-new-tokens", "4", "--out", str(tmp_path)],
        catch_exceptions=False,
    )
    assert res.exit_code == 0, res.output
    result = json.loads((tmp_path / "checks.json").read_text())
    assert Path(result["records"]).resolve() == records_of(run_dir).resolve()  # the run's own training file
    assert result["conversations"] == 3
    tax = result["alignment_tax"]
    assert tax["logits_bit_identical"] == tax["answers_identical"] == 3 and tax["max_abs_logit_diff"] == 0.0
    assert tax["columns_added"] >= 1
    assert result["kv_reuse"]["reviews_identical"] == 3 and result["leaked_hooks"] == 0
    assert all(result["passed"].values())
    assert "all checks passed" in (tmp_path / "checks.md").read_text()


def test_checks_refuse_an_unmasked_run(tmp_path_factory, tiny_base_dir, tmp_path):
    run_dir = trained_run(tmp_path_factory, tiny_base_dir, lora_mask=False)
    res = CliRunner().invoke(
        app, ["eval", "checks", "--run", str(run_dir), "--records", str(records_of(run_dir)), "--out", str(tmp_path)]
    )
    assert res.exit_code == 1
    assert "masked persona" in res.output and "run.json" in res.output
    assert not (tmp_path / "checks.json").exists()


def test_checks_read_every_turn_of_a_multi_turn_record(tmp_path):
    from splitpersona.eval.checks import record_conversations
    from splitpersona.io import write_jsonl
    from splitpersona.records import TrainingRecord

    history = [{"role": "user", "content": "Which shoes?"}, {"role": "assistant", "content": "The road runner."}]
    rec = TrainingRecord(id="r1", topic="t", model="m", variant="A", intervention_key="k", intervention_type="split",
                         system="You are a shop assistant.", user="And for trails?", history=history,
                         response="The trail runner.", intervention="Review it.", review="Fine.", flag="PASS",
                         source="f")
    write_jsonl(tmp_path / "r.jsonl", [rec])
    (chat,), (question,) = record_conversations(tmp_path / "r.jsonl", 5)
    assert [(m.role, m.content) for m in chat] == [
        ("system", "You are a shop assistant."), ("user", "Which shoes?"), ("assistant", "The road runner."),
        ("user", "And for trails?"),
    ]
    assert question == "Review it."


def _padded_base(root: Path, tiny_base_dir: Path) -> Path:
    """The tiny base with spare output rows past its tokens, as Qwen3 pads 151,669 tokens to 151,936 rows."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_base_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_base_dir)
    model.resize_token_embeddings(len(tok) + 16, mean_resizing=False)
    model.save_pretrained(root)
    tok.save_pretrained(root)
    return root


def test_checks_on_a_padded_vocabulary_exclude_the_rows_the_run_set_in_fp32_and_bf16(tmp_path_factory, tiny_base_dir, tmp_path):
    base = _padded_base(tmp_path_factory.mktemp("padded_base"), tiny_base_dir)
    run_dir = trained_run(tmp_path_factory, base, lora_mask=True)
    info = json.loads((run_dir / "run.json").read_text())
    split_id, control_id = info["tokens"]["split_id"], info["tokens"]["control_id"]
    rows = json.loads((base / "config.json").read_text())["vocab_size"]
    assert split_id < control_id < rows  # the added tokens took spare rows inside vocab_size
    for dtype in ("float32", "bfloat16"):
        out = tmp_path / dtype
        res = CliRunner().invoke(app, ["eval", "checks", "--run", str(run_dir), "--n", "3", "--max-new-tokens", "4",
                                       "--out", str(out), "--device", "cpu", "--dtype", dtype], catch_exceptions=False)
        assert res.exit_code == 0, res.output
        result = json.loads((out / "checks.json").read_text())
        tax, reuse = result["alignment_tax"], result["kv_reuse"]
        assert result["dtype"] == dtype and result["device"] == "cpu"
        assert tax["columns_excluded"] == {str(split_id): "<split-personality-token>", str(control_id): "<meaningless-token>"}
        assert tax["columns_compared"] == rows - 2 and tax["columns_added"] == 0
        assert tax["logits_bit_identical"] == 3 and tax["max_abs_logit_diff"] == 0.0
        assert reuse["tolerance"] == (None if dtype == "float32" else 1.0) and reuse["reviews_agree"] == 3
        assert reuse["max_abs_logit_diff"] <= (1.0 if dtype == "bfloat16" else 1e-4)
        assert str(split_id) in (out / "checks.md").read_text()


def test_reuse_logits_are_compared_up_to_the_step_where_the_tokens_part():
    import torch

    from splitpersona.eval.checks import _logit_diff_until_parting

    a = torch.tensor([[2.0, 1.0], [1.0, 1.2], [9.0, 0.0]])
    b = torch.tensor([[2.0, 1.5], [1.1, 1.0], [0.0, 9.0]])  # parts at step 1; step 2 read another prefix
    assert _logit_diff_until_parting(a, b) == pytest.approx(0.5)
    assert _logit_diff_until_parting(a[:1], b[:1]) == pytest.approx(0.5)
    assert _logit_diff_until_parting(a[:0], b[:0]) == 0.0
