"""Real tokenizers for the tests, from the directory `make tokenizers` fills (SPT_TOKENIZERS overrides it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def load(name: str):
    """The tokenizer `name` (llama3, qwen2, qwen35, phi3); a missing one fails the test, never skips it."""
    from transformers import AutoTokenizer

    path = Path(os.environ.get("SPT_TOKENIZERS", "~/.cache/splitpersona/tokenizers")).expanduser() / name
    if not path.is_dir():
        pytest.fail(f"missing real tokenizer {name}: run `make tokenizers`", pytrace=False)
    return AutoTokenizer.from_pretrained(path)
