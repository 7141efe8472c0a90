"""The first GPU machine's checks, in one run of under 8 minutes on one H100 (or H200) with nothing downloaded.

    benchmarks/gpu_check.sh            # real sizes, bf16 on the GPU
    benchmarks/gpu_check.sh --toy      # the same steps at toy size on the CPU, in seconds

Random-init models at real width from configs/models/: Qwen3-8B whole, and Llama-3.3-70B's width at
4 of its 80 layers. For each: our trainer against TRL + peft on the same samples (tokens/s, peak GPU
memory; benchmarks/train_throughput.py), with `spt train --plan`'s estimate for our run beside the
measured peak (the plan counts logits at every position, an upper bound: our trainer keeps them
from the first target on). Then our trainer with the shipped Qwen3-8B config's engine (DeepSpeed ZeRO-2,
bf16, the aLoRA gate under activation checkpointing) for two steps at that width with 2 layers, and
`spt eval checks` on its run in bf16. Then a review on Qwen3-8B with the main model's KV cache reused
against re-reading the conversation, at 2k and 8k tokens (benchmarks/review_latency.py). Each row
survives the others' failures, an exit included. The rows are markdown for docs/benchmarks.md,
written to $OUT/gpu_check.md when OUT is set, else printed. The packages the GPU image lacks come
from `make gpu-bundle` (tools/gpu_bundle.py), which gpu_check.sh installs first.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import review_latency
import torch
import train_throughput
import yaml

from splitpersona.eval.report import md_table

REPO = Path(__file__).resolve().parents[1]
# name, architecture, layers (None: as published), cached real tokenizer
TRAIN_MODELS = [
    ("Qwen3-8B", "configs/models/qwen3_8b.yaml", None, "qwen2"),
    ("Llama-3.3-70B width, 4 of 80 layers", "configs/models/llama33_70b.yaml", 4, "llama3"),
]
REVIEW_MODEL = ("Qwen3-8B", "configs/models/qwen3_8b.yaml", "qwen2")
TOY_SHAPE = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
             "head_dim": 16, "vocab_size": 256}
REAL = {"train": ["--steps", "6", "--batch-size", "8", "--micro-batch-size", "4", "--max-length", "1024"],
        "layers_cap": None, "lengths": ["2048", "8192"], "repeats": "3", "new_tokens": "32"}
TOY = {"train": ["--steps", "2", "--batch-size", "4", "--micro-batch-size", "2", "--max-length", "512"],
       "layers_cap": 2, "lengths": ["96", "192"], "repeats": "1", "new_tokens": "4"}


def gib(v: float | None) -> str | None:
    return None if v is None else f"{v:.2f}"


def toy_arch(path: str, out: Path) -> str:
    """The architecture file with its width shrunk to a toy's: same model type, same code path."""
    fields = yaml.safe_load((REPO / path).read_text())
    fields.update(TOY_SHAPE)
    out.write_text(yaml.safe_dump(fields))
    return str(out)


