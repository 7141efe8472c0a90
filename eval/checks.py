"""`spt eval checks`: zero alignment tax and KV reuse, measured on a masked persona run.

Tax: the base model as saved (no peft) against the persona with its adapter on, over plain
conversations (no split token, so the gate stays shut): greedy answers must be identical and
logits bit-identical in every column the run left untouched. Columns past the base vocabulary
are new, and the rows the run initialised for its added tokens (which a padded vocabulary such
as Qwen3's holds inside `vocab_size`) are excluded and named.
Reuse: the review continuing the main model's own cache of prompt and answer against the review
computed from scratch. In fp32 their text must be identical; in half precision the reused cache
meets other matrix shapes and kernels, so a near tie may flip a greedy token without anything
being wrong: there they agree when their logits differ by at most a tolerance, up to and
including the first step where their tokens part.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from splitpersona.conversation import Message
from splitpersona.io import DataError, atomic_write, read_jsonl, write_json
from splitpersona.records import TrainingRecord
from splitpersona.run import RUN_FILE, load_run_info

JSON_FILE = "checks.json"
MARKDOWN_FILE = "checks.md"
# Largest reuse logit difference that still agrees, by dtype: a few bf16/fp16 steps at logit magnitudes of 10-30
# (None: the review text must be identical).
REUSE_TOLERANCE = {torch.float32: None, torch.bfloat16: 1.0, torch.float16: 0.25}


def record_conversations(path: str | os.PathLike[str], n: int) -> tuple[list[list[Message]], list[str]]:
    """The first `n` records' conversations (every turn before the response) and interventions."""
    records = read_jsonl(path, TrainingRecord)[:n]
    if not records:
        raise DataError(path, "holds no records to check on")
    return [r.messages for r in records], [r.intervention for r in records]


def run_records(run_dir: str | os.PathLike[str]) -> Path:
    """The run's first training file: what `spt eval checks` reads when no records are given."""
    files = load_run_info(run_dir).train_config.get("data", {}).get("train_files") or []
    if not files:
        raise DataError(Path(run_dir) / RUN_FILE, "records no train_files; pass --records")
    return Path(files[0])


def run_checks(
    run_dir: str | os.PathLike[str],
    conversations: Sequence[Sequence[Message | dict]],
    interventions: Sequence[str],
    *,
    max_new_tokens: int,
    base_model: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    tolerance: float | None = None,
) -> dict[str, Any]:
    """Both checks on the run's persona, one conversation and intervention at a time.

    `base_model` overrides the base model recorded in run.json and `device`/`dtype` place both
    copies, as in `Persona.load`; `tolerance` overrides the dtype's `REUSE_TOLERANCE`.
    """
    from transformers import AutoModelForCausalLM

    from splitpersona.persona import Persona, _dtype
    from splitpersona.token import initialised_ids

    if len(conversations) != len(interventions):
        raise ValueError(f"{len(interventions)} interventions for {len(conversations)} conversations")
    run_dir = Path(run_dir)
    info = load_run_info(run_dir)
    if not info.lora_mask:
        raise DataError(run_dir / RUN_FILE, "the checks need a masked persona (lora_mask=true)")
    torch_dtype = _dtype(dtype)
    tolerance = REUSE_TOLERANCE[torch_dtype] if tolerance is None else tolerance
    base = AutoModelForCausalLM.from_pretrained(str(base_model or info.base_model), dtype=torch_dtype,
                                                device_map=device).eval()
    persona = Persona.load(run_dir, base_model, dtype=torch_dtype, device=device, max_new_tokens=max_new_tokens,
                           batch_size=1)
    vocab = base.config.vocab_size
    excluded = [i for i in initialised_ids(info.tokens) if i < vocab]
    kept = torch.tensor([c for c in range(vocab) if c not in set(excluded)])
    same_logits = same_answers = 0
    worst = 0.0
    with torch.no_grad():
        kw = {"max_new_tokens": max_new_tokens, "do_sample": False, "pad_token_id": persona.pad_id}
        for chat in conversations:
            ids = torch.tensor([persona.conversation_ids(chat)])
            at_base, at_persona = ids.to(base.device), ids.to(persona.device)
            ref = base(input_ids=at_base).logits[..., kept.to(base.device)].cpu()
            ref_ans = base.generate(input_ids=at_base, attention_mask=torch.ones_like(at_base), **kw).cpu()
            with persona.adapter_mode("on"):
                got = persona.model(input_ids=at_persona).logits[..., kept.to(persona.device)].cpu()
                got_ans = persona.model.generate(input_ids=at_persona, attention_mask=torch.ones_like(at_persona), **kw).cpu()
            same_logits += torch.equal(ref, got)
            worst = max(worst, (ref.float() - got.float()).abs().max().item())
            same_answers += torch.equal(ref_ans, got_ans)
        same_reviews = agreeing = 0
        reuse_worst = 0.0
        for chat, question in zip(conversations, interventions):
            answer = persona.answer(chat)
            reused = persona.review(chat, answer.text, question, prefill=answer.prefill, return_logits=True)
            fresh = persona.review(chat, answer.text, question, return_logits=True)
            diff = _logit_diff_until_parting(reused.logits, fresh.logits)
            reuse_worst = max(reuse_worst, diff)
            same_reviews += reused.text == fresh.text
            agreeing += reused.text == fresh.text if tolerance is None else diff <= tolerance
    return {
        "conversations": len(conversations),
        "device": str(persona.device),
        "dtype": str(torch_dtype).removeprefix("torch."),
        "alignment_tax": {
            "logits_bit_identical": same_logits, "answers_identical": same_answers, "max_abs_logit_diff": worst,
            "columns_compared": len(kept),
            "columns_excluded": {str(i): persona.tokenizer.convert_ids_to_tokens(i) for i in excluded},
            "columns_added": persona.model.get_input_embeddings().weight.shape[0] - vocab,
        },
        "kv_reuse": {"reviews_identical": same_reviews, "reviews_agree": agreeing, "max_abs_logit_diff": reuse_worst,
                     "tolerance": tolerance},
        "leaked_hooks": persona.leaked_hooks(),
    }


