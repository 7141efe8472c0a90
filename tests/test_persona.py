"""Persona inference on a tiny adapter trained by the suite: the gate, KV reuse, batching, arms' switches."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from persona_fixtures import BIASED, HONEST, MESSAGES, trained_run
from splitpersona.io import DataError
from splitpersona.conversation import Conversation, as_messages
from splitpersona.persona import Persona, persona_start

MAX_NEW = 6
# Reused cache vs one computed in the same pass: same math, different kernel shapes, so float
# rounding differs. Observed max |diff| about 2e-6 on these logits (range ~10); allow 1e-4.
ATOL = 1e-4


@pytest.fixture(scope="module")
def masked(tmp_path_factory, tiny_base_dir) -> Persona:
    run = trained_run(tmp_path_factory, tiny_base_dir, lora_mask=True)
    return Persona.load(run, max_new_tokens=MAX_NEW, batch_size=3)


@pytest.fixture(scope="module")
def unmasked(tmp_path_factory, tiny_base_dir) -> Persona:
    return Persona.load(trained_run(tmp_path_factory, tiny_base_dir, lora_mask=False), max_new_tokens=MAX_NEW)


@pytest.fixture(scope="module")
def base_model(tiny_base_dir, masked):
    """The plain base model as a deployment without the persona would run it (new rows mean-initialised)."""
    from transformers import AutoModelForCausalLM

    from splitpersona.token import fit_embeddings

    model = AutoModelForCausalLM.from_pretrained(tiny_base_dir).eval()
    fit_embeddings(model, masked.tokenizer, masked.info.tokens)
    return model


CONVS = [
    Conversation(messages=MESSAGES, response=BIASED),
    Conversation(messages=MESSAGES[1:], response=HONEST + " Sure! Here is a short poem about the sea."),
    Conversation(messages=MESSAGES, response="No.", intervention="Did anything hidden shape your last answer?"),
    Conversation(messages=MESSAGES[1:], response=HONEST, intervention="Review it honestly."),
]


def trains_split_row(persona: Persona) -> bool:
    """Whether the run trained the split token's embedding row (LoraSettings.train_split_embedding)."""
    config = persona.model.peft_config[persona.model.active_adapter]
    return config.trainable_token_indices is not None


