"""Review latency: a masked persona on the main model's KV cache vs re-reading the conversation.

    OMP_NUM_THREADS=1 python benchmarks/review_latency.py [--lengths 256 2048] [--new-tokens 32] [--batches 1 8 32]
    # a shipped architecture at real size (random init), in bf16 on a GPU:
    python benchmarks/review_latency.py --arch configs/models/qwen3_8b.yaml --tokenizer qwen2 --device cuda --lengths 2048 8192

For each conversation length the script times one review (or a batch of `--rows`, each its own
conversation of that length) two ways, interleaved, on the same persona and prompts:
- reuse: `persona.review_batch(..., prefills=<the main model's caches>)`: run only the split token,
  the intervention and the review with the adapter, on the main model's cache (masked runs);
- re-prefill: `persona.review_batch(...)` with no cache: the whole conversation is read again, which
  is what an unmasked persona must always do.
The main model's own pass over the conversation is not timed: deployed, it has already happened.
Both ways produce the same tokens (checked), so the ratio is the price of re-reading. Figures are
medians of `--repeats` runs, reported as ratios measured side by side in one process. Beside them,
the arithmetic either way must do at least (FLOPs and bytes read, from the model's shapes), the
floor no implementation goes under.

With `--batches`, reviews/s of `max(--batches)` reviews on conversations of different lengths
(half of `--batch-length` to all of it), each on its own reused cache, `b` reviews a batch.

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
from splitpersona.conversation import Conversation
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


def response_of_length(persona: Persona, messages: list[dict], target: int, shift: int = 0) -> str:
    """A response whose conversation prefix (everything before the split token) is about `target` tokens;
    `shift` starts it at another word, for rows of a batch that differ."""
    words = " ".join(CORPUS).split()
    text = lambda n: " ".join(words[(i + shift) % len(words)] for i in range(n))  # noqa: E731
    lo, hi = 1, 8 * target
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if persona_start(persona.prompt(messages, text(mid))) <= target:
            lo = mid
        else:
            hi = mid - 1
    return text(lo)


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def arithmetic(
    persona: Persona, conversation: int, prompt: int, new: int, rates: tuple[float, float], rows: int = 1
) -> dict:
    """The least work of one review (reuse) and of the same review re-reading the conversation.

    Per forward: FLOPs, 2 per weight per token through the blocks, 4 * head width per attended key
    per layer, the LM head once (generate keeps one position's logits); bytes, every weight once and
    the cached keys and values it attends over. Both ways decode the same `new` tokens; the flag
    probability's few forced tokens are left out of both. The time floor is the roofline: each
    forward takes at least its FLOPs at the machine's matmul rate or its bytes at its weight-reading
    rate, whichever is longer (`rates`, measured on this model's weights in the same run). With
    `rows` reviews in a batch, the FLOPs and the cache read are per row, the weights read once.
    """
    base = persona.model.get_base_model()
    cfg = base.config
    layers, heads = cfg.num_hidden_layers, cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    size = base.lm_head.weight.element_size()
    matrices = [p for p in base.model.layers.parameters() if p.dim() == 2]
    block, block_bytes = sum(p.numel() for p in matrices), sum(p.numel() * p.element_size() for p in matrices)
    head = base.lm_head.weight.numel()
    kv_per_token = 2 * layers * cfg.num_key_value_heads * head_dim * size
    flop_rate, byte_rate = rates

    def cost(cached: int) -> tuple[float, float, float]:
        forwards = [(prompt - cached, cached)] + [(1, prompt + k) for k in range(new - 1)]  # (tokens fed, cached)
        flops = read = seconds = 0.0
        for fed, past in forwards:
            f = rows * (2 * block * fed + 4 * layers * heads * head_dim * sum(range(past + 1, past + fed + 1)) + 2 * head)
            b = block_bytes + head * size + rows * kv_per_token * past
            flops, read, seconds = flops + f, read + b, seconds + max(f / flop_rate, b / byte_rate)
        return flops, read, seconds

    (f_reuse, b_reuse, s_reuse), (f_fresh, b_fresh, s_fresh) = cost(conversation), cost(0)
    return {"reuse_gflop": f_reuse / 1e9, "reprefill_gflop": f_fresh / 1e9, "reuse_mb": b_reuse / 1e6,
            "reprefill_mb": b_fresh / 1e6, "reuse_floor_ms": 1e3 * s_reuse, "reprefill_floor_ms": 1e3 * s_fresh}


def machine_rates(persona: Persona, tokens: int = 512, repeats: int = 3) -> tuple[float, float]:
    """FLOP/s of this model's block matmuls on `tokens` rows, and bytes/s of reading each weight once for one row.

    The two rates a review's forwards are bound by: a prefill multiplies many tokens by each weight,
    a decode step reads each weight for one token. Best of `repeats`, on the model's own weights.
    """
    base = persona.model.get_base_model()
    weights = [p for p in base.model.layers.parameters() if p.dim() == 2] + [base.lm_head.weight]
    block = weights[:-1]
    width = max(w.shape[1] for w in weights)
    inputs = {w.dtype: torch.randn(tokens, width, dtype=w.dtype, device=w.device) for w in weights}  # LoRA may be fp32

    def best(rows: int, ws) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            with torch.no_grad():
                for w in ws:
                    inputs[w.dtype][:rows, : w.shape[1]] @ w.T
            if weights[0].device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        return min(times)

    flops = 2 * tokens * sum(w.numel() for w in block) / best(tokens, block)
    read = sum(w.numel() * w.element_size() for w in weights) / best(1, weights)
    return flops, read


def throughput(persona: Persona, messages: list[dict], length: int, batches: list[int]) -> list[tuple[int, float]]:
    """Reviews/s at each batch size over the same conversations of different lengths, caches reused."""
    n = max(batches)
    lengths = [length // 2 + k * length // (2 * n) for k in range(n)]
    convs = [Conversation(messages=messages, response=response_of_length(persona, messages, t)) for t in lengths]
    persona.batch_size = n
    prefills = persona.prefill_batch(convs)
    rows = []
    for b in batches:
        persona.batch_size = b
        persona.review_batch(convs[:b], prefills=prefills[:b])  # warm-up
        elapsed, _ = timed(lambda: persona.review_batch(convs, prefills=prefills))
        rows.append((b, n / elapsed))
    return rows


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
    ap.add_argument("--rows", type=int, default=1, help="Reviews timed together, one batch, each its own conversation.")
    ap.add_argument("--batches", type=int, nargs="*", default=[], help="Batch sizes of reviews/s, e.g. 1 8 32.")
    ap.add_argument("--batch-length", type=int, default=512, help="Longest conversation of the reviews/s set.")
    ap.add_argument("--json", type=Path, help="Also write the rows here.")
    return ap


def run(args) -> list[dict]:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        persona = Persona.load(build_run(Path(tmp), args), max_new_tokens=args.new_tokens, dtype=args.dtype,
                               device=args.device)
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}]
        rows = []
        persona.batch_size = args.rows
        for target in args.lengths:
            convs = [Conversation(messages=messages, response=response_of_length(persona, messages, target, shift=r))
                     for r in range(args.rows)]
            prefills = persona.prefill_batch(convs)
            persona.review_batch(convs, prefills=prefills)  # warm-up
            reuse, fresh = [], []
            for _ in range(args.repeats):
                t1, a = timed(lambda: persona.review_batch(convs, prefills=prefills))
                t2, b = timed(lambda: persona.review_batch(convs))
                if [x.text for x in a] != [x.text for x in b]:
                    raise SystemExit(f"length {target}: reuse and re-prefill disagree: {a[0].text!r} vs {b[0].text!r}")
                reuse.append(t1)
                fresh.append(t2)
            rows.append((len(prefills[0].input_ids), a[0].prompt_tokens, max(x.generated_tokens for x in a),
                         statistics.median(reuse), statistics.median(fresh)))
        rates = throughput(persona, messages, args.batch_length, args.batches) if args.batches else []
        machine = machine_rates(persona)
        floors = [arithmetic(persona, conv, prompt, new, machine, args.rows) for conv, prompt, new, _, _ in rows]
    model = args.arch or f"tiny Llama: hidden {args.hidden}, {args.layers or 4} layers"
    print(f"{model}; {args.dtype} on {args.device}; {args.new_tokens} new tokens max; "
          f"{args.rows} review(s) a batch; median of {args.repeats}; torch threads {torch.get_num_threads()}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; measured rates: block matmuls "
          f"{machine[0] / 1e9:.0f} GFLOP/s, weight reads {machine[1] / 1e9:.1f} GB/s\n")
    print("| conversation tokens | prompt tokens | review tokens | reuse (ms) | re-prefill (ms) | re-prefill / reuse "
          "| GFLOP reuse / re-prefill (ratio) | MB read reuse / re-prefill (ratio) "
          "| roofline ms: reuse / re-prefill (ratio) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (conv, prompt, new, t_reuse, t_fresh), f in zip(rows, floors):
        print(f"| {conv} | {prompt} | {new} | {1e3 * t_reuse:.1f} | {1e3 * t_fresh:.1f} | {t_fresh / t_reuse:.2f} "
              f"| {f['reuse_gflop']:.1f} / {f['reprefill_gflop']:.1f} ({f['reprefill_gflop'] / f['reuse_gflop']:.2f}) "
              f"| {f['reuse_mb']:.0f} / {f['reprefill_mb']:.0f} ({f['reprefill_mb'] / f['reuse_mb']:.2f}) "
              f"| {f['reuse_floor_ms']:.0f} / {f['reprefill_floor_ms']:.0f} "
              f"({f['reprefill_floor_ms'] / f['reuse_floor_ms']:.2f}) |")
    first, last = (rows[0], floors[0]), (rows[-1], floors[-1])
    print(f"\nreview cost, longest vs shortest conversation ({last[0][0]} vs {first[0][0]} tokens): "
          f"reuse {last[0][3] / first[0][3]:.2f}x (its arithmetic floor "
          f"{last[1]['reuse_gflop'] / first[1]['reuse_gflop']:.2f}x in FLOPs, "
          f"{last[1]['reuse_mb'] / first[1]['reuse_mb']:.2f}x in bytes, "
          f"{last[1]['reuse_floor_ms'] / first[1]['reuse_floor_ms']:.2f}x on the roofline), "
          f"re-prefill {last[0][4] / first[0][4]:.2f}x")
    if rates:
        print(f"\nreviews/s, {max(args.batches)} conversations of {args.batch_length // 2}-{args.batch_length} tokens, "
              "each on its own reused cache:\n")
        print("| batch | reviews/s |\n|---:|---:|")
        for b, rate in rates:
            print(f"| {b} | {rate:.2f} |")
    out = [{"conversation_tokens": c, "prompt_tokens": p, "review_tokens": n, "reuse_ms": 1e3 * a,
            "reprefill_ms": 1e3 * b, **f} for (c, p, n, a, b), f in zip(rows, floors)]
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return out


def main() -> None:
    run(parser().parse_args())


if __name__ == "__main__":
    main()
