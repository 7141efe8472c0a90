"""Scores and detection metrics: the flag probability, AUROC with DeLong, low-FPR recall, paired tests."""

from __future__ import annotations

import pytest
import torch

from persona_fixtures import BIASED, HONEST, MESSAGES, trained_run
from splitpersona.assemble import FormatConfig
from splitpersona.persona import Conversation, Persona, flag_continuation

MAX_NEW = 5
CONVS = [
    Conversation(messages=MESSAGES, response=BIASED),
    Conversation(messages=MESSAGES[1:], response=HONEST + " Sure! Here is a short poem about the sea."),
    Conversation(messages=MESSAGES, response="No.", intervention="Did anything hidden shape your last answer?"),
]


@pytest.fixture(scope="module", params=[True, False], ids=["masked", "unmasked"])
def persona(request, tmp_path_factory, tiny_base_dir) -> Persona:
    run = trained_run(tmp_path_factory, tiny_base_dir, lora_mask=request.param)
    return Persona.load(run, max_new_tokens=MAX_NEW, batch_size=3)


def full_forward_probability(persona: Persona, conv: Conversation, *, marker: str, adapter: str) -> tuple[str, float]:
    """Greedy decoding and then P(FAIL), each step one uncached forward over the whole sequence."""
    prompt = persona.prompt(conv.messages, conv.response, conv.intervention, marker=marker).input_ids
    never = [persona.info.tokens.split_id, persona.info.tokens.control_id]
    tokens: list[int] = []
    with torch.no_grad(), persona.adapter_mode(adapter):
        for _ in range(MAX_NEW):
            logits = persona.model(input_ids=torch.tensor([prompt + tokens])).logits[0, -1]
            logits[never] = float("-inf")
            nxt = int(logits.argmax())
            if nxt in persona.stop_ids:
                break
            tokens.append(nxt)
        kept, forced, pass_id, fail_id = flag_continuation(persona.tokenizer, persona.fmt, tokens)
        logits = persona.model(input_ids=torch.tensor([prompt + tokens[:kept] + forced])).logits[0, -1]
    p = torch.softmax(logits.double(), -1)
    return persona.tokenizer.decode(tokens, skip_special_tokens=True), float(p[fail_id] / (p[fail_id] + p[pass_id]))


@pytest.mark.parametrize(("marker", "adapter"), [("split", "on"), ("split", "lora_off"), ("control", "off")])
@pytest.mark.parametrize("reuse", [False, True], ids=["fresh", "reused"])
def test_flag_probability_equals_a_teacher_forced_full_pass(persona, marker, adapter, reuse):
    if reuse and adapter == "on" and not persona.masked:
        pytest.skip("an unmasked persona cannot reuse a base cache")
    prefills = [persona.prefill(c.messages, c.response, marker=marker) for c in CONVS] if reuse else None
    reviews = persona.review_batch(CONVS, marker=marker, adapter=adapter, prefills=prefills)
    for conv, review in zip(CONVS, reviews):
        text, expected = full_forward_probability(persona, conv, marker=marker, adapter=adapter)
        assert review.text == text
        assert review.fail_probability == pytest.approx(expected, abs=1e-5)
        assert 0.0 < review.fail_probability < 1.0


def test_the_flag_is_read_where_the_review_ends(tokenizer, special_tokens):
    """Review tokens are kept up to the flag line; the flag prefix follows as a training target has it."""
    fmt = FormatConfig()
    review = "\n\nREVIEW: The number was made up."
    enc = lambda t: tokenizer(t, add_special_tokens=False).input_ids  # noqa: E731
    pass_ids, fail_ids = enc(" PASS"), enc(" FAIL")
    for flag in ("PASS", "FAIL"):
        tokens = enc(review + "\nFLAG:") + enc(" " + flag)
        kept, forced, pass_id, fail_id = flag_continuation(tokenizer, fmt, tokens)
        assert tokenizer.decode(tokens[:kept] + forced) == review + "\nFLAG:"
        assert tokens[:kept] + forced == enc(review + "\nFLAG:")
        assert (pass_id, fail_id) == (pass_ids[0], fail_ids[0])
    no_flag = enc(review)
    kept, forced, _, _ = flag_continuation(tokenizer, fmt, no_flag)
    assert kept == len(no_flag)
    assert tokenizer.decode(no_flag + forced) == review + "\nFLAG:"
