"""DeepSpeed on CPU (gloo): two processes through the `deepspeed` launcher (ZeRO-2 with a resume,
ZeRO-3, a SIGTERM mid-run and its resume, the bf16 precision policy under both stages), and
in-process runs without a launcher.

Runs are judged by what they saved, then by the exit status. Each must match a one-process
plain-torch run of the same config step for step: same global batch, same data order, loss
normalised over the whole optimizer step. About 5 minutes together on two shared cores.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_fixtures import REPO, TINY_CONFIG, make_records, read_metrics, tiny_config, tiny_overrides, write_records

from splitpersona.run import load_run_info
from splitpersona.training.train import train

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def native_threads() -> list[str]:
    tasks = Path("/proc/self/task")
    if not tasks.exists():
        pytest.skip("needs Linux /proc to list native threads")
    return [(t / "comm").read_text().strip() for t in tasks.iterdir()]


def launch(*overrides: str, ds_config: str = "configs/deepspeed/zero2.json", cwd: Path = REPO) -> subprocess.CompletedProcess:
    cmd, env = launch_command(*overrides, ds_config=ds_config)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def launch_command(*overrides: str, ds_config: str = "configs/deepspeed/zero2.json") -> tuple[list[str], dict[str, str]]:
    """The `deepspeed` launcher's command line for two CPU ranks of the tiny config, and its environment."""
    env = {
        **os.environ,
        "DS_ACCELERATOR": "cpu",
        "SPT_DS_SKIP_SHM_BUILD": "1",  # the test harness skips DeepSpeed's 22 s g++ build of an op training never uses
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "disabled",
        "PYTHONUNBUFFERED": "1",
    }
    cmd = [
        str(os.path.join(os.path.dirname(sys.executable), "deepspeed")),
        "--master_port", str(_free_port()),
        "--num_gpus", "2",
        "--module", "splitpersona.training.train",
        "--config", str(TINY_CONFIG),
        f"deepspeed={REPO / ds_config}",
        *overrides,
    ]
    return cmd, env


def research_repo(path: Path) -> Path:
    """A working directory with its own `training` and `eval` packages, as research repositories have."""
    for name in ("training", "eval", "data_gen"):
        (path / name).mkdir(parents=True)
        (path / name / "__init__.py").write_text(f"raise ImportError('the research repository\\'s own {name}')\n")
    return path


def test_two_process_zero2_matches_one_process_and_resumes(tiny_base_dir, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from splitpersona.token import fit_embeddings

    data = write_records(tmp_path / "records.jsonl", make_records(12))
    ref_dir = train(tiny_config(tiny_base_dir, data, tmp_path / "torch"))

    out = tmp_path / "ds"
    first = launch(*tiny_overrides(tiny_base_dir, data, out, "stop_after_steps=5"))
    log = first.stdout + first.stderr
    info = load_run_info(out)
    assert info.result["status"] == "stopped" and info.result["steps"] == 5, log[-3000:]
    state = out / "checkpoints/step_000005/state"
    for rank in (0, 1):
        assert (state / "deepspeed" / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").exists()
        assert (state / f"rng_rank{rank}.pt").exists()
    assert first.returncode == 0, log[-3000:]

    second = launch(*tiny_overrides(tiny_base_dir, data, out, "resume=true"))
    log = second.stdout + second.stderr
    info = load_run_info(out)
    assert info.result["status"] == "complete" and info.result["world_size"] == 2, log[-3000:]
    assert "resumed from" in log and "step_000005" in log
    assert second.returncode == 0, log[-3000:]

    ref_rows, ref_val = read_metrics(ref_dir)
    rows, val = read_metrics(out)
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in ref_rows], rel=1e-5)
    assert [v["val_loss"] for v in val] == pytest.approx([v["val_loss"] for v in ref_val], rel=1e-5)

    ours, ref = load_file(out / "adapter/adapter_model.safetensors"), load_file(ref_dir / "adapter/adapter_model.safetensors")
    assert ours.keys() == ref.keys()
    for k in ref:
        assert torch.allclose(ours[k], ref[k], rtol=1e-4, atol=1e-6), k

    tok = AutoTokenizer.from_pretrained(out / "tokenizer")
    base = AutoModelForCausalLM.from_pretrained(tiny_base_dir)
    fit_embeddings(base, tok, info.tokens)
    persona = PeftModel.from_pretrained(base, out / "adapter").eval()
    ids = torch.tensor([tok("Item 3: which shoes?", add_special_tokens=False).input_ids + [info.tokens.split_id]])
    with torch.no_grad():
        assert torch.isfinite(persona(input_ids=ids).logits).all()


