"""The persona on a real llama-server equals the persona in process (served_fixtures has the setup).

Masked: llama-server applies an aLoRA from the token *before* its invocation sequence (it keeps the
cache and computes without the adapter only up to invocation start - 1), one token earlier than
peft, which the persona was trained with. `served_gate` finds which gate the built server applies by
comparing one score with the in-process persona under both; every masked comparison then runs
against that gate, and `test_llama_server_gate_is_the_documented_one` fails the day it changes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from served_fixtures import Server, conversations, gate_shift, llama3_base, served_run

from splitpersona.conversation import Conversation
from splitpersona.persona import Persona
from splitpersona.serving import RetryPolicy, ServerClient, ServerError

NEW = 10


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return llama3_base(tmp_path_factory.mktemp("llama3_base"))


def _export(tmp_path_factory, base, masked: bool):
    from splitpersona.llamacpp import export

    root = tmp_path_factory.mktemp("masked" if masked else "unmasked")
    run = served_run(root, base, masked=masked)
    return run, export(run, root / "export"), root / "export"


@pytest.fixture(scope="module")
def masked_export(tmp_path_factory, base):
    return _export(tmp_path_factory, base, True)


@pytest.fixture(scope="module")
def masked(masked_export):
    run, manifest, out = masked_export
    server = Server(out)  # serve.sh's own slot count: one, for a masked export
    yield run, manifest, server
    server.stop()


@pytest.fixture(scope="module")
def unmasked(tmp_path_factory, base):
    run, manifest, out = _export(tmp_path_factory, base, False)
    server = Server(out)
    yield run, manifest, server
    server.stop()


@pytest.fixture(scope="module")
def served_gate(masked):
    """0 if the server switches the aLoRA on at the split token (as trained), 1 if one token earlier."""
    run, _, server = masked
    local = Persona.load(run, max_new_tokens=NEW)
    remote = Persona.connect(server.url, run, max_new_tokens=NEW)
    conv = conversations(1)[0]
    served = remote.review(conv.messages, conv.response, conv.intervention).fail_probability
    found = []
    for shift in (0, 1):
        with gate_shift(shift):
            p = local.review(conv.messages, conv.response, conv.intervention).fail_probability
        if abs(p - served) < 1e-3:
            found.append(shift)
    assert len(found) == 1, f"served P(FAIL) {served} matches the in-process persona under gate shifts {found}"
    return found[0]


@pytest.mark.slow
def test_export_keeps_the_gate_and_moves_the_trained_row_into_the_base(masked, unmasked):
    _, m, _ = masked
    _, u, _ = unmasked
    assert m["alora_invocation_tokens"] == [m["split_id"]] == [128002] and m["trained_token_rows"] == [128002]
    assert u["alora_invocation_tokens"] is None and u["trained_token_rows"] == [] and u["vocab_rows"] == 128256


@pytest.mark.slow
def test_main_model_answers_equal_in_process(masked):
    run, _, server = masked
    local = Persona.load(run, max_new_tokens=NEW)
    remote = Persona.connect(server.url, run, max_new_tokens=NEW)
    for conv in conversations():
        a, b = local.answer(conv.messages), remote.answer(conv.messages)
        assert b.ids == a.ids and b.text == a.text


@pytest.mark.slow
def test_masked_reviews_equal_in_process_under_the_served_gate(masked, served_gate):
    run, _, server = masked
    local = Persona.load(run, max_new_tokens=NEW)
    remote = Persona.connect(server.url, run, max_new_tokens=NEW)
    convs = conversations()
    served = remote.review_batch(convs)
    with gate_shift(served_gate):
        ours = local.review_batch(convs)
    for s, o in zip(served, ours):
        assert (s.text, s.flag) == (o.text, o.flag)
        assert abs(s.fail_probability - o.fail_probability) < 1e-3


@pytest.mark.slow
def test_concurrent_masked_reviews_on_several_slots_equal_one_at_a_time(masked_export, served_gate):
    """llama-server mixes up aLoRA requests that interleave across slots; the client sends whole reviews alone."""
    run, _, out = masked_export
    server = Server(out, parallel=3)
    try:
        remote = Persona.connect(server.url, run, max_new_tokens=NEW, concurrency=8)
        convs = conversations() * 2
        served = remote.review_batch(convs)
    finally:
        server.stop()
    local = Persona.load(run, max_new_tokens=NEW)
    with gate_shift(served_gate):
        ours = local.review_batch(convs)
    assert [(s.text, round(s.fail_probability, 3)) for s in served] == [(o.text, round(o.fail_probability, 3)) for o in ours]


@pytest.mark.slow
def test_masked_review_reads_the_main_models_cache(masked, served_gate):
    """After the server's own answer only the persona part is computed; the conversation comes from the cache."""
    run, _, server = masked
    local = Persona.load(run, max_new_tokens=NEW)
    remote = Persona.connect(server.url, run, max_new_tokens=NEW, concurrency=1)
    for conv in conversations(3):
        answer = remote.answer(conv.messages)
        review = remote.review(conv.messages, answer, conv.intervention)
        sample = remote.prompt(conv.messages, answer.text, conv.intervention, seen=answer.ids)
        split = sample.input_ids.index(remote.info.tokens.split_id)
        assert review.cached_tokens == split - served_gate, (review.cached_tokens, split, len(answer.ids))
        assert review.evaluated_tokens == len(sample) - review.cached_tokens
        ours_answer = local.answer(conv.messages)
        assert ours_answer.ids == answer.ids
        with gate_shift(served_gate):  # computed afresh: an in-process cache would hold the shifted token adapter-off
            (ours,) = local.review_batch([Conversation(messages=conv.messages, response=answer.text,
                                                       intervention=conv.intervention)], seen=[answer.ids])
        assert review.text == ours.text and abs(review.fail_probability - ours.fail_probability) < 1e-3


