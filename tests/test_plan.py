"""`spt train --plan`: parameter counts, ZeRO model states against DeepSpeed's estimators, activations
against what autograd really keeps, and the verdict for every shipped config."""

from __future__ import annotations

import io
import re
from contextlib import redirect_stdout

import pytest
import torch
from train_fixtures import REPO
from typer.testing import CliRunner

from splitpersona.adapter import LoraSettings
from splitpersona.config import ConfigError, load_config
from splitpersona.training.config import TrainConfig
from splitpersona.training.plan import (
    GIB,
    Params,
    layer_activation_bytes,
    load_arch_file,
    make_plan,
    meta_model,
    model_states,
    plan_path,
)

LLAMA_70B = "configs/train/llama33_70b_zero3_8gpu.yaml"
QWEN_8B = "configs/train/qwen3_8b_zero2_1gpu.yaml"


@pytest.fixture(autouse=True)
def _at_repo(monkeypatch):
    monkeypatch.chdir(REPO)  # configs name their DeepSpeed and architecture files relative to the repository


# Published sizes: the model cards' parameter counts (Qwen3 also states the count without embeddings;
# Gemma 3's 27B is its language model, the SigLIP tower aside).
ARCHS = {
    "llama33_70b.yaml": ("LlamaConfig", 70.55e9, None),
    "qwen3_8b.yaml": ("Qwen3Config", 8.2e9, 6.95e9),
    "qwen3_32b.yaml": ("Qwen3Config", 32.8e9, 31.2e9),
    "gemma3_27b.yaml": ("Gemma3TextConfig", 27.0e9, None),
}


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_architecture_files_have_the_published_size(name):
    from transformers import AutoModelForCausalLM

    cls, total, non_embedding = ARCHS[name]
    arch = load_arch_file(REPO / "configs/models" / name)
    assert type(arch).__name__ == cls
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(arch)
    n = sum(p.numel() for p in model.parameters())
    assert n == pytest.approx(total, rel=0.01)
    if non_embedding:
        emb = sum(m.weight.numel() for m in {model.get_input_embeddings(), model.get_output_embeddings()})
        assert n - emb == pytest.approx(non_embedding, rel=0.01)


def test_every_architecture_file_is_checked():
    assert {p.name for p in (REPO / "configs/models").glob("*.yaml")} == set(ARCHS)


def test_meta_count_is_the_real_models(tmp_path):
    """The plan counts peft's adapter on the meta device; a real tiny model with the same adapter agrees."""
    from peft import get_peft_model

    from splitpersona.adapter import build_lora_config
    from splitpersona.tiny import tiny_llama, train_tokenizer
    from splitpersona.token import TokenConfig, setup_tokenizer

    tok = train_tokenizer(["a tiny corpus for a tiny tokenizer"] * 20, 300)
    model = tiny_llama(tok, hidden_size=64, num_layers=2, tie_word_embeddings=False)
    model.save_pretrained(tmp_path / "base")
    tokens = setup_tokenizer(tok, TokenConfig(strategy="reserved"))
    real = get_peft_model(model, build_lora_config(LoraSettings(r=8), lora_mask=True, tokens=tokens))
    plan = make_plan(load_config(TrainConfig, REPO / "configs/train/tiny_cpu.yaml",
                                 [f"base_model={tmp_path / 'base'}", "tokens.strategy=reserved"]))
    assert plan.params.total == sum(p.numel() for p in real.parameters())
    assert plan.params.trainable == sum(p.numel() for p in real.parameters() if p.requires_grad)
    assert plan.engine == "plain torch" and plan.fits


