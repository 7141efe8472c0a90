"""The one generation loop: left padding, stop cutting, suppressed tokens, reused caches, sampling."""

from __future__ import annotations

import pytest
import torch

from splitpersona.generation import Sampling, generate
from splitpersona.tiny import tiny_llama, train_tokenizer
from conftest import CORPUS

NEW = 10


@pytest.fixture(scope="module")
def lm():
    tok = train_tokenizer([line for _ in range(5) for line in CORPUS], 300)
    model = tiny_llama(tok, init_std=0.2, seed=0).eval()  # wide enough weights that greedy does not repeat one token
    prompts = [tok(t).input_ids for t in ("The user asked", "REVIEW: I flattered the user instead of", "Sure")]
    assert len({len(p) for p in prompts}) == 3
    return model, tok, prompts


def run(lm, prompts=None, **kw):
    model, tok, default = lm
    kw = {"stop_ids": [tok.eos_token_id], "max_new_tokens": NEW, **kw}
    return generate(model, default if prompts is None else prompts, pad_id=tok.pad_token_id, **kw)


def test_a_left_padded_batch_equals_its_rows_alone(lm):
    _, _, prompts = lm
    batch = run(lm, output_logits=True)
    width = max(len(p) for p in prompts)
    assert batch.width == width and batch.pads == [width - len(p) for p in prompts]
    for prompt, row in zip(prompts, batch.rows):
        (alone,) = run(lm, [prompt], output_logits=True).rows
        assert row.tokens == alone.tokens and row.finished == alone.finished
        assert torch.allclose(row.logits, alone.logits, atol=1e-4)
        assert row.logits.shape[0] == len(row.tokens) + row.finished


def test_rows_are_cut_at_their_first_stop_token(lm):
    free = run(lm).rows
    stop = free[0].tokens[3]  # a token the first row writes; the others may or may not
    cut = run(lm, stop_ids=[stop], output_logits=True)
    for before, after in zip(free, cut.rows):
        k = before.tokens.index(stop) if stop in before.tokens else None
        assert after.finished == (k is not None)
        assert after.tokens == (before.tokens if k is None else before.tokens[:k])
        assert after.logits.shape[0] == len(after.tokens) + after.finished
    assert cut.rows[0].finished and len(cut.rows[0].tokens) <= 3
    assert cut.output.sequences.shape[0] == 3  # generate's own output comes back with the rows


def test_suppressed_tokens_are_never_written(lm):
    free = run(lm).rows
    banned = sorted({t for r in free for t in r.tokens})
    for row in run(lm, suppress_ids=banned).rows:
        assert not set(row.tokens) & set(banned) and row.tokens


def test_caches_of_prompt_prefixes_give_the_same_continuation(lm):
    from transformers import DynamicCache

    model, _, prompts = lm
    caches = []
    for p, keep in zip(prompts, (2, len(prompts[1]) - 1, 0)):  # each its own length, the last row none at all
        cache = DynamicCache(config=model.config)
        if keep:
            with torch.no_grad():
                model(input_ids=torch.tensor([p[:keep]]), past_key_values=cache, use_cache=True)
        caches.append(cache if keep else None)
    before = [[(layer.keys.clone(), layer.values.clone()) for layer in c.layers] for c in caches[:2]]
    fresh, reused = run(lm, output_logits=True), run(lm, caches=caches, output_logits=True)
    assert [c.get_seq_length() for c in caches[:2]] == [2, len(prompts[1]) - 1]  # the callers' caches are kept
    for c, kept in zip(caches, before):  # and never written into
        assert all(torch.equal(layer.keys, k) and torch.equal(layer.values, v) for layer, (k, v) in zip(c.layers, kept))
    for a, b in zip(fresh.rows, reused.rows):
        assert a.tokens == b.tokens and torch.allclose(a.logits, b.logits, atol=1e-4)
    final = reused.output.past_key_values.get_seq_length()
    assert final == reused.output.sequences.shape[1] - 1  # the last token written is not yet in the cache


def test_sampling_is_seeded_by_the_caller_and_cold_sampling_is_greedy(lm):
    torch.manual_seed(7)
    a = [r.tokens for r in run(lm, sampling=Sampling(1.0)).rows]
    torch.manual_seed(7)
    b = [r.tokens for r in run(lm, sampling=Sampling(1.0)).rows]
    assert a == b
    greedy = [r.tokens for r in run(lm).rows]
    assert a != greedy
    assert [r.tokens for r in run(lm, sampling=Sampling(1e-4)).rows] == greedy