@pytest.mark.slow
def test_llama_server_gate_is_the_documented_one(served_gate):
    """docs/serving.md says this build turns the adapter on one token before the split token; this fails when it changes."""
    assert served_gate == 1


@pytest.mark.slow
def test_unmasked_reviews_equal_in_process_and_leave_the_main_model_as_it_was(unmasked):
    run, _, server = unmasked
    local = Persona.load(run, max_new_tokens=NEW)
    remote = Persona.connect(server.url, run, max_new_tokens=NEW)
    convs = conversations()
    before = [remote.answer(c.messages).ids for c in convs]
    served, ours = remote.review_batch(convs), local.review_batch(convs)
    for s, o in zip(served, ours):
        assert (s.text, s.flag) == (o.text, o.flag)
        assert abs(s.fail_probability - o.fail_probability) < 1e-3
        assert s.cached_tokens == 0  # an ordinary LoRA is loaded: no request may reuse a cache
    assert [remote.answer(c.messages).ids for c in convs] == before == [local.answer(c.messages).ids for c in convs]


def test_a_server_that_is_down_is_one_line_naming_its_url():
    from served_fixtures import free_port

    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ServerError, match=rf"{url}/props: connection .*gave up after 2 attempts"):
        ServerClient(url, retry=RetryPolicy(max_attempts=2, backoff_base_s=0.01))


def test_refusals_that_need_no_server(tiny_base_dir, tmp_path_factory):
    """An export never writes over a directory, and a persona on a server that is down is one line naming
    its URL (the fast loop's check of export and connect; the tests above serve real exports)."""
    from persona_fixtures import trained_run
    from served_fixtures import free_port

    from splitpersona.io import DataError
    from splitpersona.llamacpp import export

    run = trained_run(tmp_path_factory, tiny_base_dir)
    taken = tmp_path_factory.mktemp("export")
    with pytest.raises(DataError, match=f"{taken}: already exists"):
        export(run, taken)
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ServerError, match=rf"{url}/props: connection .*gave up after 4 attempts"):
        Persona.connect(url, run)