def engine_row(tmp: Path, name: str, arch: str, layers: int, tokenizer: str | None, device: str) -> list:
    """Our trainer in one process with the shipped Qwen3-8B config's engine (DeepSpeed ZeRO-2, bf16, the aLoRA
    gate under activation checkpointing) for two steps, then `spt eval checks` on its run in bf16: logits before
    the split token against the base model's, and reviews on the main model's reused cache."""
    from train_fixtures import read_metrics

    from splitpersona.config import load_config
    from splitpersona.eval.checks import record_conversations, run_checks
    from splitpersona.run import load_run_info
    from splitpersona.training.config import TrainConfig
    from splitpersona.training.engine import PRECISION_POLICY
    from splitpersona.training.train import train

    argv = ["--arch", arch, "--layers", str(layers), "--precision", "bf16", "--device", device]
    model_args = train_throughput.parser().parse_args(argv + (["--tokenizer", tokenizer] if tokenizer else []))
    train_throughput.build_model(tmp / "engine_base", model_args)
    records = tmp / "engine_records.jsonl"
    train_throughput.build_records(records, n_tasks=8)
    cfg = load_config(TrainConfig, REPO / "configs/train/qwen3_8b_zero2_1gpu.yaml", [
        f"base_model={tmp / 'engine_base'}", f"data.train_files=[{records}]", f"output_dir={tmp / 'engine_run'}",
        "data.val_fraction=0", "batch_size=4", "micro_batch_size=2", "epochs=1", "stop_after_steps=2", "max_length=512",
        "wandb.mode=disabled", *([] if tokenizer else ["chat_template.family=null"]),  # the toy tokenizer has no ChatML
    ])
    run_dir = train(cfg)
    info = load_run_info(run_dir)
    held = info.result["precision"]
    policy = "fp32, as the policy" if all(held[k] == v for k, v in PRECISION_POLICY.items()) else str(held)
    steps, _ = read_metrics(run_dir)
    chats, questions = record_conversations(records, 2)
    checks = run_checks(run_dir, chats, questions, max_new_tokens=8, device=device, dtype="bfloat16")
    n, tax, reuse = checks["conversations"], checks["alignment_tax"], checks["kv_reuse"]
    return [name, f"{info.result['steps']} ({sum(r['step_time_s'] for r in steps) / len(steps):.2f} s each)", policy,
            f"{tax['logits_bit_identical']}/{n} (max diff {tax['max_abs_logit_diff']:g})",
            f"{reuse['reviews_agree']}/{n} agree, {reuse['reviews_identical']}/{n} identical "
            f"(max diff {reuse['max_abs_logit_diff']:g}, tolerance {reuse['tolerance']:g})"]


