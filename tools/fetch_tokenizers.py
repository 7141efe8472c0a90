"""Fetch the real tokenizers the tests verify against, offline afterwards: `make tokenizers`.

The source distribution of llama-cpp-python ships vocabulary-only GGUF files of several model
families (no weights). This script takes them out of it (`llamacpp_sdist`: downloaded once and
checksum-pinned) and converts each into a Hugging Face tokenizer directory under $SPT_TOKENIZERS (default
~/.cache/splitpersona/tokenizers/<name>). Directories already there are skipped; each is written
beside its target and renamed into place, so an interrupted run leaves nothing half-written.

transformers converts Llama-3, Qwen and Phi-3 (`gguf_file=`). Its loader does not read Gemma-4's
vocabulary, so that one is built here from the GGUF's tokens and merges with `tokenizers`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import llamacpp_sdist

MODELS = "models/"
TOKENIZERS = {  # name -> GGUF vocabulary file in the sdist
    "llama3": "ggml-vocab-llama-bpe.gguf",
    "qwen2": "ggml-vocab-qwen2.gguf",
    "qwen35": "ggml-vocab-qwen35.gguf",
    "phi3": "ggml-vocab-phi-3.gguf",
    "gemma4": "ggml-vocab-gemma-4.gguf",
}
LLAMA3_VOCAB = 128256  # the GGUF converter appends an `<|endoftext|>` Llama-3 does not have


def root() -> Path:
    return Path(os.environ.get("SPT_TOKENIZERS") or Path.home() / ".cache/splitpersona/tokenizers")


def convert_hf(gguf_dir: Path, gguf_file: str, out: Path) -> None:
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=gguf_file).save_pretrained(out)


def drop_tokens_from(out: Path, first_extra: int) -> None:
    """Remove added tokens at ids >= `first_extra` from a saved tokenizer.json."""
    path = out / "tokenizer.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data["added_tokens"] = [t for t in data["added_tokens"] if t["id"] < first_extra]
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def _strings(reader, key: str) -> list[str]:
    field = reader.fields[key]  # the raw parts: GGUFReader's contents() takes minutes on 500k merges
    return [bytes(field.parts[i]).decode("utf-8") for i in field.data]


def _scalar(reader, key: str):
    return reader.fields[key].contents()


def convert_gemma4(path: Path, out: Path) -> None:
    """Gemma's SentencePiece-style BPE ("▁" for spaces, byte fallback), from the GGUF's own tables."""
    from gguf import GGUFReader
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast

    reader = GGUFReader(path)
    tokens = _strings(reader, "tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in _strings(reader, "tokenizer.ggml.merges")]
    types = reader.fields["tokenizer.ggml.token_type"]
    types = [int(types.parts[i][0]) for i in types.data]
    name = lambda key: tokens[_scalar(reader, key)]  # noqa: E731
    bpe = models.BPE(
        vocab={t: i for i, t in enumerate(tokens)}, merges=merges, unk_token=name("tokenizer.ggml.unknown_token_id"),
        byte_fallback=True, fuse_unk=True,
    )
    tok = Tokenizer(bpe)
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    # GGUF token types 3 (control) and 4 (user-defined) are the specials.
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty in (3, 4)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=name("tokenizer.ggml.bos_token_id"), eos_token=name("tokenizer.ggml.eos_token_id"),
        pad_token=name("tokenizer.ggml.padding_token_id"), unk_token=name("tokenizer.ggml.unknown_token_id"),
    )
    fast.chat_template = _scalar(reader, "tokenizer.chat_template")
    fast.save_pretrained(out)


def build(name: str, gguf_dir: Path, out: Path) -> None:
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if name == "gemma4":
        convert_gemma4(gguf_dir / TOKENIZERS[name], tmp)
    else:
        convert_hf(gguf_dir, TOKENIZERS[name], tmp)
        if name == "llama3":
            drop_tokens_from(tmp, LLAMA3_VOCAB)
    tmp.rename(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", default=list(TOKENIZERS), help=f"subset of {list(TOKENIZERS)}")
    args = parser.parse_args(argv)
    unknown = set(args.names) - set(TOKENIZERS)
    if unknown:
        parser.error(f"unknown tokenizers {sorted(unknown)}")
    out_root = root()
    todo = [n for n in args.names if not (out_root / n / "tokenizer.json").exists()]
    for n in sorted(set(args.names) - set(todo)):
        print(f"{out_root / n}: cached")
    if not todo:
        return 0
    out_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        models = llamacpp_sdist.extract(MODELS, work / "models")
        for n in todo:
            t = time.time()
            build(n, models, out_root / n)
            print(f"{out_root / n}: built in {time.time() - t:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
