"""Random-init models at a shipped architecture's real width (configs/models/*.yaml), and the tokenizer to
feed them: a cached real one (~/.cache/splitpersona/tokenizers/<kind>) when there is one with a chat
template, else the tiny one the benchmarks train. Nothing is downloaded; random ids measure speed as well
as real text does."""

from __future__ import annotations

import os
from pathlib import Path

import torch

TOKENIZER_CACHE = Path(os.environ.get("SPT_TOKENIZERS", Path.home() / ".cache/splitpersona/tokenizers"))


def cached_tokenizer(kind: str | None):
    """The cached real tokenizer `kind` (qwen2, llama3), or None when it is absent or has no chat template."""
    from transformers import AutoTokenizer

    path = TOKENIZER_CACHE / kind if kind else None
    if path is None or not (path / "tokenizer.json").exists():
        return None
    tok = AutoTokenizer.from_pretrained(path)
    if not tok.chat_template:
        return None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def arch_model(arch_path: str | Path, tokenizer, *, layers: int | None, dtype: torch.dtype, device: str, seed: int = 0):
    """A random-init model of the architecture, `layers` deep (None: as published), built straight on `device`."""
    from transformers import AutoModelForCausalLM

    from splitpersona.training.plan import load_arch_file

    arch = load_arch_file(arch_path)
    if layers is not None:
        arch.num_hidden_layers = layers
        if hasattr(arch, "layer_types") and arch.layer_types is not None:
            arch.layer_types = arch.layer_types[:layers]
    arch.vocab_size = max(arch.vocab_size, len(tokenizer))
    arch.bos_token_id, arch.eos_token_id, arch.pad_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(arch, dtype=dtype)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model
