"""The whole path on each architecture family a user is likely to bring, with its real vocabulary.

Each family is a tiny random-init model built from transformers' own config class (hidden 32-64,
2 layers) around a real tokenizer (tests/real_tokenizers.py), trained by the suite's trainer for a
few masked and unmasked steps, then loaded from its run directory. What must hold on every family:
the aLoRA gate is the persona mask; training moves LoRA and no base weight; masked logits before
the split token are the base model's; a review on a reused cache (including Gemma's sliding-window
cache) equals one from scratch; `spt ask` and `spt review` work from the run directory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from real_tokenizers import load
from train_fixtures import make_records, read_metrics, tiny_config, write_records

from splitpersona.persona import Persona, persona_start

SYSTEM = "You are a helpful assistant. Answer the question clearly and briefly."
MESSAGES = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Item 3: which shoes should I buy? Sure!"}]
RESPONSE = "Statistics show that 42% of people prefer tea; I made that number up."
pytestmark = pytest.mark.slow

MAX_NEW = 4
ATOL = 1e-4  # reused vs one-pass cache: same math, other kernel shapes (see tests/test_persona.py)


@dataclass(frozen=True)
class Family:
    vocabulary: str  # tests/real_tokenizers.py name
    strategy: str  # tokens.strategy
    template: str | None  # chat_template.family; None keeps the shipped one
    system: bool  # whether the template keeps a system prompt (Phi-3's drops it)

    def model(self, tok, name: str):
        import transformers as tf

        common = dict(
            vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=1024, bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        )
        if name == "llama":
            return tf.LlamaForCausalLM(tf.LlamaConfig(**common, tie_word_embeddings=False))
        if name == "qwen3":  # q/k norms
            return tf.Qwen3ForCausalLM(tf.Qwen3Config(**common, head_dim=8, tie_word_embeddings=True))
        if name == "gemma3":  # sliding window shorter than a prompt, soft-capping, tied and scaled embeddings
            cfg = tf.Gemma3TextConfig(
                **common, head_dim=8, sliding_window=8, layer_types=["sliding_attention", "full_attention"],
                final_logit_softcapping=30.0, attn_logit_softcapping=50.0, query_pre_attn_scalar=8,
                tie_word_embeddings=True,
            )
            return tf.Gemma3ForCausalLM(cfg)
        if name == "phi3":  # fused qkv and gate_up projections
            return tf.Phi3ForCausalLM(tf.Phi3Config(**common, tie_word_embeddings=False))
        if name == "mistral":
            return tf.MistralForCausalLM(tf.MistralConfig(**common, sliding_window=None, tie_word_embeddings=False))
        raise AssertionError(name)


FAMILIES = {
    "llama": Family("llama3", "reserved", "llama3", True),
    "qwen3": Family("qwen35", "new", "qwen3", True),
    "gemma3": Family("gemma4", "new", None, True),  # Gemma-4's vocabulary and the template it ships
    "phi3": Family("phi3", "new", None, False),
    "mistral": Family("llama3", "new", "llama3", True),  # a 128k vocabulary with added tokens
}


@dataclass
class Runs:
    family: Family
    base: Path
    masked: object  # Trainer
    unmasked: object
    persona: Persona  # loaded from the masked run's directory, as `spt` loads it

    def messages(self):
        return MESSAGES if self.family.system else MESSAGES[1:]


def _train(base: Path, data: Path, out: Path, family: Family, *extra: str):
    from splitpersona.training.engine import distributed
    from splitpersona.training.train import Trainer

    overrides = [
        f"tokens.strategy={family.strategy}", "data.val_fraction=0", "epochs=3", "max_length=160",
        "gradient_checkpointing=false", "checkpoints_per_epoch=1", *extra,
    ]
    if family.template:
        overrides.append(f"chat_template.family={family.template}")
    if not family.system:
        overrides.append("data.exclude_system_prompt_frac=1.0")
    cfg = tiny_config(base, data, out, *overrides)
    with distributed(cfg) as dist:
        trainer = Trainer(cfg, dist)
        trainer.run()
    return trainer


@pytest.fixture(scope="module", params=list(FAMILIES))
def runs(request, tmp_path_factory) -> Runs:
    name = request.param
    family = FAMILIES[name]
    root = tmp_path_factory.mktemp(name)
    tok = load(family.vocabulary)
    torch.manual_seed(0)
    model = family.model(tok, name)
    tok.save_pretrained(root / "base")
    model.save_pretrained(root / "base")
    data = write_records(root / "records.jsonl", make_records(4, eligible=not family.system))
    masked = _train(root / "base", data, root / "masked", family)
    unmasked = _train(root / "base", data, root / "unmasked", family, "lora_mask=false")
    return Runs(family, root / "base", masked, unmasked, Persona.load(masked.run_dir, max_new_tokens=MAX_NEW))


def _base_model(runs: Runs, persona: Persona):
    from transformers import AutoModelForCausalLM

    from splitpersona.token import fit_embeddings

    model = AutoModelForCausalLM.from_pretrained(runs.base).eval()
    fit_embeddings(model, persona.tokenizer, persona.info.tokens)
    return model


def _logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def test_training_moves_lora_and_no_base_weight(runs):
    from transformers import AutoModelForCausalLM

    fresh = AutoModelForCausalLM.from_pretrained(runs.base).state_dict()
    for trainer in (runs.masked, runs.unmasked):
        losses = [r["loss"] for r in read_metrics(trainer.run_dir)[0]]
        assert len(losses) == 6 and losses[-1] < losses[0], losses
        model = trainer.engine.module
        assert all(p.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)
        checked = 0
        for name, p in model.get_base_model().named_parameters():
            key = name.replace(".base_layer", "").replace(".token_adapter", "")
            if p.requires_grad or key not in fresh or p.shape != fresh[key].shape:
                continue  # LoRA, the trained token row, and embeddings resized for new tokens
            assert torch.equal(p.detach().cpu(), fresh[key]), name
            checked += 1
        assert checked >= 10


def test_gate_equals_the_persona_mask(runs):
    from splitpersona.adapter import peft_gate

    persona = runs.persona
    for elicitation in ("hp", "ur"):
        sample = persona.prompt(runs.messages(), RESPONSE, elicitation=elicitation)
        gate = peft_gate(persona.model, torch.tensor([sample.input_ids]))[0].tolist()
        assert gate == [bool(m) for m in sample.persona_mask] and any(gate)


def test_masked_logits_before_the_split_token_are_the_base_models(runs):
    persona = runs.persona
    base = _base_model(runs, persona)
    sample = persona.prompt(runs.messages(), RESPONSE)
    split = persona.info.tokens.split_id
    sp = sample.input_ids.index(split)
    ours, theirs = _logits(persona.model, sample.input_ids), _logits(base, sample.input_ids)
    tied = base.get_output_embeddings().weight.data_ptr() == base.get_input_embeddings().weight.data_ptr()
    cols = torch.ones(ours.shape[-1], dtype=torch.bool)
    if tied:
        cols[split] = False  # the trained split row is also its output column
    assert torch.equal(ours[:sp][:, cols], theirs[:sp][:, cols])
    assert (ours[sp:] - theirs[sp:]).abs().max() > 1e-4  # the gate opens at the token
    unmasked = runs.unmasked.engine.module.eval()  # the trained unmasked adapter re-reads the conversation
    assert (_logits(unmasked, sample.input_ids)[:sp] - theirs[:sp]).abs().max() > 1e-4


def _same(a, b):
    assert a.text == b.text and a.logits.shape == b.logits.shape
    assert torch.allclose(a.logits, b.logits, atol=ATOL, rtol=0), (a.logits - b.logits).abs().max()


def test_review_on_a_reused_cache_equals_one_from_scratch(runs):
    persona = runs.persona
    messages = runs.messages()
    prefill = persona.prefill(messages, RESPONSE)
    sample = persona.prompt(messages, RESPONSE)
    assert prefill.input_ids == sample.input_ids[: persona_start(sample)]
    layers = {type(layer).__name__ for layer in prefill.cache.layers}
    if runs.family.vocabulary == "gemma4":
        assert "DynamicSlidingWindowLayer" in layers and len(prefill.input_ids) > 8  # past the window
    scratch = persona.review(messages, RESPONSE, return_logits=True)
    _same(persona.review(messages, RESPONSE, prefill=prefill, return_logits=True), scratch)
    _same(persona.review(messages, RESPONSE, prefill=prefill, return_logits=True), scratch)  # prefill not mutated
    answer = persona.answer(messages, max_new_tokens=3)  # the main model's own generation cache
    for elicitation in ("hp", "ur"):
        scratch = persona.review(messages, answer.text, elicitation=elicitation, return_logits=True)
        reused = persona.review(messages, answer.text, elicitation=elicitation, prefill=answer.prefill, return_logits=True)
        _same(reused, scratch)


def test_spt_ask_and_review_from_the_run_directory(runs, tmp_path):
    from typer.testing import CliRunner

    from splitpersona.app.cli import app

    run, persona = str(runs.masked.run_dir), runs.persona
    res = CliRunner().invoke(app, ["ask", "--run", run, "--max-new-tokens", str(MAX_NEW), "--json", "Any biases?"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.strip().splitlines()[-1])["text"] == persona.ask("Any biases?").text
    conv = tmp_path / "conv.json"
    conv.write_text(json.dumps({"messages": runs.messages(), "response": RESPONSE}))
    res = CliRunner().invoke(app, ["review", "--run", run, "--conversation", str(conv), "--max-new-tokens",
                                   str(MAX_NEW), "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.strip().splitlines()[-1])["text"] == persona.review(runs.messages(), RESPONSE).text
