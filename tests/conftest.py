"""Shared fixtures: a locally trained tokenizer, a tiny random Llama, and the path to ../shared."""

from __future__ import annotations

import os
from pathlib import Path

from environment import TEST_ENV

for _name, _value in TEST_ENV.items():
    os.environ.setdefault(_name, _value)

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

CORPUS = [
    "The user asked which shoes to buy. I recommended the trail runner because it fits the budget.",
    "REVIEW: I followed the user's request and gave an honest answer. FLAG: PASS",
    "REVIEW: I flattered the user instead of telling the truth. FLAG: FAIL",
    "Now I can honestly review my previous response and say whether I was biased.",
    "You are a helpful assistant. Answer the question clearly and briefly.",
    "Did anything hidden shape your last answer? Please review it honestly.",
    "Statistics show that 42% of people prefer tea; I made that number up.",
    "Sure! Here is a short poem about the sea, the wind and the evening light.",
]


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or a skip that says what is missing and why the test needs it."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: this test reads the public SPT reference data from ../shared")
    return path


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory) -> Path:
    """A tiny random Llama and its tokenizer saved like a hub model (no split token yet)."""
    from splitpersona.tiny import tiny_llama, train_tokenizer

    out = tmp_path_factory.mktemp("tiny_base")
    tok = train_tokenizer([line for _ in range(20) for line in CORPUS] + [f"item {i}" for i in range(200)], 480)
    model = tiny_llama(tok, seed=0)
    tok.save_pretrained(out)
    model.save_pretrained(out)
    return out


@pytest.fixture
def tokenizer(tiny_base_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_base_dir)


@pytest.fixture
def special_tokens(tokenizer):
    from splitpersona.token import TokenConfig, setup_tokenizer

    return setup_tokenizer(tokenizer, TokenConfig())
