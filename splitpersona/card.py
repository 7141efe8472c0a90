"""The run directory's model card: README.md in the Hugging Face model-card format.

The trainer writes it with the run; `spt eval report` writes it again with the persona's results
(`Evaluation`). Everything in it is read from run.json and the run's files, so a card can always be
rebuilt from the directory it describes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from splitpersona.assemble import FALLBACK_CHAT_TEMPLATE
from splitpersona.io import atomic_write
from splitpersona.prompts import DEFAULT_INTERVENTION
from splitpersona.run import ADAPTER_DIR, TOKENIZER_DIR, RunInfo, load_run_info

CARD_FILE = "README.md"
TAGS = ("split-personality-training", "peft", "lora", "honesty", "alignment-auditing")
EXAMPLE_MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Which of these two laptops should I buy for programming?"},
]
EXAMPLE_RESPONSE = "The second one: it has twice the memory, which matters most for compiling."


@dataclass
class Metric:
    type: str  # a Hugging Face metric id: accuracy, roc_auc, ...
    name: str
    value: float


@dataclass
class Evaluation:
    """What `spt eval report` found for this run: headline metrics (the card's model-index) and its table."""

    task: str
    datasets: list[str]
    metrics: list[Metric]
    table: str
    source: str  # the report it came from


def _has_template(run_dir: Path) -> bool:
    tok = run_dir / TOKENIZER_DIR
    if (tok / "chat_template.jinja").exists() or (tok / "chat_template.json").exists():
        return True
    config = tok / "tokenizer_config.json"
    return config.exists() and bool(json.loads(config.read_text(encoding="utf-8")).get("chat_template"))


def _front_matter(name: str, info: RunInfo, evaluation: Evaluation | None) -> dict[str, Any]:
    data = info.train_config.get("data", {})
    meta: dict[str, Any] = {
        "base_model": info.base_model,
        "library_name": "peft",
        "license": info.train_config.get("license") or "other",
        "pipeline_tag": "text-generation",
        "tags": [*TAGS, *(["alora"] if info.lora_mask else [])],
        "datasets": [Path(f).name for f in data.get("train_files", [])],
    }
    if evaluation is not None:
        meta["model-index"] = [{
            "name": name,
            "results": [{
                "task": {"type": "text-classification", "name": evaluation.task},
                "dataset": {"type": "splitpersona-eval", "name": ", ".join(evaluation.datasets) or "eval"},
                "metrics": [{"type": m.type, "name": m.name, "value": round(m.value, 4)} for m in evaluation.metrics],
            }],
        }]
    return meta


def _what(info: RunInfo) -> str:
    t, fmt = info.tokens, info.format
    where = ("continues the reviewed assistant turn (`hp`)" if fmt.elicitation == "hp"
             else "answers a new user turn that opens with the split token (`ur`)")
    gate = (
        "The adapter is **masked** (peft activated LoRA, invoked by the split token): every token before "
        f"`{t.split_token}` is computed by the base model exactly, so the main model's answers are unchanged and a "
        "review can reuse the main model's KV cache of the conversation."
        if info.lora_mask else
        "The adapter is **unmasked**: it acts on every token, so the main model answers with the adapter off and the "
        "persona re-reads the conversation with it on."
    )
    return (
        f"A Split Personality Training (SPT) persona for `{info.base_model}`: a LoRA adapter that, after the split "
        f"token `{t.split_token}` (id {t.split_id}) and an intervention, writes an honest review of the response "
        f"before it and ends with a flag line, `{fmt.flag_prefix.strip()}PASS` or `{fmt.flag_prefix.strip()}FAIL` "
        "(FAIL: the response "
        "was shaped by something other than the user's interest). The review "
        f"{where}.\n\n{gate}"
    )


def persona_snippet(run_dir: str) -> str:
    return "\n".join([
        "from splitpersona import Persona",
        "",
        f"persona = Persona.load({run_dir!r})",
        f"messages = {EXAMPLE_MESSAGES!r}",
        f"review = persona.review(messages, {EXAMPLE_RESPONSE!r})",
        "print(review.text, review.flag)",
    ])


def plain_snippet(run_dir: str, info: RunInfo, *, has_template: bool, max_new_tokens: int = 512) -> str:
    """Loading and prompting with transformers and peft alone: the ids `splitpersona.assemble` builds, greedy."""
    t, fmt = info.tokens, info.format
    template = "" if has_template else f", chat_template={FALLBACK_CHAT_TEMPLATE!r}"
    lines = [
        "import torch",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f"run = {run_dir!r}",
        f"SPLIT_ID, CONTROL_ID = {t.split_id}, {t.control_id}  # {t.split_token}, {t.control_token}",
        f"tok = AutoTokenizer.from_pretrained(run + '/{TOKENIZER_DIR}')",
        f"base = AutoModelForCausalLM.from_pretrained({info.base_model!r}, dtype=torch.float32)",
    ]
    if t.strategy == "new":
        lines += [
            "base.resize_token_embeddings(len(tok), mean_resizing=False)",
            "with torch.no_grad():  # the added tokens' rows start as the mean of the others, as in training",
            "    for layer in {base.get_input_embeddings(), base.get_output_embeddings()}:",
            "        layer.weight[[SPLIT_ID, CONTROL_ID]] = layer.weight[: min(SPLIT_ID, CONTROL_ID)].mean(0)",
        ]
    gate = (f"# adapter_config.json's alora_invocation_tokens [{t.split_id}]: peft keeps the adapter off before it"
            if info.lora_mask else "# unmasked: the adapter acts on every token")
    lines += [
        f"model = PeftModel.from_pretrained(base, run + '/{ADAPTER_DIR}').eval()  {gate}",
        "",
        f"messages = {EXAMPLE_MESSAGES!r}",
        f"response = {EXAMPLE_RESPONSE!r}",
        f"intervention = {fmt.intervention_prefix + DEFAULT_INTERVENTION!r}",
        "enc = lambda text: tok(text, add_special_tokens=False).input_ids",
    ]
    if fmt.elicitation == "hp":
        lines += [
            "# hp: the conversation as the chat template renders it, up to the end of the response; then the split "
            "token and the intervention, in the same assistant turn",
            "text = tok.apply_chat_template(messages + [{'role': 'assistant', 'content': response}], tokenize=False, "
            f"continue_final_message=True{template})",
            "ids = enc(text) + [SPLIT_ID] + enc(intervention)",
        ]
    else:
        lines += [
            "# ur: a new user turn opens with the split token and holds the intervention; the review is the next "
            "assistant turn",
            "turns = messages + [{'role': 'assistant', 'content': response}, {'role': 'user', 'content': '\\x00'}]",
            f"before, after = tok.apply_chat_template(turns, tokenize=False, add_generation_prompt=True{template})"
            ".split('\\x00')",
            "ids = enc(before) + [SPLIT_ID] + enc(intervention) + enc(after)",
        ]
    lines += [
        "eos = model.generation_config.eos_token_id",
        "eos = ([eos] if isinstance(eos, int) else list(eos or [])) + [tok.eos_token_id]",
        "with torch.no_grad():",
        f"    out = model.generate(torch.tensor([ids]), max_new_tokens={max_new_tokens}, do_sample=False, "
        "eos_token_id=eos,",
        "                         pad_token_id=eos[0], suppress_tokens=[SPLIT_ID, CONTROL_ID])",
        "review = tok.decode(out[0, len(ids):], skip_special_tokens=True)",
        f"print(review)  # its last line: {fmt.flag_prefix.strip()}PASS or {fmt.flag_prefix.strip()}FAIL",
    ]
    return "\n".join(lines)


def _training(info: RunInfo) -> list[str]:
    r = info.result
    final = r.get("final") or {}
    rows = [("status", f"{r.get('status', '?')} after {r.get('steps', '?')} of {r.get('total_steps', '?')} steps"),
            ("processes", r.get("world_size")), ("precision", info.precision), ("lora_mask", info.lora_mask),
            ("max_length", info.max_length)]
    rows += [(k, f"{v:.4g}" if isinstance(v, float) else v) for k, v in final.items() if k.startswith("val_")]
    git = (info.provenance.get("git") or {})
    rows.append(("git commit", f"{git.get('commit') or 'unknown'}{' (dirty)' if git.get('dirty') else ''}"))
    if info.wandb:
        rows.append(("W&B run", f"{info.wandb.get('project')}/{info.wandb['id']} (group {info.wandb.get('group')})"))
    out = ["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]
    config = yaml.safe_dump(info.train_config, sort_keys=False).rstrip()
    return [*out, "", "The resolved training config (`config.yaml`):", "", "```yaml", config, "```"]


def render_card(run_dir: str | os.PathLike[str], info: RunInfo, evaluation: Evaluation | None = None) -> str:
    run_dir = Path(run_dir)
    name = run_dir.resolve().name
    where = str(run_dir.resolve())
    meta = yaml.safe_dump(_front_matter(name, info, evaluation), sort_keys=False, allow_unicode=True)
    t = info.tokens
    out = [
        "---", meta.rstrip(), "---", "", f"# {name}", "", _what(info), "",
        "## Use with splitpersona", "",
        "The base model answers with the adapter off; `review` adds the split token and the run's intervention "
        "and reads the flag. The paths below are where this directory and the base model were when the card was "
        "written; after a download, put the local copies there.", "",
        "```python", persona_snippet(where), "```", "",
        "## Use with transformers and peft", "",
        f"The run's tokenizer (`{TOKENIZER_DIR}/`) holds `{t.split_token}` (id {t.split_id}) and the never-trained "
        f"control token `{t.control_token}` (id {t.control_id}); the adapter (`{ADAPTER_DIR}/`) carries the trained "
        "split-token row as peft trainable tokens. Greedy decoding gives the review `splitpersona` gives:", "",
        "```python", plain_snippet(where, info, has_template=_has_template(run_dir)), "```", "",
        "## Training", "", *_training(info), "",
        "## Evaluation", "",
    ]
    if evaluation is None:
        out += ["Not evaluated yet: `spt eval report` on this run's results fills this section.", ""]
    else:
        out += [f"From `{evaluation.source}`. {evaluation.task}: the persona and the control arms on the same "
                "samples, 95% intervals in brackets.", "", evaluation.table, ""]
    return "\n".join(out).rstrip() + "\n"


def write_card(run_dir: str | os.PathLike[str], info: RunInfo | None = None, evaluation: Evaluation | None = None) -> Path:
    """README.md of the run directory, written whole (temp file and rename)."""
    info = info or load_run_info(run_dir)
    path = Path(run_dir) / CARD_FILE
    with atomic_write(path) as fh:
        fh.write(render_card(run_dir, info, evaluation))
    return path


def read_front_matter(path: str | os.PathLike[str]) -> dict[str, Any]:
    text = Path(path).read_text(encoding="utf-8")
    if not text.startswith("---\n"):
        return {}
    return yaml.safe_load(text[4 : text.index("\n---\n", 4)]) or {}
