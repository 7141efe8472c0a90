"""The one model-client layer (splitpersona.clients): the generator and the external judge retry by
the same policy, through the real `anthropic` SDK against tests/fake_anthropic.py."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from fake_anthropic import FakeAnthropic
from pydantic import BaseModel

from splitpersona.data_gen.backend import Block, Request
from splitpersona.data_gen.claude import ClaudeBackend
from splitpersona.data_gen.config import ClaudeConfig, Price
from splitpersona.data_gen.store import BudgetMeter, Ledger
from splitpersona.eval.config import ExternalConfig
from splitpersona.eval.external import ClaudeJudge

KEY = "sk-ant-test-clients"


class Answer(BaseModel):
    text: str


def generator_try(fake: FakeAnthropic, tmp_path, attempts: int, sleeps: list[float]):
    cfg = ClaudeConfig(base_url=fake.base_url, max_attempts=attempts, backoff_base_s=0.01, backoff_max_s=1.0)
    backend = ClaudeBackend(cfg, "claude-test", tmp_path, sleep=sleeps.append)
    prices = {"claude-test": Price(input=1, output=1, cache_write=1, cache_read=1)}
    meter = BudgetMeter(Ledger(tmp_path / "ledger.jsonl", prices, 0.5), None)
    request = Request(stage="t", system=(Block("You answer."),), user=(Block("Say something."),), schema=Answer,
                      tool_name="answer", tool_description="Answer.", max_tokens=200)
    [outcome] = list(backend.run([request], meter))
    return outcome, [row["outcome"] for row in meter.ledger.rows()]


def judge_try(fake: FakeAnthropic, attempts: int, sleeps: list[float]):
    cfg = ExternalConfig(kind="claude", base_url=fake.base_url, max_retries=attempts - 1, backoff_base_s=0.01,
                         backoff_max_s=1.0)
    judge = ClaudeJudge(cfg, "REVIEW:", "\nFLAG: ")
    judge.retry.sleep = sleeps.append
    [verdict] = judge.verdicts([SimpleNamespace(system=None, user="Is this right?", response="Yes.")])
    return verdict


@pytest.mark.parametrize("who", ["generator", "judge"])
def test_the_fake_fails_n_times_then_answers_and_both_clients_retry_alike(who, tmp_path, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    faults = ["rate_limit", "overloaded", "server_error", "malformed"]
    sleeps: list[float] = []
    with FakeAnthropic(fault_sequence=faults, retry_after_s=0.0) as fake:
        if who == "generator":
            outcome, ledger = generator_try(fake, tmp_path, 6, sleeps)
            assert outcome.status == "ok" and outcome.attempts == 5
            assert ledger == [*faults, "ok"]
        else:
            verdict = judge_try(fake, 6, sleeps)
            assert verdict.error is None and verdict.text.startswith("REVIEW:")
        assert len(fake.message_calls()) == len(faults) + 1
    assert len(sleeps) == len(faults)
    assert all(0.005 * 2**i <= s <= 0.01 * 2**i for i, s in enumerate(sleeps))  # doubling, jittered


@pytest.mark.parametrize("who", ["generator", "judge"])
def test_both_clients_give_up_after_max_attempts(who, tmp_path, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    sleeps: list[float] = []
    with FakeAnthropic(fault_sequence=["overloaded"] * 4) as fake:
        if who == "generator":
            outcome, ledger = generator_try(fake, tmp_path, 3, sleeps)
            assert outcome.status == "failed" and outcome.failure == "overloaded (HTTP 529); gave up after 3 attempts"
            assert ledger == ["overloaded"] * 3
        else:
            assert judge_try(fake, 3, sleeps).error == "HTTP 529"
        assert len(fake.message_calls()) == 3
    assert len(sleeps) == 2
    assert fake.auth_keys == {KEY}
