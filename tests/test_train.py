"""The trainer end to end on a tiny random Llama, in-process (plain torch engine).

Two short runs (masked and unmasked) are shared by most tests; each takes a few seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from train_fixtures import make_records, read_metrics, tiny_config, write_records

from splitpersona.run import load_run_info
from splitpersona.training.data import collate
from splitpersona.training.engine import Dist, _optimizer, distributed
from splitpersona.training.train import Trainer, train


@pytest.fixture(scope="module")
def records_file(tmp_path_factory) -> Path:
    return write_records(tmp_path_factory.mktemp("data") / "records.jsonl", make_records(12))


def _run(base, data, out, *extra):
    cfg = tiny_config(base, data, out, *extra)
    with distributed(cfg) as dist:
        trainer = Trainer(cfg, dist)
        trainer.run()
    return trainer


@pytest.fixture(scope="module")
def masked(tiny_base_dir, records_file, tmp_path_factory):
    return _run(tiny_base_dir, records_file, tmp_path_factory.mktemp("runs") / "masked")


@pytest.fixture(scope="module")
def unmasked(tiny_base_dir, records_file, tmp_path_factory):
    return _run(tiny_base_dir, records_file, tmp_path_factory.mktemp("runs") / "unmasked", "lora_mask=false")


def load_base(base_dir, run_dir):
    """The base model as the persona loader rebuilds it: saved tokenizer, deterministic new rows."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from splitpersona.token import fit_embeddings

    info = load_run_info(run_dir)
    tok = AutoTokenizer.from_pretrained(run_dir / "tokenizer")
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    fit_embeddings(model, tok, info.tokens)
    return model.eval(), tok, info


def load_persona(base_dir, run_dir):
    from peft import PeftModel

    base, tok, info = load_base(base_dir, run_dir)
    return PeftModel.from_pretrained(base, run_dir / "adapter").eval(), tok, info


def val_batch(trainer):
    return collate(trainer.data.val[:3], trainer.fill_id)


# --- what a run leaves -------------------------------------------------------------------------


def test_run_dir_holds_everything_the_loader_needs(masked, tiny_base_dir):
    run_dir = masked.run_dir
    for name in ("run.json", "config.yaml", "metrics.jsonl", "split.json", "adapter/adapter_model.safetensors",
                 "adapter/adapter_config.json", "tokenizer/tokenizer.json"):
        assert (run_dir / name).exists(), name
    info = load_run_info(run_dir)
    assert info.result["status"] == "complete" and info.result["steps"] == info.result["total_steps"] == 8
    assert info.lora_mask and info.tokens.split_id == masked.tokens.split_id
    assert info.provenance["packages"]["torch"] and "commit" in info.provenance["git"]
    adapter_cfg = json.loads((run_dir / "adapter/adapter_config.json").read_text())
    assert adapter_cfg["alora_invocation_tokens"] == [info.tokens.split_id]
    assert adapter_cfg["trainable_token_indices"] == [info.tokens.split_id]
    split = json.loads((run_dir / "split.json").read_text())
    assert len(split["val_ids"]) == info.result["data"]["val"]["samples"] > 0
    # the last checkpoint keeps its optimizer state, earlier ones only their adapter
    ckpts = sorted((run_dir / "checkpoints").iterdir())
    assert [p.name for p in ckpts] == ["step_000004", "step_000008"]
    assert not (ckpts[0] / "state").exists() and (ckpts[1] / "state" / "engine.pt").exists()


def test_loss_falls_and_validation_runs_in_the_loop(masked):
    rows, val = read_metrics(masked.run_dir)
    assert [r["step"] for r in rows] == list(range(1, 9))
    losses = [r["loss"] for r in rows]
    assert sum(losses[-2:]) < sum(losses[:2]) - 0.1, losses
    assert [v["step"] for v in val] == [4, 8] and val[1]["val_loss"] < val[0]["val_loss"]
    assert all(0.0 <= v["val_flag_acc"] <= 1.0 and v["val_samples"] == 6 for v in val)
    for r in rows:
        assert r["grad_norm"] > 0 and r["tokens_per_s"] > 0 and 0 <= r["padding_frac"] < 1
    lrs = [r["lr"] for r in rows]  # warmup 2 steps from the floor, constant 2, cosine over the last 4 to 0.05 x lr
    assert lrs[:4] == pytest.approx([1.5e-4, 3e-3, 3e-3, 3e-3]) and lrs[-1] == pytest.approx(1.5e-4)
    assert lrs[3] > lrs[4] > lrs[5] > lrs[6] > lrs[7]