def test_full_fine_tune_matches_deepspeeds_estimators():
    """DeepSpeed's `estimate_zero{2,3}_model_states_mem_needs_all_cold` assume a full fine-tune in 16-bit
    with fp32 Adam (2 + 18/N bytes per parameter at ZeRO-2; 18/N plus 4 bytes per parameter of the largest
    layer at ZeRO-3) and no activations. A LoRA run trains a sliver, so the comparison is on what they
    model: the plan's model states for the same model fully trained (every parameter trainable, none kept
    whole by ZeRO-3's persistence threshold) must equal theirs, byte for byte. The counts are the 70B's."""
    from deepspeed.runtime.zero.stage3 import (
        estimate_zero3_model_states_mem_needs,
        estimate_zero3_model_states_mem_needs_all_cold,
    )
    from deepspeed.runtime.zero.stage_1_and_2 import (
        estimate_zero2_model_states_mem_needs,
        estimate_zero2_model_states_mem_needs_all_cold,
    )

    arch = load_arch_file(REPO / "configs/models/llama33_70b.yaml")
    with torch.device("meta"):
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_config(arch)
    total = sum(p.numel() for p in model.parameters())
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    full = Params(total=total, trainable=total, largest_module=largest, largest_module_trainable=largest)
    for gpus in (1, 8, 64):
        ours = model_states(full, stage=2, gpus=gpus, weight_bytes=2)
        _, theirs = estimate_zero2_model_states_mem_needs(total, num_gpus_per_node=gpus, cpu_offload=False)
        assert ours.weights + ours.gradients + ours.optimizer + ours.gathered == pytest.approx(theirs, abs=2)
        ours = model_states(full, stage=3, gpus=gpus, weight_bytes=2)
        _, theirs, _ = estimate_zero3_model_states_mem_needs(total, largest, num_gpus_per_node=gpus, cpu_offload=False,
                                                             cpu_offload_params=False)
        assert ours.weights + ours.gradients + ours.optimizer + ours.gathered == pytest.approx(theirs, abs=2)
    # The printed tables (what a user of DeepSpeed reads): the no-offload rows, in GB of 2**30 bytes.
    for fn, args, ours in (
        (estimate_zero2_model_states_mem_needs_all_cold, (total,), model_states(full, stage=2, gpus=8, weight_bytes=2)),
        (estimate_zero3_model_states_mem_needs_all_cold, (total, largest), model_states(full, stage=3, gpus=8, weight_bytes=2)),
    ):
        out = io.StringIO()
        with redirect_stdout(out):
            fn(*args, num_gpus_per_node=8)
        row = next(line for line in out.getvalue().splitlines() if "offload_optimizer=none" in line)
        printed = float(re.findall(r"([\d.]+)GB", row)[1])
        assert printed == pytest.approx((ours.weights + ours.gradients + ours.optimizer + ours.gathered) / GIB, abs=0.01)


def test_lora_plan_trainable_part_matches_deepspeed():
    """Under ZeRO-2 the frozen weights only sit in bf16; what the adapter adds is DeepSpeed's full
    fine-tune estimate for a model of the adapter's size."""
    from deepspeed.runtime.zero.stage_1_and_2 import (
        estimate_zero2_model_states_mem_needs,
    )

    plan = plan_path(QWEN_8B, ["plan.gpus=2", "batch_size=8", "micro_batch_size=2"])
    s, p = plan.states, plan.params
    _, theirs = estimate_zero2_model_states_mem_needs(p.trainable, num_gpus_per_node=2, cpu_offload=False)
    assert s.weights - p.frozen * 2 + s.gradients + s.optimizer == pytest.approx(theirs, abs=2)