def _llama3_base(out: Path) -> Path:
    """A tiny random Llama around the real Llama-3 vocabulary (128,256 ids, split token = reserved id 128002)."""
    from real_tokenizers import load

    from splitpersona.tiny import tiny_llama

    tok = load("llama3")
    model = tiny_llama(tok, hidden_size=32, num_layers=1, intermediate_size=64, tie_word_embeddings=False)
    tok.save_pretrained(out)
    model.save_pretrained(out)
    return out


@pytest.mark.parametrize("vocabulary", ["toy", "llama3"])
def test_two_process_zero3_matches_one_process(tiny_base_dir, tmp_path, vocabulary):
    """ZeRO-3 partitions the weights; with the reserved-token strategy it must train exactly the same adapter.

    Launched from a research repository that has its own `training/` and `eval/`, as people launch it.
    On the real Llama-3 vocabulary (with its dated chat template) the adapter then loads and reviews.
    """
    from safetensors.torch import load_file

    from splitpersona.persona import Persona

    data = write_records(tmp_path / "records.jsonl", make_records(12))
    extra = ("tokens.strategy=reserved", "lora.train_split_embedding=false", "epochs=1")
    if vocabulary == "llama3":
        tiny_base_dir = _llama3_base(tmp_path / "llama3_base")
        extra += ("chat_template.family=llama3",)
    ref_dir = train(tiny_config(tiny_base_dir, data, tmp_path / "torch", *extra))
    out = tmp_path / "zero3"
    proc = launch(*tiny_overrides(tiny_base_dir, data, out, *extra), ds_config="configs/deepspeed/zero3.json",
                  cwd=research_repo(tmp_path / "research"))
    log = proc.stdout + proc.stderr
    assert load_run_info(out).result["status"] == "complete", log[-3000:]
    assert proc.returncode == 0, log[-3000:]
    rows, _ = read_metrics(out)
    ref_rows, _ = read_metrics(ref_dir)
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in ref_rows], rel=1e-5)
    ours, ref = load_file(out / "adapter/adapter_model.safetensors"), load_file(ref_dir / "adapter/adapter_model.safetensors")
    assert ours.keys() == ref.keys() and all(torch.allclose(ours[k], ref[k], rtol=1e-4, atol=1e-6) for k in ref)
    persona = Persona.load(out, max_new_tokens=3)
    review = persona.review([{"role": "user", "content": "Item 3: which shoes?"}], "The trail runner.", return_logits=True)
    assert review.prompt_tokens > 0 and torch.isfinite(review.logits).all()
    if vocabulary == "llama3":
        assert persona.info.tokens.split_id == 128002 and len(persona.tokenizer) == 128256
        assert "Today Date: 26 Jul 2024" in persona.tokenizer.decode(persona.conversation_ids([{"role": "user", "content": "x"}]))


def test_in_process_deepspeed_leaves_no_global_state(tiny_base_dir, tmp_path, monkeypatch):
    """`train(cfg)` with a DeepSpeed config and no launcher: one process, its own rendezvous, undone after."""
    monkeypatch.setenv("SPT_DS_SKIP_SHM_BUILD", "1")
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    data = write_records(tmp_path / "records.jsonl", make_records(12))
    extra = ("stop_after_steps=3", "data.val_fraction=0", "deepspeed=configs/deepspeed/zero2.json")
    monkeypatch.chdir(REPO)
    ref = train(tiny_config(tiny_base_dir, data, tmp_path / "torch", "stop_after_steps=3", "data.val_fraction=0"))
    for name in ("ds1", "ds2"):  # twice: the first call must not leave anything that breaks the second
        run_dir = train(tiny_config(tiny_base_dir, data, tmp_path / name, *extra))
        assert not torch.distributed.is_initialized()
        assert not {"RANK", "WORLD_SIZE", "MASTER_PORT"} & set(os.environ)
        # no gloo worker or TCPStore thread left to be torn down at interpreter exit (the rc -6 abort)
        assert not [t for t in native_threads() if "gloo" in t or "tcpstore" in t], native_threads()
        assert [r["loss"] for r in read_metrics(run_dir)[0]] == pytest.approx([r["loss"] for r in read_metrics(ref)[0]], rel=1e-5)


