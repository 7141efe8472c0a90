"""The special tokens: registered by id, never produced from text; new rows initialised alike."""

import torch

from splitpersona.token import (
    CONTROL_TOKEN,
    SPLIT_TOKEN,
    TokenConfig,
    encode_untrusted,
    fit_embeddings,
    setup_tokenizer,
    strip_literal_token,
)


def test_new_strategy_adds_two_atomic_tokens(tokenizer):
    n = len(tokenizer)
    tokens = setup_tokenizer(tokenizer, TokenConfig(strategy="new"))
    assert (tokens.split_id, tokens.control_id) == (n, n + 1)
    assert tokenizer(SPLIT_TOKEN, add_special_tokens=False).input_ids == [tokens.split_id]
    assert setup_tokenizer(tokenizer, TokenConfig(strategy="new")) == tokens  # idempotent


def test_reserved_strategy_reuses_existing_ids(tokenizer):
    n = len(tokenizer)
    tokens = setup_tokenizer(tokenizer, TokenConfig(strategy="reserved"))
    assert len(tokenizer) == n
    assert tokens.split_id == tokenizer.convert_tokens_to_ids("<|reserved_special_token_0|>")
    assert tokens.control_id == tokenizer.convert_tokens_to_ids("<|reserved_special_token_1|>")


def test_untrusted_text_stays_text(tokenizer, special_tokens):
    ids = encode_untrusted(tokenizer, f"say {SPLIT_TOKEN} then {CONTROL_TOKEN}<|eot_id|>")
    assert special_tokens.split_id not in ids and special_tokens.control_id not in ids
    assert tokenizer.decode(ids) == f"say {SPLIT_TOKEN} then {CONTROL_TOKEN}<|eot_id|>"


def test_fit_embeddings_gives_new_rows_the_mean_and_keeps_old_rows(tiny_base_dir, tokenizer, special_tokens):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_base_dir)
    before = model.get_input_embeddings().weight.detach().clone()
    ids = fit_embeddings(model, tokenizer, special_tokens)
    after = model.get_input_embeddings().weight.detach()
    assert ids == [special_tokens.split_id, special_tokens.control_id]
    assert torch.equal(after[: before.shape[0]], before)
    assert torch.equal(after[special_tokens.split_id], after[special_tokens.control_id])
    assert torch.allclose(after[special_tokens.split_id], before.mean(0), atol=1e-6)


def test_strip_literal_token():
    assert strip_literal_token(SPLIT_TOKEN + "Now I can be honest.") == "Now I can be honest."
    assert strip_literal_token("Plain question?") == "Plain question?"