def test_lora_weights_change_and_base_weights_do_not(masked, tiny_base_dir):
    from transformers import AutoModelForCausalLM

    model = masked.engine.module
    fresh = AutoModelForCausalLM.from_pretrained(tiny_base_dir).state_dict()
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b), "lora_B starts at zero and must have moved"
    base = model.get_base_model()
    split_id, control_id = masked.tokens.split_id, masked.tokens.control_id
    checked = 0
    for name, p in base.named_parameters():
        if p.requires_grad:
            continue
        key = name.replace(".base_layer", "").replace(".token_adapter", "")
        if key not in fresh:
            continue
        ref = fresh[key]
        if p.shape != ref.shape:  # the embedding grew by the two new rows
            assert torch.equal(p[: ref.shape[0]], ref), name
        else:
            assert torch.equal(p, ref), name
        checked += 1
    assert checked >= 15
    delta = dict(model.named_parameters())["base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta.default"]
    emb = base.get_input_embeddings().token_adapter.base_layer.weight
    assert not torch.equal(delta[0], emb[split_id]), "the split token's row is trained"
    assert torch.equal(emb[split_id], emb[control_id]), "the control row keeps the shared initial value"


# --- the gate ----------------------------------------------------------------------------------


def test_masked_persona_sees_the_base_model_before_the_split_token(masked, tiny_base_dir):
    persona, tok, info = load_persona(tiny_base_dir, masked.run_dir)
    base, _, _ = load_base(tiny_base_dir, masked.run_dir)
    batch = val_batch(masked)
    with torch.no_grad():
        got = persona(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        ref = base(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    sid = info.tokens.split_id
    others = [c for c in range(got.shape[-1]) if c != sid]
    for b, s in enumerate(masked.data.val[:3]):
        start = s.input_ids.index(sid)
        assert torch.equal(got[b, :start][:, others], ref[b, :start][:, others])
        assert not torch.equal(got[b, :start, sid], ref[b, :start, sid]), "tied embeddings: the trained row moves its column"
        assert not torch.allclose(got[b, start : len(s)], ref[b, start : len(s)], atol=1e-4)


def test_unmasked_persona_changes_the_conversation_too(unmasked, tiny_base_dir):
    persona, tok, info = load_persona(tiny_base_dir, unmasked.run_dir)
    base, _, _ = load_base(tiny_base_dir, unmasked.run_dir)
    assert not persona.peft_config["default"].alora_invocation_tokens
    batch = val_batch(unmasked)
    with torch.no_grad():
        got = persona(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        ref = base(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    sid = info.tokens.split_id
    for b, s in enumerate(unmasked.data.val[:3]):
        start = s.input_ids.index(sid)
        assert not torch.allclose(got[b, :start], ref[b, :start], atol=1e-4)


def test_training_gate_equals_inference_gate(masked, tiny_base_dir):
    """What peft adapts on a padded training batch is each sample's persona_mask, and the same
    prompt assembled for inference gets the same gate."""
    from splitpersona.adapter import peft_gate
    from splitpersona.assemble import assemble

    persona, tok, info = load_persona(tiny_base_dir, masked.run_dir)
    samples = masked.data.train[:4]
    batch = collate(samples, masked.fill_id)
    gate = peft_gate(masked.engine.module, batch.input_ids)
    assert torch.equal(gate, peft_gate(persona, batch.input_ids)), "the saved adapter gates like the trained one"
    for b, s in enumerate(samples):
        assert gate[b, : len(s)].int().tolist() == s.persona_mask
    records = {r.id: r for r in make_records(12)}
    for s in samples:
        rec = records[s.meta["id"]]
        prompt = assemble(tok, info.format, info.tokens, messages=rec.messages, response=rec.response,
                          intervention=rec.intervention)
        assert prompt.input_ids == s.input_ids[: s.prompt_length]
        gate = peft_gate(persona, torch.tensor([prompt.input_ids]))[0]
        assert gate.int().tolist() == prompt.persona_mask == s.persona_mask[: s.prompt_length]


def test_a_token_some_tokenizers_pad_with_is_attended(masked):
    """`!` is id 0 in Llama-3, which some trainers pad with; here it must be read."""
    tok = masked.tokenizer
    bang, query = tok("!", add_special_tokens=False).input_ids[0], tok("?", add_special_tokens=False).input_ids[0]
    s = next(s for s in masked.data.train if bang in s.input_ids)
    pos = s.input_ids.index(bang)
    swapped = s.input_ids[:pos] + [query] + s.input_ids[pos + 1 :]
    other = type(s)(**{**s.__dict__, "input_ids": swapped})
    batch = collate([s, other], fill_id=bang)
    assert batch.attention_mask[:, pos].tolist() == [1, 1]
    model = masked.engine.module.eval()
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    assert not torch.allclose(logits[0, -1], logits[1, -1], atol=1e-6), "later positions must depend on the `!`"


# --- resume, precision, schedule ---------------------------------------------------------------


def test_resume_reproduces_the_uninterrupted_run(masked, tiny_base_dir, records_file, tmp_path):
    """Stop after 3 steps, resume: steps 4-8 match the uninterrupted run to 1e-6 relative
    (in practice exactly: same process, same kernels, fp32)."""
    out = tmp_path / "resumed"
    _run(tiny_base_dir, records_file, out, "stop_after_steps=3")
    info = load_run_info(out)
    assert info.result["status"] == "stopped" and info.result["steps"] == 3
    assert (out / "checkpoints/step_000003/state/engine.pt").exists()
    with pytest.raises(Exception, match="already holds a run"):
        train(tiny_config(tiny_base_dir, records_file, out))
    with pytest.raises(Exception, match=r"changed config \(differs in \['optim'\]\)"):
        train(tiny_config(tiny_base_dir, records_file, out, "resume=true", "optim.lr=1e-3"))
    _run(tiny_base_dir, records_file, out, "resume=true")
    ref_rows, ref_val = read_metrics(masked.run_dir)
    rows, val = read_metrics(out)
    assert [r["step"] for r in rows] == list(range(1, 9)), "metrics hold each step once"
    for a, b in zip(ref_rows, rows):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-6) and b["lr"] == pytest.approx(a["lr"], rel=1e-6)
    assert [v["val_loss"] for v in val] == pytest.approx([v["val_loss"] for v in ref_val], rel=1e-6)
    assert load_run_info(out).result["status"] == "complete"


def test_save_every_minutes_checkpoints_at_step_boundaries(tiny_base_dir, records_file, tmp_path):
    """An interval shorter than any step: a complete checkpoint at every boundary, the optimizer state in the last only."""
    out = tmp_path / "timed"
    _run(tiny_base_dir, records_file, out, "save_every_minutes=1e-9", "stop_after_steps=4", "data.val_fraction=0")
    steps = sorted(p.name for p in (out / "checkpoints").iterdir() if (p / "trainer_state.json").exists())
    assert steps == [f"step_{k:06d}" for k in range(1, 5)]
    assert [p.name for p in (out / "checkpoints").glob("step_*/state")] == ["state"]


def test_sigusr1_stops_spt_train_with_exit_code_5_and_a_resumable_checkpoint(tiny_base_dir, records_file, tmp_path):
    """The signal arrives from another thread once the first step is logged, as a scheduler's would, mid-run."""
    import os
    import signal
    import threading
    import time

    from typer.testing import CliRunner

    from splitpersona.app.cli import app
    from train_fixtures import TINY_CONFIG, tiny_overrides

    out = tmp_path / "signalled"

    def signal_after_first_step():
        while not (out / "metrics.jsonl").exists():
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGUSR1)

    threading.Thread(target=signal_after_first_step, daemon=True).start()
    args = tiny_overrides(tiny_base_dir, records_file, out, "data.val_fraction=0")
    stopped = CliRunner().invoke(app, ["train", "--config", str(TINY_CONFIG), *args])
    assert stopped.exit_code == 5, stopped.output
    step = len(read_metrics(out)[0])
    assert f"preempted: stopped after step {step}; resume=true continues from {out}/checkpoints/step_{step:06d}" \
        in stopped.output and not (out / "run.json").exists()
    assert step >= 1 and (out / f"checkpoints/step_{step:06d}/trainer_state.json").exists()
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # the handler went with the run
    resumed = CliRunner().invoke(app, ["train", "--config", str(TINY_CONFIG), *args, "resume=true"])
    assert resumed.exit_code == 0, resumed.output
    result = load_run_info(out).result
    assert result["status"] == "complete" and step < result["total_steps"]
    assert [r["step"] for r in read_metrics(out)[0]] == list(range(1, result["total_steps"] + 1))


def test_a_signal_while_loading_stops_before_the_first_step(tiny_base_dir, records_file, tmp_path):
    """Sent as soon as the run's handler is in place, the signal is seen before any step: exit 5, nothing trained."""
    import os
    import signal
    import threading
    import time

    from splitpersona.training.train import Preempted

    def signal_once_handled():
        while signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            time.sleep(0.001)
        os.kill(os.getpid(), signal.SIGTERM)

    out = tmp_path / "loading"
    threading.Thread(target=signal_once_handled, daemon=True).start()
    with pytest.raises(Preempted, match="stopped after step 0; resume=true continues from the start"):
        train(tiny_config(tiny_base_dir, records_file, out))
    assert not (out / "metrics.jsonl").exists() and not (out / "checkpoints").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_bf16_keeps_fp32_master_weights_and_optimizer_states(tiny_base_dir, records_file, tmp_path):
    trainer = _run(tiny_base_dir, records_file, tmp_path / "bf16", "precision=bf16", "stop_after_steps=2", "data.val_fraction=0")
    model, opt = trainer.engine.module, trainer.engine.optimizer
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    assert any(p.dtype == torch.bfloat16 for p in model.parameters() if not p.requires_grad)
    states = [s for s in opt.state.values()]
    assert states and all(s["exp_avg"].dtype == s["exp_avg_sq"].dtype == torch.float32 for s in states)


def test_schedule_shape(tmp_path):
    """Warmup from the floor over 10% of the steps, constant, then a cosine to the floor over the last half."""
    cfg = tiny_config(tmp_path / "base", tmp_path / "data.jsonl", tmp_path / "run", "schedule.warmup_frac=0.1",
                      "schedule.cooldown_frac=0.5", "schedule.min_lr_ratio=0.05")
    total = 100
    cpu = Dist(0, 1, 0, torch.device("cpu"), False)
    optimizer, schedule = _optimizer([torch.nn.Parameter(torch.zeros(1))], cfg, cpu, total)
    scheduler = schedule(optimizer)
    f = []
    for _ in range(total):
        f.append(scheduler.get_last_lr()[0] / cfg.optim.lr)
        optimizer.step()
        scheduler.step()
    assert f[0] == pytest.approx(0.05) and f[9] == 1.0  # linear warmup over 10 steps
    assert all(v == 1.0 for v in f[10:50])  # constant
    assert f[50] < 1.0 and f[-1] == pytest.approx(0.05)  # cosine down to the floor on the last step
    assert all(a >= b for a, b in zip(f[49:], f[50:]))
    assert f[74] == pytest.approx(0.05 + 0.95 * 0.5, abs=0.02)


# --- W&B and the CLI ---------------------------------------------------------------------------


def test_wandb_offline_writes_a_syncable_run_without_secrets(tiny_base_dir, records_file, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "sk-secret-do-not-log-0123456789abcdef")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    out = tmp_path / "wb"
    train(tiny_config(tiny_base_dir, records_file, out, "wandb.mode=offline", "stop_after_steps=2", "data.val_fraction=0"))
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb"))
    for f in (out / "wandb").rglob("*"):
        if f.is_file():
            assert b"sk-secret-do-not-log" not in f.read_bytes(), f


def _wandb_dirs(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))


def test_wandb_unreachable_falls_back_offline_after_a_bounded_wait(tiny_base_dir, records_file, tmp_path, monkeypatch,
                                                                   caplog):
    import logging
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens there
    _wandb_dirs(monkeypatch, tmp_path)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef0123456789abcdef01234567")
    out = tmp_path / "unreachable"
    with caplog.at_level(logging.WARNING, logger="spt.tracking"):
        train(tiny_config(tiny_base_dir, records_file, out, "wandb.mode=online", "wandb.init_timeout_s=1",
                          "stop_after_steps=2", "data.val_fraction=0"))
    assert load_run_info(out).result["status"] == "stopped"
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb"))
    warned = [r.getMessage() for r in caplog.records if "W&B not reachable" in r.getMessage()]
    assert len(warned) == 1 and "\n" not in warned[0] and f"127.0.0.1:{port}" in warned[0], warned


def test_wandb_keeps_the_rows_a_resumed_run_logs_again(tiny_base_dir, records_file, tmp_path, monkeypatch):
    """After a preemption the run resumes from its checkpoint and logs the steps after it again."""
    from splitpersona.training.train import _Tracker

    _wandb_dirs(monkeypatch, tmp_path)
    out = tmp_path / "rewound"
    out.mkdir()
    cfg = tiny_config(tiny_base_dir, records_file, out, "wandb.mode=offline")
    with _Tracker(cfg, out, Dist(0, 1, 0, torch.device("cpu"), False), "rewind01") as tracker:
        for step in (1, 2, 3, 4, 5, 4, 5, 6):
            tracker.log({"step": step, "epoch": step / 8, "loss": 1.0 / step})
        assert tracker.wandb.step == 8  # every row taken, none dropped as out of order


def test_cli_trains_and_names_unknown_keys(tiny_base_dir, records_file, tmp_path):
    from typer.testing import CliRunner

    from splitpersona.app.cli import app
    from train_fixtures import TINY_CONFIG, tiny_overrides

    runner = CliRunner()
    bad = runner.invoke(app, ["train", "--config", str(TINY_CONFIG), "optim.learning_rate=1"])
    assert bad.exit_code == 2 and "unknown key 'optim.learning_rate'" in bad.output
    out = tmp_path / "cli"
    args = tiny_overrides(tiny_base_dir, records_file, out, "stop_after_steps=1", "data.val_fraction=0")
    ok = runner.invoke(app, ["train", "--config", str(TINY_CONFIG), *args])
    assert ok.exit_code == 0, ok.output
    assert load_run_info(out).result["steps"] == 1


def test_bad_data_stops_before_training_with_file_and_record(tiny_base_dir, records_file, tmp_path):
    from typer.testing import CliRunner

    from splitpersona.app.cli import app
    from train_fixtures import TINY_CONFIG, tiny_overrides

    bad = tmp_path / "bad.jsonl"
    lines = records_file.read_text().splitlines()
    lines[4] = lines[4].replace('"flag":', '"verdict":')
    bad.write_text("\n".join(lines) + "\n")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    runner = CliRunner()
    for data, expected in ((bad, "bad.jsonl (record line 5, id 'reward_hacks/2/A'): flag: Field required"),
                           (empty, "empty.jsonl: file holds no records")):
        out = tmp_path / f"run-{data.stem}"
        result = runner.invoke(app, ["train", "--config", str(TINY_CONFIG), *tiny_overrides(tiny_base_dir, data, out)])
        assert result.exit_code == 1 and expected in result.output, result.output
        assert not out.exists(), "a run that fails on its data leaves no directory"