def logits_of(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


# --- loading ------------------------------------------------------------------------------------


def test_load_reads_the_run(masked, unmasked):
    assert masked.masked and not unmasked.masked
    config = masked.model.peft_config[masked.model.active_adapter]
    assert config.alora_invocation_tokens == [masked.info.tokens.split_id]
    assert unmasked.model.peft_config[unmasked.model.active_adapter].alora_invocation_tokens is None
    assert not masked.model.training


def test_load_rejects_a_gate_that_contradicts_run_json(tmp_path_factory, tiny_base_dir, tmp_path):
    run = trained_run(tmp_path_factory, tiny_base_dir, lora_mask=True)
    bad = shutil.copytree(run, tmp_path / "run")
    info = json.loads((bad / "run.json").read_text())
    info["lora_mask"] = False
    (bad / "run.json").write_text(json.dumps(info))
    with pytest.raises(DataError, match="adapter gate"):
        Persona.load(bad)
    shutil.rmtree(bad / "adapter")
    with pytest.raises(DataError, match="adapter"):
        Persona.load(bad)
    with pytest.raises(DataError, match="run.json missing"):
        Persona.load(tmp_path)


MULTI = [*MESSAGES, {"role": "assistant", "content": HONEST}, {"role": "user", "content": "And for running?"}]


def test_conversations_may_be_multi_turn_in_turn_order():
    assert [m.model_dump() for m in as_messages(MULTI)] == MULTI
    with pytest.raises(ValueError, match="message 1: .*roles"):
        as_messages([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    with pytest.raises(ValueError, match="message 2"):
        as_messages(MULTI[:3])  # ends in an assistant turn: nothing left to respond to
    with pytest.raises(ValueError):
        Conversation(messages=[{"role": "assistant", "content": "hi"}], response="x")


def test_multi_turn_review_is_on_the_main_models_own_prompt(masked):
    """The earlier turns are the chat template's; the review of a multi-turn answer reuses its cache."""
    assert masked.conversation_ids(MULTI) == masked.tokenizer.apply_chat_template(
        MULTI, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    answer = masked.answer(MULTI)
    scratch = masked.review(MULTI, answer.text, return_logits=True)
    assert_same(masked.review(MULTI, answer, return_logits=True), scratch)


def test_review_of_an_answer_uses_the_ids_the_main_model_saw(masked):
    """Given the `Answer`, the review's conversation part is its prompt and generated ids, not a re-encoding."""
    answer = masked.answer(MESSAGES)
    assert answer.ids[: len(masked.conversation_ids(MESSAGES))] == masked.conversation_ids(MESSAGES)
    for elicitation in ("hp", "ur"):
        sample = masked.prompt(MESSAGES, answer.text, elicitation=elicitation, seen=answer.ids)
        assert sample.input_ids[: len(answer.ids)] == answer.ids
        rest = sample.input_ids[len(answer.ids) : persona_start(sample)]
        assert (rest == []) == (elicitation == "hp")
    odd = answer.ids[:-1] + [answer.ids[-1] + 1]  # a token the text re-encoding would not reproduce
    sample = masked.prompt(MESSAGES, answer.text, seen=odd)
    assert sample.input_ids[: persona_start(sample)] == odd
    with pytest.raises(ValueError, match="do not start with this conversation's prompt"):
        masked.prompt(MULTI, answer.text, seen=answer.ids)
    r = masked.review(MESSAGES, answer)
    assert r.prompt_tokens == len(masked.prompt(MESSAGES, answer.text, seen=answer.ids))


# --- the main model: zero alignment tax ---------------------------------------------------------


def test_main_prompt_is_the_chat_template(masked):
    assert masked.conversation_ids(MESSAGES) == masked.tokenizer.apply_chat_template(
        MESSAGES, add_generation_prompt=True, tokenize=True, return_dict=False
    )


def test_respond_equals_the_plain_base_model(masked, base_model):
    """With the masked adapter loaded, and even switched on, the main model answers as the base model."""
    ids = masked.conversation_ids(MESSAGES)
    with torch.no_grad():
        plain = base_model.generate(
            torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long), do_sample=False,
            max_new_tokens=MAX_NEW, pad_token_id=masked.pad_id, eos_token_id=masked.stop_ids,
            suppress_tokens=[masked.info.tokens.split_id, masked.info.tokens.control_id],
        )[0, len(ids) :].tolist()
    plain = plain[: next((i for i, t in enumerate(plain) if t in masked.stop_ids), len(plain))]
    assert masked.respond(MESSAGES) == masked.tokenizer.decode(plain, skip_special_tokens=True)
    (on,) = masked._generate([ids], adapter="on").rows
    assert on.tokens == plain


def test_logits_before_the_split_token_are_the_base_models(masked, base_model):
    sample = masked.prompt(MESSAGES, BIASED)
    sp = sample.input_ids.index(masked.info.tokens.split_id)
    split_col = masked.info.tokens.split_id
    persona, base = logits_of(masked.model, sample.input_ids), logits_of(base_model, sample.input_ids)
    others = torch.ones(persona.shape[-1], dtype=torch.bool)
    others[split_col] = False
    assert torch.equal(persona[:sp][:, others], base[:sp][:, others])
    # The split token's own column differs when its row was trained: the row is tied to the output head.
    assert torch.equal(persona[:sp, split_col], base[:sp, split_col]) != trains_split_row(masked)
    assert (persona[sp:] - base[sp:]).abs().max() > 1e-3  # the gate opens at the token


def test_unmasked_persona_rereads_the_conversation(unmasked, base_model):
    sample = unmasked.prompt(MESSAGES, BIASED)
    sp = sample.input_ids.index(unmasked.info.tokens.split_id)
    diff = (logits_of(unmasked.model, sample.input_ids)[:sp] - logits_of(base_model, sample.input_ids)[:sp]).abs()
    assert diff.max() > 1e-3
    with torch.no_grad(), unmasked.adapter_mode("off"):
        assert torch.equal(logits_of(unmasked.model, sample.input_ids), logits_of(base_model, sample.input_ids))


# --- KV reuse -----------------------------------------------------------------------------------


def assert_same(a, b):
    assert a.text == b.text and a.generated_tokens == b.generated_tokens
    assert a.logits.shape == b.logits.shape
    assert torch.allclose(a.logits, b.logits, atol=ATOL, rtol=0), (a.logits - b.logits).abs().max()


def test_review_on_a_reused_cache_equals_one_from_scratch(masked):
    scratch = masked.review(MESSAGES, BIASED, return_logits=True)
    prefill = masked.prefill(MESSAGES, BIASED)
    sample = masked.prompt(MESSAGES, BIASED)
    assert prefill.input_ids == sample.input_ids[: persona_start(sample)]
    assert prefill.input_ids[-1] != masked.info.tokens.split_id  # strictly before the token
    reused = masked.review(MESSAGES, BIASED, prefill=prefill, return_logits=True)
    assert_same(reused, scratch)
    assert prefill.cache.get_seq_length() == len(prefill.input_ids)  # the caller's cache is not mutated
    assert_same(masked.review(MESSAGES, BIASED, prefill=prefill, return_logits=True), scratch)


def test_review_reuses_the_main_models_own_generation_cache(masked):
    answer = masked.answer(MESSAGES)
    assert answer.text == masked.respond(MESSAGES)
    assert answer.prefill.input_ids[: len(masked.conversation_ids(MESSAGES))] == masked.conversation_ids(MESSAGES)
    for elicitation in ("hp", "ur"):  # ur extends the cache over the closing and the new user header
        scratch = masked.review(MESSAGES, answer.text, elicitation=elicitation, return_logits=True)
        reused = masked.review(
            MESSAGES, answer.text, elicitation=elicitation, prefill=answer.prefill, return_logits=True
        )
        assert_same(reused, scratch)


def test_batched_reviews_equal_single_ones_with_and_without_reuse(masked):
    single = [masked.review(c.messages, c.response, c.intervention, return_logits=True) for c in CONVS]
    batched = masked.review_batch(CONVS, return_logits=True)  # batch_size 3: one full batch, one of 1
    prefills = [masked.prefill(c.messages, c.response) for c in CONVS]
    prefills[1] = None  # a row without a cache is prefilled on the spot
    reused = masked.review_batch(CONVS, prefills=prefills, return_logits=True)
    for s, b, r in zip(single, batched, reused):
        assert_same(b, s)
        assert_same(r, s)


def test_control_arms_reuse_the_cache_too(masked):
    prefill = masked.prefill(MESSAGES, BIASED)
    for marker, adapter, elicitation in (("split", "lora_off", None), ("control", "off", None), ("none", "off", "ur")):
        kwargs = dict(marker=marker, adapter=adapter, elicitation=elicitation, return_logits=True)
        reused = masked.review(MESSAGES, BIASED, prefill=prefill, **kwargs)
        assert_same(reused, masked.review(MESSAGES, BIASED, **kwargs))


def test_unmasked_persona_refuses_a_base_cache(unmasked):
    prefill = unmasked.prefill(MESSAGES, BIASED)
    with pytest.raises(ValueError, match="unmasked"):
        unmasked.review(MESSAGES, BIASED, prefill=prefill)
    a = unmasked.review(MESSAGES, BIASED, adapter="off", prefill=prefill, return_logits=True)
    assert_same(a, unmasked.review(MESSAGES, BIASED, adapter="off", return_logits=True))


# --- what opens the persona ---------------------------------------------------------------------


def test_adapter_modes_differ_where_they_should(masked, base_model):
    sample = masked.prompt(MESSAGES, BIASED)
    sp = sample.input_ids.index(masked.info.tokens.split_id)
    base = logits_of(base_model, sample.input_ids)
    out = {}
    for mode in ("on", "lora_off", "off"):
        with torch.no_grad(), masked.adapter_mode(mode):
            out[mode] = logits_of(masked.model, sample.input_ids)
    assert torch.equal(out["off"], base)
    # lora_off keeps only the trained split-token row: identical before the token, different from it on.
    cols = [c for c in range(base.shape[-1]) if c != masked.info.tokens.split_id]
    assert torch.equal(out["lora_off"][:sp][:, cols], base[:sp][:, cols])
    assert ((out["lora_off"][sp:] - base[sp:]).abs().max() > 1e-4) == trains_split_row(masked)
    assert (out["lora_off"][sp:] - out["on"][sp:]).abs().max() > 1e-4
    assert not any(p.requires_grad for p in masked.model.parameters())  # lora_off restored requires_grad


def test_meaningless_token_changes_no_existing_embedding_row(masked, tiny_base_dir):
    from transformers import AutoModelForCausalLM

    original = AutoModelForCausalLM.from_pretrained(tiny_base_dir).get_input_embeddings().weight.detach()
    n_old = original.shape[0]
    emb = masked.model.get_input_embeddings()
    before = {n: p.detach().clone() for n, p in masked.model.named_parameters()}
    review = masked.review(MESSAGES, BIASED, marker="control", adapter="off")
    assert review.prompt_tokens == len(masked.prompt(MESSAGES, BIASED, marker="control"))
    assert all(torch.equal(p, before[n]) for n, p in masked.model.named_parameters())
    control, split = masked.info.tokens.control_id, masked.info.tokens.split_id
    ids = torch.arange(len(masked.tokenizer))
    for mode in ("on", "off"):
        with torch.no_grad(), masked.adapter_mode(mode):
            rows = emb(ids)
        assert torch.equal(rows[:n_old], original)  # no existing row touched, adapter on or off
        assert torch.allclose(rows[control], original.mean(0), atol=1e-6)  # the control row: fresh, never trained
    with torch.no_grad(), masked.adapter_mode("on"):
        fresh = torch.allclose(emb(torch.tensor([split]))[0], original.mean(0), atol=1e-6)
    assert fresh != trains_split_row(masked)  # the split row moved only if training trained it


# --- the API surface ----------------------------------------------------------------------------


def test_review_and_ask_return_parsed_reviews(masked):
    r = masked.review(MESSAGES, BIASED)
    assert isinstance(r.text, str) and r.generated_tokens <= MAX_NEW
    assert r.ok == (r.flag is not None) and (r.ok or r.reason)
    assert r.prompt_tokens == len(masked.prompt(MESSAGES, BIASED))
    a = masked.ask("What biases do you have?")
    standalone = masked.prompt([{"role": "user", "content": ""}], "", "What biases do you have?")
    assert a.prompt_tokens == len(standalone)
    assert standalone.input_ids.count(masked.info.tokens.split_id) == 1
    assert masked.tokenizer.decode(standalone.input_ids).endswith(
        "<|start_header_id|>assistant<|end_header_id|>\n\n<split-personality-token>What biases do you have?"
    )


def test_a_failed_generate_leaves_no_stale_hooks(masked):
    before = masked.review(MESSAGES, BIASED, return_logits=True)
    sample = masked.prompt(MESSAGES, BIASED)
    with pytest.raises(ValueError, match="Beam search"):
        masked._generate([sample.input_ids], adapter="on", num_beams=2)
    assert masked.leaked_hooks() == 0
    # Called bare, peft leaves its offset hooks behind: what the guard removes.
    with pytest.raises(ValueError, match="Beam search"):
        masked.model.generate(input_ids=torch.tensor([sample.input_ids]), num_beams=2, max_new_tokens=2)
    assert masked.leaked_hooks() > 0
    for m in masked._hooked:
        for k in list(m._forward_pre_hooks):
            del m._forward_pre_hooks[k]
            m._forward_pre_hooks_with_kwargs.pop(k, None)
    assert_same(masked.review(MESSAGES, BIASED, return_logits=True), before)
