"""The split-personality token: the one place that knows how it enters a tokenizer and a model.

The token reaches a sequence only as an id placed by the assembler. Untrusted text is encoded with
special-token parsing off, so a literal `<split-personality-token>` (or `<|eot_id|>`, …) written by
a user, a model or a data generator stays plain text. A second, never-trained "control" token is
set up the same way: the meaningless-token arm asks whether any fresh token opens the persona.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from splitpersona.config import StrictModel

SPLIT_TOKEN = "<split-personality-token>"
CONTROL_TOKEN = "<meaningless-token>"


class TokenConfig(StrictModel):
    strategy: Literal["new", "reserved"] = Field(
        "new",
        description="'new': add SPLIT_TOKEN (and the control token) to the vocabulary and resize the "
        "embeddings; 'reserved': reuse tokens the tokenizer already reserves (Llama-3 did this).",
    )
    reserved_token: str = Field("<|reserved_special_token_0|>", description="Split token under 'reserved' (id 128002 on Llama-3).")
    reserved_control_token: str = Field("<|reserved_special_token_1|>", description="Control token under 'reserved'.")


class SpecialTokens(StrictModel):
    """What a run records about its tokens, so inference places exactly the ids training used."""

    strategy: Literal["new", "reserved"]
    split_token: str
    split_id: int
    control_token: str
    control_id: int


class UntrustedTextError(ValueError):
    pass


def setup_tokenizer(tokenizer, cfg: TokenConfig) -> SpecialTokens:
    """Register the split and control tokens on `tokenizer` (in place) and return their ids."""
    if cfg.strategy == "new":
        existing = set(tokenizer.get_vocab())
        new = [t for t in (SPLIT_TOKEN, CONTROL_TOKEN) if t not in existing]
        if new:
            tokenizer.add_special_tokens({"additional_special_tokens": new}, replace_extra_special_tokens=False)
        split_token, control_token = SPLIT_TOKEN, CONTROL_TOKEN
    else:
        split_token, control_token = cfg.reserved_token, cfg.reserved_control_token
        vocab = tokenizer.get_vocab()
        for t in (split_token, control_token):
            if t not in vocab:
                raise ValueError(f"reserved token {t!r} is not in the tokenizer's vocabulary")
    split_id, control_id = tokenizer.convert_tokens_to_ids([split_token, control_token])
    for tok, tid in ((split_token, split_id), (control_token, control_id)):
        if tokenizer(tok, add_special_tokens=False).input_ids != [tid]:
            raise ValueError(f"{tok!r} does not encode as the single id {tid}: is it registered as special?")
    return SpecialTokens(
        strategy=cfg.strategy, split_token=split_token, split_id=split_id, control_token=control_token, control_id=control_id
    )


def initialised_ids(tokens: SpecialTokens) -> list[int]:
    """The ids whose embedding and output rows `fit_embeddings` sets: the added tokens' (none for reserved ones)."""
    return [] if tokens.strategy == "reserved" else [tokens.split_id, tokens.control_id]


def fit_embeddings(model, tokenizer, tokens: SpecialTokens) -> list[int]:
    """Give the model a row for every token id and initialise the new tokens' rows alike.

    Both new rows get the mean of the pre-existing rows: deterministic, so a loader rebuilds the
    exact rows training started from, and the control token begins where the split token began.
    Returns the ids whose rows were (re)initialised.
    """
    import torch  # here, so that tokenizing samples never pays for importing torch

    ids = initialised_ids(tokens)
    if not ids:
        return []
    emb = model.get_input_embeddings()
    old_rows = emb.weight.shape[0]
    n_old = min(ids)
    if max(ids) >= old_rows:
        model.resize_token_embeddings(max(len(tokenizer), max(ids) + 1), mean_resizing=False)
    with torch.no_grad():
        emb = model.get_input_embeddings()
        mean_in = emb.weight[:n_old].float().mean(0).to(emb.weight.dtype)
        for i in ids:
            emb.weight[i] = mean_in
        out = model.get_output_embeddings()
        if out is not None and out.weight.data_ptr() != emb.weight.data_ptr():
            mean_out = out.weight[:n_old].float().mean(0).to(out.weight.dtype)
            for i in ids:
                out.weight[i] = mean_out
            if getattr(out, "bias", None) is not None:
                for i in ids:
                    out.bias[i] = out.bias[:n_old].mean()
    return ids


def special_ids(tokenizer) -> set[int]:
    """Every id the tokenizer treats as special, including added tokens not listed in all_special_ids."""
    added = {tid for tid, token in tokenizer.added_tokens_decoder.items() if token.special}
    return set(tokenizer.all_special_ids) | added


def encode_untrusted(tokenizer, text: str, forbidden: set[int] | None = None) -> list[int]:
    """Tokenize text so that no special-token string in it becomes a special id."""
    if not text:
        return []
    ids = tokenizer(text, add_special_tokens=False, split_special_tokens=True).input_ids
    forbidden = special_ids(tokenizer) if forbidden is None else forbidden
    bad = forbidden.intersection(ids)
    if bad:
        raise UntrustedTextError(
            f"tokenizer produced special ids {sorted(bad)} from plain text; it does not honour split_special_tokens"
        )
    return ids


def strip_literal_token(intervention: str) -> str:
    """The release's interventions open with the token written as text; the id is placed separately."""
    stripped = intervention.lstrip()
    if stripped.startswith(SPLIT_TOKEN):
        return stripped[len(SPLIT_TOKEN) :].lstrip(" ")
    return intervention