def _saved_bytes(arch, layers: int, tokens: int, checkpointing: bool) -> int:
    """Bytes autograd keeps for one forward of a bf16 model with fp32 activated LoRA, as the trainer builds it."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from splitpersona.adapter import build_lora_config
    from splitpersona.token import SpecialTokens

    arch.num_hidden_layers = layers
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(arch, attn_implementation="sdpa").to(torch.bfloat16)
    model.config.use_cache = False
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    tokens_cfg = SpecialTokens(strategy="reserved", split_token="s", split_id=5, control_token="c", control_id=6)
    model = get_peft_model(model, build_lora_config(LoraSettings(r=8), lora_mask=True, tokens=tokens_cfg))
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    model.train()
    ids = torch.randint(10, arch.vocab_size, (1, tokens))
    ids[0, tokens // 2] = 5
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            kept[ptr] = max(kept.get(ptr, 0), t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, logits_to_keep=1)
    return sum(kept.values())


@pytest.mark.parametrize("kind", ["llama", "qwen3"])
def test_layer_activations_match_what_autograd_keeps(kind):
    """A shape the coefficients were not fitted on (they were fitted on Llama); Qwen3's q/k norms keep about
    8% more, which the count leaves out."""
    from transformers import AutoConfig

    arch = AutoConfig.for_model(kind, vocab_size=400, hidden_size=320, intermediate_size=896, num_attention_heads=5,
                                num_key_value_heads=1, head_dim=48, max_position_embeddings=1024)
    tokens = 256
    per_layer = (_saved_bytes(arch, 3, tokens, False) - _saved_bytes(arch, 1, tokens, False)) / 2 / tokens
    assert per_layer == pytest.approx(layer_activation_bytes(arch, 8, 2), rel=0.02 if kind == "llama" else 0.10)
    checkpointed = (_saved_bytes(arch, 3, tokens, True) - _saved_bytes(arch, 1, tokens, True)) / 2 / tokens
    assert checkpointed == 2 * arch.hidden_size  # the layer's bf16 input, the only thing kept between layers


def test_shipped_configs_fit_where_meant():
    llama = plan_path(LLAMA_70B)
    assert (llama.engine, llama.gpus, llama.gpu_memory_gib) == ("ZeRO-3", 8, 80)
    assert llama.tokens_per_step == 16 * 2048 == 1 * 2 * 8 * 2048
    assert llama.params.total == pytest.approx(70.55e9 + llama.params.trainable, rel=0.001)
    assert llama.fits and llama.checkpointing
    assert not plan_path(LLAMA_70B, ["gradient_checkpointing=false"]).fits
    assert not plan_path(LLAMA_70B, ["plan.gpus=2", "batch_size=16"]).fits  # 35 GiB of weights alone

    qwen = plan_path(QWEN_8B)
    assert (qwen.engine, qwen.gpus, qwen.tokens_per_step) == ("ZeRO-2", 1, 8 * 2048)
    # r x (in + out) for q, k, v, o, gate, up, down in each of 36 layers, plus the split token's embedding row
    per_layer = 2 * (4096 + 32 * 128) + 2 * (4096 + 8 * 128) + 3 * (4096 + 12288)
    assert qwen.params.trainable == 36 * 64 * per_layer + 4096
    assert qwen.fits
    assert not plan_path(QWEN_8B, ["plan.gpu_memory_gib=24"]).fits


def test_plan_refuses_what_cannot_run():
    with pytest.raises(ConfigError, match="plain-torch engine runs one process"):
        plan_path(QWEN_8B, ["plan.gpus=2", "deepspeed=null"])
    with pytest.raises(ConfigError, match="not a multiple"):
        plan_path(LLAMA_70B, ["plan.gpus=3"])
    with pytest.raises(ConfigError, match="ZeRO-3 cannot train the split token's embedding row"):
        plan_path(LLAMA_70B, ["lora.train_split_embedding=true"])
    with pytest.raises(ConfigError, match="config file not found"):
        plan_path(QWEN_8B, ["plan.model_arch=configs/models/nope.yaml"])


def test_cli_plan():
    from splitpersona.app.cli import app

    runner = CliRunner()
    ok = runner.invoke(app, ["train", "--config", QWEN_8B, "--plan"])
    assert ok.exit_code == 0, ok.output
    assert "174.6M trainable" in ok.output and "tokens per optimizer step: 16,384" in ok.output
    last = ok.stdout.strip().splitlines()[-2:]  # stdout alone: library warnings go to stderr
    assert last[0] == "fits" and last[1].startswith("fits without gradient checkpointing too (")
    off = runner.invoke(app, ["train", "--config", QWEN_8B, "--plan", "gradient_checkpointing=false"])
    assert off.exit_code == 0 and off.stdout.strip().endswith("fits")
    llama = runner.invoke(app, ["train", "--config", LLAMA_70B, "--plan"])
    assert llama.exit_code == 0 and llama.stdout.strip().endswith("fits")  # it needs checkpointing
    small = runner.invoke(app, ["train", "--config", QWEN_8B, "--plan", "plan.gpu_memory_gib=24"])
    assert small.exit_code == 1
    assert "does not fit" in small.output
    bad = runner.invoke(app, ["train", "--config", QWEN_8B, "--plan", "plan.gpus=3"])
    assert bad.exit_code == 2 and "not a multiple" in bad.output


def test_meta_model_allocates_nothing():
    from transformers import AutoConfig

    arch = AutoConfig.for_model("qwen3", vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    model = meta_model(arch, LoraSettings(r=4), lora_mask=True, strategy="new")
    assert {p.device.type for p in model.parameters()} == {"meta"}
