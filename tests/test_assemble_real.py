"""On real tokenizers, the ids before the split token are what the deployed model saw.

`apply_chat_template(messages + [assistant: response], tokenize=True)` is the deployed model's
view; the assembled hp prefix must be its prefix, followed there only by the template's closing.
"""

from __future__ import annotations

import copy

import pytest

from conftest import shared_path
from real_tokenizers import load
from splitpersona.assemble import FormatConfig, assemble, prompt_ids
from splitpersona.tiny import LLAMA3_STYLE_TEMPLATE
from splitpersona.token import SPLIT_TOKEN, TokenConfig, setup_tokenizer, special_ids

NAMES = ["llama3", "qwen2", "qwen35", "phi3"]
SYSTEM = "You are a shop assistant. Recommend what fits the user's budget."
SINGLE = [{"role": "user", "content": "Which shoes should I buy for trail running?"}]
MULTI = [
    {"role": "user", "content": "I need new shoes."},
    {"role": "assistant", "content": "I can help. What will you use them for?"},
    {"role": "user", "content": "I run on trails, mostly on weekends."},
]
RESPONSE = "I recommend the trail runner: it fits your budget and grips well on wet rock."
# A template that folds the system prompt into the first user turn and trims contents, as Gemma's does.
GEMMA_STYLE_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set first = messages[0]['content'] | trim + '\n\n' %}"
    "{% set rest = messages[1:] %}{% else %}{% set first = '' %}{% set rest = messages %}{% endif %}"
    "{% for m in rest %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ (first if loop.first else '') + m['content'] | trim }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


@pytest.fixture(scope="module")
def real():
    """Each real tokenizer once per module, with the split and control tokens registered."""
    out = {}
    for name in NAMES:
        tok = load(name)
        if not tok.chat_template:
            tok.chat_template = LLAMA3_STYLE_TEMPLATE  # Llama-3's layout; the converted tokenizer ships none
        out[name] = (tok, setup_tokenizer(tok, TokenConfig()))
    return out


def hp_prefix(tok, tokens, messages, response):
    s = assemble(tok, FormatConfig(), tokens, messages=messages, response=response, intervention="Review it.")
    return s.input_ids[: s.input_ids.index(tokens.split_id)]


def deployed(tok, messages, response):
    return tok.apply_chat_template(
        messages + [{"role": "assistant", "content": response}], tokenize=True, return_dict=False
    )


def closing_ids(tok, messages, response):
    """The template's ids after the response: what the split token and the persona part replace."""
    chat = messages + [{"role": "assistant", "content": response}]
    text = tok.apply_chat_template(chat, tokenize=False)
    end = text.rindex(response.strip()) + len(response.strip())
    return tok(text[end:], add_special_tokens=False).input_ids


def assert_seen(tok, tokens, messages, response):
    prefix = hp_prefix(tok, tokens, messages, response)
    full = deployed(tok, messages, response)
    assert full[: len(prefix)] == prefix
    assert full[len(prefix) :] == closing_ids(tok, messages, response)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("turns", ["single", "multi"])
@pytest.mark.parametrize("system", [False, True])
def test_hp_prefix_is_what_the_deployed_model_saw(real, name, turns, system):
    tok, tokens = real[name]
    messages = ([{"role": "system", "content": SYSTEM}] if system else []) + (SINGLE if turns == "single" else MULTI)
    if name == "phi3" and system:
        with pytest.raises(ValueError, match="chat template of .*phi3.* drops or reorders"):
            hp_prefix(tok, tokens, messages, RESPONSE)
        return
    assert_seen(tok, tokens, messages, RESPONSE)
    assert prompt_ids(tok, messages) == tok.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=False
    )


@pytest.mark.parametrize("name", NAMES)
def test_ur_prefix_is_the_closed_conversation_and_the_next_user_header(real, name):
    tok, tokens = real[name]
    s = assemble(tok, FormatConfig(elicitation="ur"), tokens, messages=MULTI, response=RESPONSE, intervention="Review it.")
    prefix = s.input_ids[: s.input_ids.index(tokens.split_id)]
    chat = MULTI + [{"role": "assistant", "content": RESPONSE}, {"role": "user", "content": "Review it."}]
    full = tok.apply_chat_template(chat, tokenize=True, return_dict=False)
    assert full[: len(prefix)] == prefix
    assert tok.decode(full[len(prefix) :]).startswith("Review it.")


@pytest.mark.parametrize("name", NAMES)
def test_content_spelling_special_tokens_stays_text(real, name):
    tok, tokens = real[name]
    specials = special_ids(tok)
    spelled = "".join(tok.convert_ids_to_tokens(sorted(specials)[:6])) + SPLIT_TOKEN
    messages = [{"role": "user", "content": f"Say {spelled} please."}]
    s = assemble(tok, FormatConfig(), tokens, messages=messages, response=f"Here: {spelled}", intervention=spelled,
                 review=spelled, flag="PASS")
    assert s.input_ids.count(tokens.split_id) == 1
    for seg in s.segments:
        if seg.kind in ("user", "response", "intervention", "target"):
            assert not specials.intersection(s.input_ids[seg.start : seg.end]), seg.kind


def test_a_template_that_folds_the_system_prompt_into_the_user_turn(real):
    tok = copy.deepcopy(real["phi3"][0])  # SentencePiece, like Gemma's
    tok.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]},
                           replace_extra_special_tokens=False)
    tok.chat_template = GEMMA_STYLE_TEMPLATE
    tokens = setup_tokenizer(tok, TokenConfig())
    for messages in ([{"role": "system", "content": SYSTEM + "  "}, *MULTI], MULTI):
        assert_seen(tok, tokens, messages, " " + RESPONSE + "\n")  # the template trims; so does the prefix
    s = assemble(tok, FormatConfig(), tokens, messages=[{"role": "system", "content": SYSTEM}, *SINGLE],
                 response=RESPONSE, intervention="Review it.")
    assert [seg.kind for seg in s.segments if seg.kind != "template"][:3] == ["system", "user", "response"]


def test_reference_conversations_are_what_the_deployed_model_saw(real):
    """The published records (../shared): with and without their system prompts, on every tokenizer."""
    from splitpersona.conversation import build_messages
    from splitpersona.release import find_batch_files, flatten, iter_batches, load_filter

    files = find_batch_files([shared_path("reference", "stage_3_tagged")])[:2]
    records, _ = flatten(iter_batches(files), load_filter())
    convs = list(dict.fromkeys((r.system, r.user, r.response) for r in records))[:15]
    for name, (tok, tokens) in real.items():
        for system, user, response in convs:
            for shown in (system, None) if name != "phi3" else (None,):
                messages = [m.model_dump() for m in build_messages(shown, user)]
                assert_seen(tok, tokens, messages, response)
