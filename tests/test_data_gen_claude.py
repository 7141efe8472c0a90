"""The generator's Claude side, through the real `anthropic` SDK against tests/fake_anthropic.py.

Faults and retries, malformed and truncated answers, the budget, Message Batches resumed by id,
prompt-cache writes and reads in the ledger, the API key staying out of every file, and the pieces
they rest on (store, prompts, schemas).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from data_gen_fixtures import SECRET, SMOKE, fast_overrides, files_containing, store_keys
from fake_anthropic import FakeAnthropic, instance_from_schema
from typer.testing import CliRunner

from splitpersona.data_gen.backend import Block, GenerationAborted, Request
from splitpersona.data_gen.claude import ClaudeBackend
from splitpersona.app.cli import app
from splitpersona.data_gen.config import TOPICS, ClaudeConfig, GenerateConfig
from splitpersona.data_gen.runner import GenerationRun
from splitpersona.data_gen.pipeline import generate
from splitpersona.data_gen.prompts import load_prompts, render
from splitpersona.data_gen.schemas import CriteriaProposal, rating_answer, stage1_answer, stage3_answer
from splitpersona.data_gen.stage1 import batch_specs
from splitpersona.data_gen.store import BudgetMeter, Ledger, ResultStore
from splitpersona.clients import tool_schema
from splitpersona.config import ConfigError, load_config
from splitpersona.io import DataError, iter_jsonl


@pytest.fixture
def env(monkeypatch):
    """Point the SDK at a fake server through the environment, as a user would."""

    def use(fake: FakeAnthropic) -> None:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.base_url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
        monkeypatch.delenv("ANTHROPIC_AUTH_TOKEN", raising=False)

    return use


def cfg_for(out: Path, **extra) -> GenerateConfig:
    return load_config(GenerateConfig, SMOKE, fast_overrides(out, **extra))


def stage1_request(n: int = 2) -> Request:
    p = load_prompts("v1")
    return Request(
        stage="stage1",
        system=(Block(p.system(), cache=True),),
        user=(Block(p.stage1_prompt("sycophancy"), cache=True), Block("Write the samples.")),
        schema=stage1_answer(tuple(p.topic_foci["sycophancy"]), n),
        tool_name="write_samples",
        tool_description="Submit samples.",
        max_tokens=2000,
    )


def meter_for(tmp_path: Path, budget: float | None = None) -> BudgetMeter:
    cfg = cfg_for(tmp_path)
    return BudgetMeter(Ledger(tmp_path / "ledger.jsonl", {"claude-test": cfg.prices["claude-sonnet-4-5"]}, 0.5), budget)


# -- the fake itself --------------------------------------------------------------------------

@pytest.mark.parametrize(
    "model",
    [stage1_answer(("honesty", "sycophancy"), 3), stage3_answer(("honesty", "clarity"), ("A", "B")),
     stage3_answer(("honesty",), ("A",)), rating_answer(("a_b", "c_d")), CriteriaProposal],
    ids=["stage1", "stage3_ab", "stage3_a", "rating", "proposal"],
)
def test_fake_answers_validate_against_every_answer_schema(model):
    schema = tool_schema(model)
    assert "$ref" not in json.dumps(schema)
    for seed in range(25):
        model.model_validate(instance_from_schema(schema, random.Random(seed)))


# -- retries and faults -----------------------------------------------------------------------

def test_every_fault_kind_is_retried_with_backoff_and_counted(tmp_path, env):
    kinds = ["rate_limit", "overloaded", "server_error", "drop", "timeout", "malformed", "truncated"]
    sleeps: list[float] = []
    with FakeAnthropic(fault_sequence=kinds, retry_after_s=0.3, stall_s=1.5) as fake:
        env(fake)
        cfg = ClaudeConfig(max_attempts=8, backoff_base_s=0.01, backoff_max_s=1.0, timeout_s=1.0, concurrency=1)
        backend = ClaudeBackend(cfg, "claude-test", tmp_path, sleep=sleeps.append)
        meter = meter_for(tmp_path)
        [outcome] = list(backend.run([stage1_request()], meter))
    assert outcome.status == "ok" and outcome.attempts == 8
    rows = list(meter.ledger.rows())
    assert [r["outcome"] for r in rows] == [
        "rate_limit", "overloaded", "server_error", "connection", "timeout", "malformed", "truncated", "ok"]
    assert [r["attempt"] for r in rows] == list(range(1, 9))
    assert len(sleeps) == 7
    assert sleeps[0] >= 0.3  # the 429's retry-after wins over the smaller backoff
    assert all(0.005 * 2**i <= s <= 0.01 * 2**i for i, s in enumerate(sleeps[1:], start=1))  # doubling, jittered
    assert rows[-1]["cache_write_tokens"] + rows[-1]["cache_read_tokens"] > 0


def test_malformed_and_truncated_answers_are_retried_then_recorded(tmp_path, env):
    with FakeAnthropic(fault_sequence=["truncated"] * 3) as fake:
        env(fake)
        backend = ClaudeBackend(ClaudeConfig(max_attempts=3, backoff_base_s=0.0), "claude-test", tmp_path)
        [out] = list(backend.run([stage1_request()], meter_for(tmp_path)))
        assert [c.body["max_tokens"] for c in fake.message_calls()] == [2000, 3000, 4500]  # more room each retry
    assert out.status == "failed" and out.attempts == 3
    assert out.failure == "truncated (cut off at max_tokens=4500); gave up after 3 attempts"

    calls = []

    def bad(body):  # every answer breaks the schema: no samples at all
        calls.append(body)
        return {"samples": [], "project_feedback": ""}

    out_dir = tmp_path / "run"
    with FakeAnthropic(responder=bad) as fake:
        env(fake)
        summary = generate(cfg_for(out_dir, **{"claude.max_attempts": 3}), ["stage1"])
        assert len(calls) == 2 * 3  # two topics, three attempts each, then given up
        assert summary["stages"]["stage1"]["stored"] == {"ok": 0, "failed": 2}
        assert summary["stages"]["stage1"]["faults"] == {"malformed": 6}
        rows = [r for _, r in iter_jsonl(out_dir / "store" / "stage1.jsonl")]
        assert all(r["failure"].startswith("malformed (samples: List should have at least 3 items") for r in rows)
        assert not (out_dir / "stage_1").exists()

        generate(cfg_for(out_dir), ["stage1"])  # a failure is final unless asked otherwise
        assert len(calls) == 6
    with FakeAnthropic() as fake:
        env(fake)
        summary = generate(cfg_for(out_dir, retry_failed="true"), ["stage1"])
    assert summary["stages"]["stage1"]["stored"] == {"ok": 2, "failed": 0}
    assert len(list((out_dir / "stage_1").rglob("batch_*.json"))) == 2


def test_requests_force_a_tool_mark_the_cache_prefix_and_send_the_env_key(tmp_path, env):
    with FakeAnthropic() as fake:
        env(fake)
        generate(cfg_for(tmp_path / "run", **{"stage1.batches_per_topic": 2, "claude.concurrency": 1}), ["stage1"])
        calls = fake.message_calls()
    assert len(calls) == 4 and fake.auth_keys == {SECRET}
    body = calls[0].body
    assert body["tool_choice"] == {"type": "tool", "name": "write_samples"}
    assert body["tools"][0]["input_schema"]["properties"]["samples"]["minItems"] == 3
    assert body["system"][0]["cache_control"] == {"type": "ephemeral"}
    content = body["messages"][0]["content"]
    assert content[0]["cache_control"] == {"type": "ephemeral"} and "cache_control" not in content[1]
    # a topic's second batch reads the shared prefix (tools, system, topic prompt) from the cache
    ledger = [r for _, r in iter_jsonl(tmp_path / "run" / "ledger.jsonl")]
    assert [r["cache_read_tokens"] > 0 for r in ledger] == [False, True, False, True]
    assert all(r["cache_write_tokens"] > 0 for r in ledger[::2])


@pytest.mark.parametrize(("mode", "cache"), [("sync", True), ("batch", True), ("batch", False)])
def test_the_ledger_counts_cache_writes_then_reads_and_prices_them(tmp_path, env, mode, cache):
    """A topic's first stage-1 call writes its prefix, the second reads it; writes cost 1.25x the input
    price, reads 0.1x, and a Message Batch halves all of it. `cache_prompts: false` marks nothing."""
    out = tmp_path / "run"
    over = {"claude.mode": mode, "claude.cache_prompts": str(cache).lower(), "stage1.batches_per_topic": 2,
            "claude.concurrency": 1}
    with FakeAnthropic() as fake:
        env(fake)
        generate(cfg_for(out, **over), ["stage1"])
        bodies = [c.body for c in fake.message_calls()]
        bodies += [r["params"] for c in fake.calls if c.path == "/v1/messages/batches" for r in c.body["requests"]]
    assert len(bodies) == 4 and ('"cache_control"' in json.dumps(bodies)) == cache
    rows = [r for _, r in iter_jsonl(out / "ledger.jsonl")]
    assert [r["mode"] for r in rows] == [mode] * 4
    if cache:
        assert [r["cache_read_tokens"] > 0 for r in rows] == [False, True, False, True]
        assert [r["cache_write_tokens"] > 0 for r in rows] == [True, False, True, False]
        # the second call sends the same prefix: what the first wrote, it reads
        assert [r["cache_read_tokens"] for r in rows[1::2]] == [r["cache_write_tokens"] for r in rows[::2]]
    else:
        assert all(r["cache_write_tokens"] == r["cache_read_tokens"] == 0 for r in rows)
    price = cfg_for(out).prices["claude-sonnet-4-5"]
    for r in rows:
        usd = (r["input_tokens"] * price.input + r["cache_write_tokens"] * 1.25 * price.input
               + r["cache_read_tokens"] * 0.1 * price.input + r["output_tokens"] * price.output) / 1e6
        assert r["cost_usd"] == pytest.approx(usd * (0.5 if mode == "batch" else 1.0), rel=1e-6)


def test_the_fake_caches_no_prefix_below_the_minimum_length():
    import anthropic

    def block(text: str) -> dict:
        return {"role": "user", "content": [{"type": "text", "text": text, "cache_control": {"type": "ephemeral"}}]}

    with FakeAnthropic(min_cache_tokens=100) as fake:
        client = anthropic.Anthropic(base_url=fake.base_url, api_key="test-key", max_retries=0)
        short, long_, again = (
            client.messages.create(model="m", max_tokens=10, messages=messages).usage
            for messages in ([block("x" * 396)], [block("x" * 396), block("y" * 800)], [block("x" * 396), block("y" * 800)])
        )
    assert (short.cache_creation_input_tokens, short.cache_read_input_tokens) == (0, 0)  # 99 tokens: too short
    assert (long_.cache_creation_input_tokens, long_.cache_read_input_tokens) == (299, 0)  # 99 + 200 tokens
    assert (again.cache_creation_input_tokens, again.cache_read_input_tokens, again.input_tokens) == (0, 299, 1)


def test_bad_credentials_abort_the_run_without_printing_the_key(tmp_path, env):
    with FakeAnthropic(required_key="the-right-key") as fake:
        env(fake)
        with pytest.raises(GenerationAborted, match="ANTHROPIC_API_KEY"):
            generate(cfg_for(tmp_path / "a"), ["stage1"])
        res = CliRunner().invoke(app, ["generate", "stage1", "-c", str(SMOKE), *fast_overrides(tmp_path / "b")])
    assert res.exit_code == 2 and "ANTHROPIC_API_KEY" in res.output and SECRET not in res.output
    assert files_containing(tmp_path, SECRET) == []


# -- budget -----------------------------------------------------------------------------------

def test_budget_cap_stops_cleanly_and_a_rerun_finishes_without_duplicates(tmp_path, env):
    out = tmp_path / "run"
    many = {"stage1.batches_per_topic": 4, "claude.concurrency": 1, "budget_usd": 0.006}
    with FakeAnthropic() as fake:
        env(fake)
        res = CliRunner().invoke(app, ["generate", "stage1", "-c", str(SMOKE), *fast_overrides(out, **many)])
        assert res.exit_code == 3, res.output
        summary = json.loads((out / "summary.json").read_text())
        assert summary["stopped"] == "budget"
        done = summary["stages"]["stage1"]["stored"]["ok"]
        per_call = summary["spent_usd"] / done
        assert 1 <= done < 8
        assert 0.006 <= summary["spent_usd"] < 0.006 + per_call * 1.5  # at most one call past the cap
        assert len(list((out / "stage_1").rglob("batch_*.json"))) == done

        summary = generate(cfg_for(out, **{**many, "budget_usd": 10}), ["stage1"])
        assert summary["stopped"] is None and summary["stages"]["stage1"]["stored"]["ok"] == 8
        assert len(fake.message_calls()) == 8
    assert max(store_keys(out / "store" / "stage1.jsonl").values()) == 1


# -- Message Batches --------------------------------------------------------------------------

def test_batch_mode_submits_stops_and_resumes_the_pending_batch_by_id(tmp_path, env):
    out = tmp_path / "run"
    batch = {"claude.mode": "batch", "claude.batch_wait_s": 0}
    with FakeAnthropic(batch_polls_to_end=10**9) as fake:
        env(fake)
        first = generate(cfg_for(out, **batch), ["stage1"])
        assert first["stopped"] == "batch_pending"
        [submitted] = [r for _, r in iter_jsonl(out / "batches.jsonl")]
        assert submitted["event"] == "submitted" and len(submitted["keys"]) == 2
        assert not (out / "store" / "stage1.jsonl").exists()

        fake.end_batches()  # a fresh GenerationRun and backend: only the id on disk connects them
        second = generate(cfg_for(out, **batch), ["stage1"])
        creates = [c for c in fake.calls if c.method == "POST" and c.path == "/v1/messages/batches"]
        polls = [c for c in fake.calls if c.path == f"/v1/messages/batches/{submitted['batch_id']}"]
    assert second["stopped"] is None and second["stages"]["stage1"]["stored"] == {"ok": 2, "failed": 0}
    assert len(creates) == 1 and len(polls) >= 2
    assert fake.message_calls() == []
    events = [r["event"] for _, r in iter_jsonl(out / "batches.jsonl")]
    assert events == ["submitted", "collected"]


def test_batch_results_with_faults_are_resubmitted_and_billed_at_the_batch_discount(tmp_path, env):
    out = tmp_path / "run"
    over = {"claude.mode": "batch", "stage1.batches_per_topic": 5, "claude.batch_max_requests": 4}
    with FakeAnthropic(fault_rate=0.4, batch_http_fault_rate=0.15, seed=3) as fake:
        env(fake)
        summary = generate(cfg_for(out, **over), ["stage1"])
    s = summary["stages"]["stage1"]
    assert s["stored"]["ok"] + s["stored"]["failed"] == 10 and s["stored"]["ok"] >= 8
    assert s["retries"] > 0 and s["faults"]
    assert set(s["faults"]) <= {"overloaded", "server_error", "malformed", "truncated", "rate_limit", "connection"}
    rows = [r for _, r in iter_jsonl(out / "ledger.jsonl") if r["outcome"] == "ok"]
    price = cfg_for(out).prices["claude-sonnet-4-5"]
    for r in rows:
        full = (r["input_tokens"] * price.input + r["output_tokens"] * price.output
                + r["cache_write_tokens"] * price.cache_write + r["cache_read_tokens"] * price.cache_read) / 1e6
        assert r["mode"] == "batch" and r["cost_usd"] == pytest.approx(full / 2, rel=1e-6)
    assert max(store_keys(out / "store" / "stage1.jsonl").values()) == 1


# -- pieces -----------------------------------------------------------------------------------

def test_store_cuts_a_torn_last_line_and_keeps_the_last_row_per_key(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text('{"key": "a", "status": "failed"}\n{"key": "a", "status": "ok", "value": 1}\n{"key": "b", "sta')
    store = ResultStore(path)
    assert store.torn_bytes > 0 and len(store) == 1 and store.get("a")["value"] == 1
    store.put({"key": "b", "status": "ok"})
    assert [r["key"] for _, r in iter_jsonl(path)] == ["a", "a", "b"]
    path.write_text('{"key": "a", "status": "maybe"}\n')
    with pytest.raises(DataError, match="line 1"):
        ResultStore(path)


def test_prompt_set_covers_every_topic_and_renders_completely():
    p = load_prompts("v1")
    for topic in TOPICS:
        for text in (p.stage1_prompt(topic), *(p.stage3_prompt(topic, t) for t in ("split_personality", "honesty_scare"))):
            assert "{{" not in text and topic in text
    assert all(f"`{f}`" in p.system() for f in p.focus_questions)
    with pytest.raises(DataError, match="without values"):
        render("{{a}} {{b}}", a="1")
    with pytest.raises(DataError, match="lacks"):
        render("{{a}}", a="1", c="2")


def test_config_rejects_unpriced_models_and_baseline_versions(tmp_path):
    with pytest.raises(ConfigError, match="prices has no entry"):
        load_config(GenerateConfig, SMOKE, fast_overrides(tmp_path, **{"stage3.model": "claude-unpriced"}))
    with pytest.raises(ConfigError, match="baseline"):
        load_config(GenerateConfig, SMOKE, fast_overrides(tmp_path, **{"stage3.version": "x_baseline"}))
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(GenerateConfig, SMOKE, fast_overrides(tmp_path, **{"claude.api_key": "x"}))


def test_a_lost_batch_id_on_disk_is_resubmitted(tmp_path, env):
    out = tmp_path / "run"
    out.mkdir()
    cfg = cfg_for(out, **{"claude.mode": "batch"})
    keys = [spec.request.key("claude-sonnet-4-5") for spec in batch_specs(GenerationRun(cfg))]
    (out / "batches.jsonl").write_text(json.dumps(
        {"event": "submitted", "batch_id": "msgbatch_gone", "stage": "stage1", "model": "claude-sonnet-4-5", "keys": keys}) + "\n")
    with FakeAnthropic() as fake:
        env(fake)
        summary = generate(cfg, ["stage1"])
    assert summary["stages"]["stage1"]["stored"] == {"ok": 2, "failed": 0}
    events = [(r["event"], r.get("lost")) for _, r in iter_jsonl(out / "batches.jsonl")]
    assert events == [("submitted", None), ("collected", True), ("submitted", None), ("collected", None)]


def test_missing_credentials_stop_before_any_request(tmp_path, monkeypatch):
    for var in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("ANTHROPIC_CONFIG_DIR", str(tmp_path / "no-config"))
    with pytest.raises(GenerationAborted, match="set ANTHROPIC_API_KEY"):
        generate(cfg_for(tmp_path / "run"), ["stage1"])


def test_a_local_backend_replaces_claude_through_the_same_interface(tmp_path):
    from splitpersona.data_gen.backend import LocalBackend

    class Template(LocalBackend):
        model = "template-v0"

        def complete(self, request):
            c = request.context
            sample = {"thought_process": "A scenario built from a fixed template.", "A": "You are a helpful tutor.",
                      "B": None, "T": f"Please check my homework about {c['domains'][0]}.",
                      "metadata": {"difficulty": "easy", "intended_review_focus": [c["foci"][0]], "notes": ""}}
            return {"samples": [sample] * c["num_samples"]}

    summary = generate(cfg_for(tmp_path / "run"), ["stage1"], backends={"stage1": Template()})
    assert summary["stages"]["stage1"]["stored"] == {"ok": 2, "failed": 0} and summary["spent_usd"] == 0
    rows = [r for _, r in iter_jsonl(tmp_path / "run" / "ledger.jsonl")]
    assert [(r["mode"], r["outcome"], r["model"]) for r in rows] == [("local", "ok", "template-v0")] * 2
