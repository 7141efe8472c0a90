"""Training throughput: our trainer against TRL's SFTTrainer + peft, side by side in one process.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/train_throughput.py [--rounds 3] [--steps 12] [--device cpu|cuda]
    # a shipped architecture at real width (random init), e.g. the 70B's at 4 of its 80 layers:
    python benchmarks/train_throughput.py --device cuda --precision bf16 --arch configs/models/llama33_70b.yaml --layers 4

Both trainers get the same base model (a random-init Llama built here), the same tokenized
samples (our assembler's ids and loss mask; TRL receives them pre-tokenized), the same activated
LoRA config, batch size, micro-batch, learning rate and precision, no activation checkpointing and no
packing (packing is wrong for aLoRA). Rounds alternate which trainer runs first, so machine load
that comes and goes hits both. Throughput is real (non-padding) tokens per second over the
optimizer steps after the first; padding waste is padded slots / all slots fed to the model, and
slots per second (padding included) separates the gain from less padding from the rest.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the record generator the trainer's tests use

WORDS = "the user asked which shoes to buy and I recommended the trail runner because it fits the budget".split()


def build_model(out: Path, args) -> None:
    from realsize import arch_model, cached_tokenizer
    from train_fixtures import make_records

    from splitpersona.tiny import tiny_llama, train_tokenizer

    tok = cached_tokenizer(args.tokenizer) if args.arch else None
    if tok is None:
        corpus = [r.user + " " + r.response + " " + r.review for r in make_records(6)] + [" ".join(WORDS)] * 20
        tok = train_tokenizer(corpus * 10 + [f"item {i}" for i in range(200)], 1024)
    if args.arch:
        dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
        model = arch_model(args.arch, tok, layers=args.layers, dtype=dtype, device=args.device)
    else:
        # Untied input and output embeddings, like Llama-3.3-70B and Qwen3-8B. (With tied ones TRL 1.16's fused LM
        # head cannot read peft's trainable-token wrapper on lm_head and fails.)
        model = tiny_llama(
            tok, hidden_size=args.hidden, num_layers=args.layers or 4, num_heads=8, num_kv_heads=4,
            intermediate_size=args.hidden * 3, tie_word_embeddings=False,
        )
    tok.save_pretrained(out)
    model.save_pretrained(out)
    del model
    _reset_peak(args.device)


def _reset_peak(device: str) -> None:
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_gib(device: str) -> float | None:
    """Peak memory the run allocated on the GPU (None on CPU, where torch does not count it)."""
    return torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None


def build_records(path: Path, n_tasks: int) -> None:
    """Responses of very different lengths, as in real data, so padding matters."""
    import random

    from train_fixtures import make_records, write_records

    rng = random.Random(0)
    records = []
    for r in make_records(n_tasks):
        filler = " ".join(rng.choice(WORDS) for _ in range(rng.choice([10, 40, 120, 300])))
        records.append(r.model_copy(update={"response": r.response + " " + filler}))
    write_records(path, records)


def ours(base: Path, data: Path, out: Path, args) -> dict:
    from splitpersona.config import load_config
    from splitpersona.training.config import TrainConfig
    from splitpersona.training.plan import GIB, make_plan
    from splitpersona.training.train import train

    overrides = [
        f"base_model={base}", f"data.train_files=[{data}]", f"output_dir={out}", "data.val_fraction=0",
        f"batch_size={args.batch_size}", f"micro_batch_size={args.micro_batch_size}", "epochs=1",
        f"stop_after_steps={args.steps}", "gradient_checkpointing=false", "optim.lr=1e-4", f"max_length={args.max_length}",
        f"precision={args.precision}", "checkpoints_per_epoch=1",
    ]
    cfg = load_config(TrainConfig, REPO / "configs/train/tiny_cpu.yaml", overrides)
    _reset_peak(args.device)
    run_dir = train(cfg)
    peak = _peak_gib(args.device)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "loss" in r][1:]
    tokens = sum(r["tokens"] for r in rows)
    padded = sum(r["tokens"] * r["padding_frac"] / (1 - r["padding_frac"]) for r in rows)
    seconds = sum(r["step_time_s"] for r in rows)
    return {"tokens_per_s": tokens / seconds, "slots_per_s": (tokens + padded) / seconds, "padding_frac": padded / (tokens + padded),
            "peak_gib": peak, "plan_gib": make_plan(cfg).total / GIB}


def trl(base: Path, data: Path, out: Path, args) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from splitpersona.adapter import LoraSettings, build_lora_config
    from splitpersona.assemble import FormatConfig
    from splitpersona.token import TokenConfig, fit_embeddings, setup_tokenizer
    from splitpersona.training.config import DataConfig
    from splitpersona.training.data import prepare_data

    tok = AutoTokenizer.from_pretrained(base)
    tokens = setup_tokenizer(tok, TokenConfig())
    prepared = prepare_data(DataConfig(train_files=[str(data)]), 0, tok, FormatConfig(), tokens, args.max_length)
    dataset = Dataset.from_list([{"input_ids": s.input_ids, "completion_mask": s.loss_mask} for s in prepared.train])
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    fit_embeddings(model, tok, tokens)
    lora = build_lora_config(LoraSettings(r=8, alpha=8), lora_mask=True, tokens=tokens)

    class Meter(TrainerCallback):
        def __init__(self):
            self.ends: list[float] = []

        def on_step_end(self, *a, **k):
            self.ends.append(time.perf_counter())

    meter = Meter()
    config = SFTConfig(
        output_dir=str(out), per_device_train_batch_size=args.micro_batch_size,
        gradient_accumulation_steps=args.batch_size // args.micro_batch_size, learning_rate=1e-4,
        max_steps=args.steps, gradient_checkpointing=False, packing=False, max_length=args.max_length,
        report_to="none", save_strategy="no", eval_strategy="no", logging_steps=1, use_cpu=args.device == "cpu",
        bf16=args.precision == "bf16", dataloader_num_workers=0, seed=0, disable_tqdm=True,
    )
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tok, peft_config=lora,
                         callbacks=[meter])
    collate = trainer.data_collator
    counts = {"real": [], "slots": []}

    def counting(features):
        batch = collate(features)
        counts["real"].append(int(batch["attention_mask"].sum()))
        counts["slots"].append(batch["input_ids"].numel())
        return batch

    trainer.data_collator = counting
    _reset_peak(args.device)
    trainer.train()
    peak = _peak_gib(args.device)
    accum = args.batch_size // args.micro_batch_size
    real = [sum(counts["real"][i * accum : (i + 1) * accum]) for i in range(args.steps)]
    slots = [sum(counts["slots"][i * accum : (i + 1) * accum]) for i in range(args.steps)]
    span = meter.ends[-1] - meter.ends[0]
    return {"tokens_per_s": sum(real[1:]) / span, "slots_per_s": sum(slots[1:]) / span, "padding_frac": 1 - sum(real[1:]) / sum(slots[1:]),
            "peak_gib": peak}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--micro-batch-size", type=int, default=4)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=None, help="Depth: 4 for the tiny Llama, the published one for --arch.")
    p.add_argument("--arch", help="A configs/models/*.yaml architecture at its real width (random init) instead of the tiny Llama.")
    p.add_argument("--tokenizer", help="With --arch: the cached real tokenizer to use if present (qwen2, llama3).")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--json", type=Path, help="Also write the figures here.")
    return p


def run(args) -> dict:
    os.environ.setdefault("WANDB_MODE", "disabled")
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        build_model(tmp / "base", args)
        build_records(tmp / "records.jsonl", n_tasks=max(16, args.steps * args.batch_size // 2 + 8))
        results = {"ours": [], "trl": []}
        for r in range(args.rounds):
            order = [("ours", ours), ("trl", trl)] if r % 2 == 0 else [("trl", trl), ("ours", ours)]
            for name, fn in order:
                res = fn(tmp / "base", tmp / "records.jsonl", tmp / f"{name}{r}", args)
                results[name].append(res)
                print(f"round {r} {name:4s} {res['tokens_per_s']:9.0f} tok/s  {res['slots_per_s']:9.0f} slots/s  "
                      f"padding {res['padding_frac']:.1%}", flush=True)
    med = {k: statistics.median(x["tokens_per_s"] for x in v) for k, v in results.items()}
    slots = {k: statistics.median(x["slots_per_s"] for x in v) for k, v in results.items()}
    pad = {k: statistics.mean(x["padding_frac"] for x in v) for k, v in results.items()}
    ratios = [a["tokens_per_s"] / b["tokens_per_s"] for a, b in zip(results["ours"], results["trl"])]
    summary = {
        "ours_tokens_per_s": med["ours"], "trl_tokens_per_s": med["trl"], "ratio": med["ours"] / med["trl"],
        "round_ratios": ratios, "ours_padding_frac": pad["ours"], "trl_padding_frac": pad["trl"],
        "slot_ratio": slots["ours"] / slots["trl"], "args": vars(args),
        "ours_peak_gib": max((x["peak_gib"] or 0) for x in results["ours"]) or None,
        "trl_peak_gib": max((x["peak_gib"] or 0) for x in results["trl"]) or None,
        "plan_gib": results["ours"][0]["plan_gib"],
    }
    print(f"ours {med['ours']:.0f} tok/s, TRL {med['trl']:.0f} tok/s, ratio {summary['ratio']:.2f} "
          f"(rounds {', '.join(f'{x:.2f}' for x in ratios)}); padding ours {pad['ours']:.1%}, TRL {pad['trl']:.1%}; "
          f"padded slots/s ratio {summary['slot_ratio']:.2f}")
    if summary["ours_peak_gib"]:
        print(f"peak GPU memory: ours {summary['ours_peak_gib']:.1f} GiB, TRL {summary['trl_peak_gib']:.1f} GiB; "
              f"`spt train --plan` for ours: {summary['plan_gib']:.1f} GiB")
    if args.json:
        summary["args"] = {k: str(v) for k, v in summary["args"].items()}
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main() -> None:
    run(parser().parse_args())


if __name__ == "__main__":
    main()
