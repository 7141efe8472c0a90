"""`spt eval checks`: zero alignment tax and KV reuse, measured on a masked persona run.

Tax: the base model as saved (no peft) against the persona with its adapter on, over plain
conversations (no split token, so the gate stays shut): greedy answers must be identical and
logits bit-identical in every column the base model has (the added tokens' columns are new).
Reuse: the review continuing the main model's own cache of prompt and answer must equal the
review computed from scratch.
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
) -> dict[str, Any]:
    """Both checks on the run's persona, one conversation and intervention at a time.

    `base_model` overrides the base model recorded in run.json, as in `Persona.load`.
    """
    from transformers import AutoModelForCausalLM

    from splitpersona.persona import Persona

    if len(conversations) != len(interventions):
        raise ValueError(f"{len(interventions)} interventions for {len(conversations)} conversations")
    run_dir = Path(run_dir)
    info = load_run_info(run_dir)
    if not info.lora_mask:
        raise DataError(run_dir / RUN_FILE, "the checks need a masked persona (lora_mask=true)")
    base = AutoModelForCausalLM.from_pretrained(str(base_model or info.base_model), dtype=torch.float32).eval()
    persona = Persona.load(run_dir, base_model, max_new_tokens=max_new_tokens, batch_size=1)
    vocab = base.config.vocab_size
    same_logits = same_answers = 0
    worst = 0.0
    with torch.no_grad():
        for chat in conversations:
            ids = torch.tensor([persona.conversation_ids(chat)])
            ref = base(input_ids=ids).logits
            with persona.adapter_mode("on"):
                got = persona.model(input_ids=ids).logits
            same_logits += torch.equal(ref, got[..., :vocab])
            worst = max(worst, (ref - got[..., :vocab]).abs().max().item())
            kw = {"max_new_tokens": max_new_tokens, "do_sample": False, "pad_token_id": persona.pad_id}
            ref_ans = base.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kw)
            with persona.adapter_mode("on"):
                got_ans = persona.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kw)
            same_answers += torch.equal(ref_ans, got_ans)
        same_reviews = 0
        for chat, question in zip(conversations, interventions):
            answer = persona.answer(chat)
            reused = persona.review(chat, answer.text, question, prefill=answer.prefill)
            fresh = persona.review(chat, answer.text, question)
            same_reviews += reused.text == fresh.text
    return {
        "conversations": len(conversations),
        "alignment_tax": {
            "logits_bit_identical": same_logits, "answers_identical": same_answers, "max_abs_logit_diff": worst,
            "columns_compared": vocab, "columns_added": persona.model.get_input_embeddings().weight.shape[0] - vocab,
        },
        "kv_reuse": {"reviews_identical": same_reviews},
        "leaked_hooks": persona.leaked_hooks(),
    }


def verdicts(result: dict[str, Any]) -> dict[str, bool]:
    """Each check's pass/fail: every conversation identical, and no adapter hook left behind."""
    n, tax = result["conversations"], result["alignment_tax"]
    return {
        "logits bit-identical": tax["logits_bit_identical"] == n,
        "answers identical": tax["answers_identical"] == n,
        "reviews identical on a reused cache": result["kv_reuse"]["reviews_identical"] == n,
        "no leaked hooks": result["leaked_hooks"] == 0,
    }


def write_checks(result: dict[str, Any], out: str | os.PathLike[str], **context: Any) -> tuple[Path, Path]:
    """checks.json (the result, `context` such as the run and records, the verdicts) and checks.md."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    passed = verdicts(result)
    js, md = out / JSON_FILE, out / MARKDOWN_FILE
    write_json(js, {**context, **result, "passed": passed})
    n, tax = result["conversations"], result["alignment_tax"]
    lines = [
        "# Zero alignment tax and KV reuse",
        "",
        *(f"- {k}: {json.dumps(v) if not isinstance(v, str) else v}" for k, v in context.items()),
        f"- conversations: {n}",
        f"- logits bit-identical: {tax['logits_bit_identical']}/{n} (max abs diff {tax['max_abs_logit_diff']:g}, "
        f"{tax['columns_compared']} columns compared, {tax['columns_added']} added)",
        f"- greedy answers identical: {tax['answers_identical']}/{n}",
        f"- reviews identical on a reused cache: {result['kv_reuse']['reviews_identical']}/{n}",
        f"- leaked adapter hooks: {result['leaked_hooks']}",
        "",
        "**" + ("all checks passed" if all(passed.values()) else
                "FAILED: " + ", ".join(k for k, ok in passed.items() if not ok)) + "**",
        "",
    ]
    with atomic_write(md) as fh:
        fh.write("\n".join(lines))
    return js, md
