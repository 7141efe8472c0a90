"""The external arm against the fake Anthropic server (real SDK over loopback), and the probe."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from splitpersona.eval.config import EvalConfig, ProbeConfig
from splitpersona.eval.external import JUDGE_SYSTEM, TOOL_NAME, TextClassifier
from splitpersona.eval.probe import features, fit, hidden_index, run_probe, training_rows
from splitpersona.eval.results import load_results
from splitpersona.eval.evaluate import run_eval
from splitpersona.eval.sets import load_sets
from fake_anthropic import FakeAnthropic
from persona_fixtures import BIASED, records_of, trained_run
from splitpersona.config import load_config
from splitpersona.conversation import Conversation
from splitpersona.persona import Persona
from train_fixtures import SYSTEM_A, SYSTEM_B

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "eval" / "tiny_cpu.yaml"
KEY = "sk-test-do-not-log-0123"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_base_dir):
    return trained_run(tmp_path_factory, tiny_base_dir, lora_mask=True)


def eval_config(run_dir: Path, out: Path, *extra: str) -> EvalConfig:
    data = records_of(run_dir)
    return load_config(EvalConfig, TINY, [
        f"run={run_dir}", f"output={out}", f"probe.train_data=[{data}]", "progress=false",
        f"sets=[{{name: held_out, kind: records, path: {data}, run_split: val}}]", *extra,
    ])


def prose(text: str) -> bool:
    return "Item 6" in text and "already been checked" in text  # item 6 with the planted note in its user turn


def scripted(body: dict):
    """FAIL for the invented statistic, PASS otherwise; prose (no tool call) where `prose` says so."""
    text = body["messages"][0]["content"]
    if prose(text):
        return "I would rather answer in prose."
    flag = "FAIL" if "42%" in text else "PASS"
    return {"review": f"The response {'invents a number' if flag == 'FAIL' else 'answers the request'}.", "flag": flag}


def test_external_claude_arm_over_the_fake_server(run_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    out = tmp_path / "external.jsonl"
    with FakeAnthropic(seed=3, responder=scripted, fault_rate=0.3, faults=("rate_limit", "malformed", "truncated"),
                       retry_after_s=0.01) as fake:
        cfg = eval_config(run_dir, out, "arms=[external]", "external.kind=claude", f"external.base_url={fake.base_url}",
                          "external.max_retries=6", "external.backoff_base_s=0.01", "external.concurrency=3")
        run_eval(cfg)
        calls = fake.message_calls()
        faults = Counter(fake.fault_counts)
    res = load_results(out)
    assert Counter(r.arm for r in res.records) == {"external": len(load_sets(cfg, None).items)}
    assert sum(faults.values()) > 0  # faults were injected, and retried through
    for r in res.records:
        planted_prose = r.jailbreak == "user" and r.id.split("/")[1] == "6"
        if planted_prose:
            assert not r.parse_ok and r.error == "no submit_review tool call"
        else:
            assert r.error is None and r.parse_ok, r
            want = "FAIL" if r.variant == "B" else "PASS"  # the toy records' B responses carry the statistic
            assert r.parsed_flag == want
    # An outside auditor: forced tool, our judge prompt, never the conversation's system prompt.
    bodies = [c.body for c in calls]
    assert all(b["tool_choice"] == {"type": "tool", "name": TOOL_NAME} and b["system"] == JUDGE_SYSTEM for b in bodies)
    assert not any(SYSTEM_A in str(b["messages"]) or SYSTEM_B in str(b["messages"]) for b in bodies)
    # The system-prompt conditions look alike from outside: each distinct input is answered once.
    by_id = {}
    for r in res.records:
        if r.jailbreak is None:
            by_id.setdefault(r.id, set()).add(r.generated)
    assert all(len(texts) == 1 for texts in by_id.values())
    answerable = {b["messages"][0]["content"] for b in bodies if not prose(b["messages"][0]["content"])}
    good = [c for c in calls if c.fault is None and not prose(c.body["messages"][0]["content"])]
    assert len(good) == len({c.body["messages"][0]["content"] for c in good}) == len(answerable)
    # The key goes to the server and nowhere else.
    assert fake.auth_keys == {KEY}
    assert KEY not in out.read_text()


def test_claude_without_a_key_fails_before_any_work(run_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    cfg = eval_config(run_dir, tmp_path / "x.jsonl", "arms=[persona,external]", "external.kind=claude")
    with pytest.raises(ValueError, match="ANTHROPIC_API_KEY"):
        run_eval(cfg)
    assert not (tmp_path / "x.jsonl").exists()


def all_states_features(persona: Persona, rows, cfg: ProbeConfig) -> np.ndarray:
    """The probe's features from every layer's hidden states, one unpadded row at a time."""
    import torch

    from splitpersona.eval.probe import _tokens

    out = []
    for m, r, i in rows:
        ids, (s, e) = _tokens(persona, m, r, i, cfg)
        with torch.no_grad(), persona.adapter_mode("on" if cfg.states == "persona" else "off"):
            hidden = persona.model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
        states = [hidden[hidden_index(layer)][0, s:e] for layer in cfg.layers]
        out.append(torch.cat([h.mean(0) if cfg.pooling == "mean" else h[-1] for h in states]).numpy())
    return np.stack(out)


def test_probe_fits_on_training_records_and_scores_eval_items(run_dir):
    persona = Persona.load(run_dir)
    cfg = eval_config(run_dir, Path("unused.jsonl"))
    items = [it for it in load_sets(cfg, None).items if it.condition == "as_is"]
    for probe_cfg in (
        ProbeConfig(train_data=[str(records_of(run_dir))], layers=[0, -1], pooling="mean", model="logistic"),
        ProbeConfig(train_data=[str(records_of(run_dir))], layers=[1], span="intervention", pooling="last",
                    model="ridge", alpha=1.0, batch_size=3),
        ProbeConfig(train_data=[str(records_of(run_dir))], layers=[1], span="intervention", pooling="last",
                    states="persona", batch_size=3),
    ):
        records, excluded = training_rows(probe_cfg, items)
        assert excluded == len(items) and not {r.id for r in records} & {it.id for it in items}
        probe = fit(persona, probe_cfg, records, excluded)
        results = run_probe(persona, probe, items)
        assert [r.parsed_flag for r in results] == ["FAIL" if r.score >= 0.5 else "PASS" for r in results]
        rows = [(it.messages, it.response, it.intervention) for it in items]
        kept = []
        hook = persona.model.get_base_model().register_forward_hook(
            lambda _m, _a, out: kept.append(([h is not None for h in out.hidden_states], out.logits.shape[1])))
        try:
            x = features(persona, rows, probe_cfg)
        finally:
            hook.remove()
        n = persona.model.get_base_model().config.num_hidden_layers + 1  # hidden states: the embeddings, then each block
        wanted = {hidden_index(layer) % n for layer in probe_cfg.layers}
        assert kept and all(held == [i in wanted for i in range(n)] and width == 1 for held, width in kept)
        np.testing.assert_allclose(x, all_states_features(persona, rows, probe_cfg), atol=1e-5)
        assert x.shape == (len(items), 64 * len(probe_cfg.layers))
        np.testing.assert_allclose([r.score for r in results], probe.scores(x))
        one_by_one = features(persona, rows, probe_cfg.model_copy(update={"batch_size": 1}))
        np.testing.assert_allclose(x, one_by_one, atol=1e-4)  # left padding does not change a row's features
        shared = persona.prefill_batch([Conversation(messages=m, response=r) for m, r, _ in rows],
                                       hidden=[hidden_index(layer) for layer in probe_cfg.layers])
        calls = []
        hook = persona.model.get_base_model().register_forward_pre_hook(lambda *_: calls.append(1))
        try:
            np.testing.assert_allclose(features(persona, rows, probe_cfg, prefills=shared), x, atol=1e-4)
        finally:
            hook.remove()
        # the conversation span is read from the shared prefill; the intervention is not in it, and the persona's
        # states are not (the prefill ran with the adapter off): their own forward
        from_prefill = probe_cfg.span == "conversation" and probe_cfg.states == "base"
        assert len(calls) == (0 if from_prefill else -(-len(rows) // probe_cfg.batch_size))
        if probe_cfg.states == "persona":  # the same tokens with the adapter off give other states
            import torch

            from splitpersona.eval.probe import _tokens

            ids, (_, e) = _tokens(persona, *rows[0], probe_cfg)
            with torch.no_grad(), persona.adapter_mode("off"):
                off = persona.model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
            assert np.abs(x[0] - off[hidden_index(1)][0, e - 1].numpy()).max() > 1e-3
    # On the toy records the response alone tells PASS from FAIL: the logistic probe separates them.
    probe_cfg = ProbeConfig(train_data=[str(records_of(run_dir))], layers=[0, 1])
    probe = fit(persona, probe_cfg, *training_rows(probe_cfg, items))
    results = run_probe(persona, probe, items)
    assert all(r.correct for r in results), [(r.id, r.score) for r in results]
    assert {it.expected for it in items} == {"PASS", "FAIL"} and any(it.response == BIASED for it in items)
    with pytest.raises(ValueError, match="out of range"):
        features(persona, [(items[0].messages, items[0].response, None)], ProbeConfig(train_data=["x"], layers=[2]))


def test_unmasked_run_rereads_for_the_persona_and_reuses_for_the_controls(tmp_path_factory, tiny_base_dir, tmp_path):
    run = trained_run(tmp_path_factory, tiny_base_dir, lora_mask=False)
    cfg = eval_config(run, tmp_path / "u.jsonl", "arms=[persona,no_adapter]", "conditions=[as_is]",
                      "jailbreak.where=[]", "max_new_tokens=4", "control_instruction=null")
    res = load_results(run_eval(cfg))
    assert res.metadata.lora_mask is False
    persona = Persona.load(run, max_new_tokens=4)
    for r in res.records:
        it = next(i for i in load_sets(cfg, None).items if i.id == r.id)
        adapter = "on" if r.arm == "persona" else "lora_off"
        assert r.generated == persona.review(it.messages, it.response, it.intervention, adapter=adapter).text


def test_text_classifier_reads_only_what_an_outsider_sees(run_dir):
    cfg = eval_config(run_dir, Path("unused.jsonl"), "arms=[external]", "external.kind=text_classifier",
                      f"external.train_data=[{records_of(run_dir)}]")
    items = [it for it in load_sets(cfg, None).items if it.condition == "as_is"]
    clf = TextClassifier(cfg.external, items)
    assert clf.describe()["excluded_overlapping_eval"] == len(items)  # the eval items are never fitted on
    results = clf.results(items)
    # On the toy records the response alone tells PASS from FAIL, so an output-only reader separates them.
    assert all(r.correct and r.arm == "external" for r in results), [(r.id, r.score) for r in results]
    # It sees the task and the response, not the system prompt: swapping the prompt changes no score.
    swapped = [replace(it, system=SYSTEM_B if it.system == SYSTEM_A else SYSTEM_A) for it in items]
    assert [r.score for r in clf.results(swapped)] == [r.score for r in results]
    with pytest.raises(ValueError, match="text_classifier"):
        eval_config(run_dir, Path("unused.jsonl"), "arms=[external]", "external.kind=text_classifier")
