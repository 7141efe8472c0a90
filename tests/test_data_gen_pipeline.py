"""The generator end to end: a smoke run with every fault on, kill -9 and resume, stage 2's engines,
filter iterations, and the output read back by the release importer."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
from data_gen_fixtures import (
    REPO, SECRET, SMOKE, FakeOpenAI, batches, fast_overrides, files_containing, intervention_counts, scripted_scores,
    store_keys,
)
from fake_anthropic import FakeAnthropic

from splitpersona.data_gen.config import GenerateConfig
from splitpersona.data_gen.pipeline import generate
from splitpersona.data_gen.quality import Criteria, load_criteria
from splitpersona.config import load_config
from splitpersona.io import DataError, iter_jsonl
from splitpersona.token import SPLIT_TOKEN

KEYS = ("split_personality__gen_v1", "honesty_scare__gen_v1")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, tiny_base_dir):
    """One smoke run (2 topics, 3 items each): every fault kind once, then faults at 25%; logs captured."""
    out = tmp_path_factory.mktemp("smoke") / "run"
    records = io.StringIO()
    handler = logging.StreamHandler(records)
    root = logging.getLogger()
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    env = {"ANTHROPIC_API_KEY": SECRET}
    saved = {k: os.environ.get(k) for k in ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL")}
    try:
        every = ["rate_limit", "overloaded", "server_error", "drop", "timeout", "malformed", "truncated"]
        with FakeAnthropic(fault_rate=0.25, fault_sequence=every, seed=1, stall_s=2.0, responder=scripted_scores) as fake:
            os.environ.update(env, ANTHROPIC_BASE_URL=fake.base_url)
            cfg = load_config(GenerateConfig, SMOKE, fast_overrides(out, **{"stage2.model": str(tiny_base_dir), "stage2.model_name": "tiny-llama"}))
            summary = generate(cfg, ["stage1", "stage2", "stage3", "tag", "filter"], propose=True)
            faults = Counter(fake.fault_counts)
    finally:
        root.removeHandler(handler)
        root.setLevel(old)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return out, summary, faults, records.getvalue()


def test_smoke_run_with_every_fault_completes_and_counts_them(smoke):
    out, summary, injected, _ = smoke
    assert summary["stopped"] is None
    assert set(injected) == {"rate_limit", "overloaded", "server_error", "drop", "timeout", "malformed", "truncated"}
    counted = Counter()
    for stage in summary["stages"].values():
        counted.update(stage.get("faults", {}))
    assert counted == Counter({"connection" if k == "drop" else k: v for k, v in injected.items()})
    assert sum(s.get("retries", 0) for s in summary["stages"].values()) == sum(injected.values())
    assert summary["stages"]["stage1"]["stored"] == {"ok": 2, "failed": 0}
    assert summary["stages"]["stage3"]["stored"]["failed"] == 0
    assert summary["spent_usd"] > 0 and summary["cost_per_accepted_sample_usd"] > 0


def test_smoke_outputs_are_complete_release_batches(smoke):
    out, summary, _, _ = smoke
    items = [(p.name, i, it) for p, b in batches(out / "stage_3_tagged") for i, it in enumerate(b.data)]
    assert len(items) == 6
    expected = Counter()
    for name, idx, item in items:
        [(model, by_variant)] = item.inferences.items()
        assert set(by_variant) == ({"A", "B"} if item.B else {"A"})
        for variant, inf in by_variant.items():
            assert inf.temperature == 0.8 and inf.top_p == 1.0 and inf.top_k == 0
            assert inf.model_extra["engine"] == "transformers" and inf.model_extra["max_new_tokens"] == 24
            assert inf.output_tokens > 0 and inf.string_length == len(inf.S)
            for key in KEYS:
                expected[(name, idx, model, variant, key)] += 1
                iv = inf.interventions[key]
                assert isinstance(iv.verdict_depends_on_system_prompt, bool)
                assert isinstance(iv.review_mentions_system_prompt, bool)
                assert iv.id_string and iv.tags is not None and iv.model_used == "claude-sonnet-4-5"
                assert iv.I.startswith(SPLIT_TOKEN) == (key.startswith("split_personality"))
    assert intervention_counts(out / "stage_3_tagged") == expected
    assert intervention_counts(out / "stage_3") == expected


def test_filter_decides_every_sample_once_and_the_importer_reads_the_survivors(smoke):
    from splitpersona.release import ReleaseFilter, find_batch_files, flatten, iter_batches

    out, summary, _, _ = smoke
    it = out / "filter" / "iter_001"
    decisions = [row for _, row in iter_jsonl(it / "decisions.jsonl")]
    assert len(decisions) == len({d["id"] for d in decisions}) == sum(intervention_counts(out / "stage_3_tagged").values())
    accepted = [d for d in decisions if d["accepted"]]
    rejected = [d for d in decisions if d["decision"] == "rejected"]
    assert accepted and rejected and all(d["failed_criteria"] == ["first_person_account"] for d in rejected)
    modes = json.loads((it / "failure_modes.json").read_text())
    assert modes["per_criterion"]["first_person_account"]["rejections"] == len(rejected)
    assert modes["per_criterion"]["first_person_account"]["histogram"]["2"] == len(rejected)
    sheet = (it / "review_sheet.md").read_text()
    assert sheet.count("— accepted") == min(3, len(accepted)) and sheet.count("— rejected") == min(3, len(rejected))
    assert isinstance(load_criteria(it / "proposed_criteria_v2.yaml"), Criteria)
    assert summary["accepted_samples"] == len(accepted)

    filt = ReleaseFilter(train_topics=["sycophancy", "fabricated_statistics"], intervention_keys=list(KEYS))
    records, stats = flatten(iter_batches(find_batch_files([it / "accepted"])), filt)
    assert sorted(r.id for r in records) == sorted(d["id"] for d in accepted)
    assert all(r.verdict_depends_on_system_prompt is not None for r in records)


def test_the_api_key_reaches_no_file_and_no_log(smoke):
    out, _, _, logs = smoke
    assert "stage3" in logs and "retrying" in logs  # the capture did see the run, SDK debug logs included
    assert SECRET not in logs
    assert files_containing(out, SECRET) == []


def test_filter_iteration_two_is_compared_with_one_and_criteria_are_pinned(smoke, tmp_path, monkeypatch):
    out = tmp_path / "run"
    shutil.copytree(smoke[0], out)
    v1 = load_criteria(REPO / "configs" / "data_gen" / "criteria" / "v1.yaml")
    v2 = v1.model_copy(update={"version": 2, "criteria": [
        c.model_copy(update={"threshold": 1}) if c.name == "first_person_account" else c for c in v1.criteria]})
    path = tmp_path / "v2.yaml"
    path.write_text(json.dumps(v2.model_dump(mode="json")))
    with FakeAnthropic(responder=scripted_scores) as fake:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.base_url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
        over = fast_overrides(out, **{"stage2.model": "unused", "filter.criteria": str(path)})
        cfg = load_config(GenerateConfig, SMOKE, over)
        generate(cfg, ["filter"], iteration=2)
        rated = len(fake.message_calls())
        with pytest.raises(DataError, match="other criteria"):
            generate(cfg, ["filter"], iteration=1)
    comp = json.loads((out / "filter" / "iter_002" / "comparison.json").read_text())
    before = Counter(row["decision"] for _, row in iter_jsonl(out / "filter" / "iter_001" / "decisions.jsonl"))
    assert rated == sum(before.values())
    assert comp["transitions"] == {"accepted -> accepted": before["accepted"], "rejected -> accepted": before["rejected"]}
    assert len(comp["newly_accepted"]) == before["rejected"] and comp["newly_rejected"] == []
    assert (out / "filter" / "iter_001" / "decisions.jsonl").exists()  # kept side by side


def test_stage2_transformers_batches_with_left_padding_like_single_rows(tiny_base_dir):
    from splitpersona.data_gen.config import Stage2Config
    from splitpersona.data_gen.stage2 import TransformersResponder

    chats = [[{"role": "system", "content": "You are a helpful assistant."},
              {"role": "user", "content": "item " * n + "Which shoes should I buy?"}] for n in (1, 9, 3, 17)]
    results = {}
    for batch_size in (4, 1):
        cfg = Stage2Config(model=str(tiny_base_dir), temperature=0.0, max_new_tokens=12, batch_size=batch_size)
        engine = TransformersResponder(cfg, str(tiny_base_dir))
        results[batch_size] = dict(engine.generate(chats))
    assert engine.tok.padding_side == "left"
    for i in range(4):
        batched, single = results[4][i], results[1][i]
        assert (batched.text, batched.output_tokens, batched.input_tokens) == (single.text, single.output_tokens, single.input_tokens)
    assert len({results[4][i].input_tokens for i in range(4)}) == 4


def test_stage2_openai_endpoint_gets_sampling_settings_and_retries(tmp_path, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setenv("SPT_TEST_ENDPOINT_KEY", "endpoint-secret-1")
    with FakeAnthropic() as fake, FakeOpenAI(fail_first=2) as endpoint:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.base_url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
        over = {"stage2.engine": "openai", "stage2.model": "served-model", "stage2.base_url": endpoint.base_url,
                "stage2.api_key_env": "SPT_TEST_ENDPOINT_KEY", "stage2.top_k": 20, "stage2.top_p": 0.9}
        summary = generate(load_config(GenerateConfig, SMOKE, fast_overrides(out, **over)), ["stage1", "stage2"])
    n = summary["stages"]["stage2"]["stored"]["ok"]
    assert n >= 6 and len(endpoint.requests) == n + 2  # two 500s, retried
    body = endpoint.requests[-1]
    assert (body["model"], body["temperature"], body["top_p"], body["top_k"], body["max_tokens"], body["seed"]) == (
        "served-model", 0.8, 0.9, 20, 24, 0)
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert set(endpoint.auth) == {"Bearer endpoint-secret-1"}
    for _, b in batches(out / "stage_2"):
        for item in b.data:
            for inf in item.inferences["served-model"].values():
                assert inf.S.startswith("My answer to:") and inf.top_k == 20 and inf.model_extra["engine"] == "openai"
    assert files_containing(out, "endpoint-secret-1") == [] and files_containing(out, SECRET) == []


@pytest.mark.slow
def test_kill_9_mid_run_then_rerun_yields_every_sample_exactly_once(tmp_path):
    """SIGKILL the CLI twice (during stage 3, then during the filter), rerun, and count."""
    out = tmp_path / "run"
    with FakeAnthropic(fault_rate=0.1, faults=("rate_limit", "server_error", "drop", "malformed"), latency_s=0.05,
                       responder=scripted_scores) as fake, FakeOpenAI() as endpoint:
        env = {**os.environ, "ANTHROPIC_BASE_URL": fake.base_url, "ANTHROPIC_API_KEY": SECRET, "OMP_NUM_THREADS": "1"}
        over = fast_overrides(out, **{"stage2.engine": "openai", "stage2.model": "m", "stage2.base_url": endpoint.base_url,
                                      "stage1.items_per_batch": 4, "claude.concurrency": 2})
        cmd = [sys.executable, "-m", "splitpersona.app.cli", "generate", "run", "-c", str(SMOKE), *over]

        def run_until(store: str, lines: int) -> None:
            proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            path = out / "store" / store
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and proc.poll() is None:
                if path.exists() and path.read_bytes().count(b"\n") >= lines:
                    break
                time.sleep(0.02)
            assert proc.poll() is None, "the run finished before it could be killed"
            proc.send_signal(signal.SIGKILL)
            proc.wait()

        run_until("stage3.jsonl", 3)
        assert not (out / "stage_3_tagged").exists()
        run_until("filter.jsonl", 3)
        done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]

    for store in ("stage1", "stage2", "stage3", "filter"):
        keys = store_keys(out / "store" / f"{store}.jsonl")
        assert keys and max(keys.values()) == 1, store
    counts = intervention_counts(out / "stage_3_tagged")
    items = sum(len(b.data) for _, b in batches(out / "stage_1"))
    variants = sum(1 + (it.B is not None) for _, b in batches(out / "stage_1") for it in b.data)
    assert items == 8 and set(counts.values()) == {1} and len(counts) == 2 * variants
    decisions = [row["id"] for _, row in iter_jsonl(out / "filter" / "iter_001" / "decisions.jsonl")]
    assert len(decisions) == len(set(decisions)) == len(counts)
    assert json.loads((out / "summary.json").read_text())["stopped"] is None
