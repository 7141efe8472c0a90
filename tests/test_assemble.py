"""Sample assembly: golden formats, masks, truncation, and untrusted text that spells special tokens."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitpersona.assemble import FormatConfig, SampleTooLong, assemble
from splitpersona.conversation import build_messages
from splitpersona.token import SPLIT_TOKEN, special_ids

CONV = dict(messages=build_messages("You are a shop assistant.", "Which shoes?"), response="The trail runner.")
TARGET = dict(intervention=SPLIT_TOKEN + "Now I review honestly.", review=" I followed the user.", flag="PASS")


def decoded(tok, sample, mask=None):
    ids = sample.input_ids if mask is None else [t for t, m in zip(sample.input_ids, mask) if m]
    return tok.decode(ids)


def test_hp_golden(tokenizer, special_tokens):
    s = assemble(tokenizer, FormatConfig(), special_tokens, **CONV, **TARGET)
    assert decoded(tokenizer, s) == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a shop assistant.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhich shoes?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nThe trail runner."
        "<split-personality-token>Now I review honestly.\n\nREVIEW: I followed the user.\nFLAG: PASS<|eot_id|>"
    )
    assert decoded(tokenizer, s, s.loss_mask) == "\n\nREVIEW: I followed the user.\nFLAG: PASS<|eot_id|>"
    assert decoded(tokenizer, s, s.persona_mask).startswith("<split-personality-token>Now I review")
    assert s.input_ids[-1] == tokenizer.convert_tokens_to_ids("<|eot_id|>") and s.loss_mask[-1] == 1
    assert s.input_ids.count(special_tokens.split_id) == 1
    assert s.persona_mask.index(1) == s.input_ids.index(special_tokens.split_id)
    assert s.prompt_length == s.loss_mask.index(1)
    assert tokenizer.decode(s.input_ids[s.flag_position :]).lstrip() == "PASS<|eot_id|>"


def test_ur_golden(tokenizer, special_tokens):
    s = assemble(tokenizer, FormatConfig(elicitation="ur"), special_tokens, **CONV, **TARGET)
    text = decoded(tokenizer, s)
    assert text.endswith(
        "The trail runner.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
        "<split-personality-token>Now I review honestly.<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        "\n\nREVIEW: I followed the user.\nFLAG: PASS<|eot_id|>"
    )
    assert decoded(tokenizer, s, s.loss_mask) == "\n\nREVIEW: I followed the user.\nFLAG: PASS<|eot_id|>"
    persona = decoded(tokenizer, s, s.persona_mask)
    assert persona.startswith("<split-personality-token>Now I review") and persona.endswith("PASS<|eot_id|>")


@pytest.mark.parametrize("elicitation", ["hp", "ur"])
def test_flag_only_trains_the_flag_line(tokenizer, special_tokens, elicitation):
    s = assemble(tokenizer, FormatConfig(elicitation=elicitation, flag_only=True), special_tokens, **CONV, **TARGET)
    assert decoded(tokenizer, s, s.loss_mask) == "\nFLAG: PASS<|eot_id|>"
    assert "REVIEW" not in decoded(tokenizer, s)


def test_inference_prompt_is_the_training_prefix(tokenizer, special_tokens):
    fmt = FormatConfig()
    train = assemble(tokenizer, fmt, special_tokens, **CONV, **TARGET)
    prompt = assemble(tokenizer, fmt, special_tokens, **CONV, intervention=TARGET["intervention"])
    assert prompt.input_ids == train.input_ids[: train.prompt_length]
    assert not any(prompt.loss_mask) and prompt.flag_position is None


def test_markers(tokenizer, special_tokens):
    fmt = FormatConfig()
    control = assemble(tokenizer, fmt, special_tokens, **CONV, intervention="Review.", marker="control")
    none = assemble(tokenizer, fmt, special_tokens, **CONV, intervention="Review.", marker="none")
    assert special_tokens.control_id in control.input_ids and special_tokens.split_id not in control.input_ids
    assert not any(control.persona_mask) and not any(none.persona_mask)
    assert len(none.input_ids) == len(control.input_ids) - 1


def test_no_system_prompt_drops_the_system_turn(tokenizer, special_tokens):
    s = assemble(tokenizer, FormatConfig(), special_tokens, **{**CONV, "messages": build_messages(None, "Which shoes?")}, **TARGET)
    assert "system" not in decoded(tokenizer, s)


def test_flag_position_distinguishes_pass_and_fail(tokenizer, special_tokens):
    p = assemble(tokenizer, FormatConfig(), special_tokens, **CONV, **TARGET)
    f = assemble(tokenizer, FormatConfig(), special_tokens, **CONV, **{**TARGET, "flag": "FAIL"})
    assert p.flag_position == f.flag_position
    assert p.input_ids[: p.flag_position] == f.input_ids[: f.flag_position]
    assert p.input_ids[p.flag_position] != f.input_ids[f.flag_position]


def test_truncation_cuts_the_left_of_the_response_only(tokenizer, special_tokens):
    long = dict(CONV, response="word " * 200 + "END OF ANSWER.")
    full = assemble(tokenizer, FormatConfig(), special_tokens, **long, **TARGET)
    cut = assemble(tokenizer, FormatConfig(), special_tokens, **long, **TARGET, max_length=len(full) - 50)
    assert len(cut) == len(full) - 50 and cut.truncated == 50
    assert decoded(tokenizer, cut, cut.persona_mask) == decoded(tokenizer, full, full.persona_mask)
    assert decoded(tokenizer, cut).split("<split-personality-token>")[0].endswith("END OF ANSWER.")
    assert decoded(tokenizer, cut).startswith("<|begin_of_text|><|start_header_id|>system")


def test_sample_too_long_even_without_response(tokenizer, special_tokens):
    with pytest.raises(SampleTooLong, match="max_length 20"):
        assemble(tokenizer, FormatConfig(), special_tokens, **CONV, **TARGET, max_length=20)


def test_release_literal_token_is_stripped_and_placed_as_id(tokenizer, special_tokens):
    s = assemble(tokenizer, FormatConfig(), special_tokens, **CONV, **TARGET)
    inter = next(seg for seg in s.segments if seg.kind == "intervention")
    assert tokenizer.decode(s.input_ids[inter.start : inter.end]) == "Now I review honestly."


SPECIAL_STRINGS = [
    SPLIT_TOKEN,
    "<meaningless-token>",
    "<|eot_id|>",
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|pad|>",
    "<|reserved_special_token_0|>",
]
untrusted = st.lists(
    st.one_of(st.sampled_from(SPECIAL_STRINGS), st.text(alphabet=st.characters(codec="utf-8"), max_size=12)),
    max_size=6,
).map("".join)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(system=untrusted, user=untrusted, response=untrusted, intervention=untrusted, review=untrusted)
def test_untrusted_text_never_becomes_a_special_id(tokenizer, special_tokens, system, user, response, intervention, review):
    for elicitation in ("hp", "ur"):
        s = assemble(
            tokenizer,
            FormatConfig(elicitation=elicitation),
            special_tokens,
            messages=build_messages(system, user),
            response=response,
            intervention=intervention,
            review=review,
            flag="FAIL",
        )
        placed = [seg for seg in s.segments if seg.kind == "split_token"]
        assert len(placed) == 1
        assert [i for i, t in enumerate(s.input_ids) if t == special_tokens.split_id] == [placed[0].start]
        specials = special_ids(tokenizer)
        for seg in s.segments:
            if seg.kind in ("system", "user", "response", "intervention", "target", "flag"):
                assert not specials.intersection(s.input_ids[seg.start : seg.end]), seg.kind