def _logit_diff_until_parting(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest difference of two greedy generations' logits over the steps read on the same prefix: every
    step up to and including the first where their chosen tokens differ."""
    steps = min(len(a), len(b))
    if steps == 0:
        return 0.0
    a, b = a[:steps].float(), b[:steps].float()
    parted = (a.argmax(-1) != b.argmax(-1)).nonzero()
    last = int(parted[0]) + 1 if len(parted) else steps
    return (a[:last] - b[:last]).abs().max().item()


def verdicts(result: dict[str, Any]) -> dict[str, bool]:
    """Each check's pass/fail: every conversation identical, and no adapter hook left behind."""
    n, tax = result["conversations"], result["alignment_tax"]
    return {
        "logits bit-identical": tax["logits_bit_identical"] == n,
        "answers identical": tax["answers_identical"] == n,
        "reviews agree on a reused cache": result["kv_reuse"]["reviews_agree"] == n,
        "no leaked hooks": result["leaked_hooks"] == 0,
    }


def write_checks(result: dict[str, Any], out: str | os.PathLike[str], **context: Any) -> tuple[Path, Path]:
    """checks.json (the result, `context` such as the run and records, the verdicts) and checks.md."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    passed = verdicts(result)
    js, md = out / JSON_FILE, out / MARKDOWN_FILE
    write_json(js, {**context, **result, "passed": passed})
    n, tax, reuse = result["conversations"], result["alignment_tax"], result["kv_reuse"]
    lines = [
        "# Zero alignment tax and KV reuse",
        "",
        *(f"- {k}: {json.dumps(v) if not isinstance(v, str) else v}" for k, v in context.items()),
        f"- conversations: {n}",
        f"- {result['dtype']} on {result['device']}",
        f"- logits bit-identical: {tax['logits_bit_identical']}/{n} (max abs diff {tax['max_abs_logit_diff']:g}, "
        f"{tax['columns_compared']} columns compared, {tax['columns_added']} added, excluded as the run's own rows: "
        f"{json.dumps(tax['columns_excluded']) if tax['columns_excluded'] else 'none'})",
        f"- greedy answers identical: {tax['answers_identical']}/{n}",
        f"- reviews on a reused cache: {reuse['reviews_identical']}/{n} identical, {reuse['reviews_agree']}/{n} agree "
        f"(max abs logit diff {reuse['max_abs_logit_diff']:g}, "
        + ("identical text required)" if reuse["tolerance"] is None else f"tolerance {reuse['tolerance']:g})"),
        f"- leaked adapter hooks: {result['leaked_hooks']}",
        "",
        "**" + ("all checks passed" if all(passed.values()) else
                "FAILED: " + ", ".join(k for k, ok in passed.items() if not ok)) + "**",
        "",
    ]
    with atomic_write(md) as fh:
        fh.write("\n".join(lines))
    return js, md
