"""`spt ask` and `spt review` on a tiny trained run: same answers as the Python API, clear errors."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from persona_fixtures import BIASED, HONEST, MESSAGES, trained_run
from splitpersona.app.cli import app
from splitpersona.persona import Persona

MAX_NEW = "5"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_base_dir):
    return trained_run(tmp_path_factory, tiny_base_dir, lora_mask=True)


@pytest.fixture(scope="module")
def persona(run_dir):
    return Persona.load(run_dir, max_new_tokens=int(MAX_NEW))


def spt(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def test_ask_prints_the_personas_answer(run_dir, persona):
    res = spt("ask", "--run", str(run_dir), "--max-new-tokens", MAX_NEW, "--json", "What biases do you have?")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    expected = persona.ask("What biases do you have?")
    assert out["text"] == expected.text and out["flag"] == expected.flag and out["ok"] == expected.ok
    plain = spt("ask", "--run", str(run_dir), "--max-new-tokens", MAX_NEW, "What biases do you have?")
    assert plain.exit_code == 0 and expected.text in plain.stdout


def test_review_reads_one_conversation_or_a_list(run_dir, persona, tmp_path):
    one = {"messages": MESSAGES, "response": BIASED}
    two = {"messages": MESSAGES[1:], "response": HONEST, "intervention": "Did anything hidden shape that answer?"}
    (tmp_path / "one.json").write_text(json.dumps(one))
    (tmp_path / "two.json").write_text(json.dumps([one, two]))
    res = spt("review", "--run", str(run_dir), "--conversation", str(tmp_path / "one.json"),
              "--max-new-tokens", MAX_NEW)
    assert res.exit_code == 0, res.output
    expected = persona.review(MESSAGES, BIASED)
    assert expected.text in res.stdout
    assert (f"[flag: {expected.flag}]" if expected.ok else f"[flag not parsed: {expected.reason}]") in res.stdout
    res = spt("review", "--run", str(run_dir), "--conversation", str(tmp_path / "two.json"), "--max-new-tokens",
              MAX_NEW, "--json")
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.stdout.strip().splitlines()]
    assert len(rows) == 2
    assert rows[1]["text"] == persona.review(MESSAGES[1:], HONEST, two["intervention"]).text


def test_review_names_the_bad_file_and_record(run_dir, tmp_path):
    bad = tmp_path / "bad.json"
    second = {"messages": [{"role": "assistant", "content": "x"}], "response": "y"}
    bad.write_text(json.dumps([{"messages": MESSAGES, "response": "ok"}, second]))
    res = CliRunner().invoke(app, ["review", "--run", str(run_dir), "--conversation", str(bad)])
    assert res.exit_code == 1
    assert str(bad) in res.output and "1.messages.0.role" in res.output
    missing = CliRunner().invoke(app, ["ask", "--run", str(tmp_path), "hello"])
    assert missing.exit_code == 1 and "run.json missing" in missing.output


def test_review_reads_a_multi_turn_conversation(run_dir, persona, tmp_path):
    messages = [*MESSAGES, {"role": "assistant", "content": HONEST}, {"role": "user", "content": "And for running?"}]
    (tmp_path / "multi.json").write_text(json.dumps({"messages": messages, "response": BIASED}))
    res = spt("review", "--run", str(run_dir), "--conversation", str(tmp_path / "multi.json"),
              "--max-new-tokens", MAX_NEW, "--json")
    assert res.exit_code == 0, res.output
    expected = persona.review(messages, BIASED)
    assert json.loads(res.stdout.strip().splitlines()[-1])["text"] == expected.text
    assert expected.prompt_tokens > len(persona.prompt(MESSAGES, BIASED))


@pytest.mark.parametrize("command", ["ask", "review"])
@pytest.mark.parametrize("gpu", [False, True])
def test_device_and_dtype_default_to_the_gpu_in_bf16_where_there_is_one(command, gpu, monkeypatch):
    import torch
    from typer.main import get_command

    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: gpu)
    args = ["--run", "r", "--conversation", "c.json"] if command == "review" else ["--run", "r", "q?"]
    ctx = get_command(app).commands[command].make_context(command, list(args))  # click consumes the list it parses
    assert (ctx.params["device"], ctx.params["dtype"]) == (("auto", "bfloat16") if gpu else ("cpu", "float32"))
    ctx = get_command(app).commands[command].make_context(command, [*args, "--device", "cuda:1", "--dtype", "float16"])
    assert (ctx.params["device"], ctx.params["dtype"]) == ("cuda:1", "float16")
