"""`spt eval checks` on the suite's tiny trained runs: the masked persona leaves the base model's
logits and answers bit-identical and reviews the same on its reused cache; an unmasked run is refused."""

from __future__ import annotations

import json
from pathlib import Path

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
