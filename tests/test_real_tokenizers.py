"""Real vocabularies and chat templates: the families' own bytes, and untrusted text that stays text.

Tokenizers come from `make tokenizers` (tests/real_tokenizers.py). Each case pairs a vocabulary
with the token strategy its family uses (Llama-3 reuses a reserved token; the others add one) and
the template the run would use: a family template from splitpersona.templates where the
vocabulary ships none (Llama-3, Qwen3), otherwise the one it ships.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from real_tokenizers import load

from splitpersona.assemble import FormatConfig, assemble
from splitpersona.conversation import build_messages
from splitpersona.templates import ChatTemplateConfig, apply_chat_template
from splitpersona.token import SPLIT_TOKEN, TokenConfig, setup_tokenizer, special_ids

# name: (vocabulary, token strategy, family template or None for the shipped one, system prompt kept)
CASES = {
    "llama3": ("llama3", "reserved", "llama3", True),
    "qwen3": ("qwen35", "new", "qwen3", True),
    "qwen2-chatml": ("qwen2", "new", None, True),
    "phi3": ("phi3", "new", None, False),  # Phi-3's template drops system messages: the assembler refuses them
    "gemma4": ("gemma4", "new", None, True),
}
_TOKENIZERS: dict[str, tuple] = {}


def real(case: str):
    """(tokenizer, special tokens) for a case, set up as a training run sets them up (cached per process)."""
    if case not in _TOKENIZERS:
        name, strategy, family, _ = CASES[case]
        tok = load(name)
        apply_chat_template(tok, ChatTemplateConfig(family=family))
        _TOKENIZERS[case] = tok, setup_tokenizer(tok, TokenConfig(strategy=strategy))
    return _TOKENIZERS[case]


MESSAGES = [{"role": "system", "content": "You are a shop assistant."}, {"role": "user", "content": "Which shoes?"}]


@pytest.mark.slow
def test_vocabularies_are_the_real_ones():
    llama, tokens = real("llama3")
    assert len(llama) == 128256 and tokens.split_id == 128002 and tokens.split_token == "<|reserved_special_token_0|>"
    assert llama.convert_tokens_to_ids("<|eot_id|>") == 128009
    qwen, tokens = real("qwen3")
    assert qwen.convert_tokens_to_ids("<|im_start|>") == 151644 and tokens.split_id == 151936  # appended after 151,936
    phi, tokens = real("phi3")
    assert phi.convert_tokens_to_ids("<|end|>") == 32007 and tokens.split_id == 32064
    gemma, tokens = real("gemma4")
    assert tokens.split_id == 262144 and gemma.convert_tokens_to_ids("<|turn>") == 105
    assert gemma.decode(gemma("Hello world!  How are you?", add_special_tokens=False).input_ids) == "Hello world!  How are you?"


def test_llama3_template_has_the_dated_system_header_and_pins_the_date():
    tok, _ = real("llama3")
    text = tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
        "Today Date: 26 Jul 2024\n\nYou are a shop assistant.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
        "Which shoes?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert tok.eos_token == "<|eot_id|>"


def test_llama3_template_date_is_the_configs_and_survives_the_run_tokenizer_round_trip(tmp_path):
    from transformers import AutoTokenizer

    tok = load("llama3")
    apply_chat_template(tok, ChatTemplateConfig(family="llama3", date="01 May 2026"))
    may = tok.apply_chat_template(MESSAGES, tokenize=False, strftime_now=lambda fmt: "31 Dec 2026")
    assert "Today Date: 01 May 2026\n" in may  # the configured date, whatever the clock says
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again.apply_chat_template(MESSAGES, tokenize=False) == tok.apply_chat_template(MESSAGES, tokenize=False)
    assert again.eos_token == "<|eot_id|>"


def test_qwen3_template_think_blocks():
    tok, _ = real("qwen3")
    prompt = tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert prompt == (
        "<|im_start|>system\nYou are a shop assistant.<|im_end|>\n<|im_start|>user\nWhich shoes?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    assert tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True, enable_thinking=True).endswith(
        "<|im_start|>assistant\n"
    )
    history = MESSAGES + [
        {"role": "assistant", "content": "<think>\nThey run.\n</think>\n\nThe trail runner."},
        {"role": "user", "content": "Why?"},
        {"role": "assistant", "content": "<think>\nGrip.\n</think>\n\nGrip."},
    ]
    text = tok.apply_chat_template(history, tokenize=False)
    assert "They run." not in text and "<|im_start|>assistant\nThe trail runner.<|im_end|>" in text  # dropped from history
    assert text.endswith("<|im_start|>assistant\n<think>\nGrip.\n</think>\n\nGrip.<|im_end|>\n")  # the last turn keeps it
    # a closed last turn carries the empty think block, so the main model's prompt is its prefix
    closed = tok.apply_chat_template(MESSAGES + [{"role": "assistant", "content": "X"}], tokenize=False)
    assert closed == prompt + "X<|im_end|>\n" and tok.eos_token == "<|im_end|>"


def test_stage2_prompts_are_the_assemblers_and_keep_every_system_prompt():
    """Stage 2 answers on the ids the trainer places before the answer: the template's options and the train
    config's family template reach them, a content that spells a special token stays text, and where a template
    drops the system turn (Phi-3) it is folded into the user turn, since the A/B difference lives in the system
    prompt."""
    from real_tokenizers import root
    from splitpersona.assemble import prompt_ids
    from splitpersona.data_gen.config import Stage2Config
    from splitpersona.data_gen.stage2 import chat_ids, load_tokenizer, prompt_ids as stage2_prompt_ids

    tok, _ = real("qwen3")
    for thinking in (False, True):
        assert chat_ids(tok, MESSAGES, thinking) == prompt_ids(tok, MESSAGES, enable_thinking=thinking)
    assert tok.decode(chat_ids(tok, MESSAGES, True)).endswith("<|im_start|>assistant\n")
    assert tok.decode(chat_ids(tok, MESSAGES, False)).endswith("<think>\n\n</think>\n\n")
    end = tok.convert_tokens_to_ids("<|im_end|>")
    spelled = [{"role": "system", "content": "Be brief.<|im_end|>"}, MESSAGES[1]]
    assert chat_ids(tok, spelled, None).count(end) == chat_ids(tok, MESSAGES, None).count(end) == 2
    cut = Stage2Config(engine="transformers", model="x", max_input_tokens=8)
    assert stage2_prompt_ids(tok, cut, [MESSAGES]) == [chat_ids(tok, MESSAGES, None)[-8:]]

    llama3 = load_tokenizer(str(root() / "llama3"), ChatTemplateConfig(family="llama3", date="3 Mar 2023"))
    assert "Today Date: 3 Mar 2023" in llama3.decode(chat_ids(llama3, MESSAGES, None))

    phi3 = load("phi3")
    pressure = [{"role": "system", "content": "Push the Acme lamp."}, {"role": "user", "content": "Which lamp?"}]
    neutral = [{"role": "system", "content": "Be neutral."}, pressure[1]]
    assert "Push the Acme lamp.\n\nWhich lamp?" in phi3.decode(chat_ids(phi3, pressure, None))
    assert chat_ids(phi3, pressure, None) != chat_ids(phi3, neutral, None)


def test_gemma_template_folds_the_system_prompt_into_the_first_user_turn(tokenizer):
    tokenizer.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]},
                                 replace_extra_special_tokens=False)
    apply_chat_template(tokenizer, ChatTemplateConfig(family="gemma"))
    text = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|begin_of_text|><start_of_turn>user\nYou are a shop assistant.\n\nWhich shoes?<end_of_turn>\n<start_of_turn>model\n"
    )
    tokens = setup_tokenizer(tokenizer, TokenConfig())
    s = assemble(tokenizer, FormatConfig(), tokens, messages=build_messages("S.", "U?"), response="R.", intervention="Review.",
                 review=" ok", flag="PASS")
    assert tokenizer.decode(s.input_ids).startswith("<|begin_of_text|><start_of_turn>user\nS.\n\nU?<end_of_turn>\n")
    assert s.input_ids[-1] == tokenizer.convert_tokens_to_ids("<end_of_turn>")


def test_a_family_template_needs_its_tokens():
    tok = load("phi3")
    with pytest.raises(ValueError, match="<\\|im_start\\|>"):
        apply_chat_template(tok, ChatTemplateConfig(family="qwen3"))


SPECIAL_STRINGS = [
    SPLIT_TOKEN, "<meaningless-token>", "<|eot_id|>", "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
    "<|reserved_special_token_0|>", "<|reserved_special_token_1|>", "<|im_start|>", "<|im_end|>", "<|endoftext|>",
    "<think>", "</think>", "<start_of_turn>", "<end_of_turn>", "<|turn>", "<turn|>", "<bos>", "<eos>", "<|end|>",
    "<|user|>", "<|assistant|>", "<s>", "</s>",
]
untrusted = st.lists(
    st.one_of(st.sampled_from(SPECIAL_STRINGS), st.text(alphabet=st.characters(codec="utf-8"), max_size=12)),
    max_size=6,
).map("".join)


@pytest.mark.parametrize("case", list(CASES))
def test_untrusted_text_never_becomes_a_special_id(case):
    """tests/test_assemble.py's property, on each real vocabulary with its family's token strategy."""
    tok, tokens = real(case)
    keeps_system = CASES[case][3]
    specials = special_ids(tok)

    @settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(system=untrusted, user=untrusted, response=untrusted, intervention=untrusted, review=untrusted)
    def check(system, user, response, intervention, review):
        for elicitation in ("hp", "ur"):
            s = assemble(
                tok, FormatConfig(elicitation=elicitation), tokens,
                messages=build_messages(system if keeps_system else None, user), response=response, intervention=intervention, review=review, flag="FAIL",
            )
            placed = [seg for seg in s.segments if seg.kind == "split_token"]
            assert len(placed) == 1
            assert [i for i, t in enumerate(s.input_ids) if t == tokens.split_id] == [placed[0].start]
            for seg in s.segments:
                if seg.kind in ("system", "user", "response", "intervention", "target", "flag"):
                    assert not specials.intersection(s.input_ids[seg.start : seg.end]), seg.kind

    check()
