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


def piecewise_ids(tok, messages: list[dict], response: str) -> list[int]:
    """The conversation part encoded piecewise: template pieces and contents tokenized apart."""
    import re

    holders = [{"role": m["role"], "content": f"\ue000{i}\ue001"} for i, m in enumerate(messages)]
    holders.append({"role": "assistant", "content": f"\ue000{len(messages)}\ue001"})
    structs = re.split("\ue000\\d+\ue001", tok.apply_chat_template(holders, tokenize=False))
    ids: list[int] = []
    for struct, content in zip(structs, [m["content"] for m in messages] + [response]):
        ids += tok(struct, add_special_tokens=False).input_ids if struct else []
        ids += tok(content, add_special_tokens=False, split_special_tokens=True).input_ids if content else []
    return ids


plain = st.text(alphabet=st.sampled_from("abcXYZ019 .,;!?'\n-"), max_size=40)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(system=plain, user=plain, response=plain)
def test_single_turn_ids_are_unchanged(tokenizer, special_tokens, system, user, response):
    """On the test tokenizer, tokenizing the rendered conversation whole gives the ids of the piecewise
    encoding (and the chat template's): on such text the two encodings agree."""
    messages = [m.model_dump() for m in build_messages(system, user)]
    s = assemble(tokenizer, FormatConfig(), special_tokens, messages=messages, response=response,
                 intervention="Review.")
    prefix = s.input_ids[: s.input_ids.index(special_tokens.split_id)]
    assert prefix == piecewise_ids(tokenizer, messages, response)
    chat = messages + [{"role": "assistant", "content": response}]
    assert tokenizer.apply_chat_template(chat, tokenize=True, return_dict=False)[: len(prefix)] == prefix


MULTI = [
    {"role": "system", "content": "You are a shop assistant."},
    {"role": "user", "content": "Which shoes?"},
    {"role": "assistant", "content": "The road runner."},
    {"role": "user", "content": "And for trails?"},
]


def test_multi_turn_golden(tokenizer, special_tokens):
    s = assemble(tokenizer, FormatConfig(), special_tokens, messages=MULTI, response="The trail runner.", **TARGET)
    assert decoded(tokenizer, s) == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a shop assistant.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhich shoes?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nThe road runner.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nAnd for trails?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nThe trail runner."
        "<split-personality-token>Now I review honestly.\n\nREVIEW: I followed the user.\nFLAG: PASS<|eot_id|>"
    )
    kinds = [seg.kind for seg in s.segments if seg.kind != "template"]
    assert kinds == ["system", "user", "assistant", "user", "response", "split_token", "intervention", "target",
                     "flag", "end"]
    assert decoded(tokenizer, s, s.loss_mask) == "\n\nREVIEW: I followed the user.\nFLAG: PASS<|eot_id|>"
    chat = MULTI + [{"role": "assistant", "content": "The trail runner."}]
    prefix = s.input_ids[: s.input_ids.index(special_tokens.split_id)]
    assert tokenizer.apply_chat_template(chat, tokenize=True, return_dict=False)[: len(prefix)] == prefix
    ur = assemble(tokenizer, FormatConfig(elicitation="ur"), special_tokens, messages=MULTI,
                  response="The trail runner.", **TARGET)
    assert decoded(tokenizer, ur).startswith(decoded(tokenizer, s).split("The trail runner.")[0])
    long = "word " * 200 + "END."
    full = assemble(tokenizer, FormatConfig(), special_tokens, messages=MULTI, response=long, **TARGET)
    cut = assemble(tokenizer, FormatConfig(), special_tokens, messages=MULTI, response=long, **TARGET,
                   max_length=len(full) - 30)
    assert cut.truncated == 30 and "The road runner.<|eot_id|>" in decoded(tokenizer, cut)


def test_turn_order_errors_name_the_message(tokenizer, special_tokens):
    with pytest.raises(ValueError, match="message 2: role 'user'"):
        assemble(tokenizer, FormatConfig(), special_tokens, messages=MULTI[:2] + MULTI[3:], response="x",
                 intervention="Review.")
    with pytest.raises(ValueError, match="message 2: the conversation must end with the user turn"):
        assemble(tokenizer, FormatConfig(), special_tokens, messages=MULTI[:3], response="x", intervention="Review.")


def test_records_written_before_history_load_and_multi_turn_records_assemble(tokenizer, special_tokens):
    from splitpersona.assemble import assemble_record
    from splitpersona.records import TrainingRecord

    old = dict(id="r1", topic="t", model="m", variant="A", intervention_key="k", intervention_type="split",
               system="You are a shop assistant.", user="Which shoes?", response="The trail runner.",
               intervention=TARGET["intervention"], review=TARGET["review"], flag="PASS", source="f")
    rec = TrainingRecord.model_validate(old)
    assert [m.role for m in rec.messages] == ["system", "user"] and rec.history == []
    direct = assemble(tokenizer, FormatConfig(), special_tokens, **CONV, **TARGET)
    assert assemble_record(tokenizer, FormatConfig(), special_tokens, rec).input_ids == direct.input_ids
    multi = TrainingRecord.model_validate({**old, "user": MULTI[3]["content"], "history": MULTI[1:3]})
    sample = assemble_record(tokenizer, FormatConfig(), special_tokens, multi, system=None)
    assert "system" not in decoded(tokenizer, sample) and "The road runner.<|eot_id|>" in decoded(tokenizer, sample)
    with pytest.raises(ValueError, match="message 0"):
        TrainingRecord.model_validate({**old, "history": MULTI[2:3]})
