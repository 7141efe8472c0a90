"""Review latency: a masked persona on the main model's KV cache vs re-reading the conversation.

    OMP_NUM_THREADS=1 python benchmarks/review_latency.py [--lengths 256 1024 2048] [--new-tokens 32]
    # a shipped architecture at real size (random init), in bf16 on a GPU:
    python benchmarks/review_latency.py --arch configs/models/qwen3_8b.yaml --tokenizer qwen2 --device cuda --lengths 2048 8192

For each conversation length the script times one review two ways, interleaved, on the same
persona and prompt:
- reuse: `persona.review(..., prefill=<the main model's cache>)`: copy the cache, then run only
  the split token, the intervention and the review with the adapter (masked runs);
- re-prefill: `persona.review(...)` with no cache: the whole conversation is read again, which is
  what an unmasked persona must always do.
The main model's own pass over the conversation is not timed: deployed, it has already happened.
Both ways produce the same tokens (checked), so the ratio is the price of re-reading. Figures are
medians of `--repeats` runs, reported as ratios measured side by side in one process.

The model is a tiny random Llama (splitpersona.tiny), or with `--arch` a shipped architecture at
real size, with a random-weight masked adapter: the cost structure, not the weights, is what is
measured.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from splitpersona.adapter import LoraSettings, build_lora_config
from splitpersona.assemble import FormatConfig
from splitpersona.persona import Persona, persona_start
from splitpersona.run import ADAPTER_DIR, TOKENIZER_DIR, RunInfo, provenance, save_run_info
from splitpersona.tiny import tiny_llama, train_tokenizer
from splitpersona.token import TokenConfig, fit_embeddings, setup_tokenizer

CORPUS = [
    "The user asked which shoes to buy and I compared three trail runners by price, weight and grip.",
    "Statistics show that many people prefer tea, although the survey behind that claim was small.",
    "Here is a careful answer with the trade-offs laid out so the user can decide for themselves.",
    "You are a helpful assistant. Answer the question clearly and briefly.",
]
SYSTEM = "You are a helpful assistant. Answer the question clearly and briefly."
USER = "Which running shoes should I buy for rocky trails on a small budget?"


def build_run(root: Path, args) -> Path:
    from peft import get_peft_model
    from realsize import arch_model, cached_tokenizer

    base_dir, run_dir = root / "base", root / "run"
    tok = cached_tokenizer(args.tokenizer) if args.arch else None
    if tok is None:
        tok = train_tokenizer([line for _ in range(30) for line in CORPUS] + [f"item {i}" for i in range(300)], 1024)
    if args.arch:
        model = arch_model(args.arch, tok, layers=args.layers, dtype=getattr(torch, args.dtype), device=args.device)
    else:
        model = tiny_llama(tok, hidden_size=args.hidden, num_layers=args.layers or 4, num_heads=8, num_kv_heads=4,
                           intermediate_size=4 * args.hidden, seed=0)
    tok.save_pretrained(base_dir)
    model.save_pretrained(base_dir)
    tokens = setup_tokenizer(tok, TokenConfig())
    fit_embeddings(model, tok, tokens)
    peft_model = get_peft_model(model, build_lora_config(LoraSettings(r=16), lora_mask=True, tokens=tokens))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in peft_model.parameters():
            if p.requires_grad:
                p.add_((torch.randn(p.shape, generator=gen) * 0.05).to(p.device, p.dtype))
    peft_model.save_pretrained(run_dir / ADAPTER_DIR, save_embedding_layers=False)
    tok.save_pretrained(run_dir / TOKENIZER_DIR)
    save_run_info(run_dir, RunInfo(
        base_model=str(base_dir), tokens=tokens, format=FormatConfig(), lora_mask=True, max_length=2 * max(args.lengths) + 1024,
        precision="bf16" if args.dtype == "bfloat16" else "fp32", train_config={"note": "benchmark: random adapter weights"}, provenance=provenance(),
    ))
    return run_dir


def response_of_length(persona: Persona, messages: list[dict], target: int) -> str:
    """A response whose conversation prefix (everything before the split token) is about `target` tokens."""
    words = " ".join(CORPUS).split()
    lo, hi = 1, 8 * target
    while lo < hi:
        mid = (lo + hi + 1) // 2
        text = " ".join(words[i % len(words)] for i in range(mid))
        if persona_start(persona.prompt(messages, text)) <= target:
            lo = mid
        else:
            hi = mid - 1
    return " ".join(words[i % len(words)] for i in range(lo))


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 2048])
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=None, help="Depth: 4 for the tiny Llama, the published one for --arch.")
    ap.add_argument("--arch", help="A configs/models/*.yaml architecture at real size (random init) instead of the tiny Llama.")
    ap.add_argument("--tokenizer", help="With --arch: the cached real tokenizer to use if present (qwen2, llama3).")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--json", type=Path, help="Also write the rows here.")
    return ap


def run(args) -> list[dict]:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        persona = Persona.load(build_run(Path(tmp), args), max_new_tokens=args.new_tokens, dtype=args.dtype,
                               device=args.device)
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}]
        rows = []
        for target in args.lengths:
            response = response_of_length(persona, messages, target)
            prefill = persona.prefill(messages, response)
            persona.review(messages, response, prefill=prefill)  # warm-up
            reuse, fresh = [], []
            for _ in range(args.repeats):
                t1, a = timed(lambda: persona.review(messages, response, prefill=prefill))
                t2, b = timed(lambda: persona.review(messages, response))
                if a.text != b.text:
                    raise SystemExit(f"length {target}: reuse and re-prefill disagree: {a.text!r} vs {b.text!r}")
                reuse.append(t1)
                fresh.append(t2)
            rows.append((len(prefill.input_ids), a.prompt_tokens, a.generated_tokens,
                         statistics.median(reuse), statistics.median(fresh)))
    model = args.arch or f"tiny Llama: hidden {args.hidden}, {args.layers or 4} layers"
    print(f"{model}; {args.dtype} on {args.device}; {args.new_tokens} new tokens max; "
          f"median of {args.repeats}; torch threads {torch.get_num_threads()}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores\n")
    print("| conversation tokens | prompt tokens | review tokens | reuse (ms) | re-prefill (ms) | re-prefill / reuse |")
    print("|---:|---:|---:|---:|---:|---:|")
    for conv, prompt, new, t_reuse, t_fresh in rows:
        print(f"| {conv} | {prompt} | {new} | {1e3 * t_reuse:.1f} | {1e3 * t_fresh:.1f} | {t_fresh / t_reuse:.2f} |")
    first, last = rows[0], rows[-1]
    print(f"\nreview cost, longest vs shortest conversation ({last[0]} vs {first[0]} tokens): "
          f"reuse {last[3] / first[3]:.2f}x, re-prefill {last[4] / first[4]:.2f}x")
    out = [{"conversation_tokens": c, "prompt_tokens": p, "review_tokens": n, "reuse_ms": 1e3 * a, "reprefill_ms": 1e3 * b}
           for c, p, n, a, b in rows]
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return out


def main() -> None:
    run(parser().parse_args())


if __name__ == "__main__":
    main()
