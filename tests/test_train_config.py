"""Every shipped train and DeepSpeed config loads; the published hyper-parameters are what the 70B config says."""

from __future__ import annotations

from pathlib import Path

import pytest
from train_fixtures import REPO

from splitpersona.config import ConfigError, load_config, load_yaml
from splitpersona.training.config import TrainConfig
from splitpersona.training.engine import deepspeed_config

TRAIN_CONFIGS = sorted((REPO / "configs" / "train").glob("*.yaml"))
DS_CONFIGS = sorted((REPO / "configs" / "deepspeed").glob("*.json"))


def test_configs_are_shipped():
    names = {p.name for p in TRAIN_CONFIGS}
    assert {"tiny_cpu.yaml", "llama33_70b_zero3_8gpu.yaml", "qwen3_8b_zero2_1gpu.yaml"} <= names
    assert {"zero2.json", "zero3.json"} <= {p.name for p in DS_CONFIGS}


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=lambda p: p.name)
def test_train_config_loads(path: Path):
    cfg = load_config(TrainConfig, path)
    if cfg.deepspeed:
        ds_path = REPO / cfg.deepspeed
        assert ds_path.exists(), cfg.deepspeed
        world = 8 if "8gpu" in path.name else 1
        ds = deepspeed_config(ds_path, cfg, world)
        assert ds["train_batch_size"] == cfg.batch_size == cfg.micro_batch_size * world * ds["gradient_accumulation_steps"]


@pytest.mark.parametrize("path", DS_CONFIGS, ids=lambda p: p.name)
def test_deepspeed_config_is_valid_for_deepspeed(path: Path):
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    raw = load_yaml(path)
    zero = DeepSpeedZeroConfig(**raw["zero_optimization"])
    assert int(zero.stage) == int(path.stem[-1])


def test_published_hyper_parameters():
    cfg = load_config(TrainConfig, REPO / "configs/train/llama33_70b_zero3_8gpu.yaml")
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.use_rslora) == (64, 64, True)
    assert cfg.optim.lr == 1e-5 and cfg.optim.betas == (0.9, 0.99) and cfg.optim.eps == 1e-8 and cfg.optim.max_grad_norm == 1.0
    assert (cfg.epochs, cfg.batch_size, cfg.max_length) == (4, 16, 2048)
    assert (cfg.schedule.warmup_frac, cfg.schedule.cooldown_frac, cfg.schedule.min_lr_ratio) == (0.1, 0.5, 0.05)
    assert cfg.tokens.strategy == "reserved" and cfg.tokens.reserved_token == "<|reserved_special_token_0|>"
    assert cfg.precision == "bf16" and cfg.deepspeed.endswith("zero3.json")
    assert cfg.accumulation_steps(8) == 2


def test_unknown_and_inconsistent_keys_are_rejected(tmp_path):
    tiny = REPO / "configs/train/tiny_cpu.yaml"
    with pytest.raises(ConfigError, match="unknown key 'lora.rank'"):
        load_config(TrainConfig, tiny, ["lora.rank=4"])
    with pytest.raises(ConfigError, match="unknown key 'flag_loss_multiplier'"):
        load_config(TrainConfig, tiny, ["flag_loss_multiplier=2"])
    with pytest.raises(ConfigError, match="not a multiple of micro_batch_size"):
        load_config(TrainConfig, tiny, ["batch_size=5"])
    with pytest.raises(ConfigError, match="warmup_frac \\+ cooldown_frac"):
        load_config(TrainConfig, tiny, ["schedule.warmup_frac=0.6", "schedule.cooldown_frac=0.6"])
    cfg = load_config(TrainConfig, tiny)
    with pytest.raises(ValueError, match="x 3 processes"):
        cfg.accumulation_steps(3)


def test_deepspeed_file_may_not_restate_what_the_train_config_owns(tmp_path):
    ds = tmp_path / "ds.yaml"
    ds.write_text("zero_optimization: {stage: 2}\ntrain_micro_batch_size_per_gpu: 8\ngradient_clipping: 0.5\n")
    cfg = load_config(TrainConfig, REPO / "configs/train/tiny_cpu.yaml")
    with pytest.raises(ConfigError, match=r"\['gradient_clipping', 'train_micro_batch_size_per_gpu'\] are set by the train config"):
        deepspeed_config(ds, cfg, 2)


def test_zero3_refuses_what_it_cannot_partition():
    cfg = load_config(TrainConfig, REPO / "configs/train/tiny_cpu.yaml")
    zero3 = REPO / "configs/deepspeed/zero3.json"
    with pytest.raises(ConfigError, match="ZeRO-3 partitions the embeddings"):
        deepspeed_config(zero3, cfg, 2)
    reserved = cfg.model_copy(update={"tokens": cfg.tokens.model_copy(update={"strategy": "reserved"})})
    with pytest.raises(ConfigError, match="lora.train_split_embedding=false"):
        deepspeed_config(zero3, reserved, 2)
    ok = reserved.model_copy(update={"lora": reserved.lora.model_copy(update={"train_split_embedding": False})})
    assert deepspeed_config(zero3, ok, 2)["zero_optimization"]["stage"] == 3
