"""Real tokenizers for the tests: the directories `make tokenizers` (tools/fetch_tokenizers.py) writes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def root() -> Path:
    return Path(os.environ.get("SPT_TOKENIZERS") or Path.home() / ".cache/splitpersona/tokenizers")


def load(name: str):
    """A fresh copy of real tokenizer `name` (llama3, qwen2, qwen35, phi3, gemma4)."""
    from transformers import AutoTokenizer

    path = root() / name
    if not (path / "tokenizer.json").exists():
        pytest.fail(f"missing real tokenizer {name}: run `make tokenizers`")
    return AutoTokenizer.from_pretrained(path)