def test_collective_timeout_is_the_configs(tiny_base_dir, tmp_path, monkeypatch):
    """The process group waits `dist_timeout_minutes` (a 70B's load before the first collective), not DeepSpeed's default."""
    from datetime import timedelta

    from torch.distributed.distributed_c10d import _get_default_group

    from splitpersona.training.engine import distributed

    monkeypatch.setenv("SPT_DS_SKIP_SHM_BUILD", "1")
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(REPO)
    data = write_records(tmp_path / "records.jsonl", make_records(2))
    cfg = tiny_config(tiny_base_dir, data, tmp_path / "run", "deepspeed=configs/deepspeed/zero2.json", "dist_timeout_minutes=77")
    with distributed(cfg):
        backend = _get_default_group()._get_backend(torch.device("cpu"))
        assert backend.options._timeout == timedelta(minutes=77)
    assert not torch.distributed.is_initialized()


def test_sigterm_checkpoints_every_rank_and_the_resumed_run_matches_the_uninterrupted_one(tiny_base_dir, tmp_path):
    """A scheduler's SIGTERM to both ranks mid-run: a checkpoint at the next step boundary, exit code 5 from the
    launcher, and after resume=true the adapter of a run that was never interrupted."""
    import signal
    import time

    import psutil
    from safetensors.torch import load_file

    from splitpersona.training.train import Preempted

    data = write_records(tmp_path / "records.jsonl", make_records(12))
    extra = ("epochs=10",)  # long enough that the signal lands mid-run
    ref_dir = train(tiny_config(tiny_base_dir, data, tmp_path / "torch", *extra))
    total = len(read_metrics(ref_dir)[0])

    out = tmp_path / "ds"
    cmd, env = launch_command(*tiny_overrides(tiny_base_dir, data, out, *extra))
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        while proc.poll() is None and (not (out / "metrics.jsonl").exists() or len(read_metrics(out)[0]) < 2):
            time.sleep(0.05)
        ranks = [p for p in psutil.Process(proc.pid).children(recursive=True)
                 if "splitpersona.training.train" in (c := " ".join(p.cmdline())) and "deepspeed.launcher" not in c]
        assert len(ranks) == 2, [p.cmdline() for p in ranks]
        for rank in ranks:
            rank.send_signal(signal.SIGTERM)
        log, _ = proc.communicate(timeout=600)
    finally:
        proc.kill()
    assert proc.returncode == Preempted.exit_code, log[-3000:]
    assert "preempted: stopped after step" in log and "SIGTERM received" in log
    done = sorted(int(p.name.split("_")[1]) for p in (out / "checkpoints").glob("step_*") if (p / "trainer_state.json").exists())
    step = done[-1]
    assert 2 <= step < total and len(read_metrics(out)[0]) == step, (done, total)
    state = out / f"checkpoints/step_{step:06d}/state"
    assert all((state / f"rng_rank{rank}.pt").exists() for rank in (0, 1))
    assert not (out / "run.json").exists()

    second = launch(*tiny_overrides(tiny_base_dir, data, out, *extra, "resume=true"))
    log = second.stdout + second.stderr
    assert second.returncode == 0 and f"step_{step:06d}" in log, log[-3000:]
    assert load_run_info(out).result["status"] == "complete"
    rows, ref_rows = read_metrics(out)[0], read_metrics(ref_dir)[0]
    assert [r["step"] for r in rows] == list(range(1, total + 1))
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in ref_rows], rel=1e-5)
    ours, ref = load_file(out / "adapter/adapter_model.safetensors"), load_file(ref_dir / "adapter/adapter_model.safetensors")
    assert ours.keys() == ref.keys() and all(torch.allclose(ours[k], ref[k], rtol=1e-4, atol=1e-6) for k in ref)


@pytest.mark.parametrize("ds_config", ["configs/deepspeed/zero2.json", "configs/deepspeed/zero3.json"])
def test_bf16_adapter_trains_in_fp32_under_zero2_and_zero3_as_in_plain_torch(tiny_base_dir, tmp_path, ds_config):
    """One precision policy: bf16 base weights; fp32 adapter weights, gradient accumulation and reduction, AdamW
    states, in every engine. run.json records what each engine held (read from the engine, not the config)."""
    from splitpersona.training.engine import PRECISION_POLICY

    data = write_records(tmp_path / "records.jsonl", make_records(12))
    extra = ("precision=bf16", "stop_after_steps=2", "data.val_fraction=0", "tokens.strategy=reserved",
             "lora.train_split_embedding=false")
    torch_dir = train(tiny_config(tiny_base_dir, data, tmp_path / "torch", *extra))
    assert load_run_info(torch_dir).result["precision"] == {"base_weights": "bfloat16", **PRECISION_POLICY,
                                                           "gradient_reduction": None}
    out = tmp_path / "ds"
    proc = launch(*tiny_overrides(tiny_base_dir, data, out, *extra), ds_config=ds_config)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert load_run_info(out).result["precision"] == {"base_weights": "bfloat16", **PRECISION_POLICY}, log[-3000:]