@pytest.mark.slow
def test_refusals_before_any_review(masked, unmasked, tiny_base_dir, tmp_path_factory):
    from persona_fixtures import trained_run

    masked_run, _, masked_server = masked
    unmasked_run, _, unmasked_server = unmasked
    with pytest.raises(ServerError, match="only llama-server applies"):
        Persona.connect(masked_server.url, masked_run, api="openai")
    with pytest.raises(ServerError, match=r"needs an activated LoRA invoked by \[128002\]"):
        Persona.connect(unmasked_server.url, masked_run)
    with pytest.raises(ServerError, match="needs an ordinary LoRA"):
        Persona.connect(masked_server.url, unmasked_run)
    other = trained_run(tmp_path_factory, tiny_base_dir)  # another tokenizer (a 480-token toy vocabulary)
    with pytest.raises(ServerError, match="another tokenizer"):
        Persona.connect(masked_server.url, other)


@pytest.mark.slow
def test_spt_review_on_a_server_reports_the_cache_counts(masked, tmp_path):
    run, _, server = masked
    conv = conversations(1)[0]
    path = tmp_path / "c.json"
    path.write_text(conv.model_dump_json())
    cmd = [sys.executable, "-m", "splitpersona.app.cli", "review", "--run", str(run), "--server", server.url,
           "--conversation", str(path), "--json", "--max-new-tokens", str(NEW)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    row = json.loads(out.stdout.splitlines()[-1])
    assert row["prompt_tokens"] == row["cached_tokens"] + row["evaluated_tokens"] and row["fail_probability"] is not None
    down = subprocess.run([*cmd[:7], "http://127.0.0.1:9", *cmd[8:]], capture_output=True, text=True, timeout=300)
    assert down.returncode == 1 and "http://127.0.0.1:9" in down.stderr and len(down.stderr.strip().splitlines()) == 1


def _eval_rows(path) -> dict:
    rows = [json.loads(line) for line in path.read_text().splitlines()[1:]]
    return {(r["id"], r["condition"], r["arm"]): r for r in rows}


@pytest.mark.slow
def test_eval_on_the_server_equals_in_process_arm_by_arm(masked, served_gate, tmp_path):
    """`spt eval run` with engine: server: every generative arm and the base-model judge, as in process."""
    from splitpersona.config import load_config
    from splitpersona.eval.config import EvalConfig
    from splitpersona.eval.evaluate import run_eval

    run, _, server = masked
    arms = "[persona, no_adapter, follow_up, meaningless_token, control_token_adapter, external]"
    overrides = [f"run={run}", f"sets=[{{name: held_out, kind: records, path: {run.parent / 'records.jsonl'}}}]",
                 f"arms={arms}", "conditions=[as_is]", "jailbreak.where=[user]",
                 "external.kind=base_model", f"max_new_tokens={NEW}", "progress=false"]
    config = Path(__file__).resolve().parents[1] / "configs/eval/tiny_cpu.yaml"
    # no shared prefill here: its cache holds the token before the split token computed without the adapter
    ours = load_config(EvalConfig, config, [*overrides, f"output={tmp_path / 'local.jsonl'}", "reuse_cache=false"])
    with gate_shift(served_gate):
        local = _eval_rows(run_eval(ours))
    theirs = load_config(EvalConfig, config, [*overrides, f"output={tmp_path / 'served.jsonl'}", "engine=server",
                                               f"server={{url: '{server.url}'}}"])
    served = _eval_rows(run_eval(theirs))
    assert served.keys() == local.keys() and len({k[2] for k in served}) == 6
    for key, row in served.items():
        assert (row["parsed_flag"], row["generated"]) == (local[key]["parsed_flag"], local[key]["generated"]), key
        assert abs(row["score"] - local[key]["score"]) < 1e-3, key


@pytest.mark.slow
def test_stage2_on_a_server_equals_transformers_and_repeats_its_samples(unmasked, base):
    """Greedy answers as the transformers responder's; sampled ones the same on a rerun (a seed per request).

    On the unmasked export: its base has no trained row, and stage-2 prompts are the chat template's text,
    in which a planted "<|reserved_special_token_0|>" is the reserved id itself."""
    from splitpersona.data_gen.config import Stage2Config
    from splitpersona.data_gen.stage2 import ServerResponder, TransformersResponder

    chats = [[m.model_dump() for m in c.messages] for c in conversations(4)]
    seeds = [11, 12, 13, 14]
    greedy = Stage2Config(engine="server", model=str(base), base_url=unmasked[2].url, temperature=0, max_new_tokens=NEW)
    served = dict(ServerResponder(greedy, str(base)).generate(chats, seeds))
    local = dict(TransformersResponder(greedy.model_copy(update={"engine": "transformers"}), str(base)).generate(chats, seeds))
    assert [served[i].text for i in range(4)] == [local[i].text for i in range(4)]
    assert all(served[i].finish_reason == local[i].finish_reason for i in range(4))
    sampled = greedy.model_copy(update={"temperature": 1.0})
    first, again = (dict(ServerResponder(sampled, str(base)).generate(chats, seeds)) for _ in range(2))
    assert [first[i].text for i in range(4)] == [again[i].text for i in range(4)]
    other = dict(ServerResponder(sampled, str(base)).generate(chats, [s + 100 for s in seeds]))
    assert [first[i].text for i in range(4)] != [other[i].text for i in range(4)]


@pytest.mark.slow
def test_stage2_server_killed_mid_run_then_restarted_completes_every_answer_once(unmasked, base, tmp_path, monkeypatch):
    """Answers stored as they complete; the rerun asks only for what is missing, on a new server."""
    import threading
    import time

    from data_gen_fixtures import SECRET, SMOKE, batches, fast_overrides
    from fake_anthropic import FakeAnthropic

    from splitpersona.config import load_config
    from splitpersona.data_gen.config import GenerateConfig
    from splitpersona.data_gen.pipeline import generate
    from splitpersona.io import iter_jsonl

    run, _, _ = unmasked
    out, store = tmp_path / "run", tmp_path / "run" / "store" / "stage2.jsonl"
    server = Server(run.parent / "export")

    def kill_after_two() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (store.exists() and store.read_bytes().count(b"\n") >= 2):
            time.sleep(0.01)
        server.stop()

    def settings(url: str) -> GenerateConfig:
        return load_config(GenerateConfig, SMOKE, fast_overrides(out, **{
            "stage2.engine": "server", "stage2.model": str(base), "stage2.base_url": url, "stage2.concurrency": 1,
            "stage2.max_new_tokens": 48, "stage2.max_attempts": 2, "stage2.backoff_base_s": 0.01}))

    with FakeAnthropic() as fake:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.base_url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
        killer = threading.Thread(target=kill_after_two)
        killer.start()
        first = generate(settings(server.url), ["stage1", "stage2"])
        killer.join()
        assert first["stages"]["stage2"]["last_command"]["not_done"] > 0, "the server was not killed mid-run"
        again = Server(run.parent / "export")
        try:
            generate(settings(again.url), ["stage1", "stage2"])
        finally:
            again.stop()
    ok = [row["key"] for _, row in iter_jsonl(store) if row["status"] == "ok"]
    assert len(ok) == len(set(ok)), "an answer was stored twice"
    answers = [inf for _, b in batches(out / "stage_2") for it in b.data for inf in it.inferences.get(str(base), {}).values()]
    variants = sum(1 + (it.B is not None) for _, b in batches(out / "stage_1") for it in b.data)
    assert (len(answers), len(set(ok))) == (variants, variants)


@pytest.mark.slow
def test_what_the_served_base_cannot_give_is_refused_by_name(masked):
    """The export's base holds the trained split-token row, so the base without it ("off" on the split token) is refused."""
    run, _, server = masked
    remote = Persona.connect(server.url, run, max_new_tokens=NEW)
    why = remote.refuses("split", "off")
    assert why and "trained split-token row" in why
    assert remote.refuses("split", "lora_off") is None and remote.refuses("control", "off") is None
    conv = conversations(1)[0]
    with pytest.raises(ServerError, match="cannot serve marker 'split' with adapter 'off'"):
        remote.review(conv.messages, conv.response, adapter="off")
