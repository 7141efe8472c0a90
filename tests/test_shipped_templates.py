"""Each shipped train config pins its family's chat template, and on that family's real vocabulary
the trainer's samples start with exactly the ids `Persona.answer` gives the main model.

A config is trained for one step on a tiny random model around the real vocabulary (from
`make tokenizers`), with the config's own template, tokens and format; only the size changes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from real_tokenizers import load
from train_fixtures import make_records, write_records

from splitpersona.config import load_config
from splitpersona.training.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p for p in (REPO / "configs/train").glob("*.yaml") if p.name != "tiny_cpu.yaml")
# base model -> (cached real vocabulary, the chat template family its runs must pin)
FAMILY_OF = {
    "Qwen/Qwen3-8B": ("qwen35", "qwen3"),
    "meta-llama/Llama-3.3-70B-Instruct": ("llama3", "llama3"),
}
CPU_SIZE = (
    "deepspeed=null", "precision=fp32", "lora.r=4", "lora.alpha=4", "batch_size=2", "micro_batch_size=1",
    "stop_after_steps=1", "max_length=256", "gradient_checkpointing=false", "data.val_fraction=0", "wandb.mode=disabled",
)


def test_every_shipped_train_config_is_covered():
    assert {load_config(TrainConfig, p).base_model for p in SHIPPED} == set(FAMILY_OF)


@pytest.mark.slow
@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_training_samples_start_with_the_answer_ids(path: Path, tmp_path):
    from splitpersona.persona import Persona
    from splitpersona.tiny import tiny_llama
    from splitpersona.training.data import prepare_data
    from splitpersona.training.train import _load_tokenizer, train

    vocabulary, family = FAMILY_OF[load_config(TrainConfig, path).base_model]
    base = tmp_path / "base"
    tok = load(vocabulary)
    tiny_llama(tok, hidden_size=32, num_layers=1, intermediate_size=64, tie_word_embeddings=False).save_pretrained(base)
    tok.save_pretrained(base)
    records = make_records(2)
    data = write_records(tmp_path / "records.jsonl", records)
    cfg = load_config(TrainConfig, path, [f"base_model={base}", f"data.train_files=[{data}]", f"output_dir={tmp_path / 'run'}", *CPU_SIZE])
    assert cfg.chat_template.family == family

    tokenizer, tokens = _load_tokenizer(cfg)
    samples = {s.meta["id"]: s for s in prepare_data(cfg.data, cfg.seed, tokenizer, cfg.format, tokens, cfg.max_length).train}
    persona = Persona.load(train(cfg), max_new_tokens=3)
    for record in records:
        sample = samples[record.id]
        answer = persona.answer(record.messages)
        response_at = next(s.start for s in sample.segments if s.kind == "response")
        assert sample.input_ids[:response_at] == answer.ids[: answer.prompt_tokens], persona.tokenizer.decode(answer.ids)
    text = persona.tokenizer.decode(answer.ids[: answer.prompt_tokens])
    if family == "qwen3":
        assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    else:
        assert "Today Date: 26 Jul 2024\n" in text