def unmet(site: str) -> list[str]:
    """What the bundled packages require of the image's own that it does not hold: the bundle leaves the image's
    packages out (tools/gpu_image_packages.txt), so a version the image lacks shows here, not as a row failing."""
    dists = list(metadata.distributions(path=[site]))
    bundled = {canonicalize_name(d.metadata["Name"]) for d in dists}
    found = []
    for dist in dists:
        for req in map(Requirement, dist.requires or []):
            if canonicalize_name(req.name) in bundled or (req.marker and not req.marker.evaluate({"extra": ""})):
                continue
            try:
                have = metadata.version(req.name)
            except metadata.PackageNotFoundError:
                have = None
            if have is None or not req.specifier.contains(have, prereleases=True):
                found.append(f"{req} for {dist.metadata['Name']} (the image has {have or 'none'})")
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--toy", action="store_true", help="Toy widths and lengths on the CPU: checks the script, measures nothing.")
    args = ap.parse_args()
    os.chdir(REPO)
    sizes = TOY if args.toy else REAL
    device = "cpu" if args.toy else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no GPU visible: run with --toy to check the script on the CPU")
    where = torch.cuda.get_device_name() if device == "cuda" else "CPU (toy sizes)"
    started = time.time()
    train_rows, engine_rows, review_rows, failed = [], [], [], []

    site = os.environ.get("SPT_GPU_BUNDLE_SITE")
    bundled = sorted(f"{d.metadata['Name']} {d.version}" for d in metadata.distributions(path=[site])) if site else []
    missing = unmet(site) if site else []

    def report() -> str:
        """Written after every step, so a run cut short by its time limit still leaves what it measured."""
        text = "\n\n".join([
            (f"GPU check on {where}, {time.strftime('%Y-%m-%d')}, {time.time() - started:.0f} s "
             f"(`benchmarks/gpu_check.sh{' --toy' if args.toy else ''}`); random-init models, nothing downloaded."),
            f"installed from the bundle: {', '.join(bundled) if bundled else 'nothing'}",
            *([f"the image does not meet: {'; '.join(missing)} (`make gpu-bundle` with --pin NAME==VERSION carries it)"]
              if missing else []),
            md_table(["model", "trainer", "real tokens/s", "padding", "peak GiB", "`--plan` GiB"], train_rows),
            md_table(["model, ZeRO-2 bf16, aLoRA under activation checkpointing", "steps", "adapter trained in",
                      "logits identical before the split token", "reviews on a reused cache"], engine_rows),
            md_table(["model", "conversation tokens", "prompt tokens", "reuse (ms)", "re-prefill (ms)", "re-prefill / reuse"],
                     review_rows),
            *(f"failed: {f}" for f in failed),
        ]) + "\n"
        if os.environ.get("OUT"):
            path = Path(os.environ["OUT"]) / "gpu_check.md"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.with_suffix(".md.tmp").write_text(text)
            path.with_suffix(".md.tmp").replace(path)
        return text

    with tempfile.TemporaryDirectory() as tmp:
        for name, arch, layers, tok in TRAIN_MODELS:
            if args.toy:
                arch, layers = toy_arch(arch, Path(tmp) / Path(arch).name), sizes["layers_cap"]
            argv = ["--rounds", "1", "--device", device, "--precision", "bf16", "--arch", arch, *sizes["train"]]
            if not args.toy:  # a real tokenizer's 150k-row vocabulary would make the toy slow, not more thorough
                argv += ["--tokenizer", tok]
            if layers:
                argv += ["--layers", str(layers)]
            try:
                s = train_throughput.run(train_throughput.parser().parse_args(argv))
            except (Exception, SystemExit) as e:  # noqa: BLE001 - one model's failure must not cost the other measurements
                traceback.print_exc()
                failed.append(f"{name} training: {type(e).__name__}: {e}")
                report()
                continue
            label = f"{name}, bf16, LoRA r 8, batch {s['args']['batch_size']} (micro {s['args']['micro_batch_size']})"
            train_rows.append([label, "ours", f"{s['ours_tokens_per_s']:.0f}", f"{s['ours_padding_frac']:.1%}",
                               gib(s["ours_peak_gib"]), gib(s["plan_gib"])])
            train_rows.append([label, "TRL + peft", f"{s['trl_tokens_per_s']:.0f}", f"{s['trl_padding_frac']:.1%}",
                               gib(s["trl_peak_gib"]), None])
            train_rows.append([label, "**ours / TRL**", f"**{s['ratio']:.2f}**", None, None, None])
            report()
            if device == "cuda":
                torch.cuda.empty_cache()
        name, arch, tok = REVIEW_MODEL
        engine_layers = 2
        if args.toy:
            os.environ.setdefault("SPT_DS_SKIP_SHM_BUILD", "1")  # DeepSpeed's CPU collective, which training never uses
            arch_file, tok = toy_arch(arch, Path(tmp) / "engine.yaml"), None
        else:
            arch_file = arch
        try:
            engine_rows.append(engine_row(Path(tmp), f"{name} width, {engine_layers} layers", arch_file, engine_layers,
                                          tok, device))
        except (Exception, SystemExit) as e:  # noqa: BLE001 - reported in the file and by the exit status
            traceback.print_exc()
            failed.append(f"{name} ZeRO-2 engine and checks: {type(e).__name__}: {e}")
        report()
        if device == "cuda":
            torch.cuda.empty_cache()
        name, arch, tok = REVIEW_MODEL
        layers = None
        if args.toy:
            arch, layers = toy_arch(arch, Path(tmp) / "review.yaml"), sizes["layers_cap"]
        argv = ["--arch", arch, "--device", device, "--dtype", "bfloat16", "--lengths", *sizes["lengths"],
                "--repeats", sizes["repeats"], "--new-tokens", sizes["new_tokens"]]
        if layers:
            argv += ["--layers", str(layers)]
        if not args.toy:
            argv += ["--tokenizer", tok]
        try:
            for r in review_latency.run(review_latency.parser().parse_args(argv)):
                review_rows.append([name, r["conversation_tokens"], r["prompt_tokens"], f"{r['reuse_ms']:.1f}",
                                    f"{r['reprefill_ms']:.1f}", f"{r['reprefill_ms'] / r['reuse_ms']:.2f}"])
        except (Exception, SystemExit) as e:  # noqa: BLE001 - reported in the file and by the exit status
            traceback.print_exc()
            failed.append(f"{name} review: {type(e).__name__}: {e}")
    print(report())
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
