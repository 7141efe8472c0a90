"""Train the honest persona: a LoRA adapter (activated LoRA when lora_mask is on) on a frozen base model.

    deepspeed --num_gpus 8 --module splitpersona.training.train --config configs/train/llama33_70b_zero3_8gpu.yaml [key=value ...]
    spt train --config configs/train/tiny_cpu.yaml base_model=/path/to/model [key=value ...]

From Python, `train(cfg)` runs in the calling process and returns the run directory (see
`splitpersona.run` for its layout). The loop is written out here rather than borrowed from the
HF Trainer: it needs the persona's own loss mask, a loss normalised over the whole optimizer step,
validation that turns activation checkpointing off around it (peft's aLoRA refuses a second
forward before a backward with checkpointing on), a flag-accuracy metric, and resumable
checkpoints whose data order is recomputed, not stored.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from splitpersona.card import write_card
from splitpersona.config import ConfigError, dump_config, load_config, load_yaml
from splitpersona.io import DataError, append_jsonl, atomic_write, iter_jsonl, read_json, write_json, write_jsonl
from splitpersona.run import (
    ADAPTER_DIR, CONFIG_FILE, METRICS_FILE, RUN_FILE, RunInfo, provenance, replace_dir, save_run, save_run_info,
)
from splitpersona.training.config import RESUMABLE_KEYS, TrainConfig
from splitpersona.training.data import IGNORE, MicroBatch, collate, epoch_plan, prepare_data, rank_share, steps_per_epoch, target_tokens
from splitpersona.training.engine import (
    PRECISION_POLICY, DeepSpeedEngine, Dist, TorchEngine, deepspeed_config, distributed, exit_now, zero3_loading,
)

log = logging.getLogger("spt.train")

CHECKPOINTS_DIR = "checkpoints"
STATE_FILE = "trainer_state.json"  # written last in a checkpoint: its presence marks the checkpoint complete
# What schedulers send before they kill a job: SIGTERM (Slurm preemption and scancel, Kubernetes), SIGUSR1 (`--signal`).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(Exception):
    """A stop signal arrived: every rank checkpointed at the next step boundary; rerun with resume=true."""

    exit_code = 5  # distinct from the CLI's error codes, so a job script can requeue on it


@dataclass
class TrainerState:
    step: int  # optimizer steps completed
    total_steps: int
    wandb_id: str


# --- entry points ------------------------------------------------------------------------------


def train(cfg: TrainConfig) -> Path:
    """Train in this process (one process, or one rank of a launched job); returns the run directory.

    The caller's RNG state is left as it was; the run seeds its own.
    """
    with distributed(cfg) as dist, torch.random.fork_rng(devices=range(torch.cuda.device_count())):
        trainer = Trainer(cfg, dist)
        try:
            return trainer.run()
        finally:
            trainer.close()
            del trainer  # let the process group go with the engine (see `distributed`)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m splitpersona.training.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="Train config YAML (configs/train/*.yaml).")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # added by the deepspeed launcher
    args, overrides = parser.parse_known_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    try:
        run_dir = train(load_config(TrainConfig, args.config, overrides))
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    except Preempted as e:
        print(f"preempted: {e}", file=sys.stderr, flush=True)
        return Preempted.exit_code
    if rank == 0:
        print(f"run directory: {run_dir}", flush=True)
    return 0


# --- the run -----------------------------------------------------------------------------------


class Trainer:
    """One run. `run()` trains and returns the run directory; `engine.module` is the trained model after."""

    def __init__(self, cfg: TrainConfig, dist: Dist):
        self.cfg = cfg
        self.dist = dist
        self.run_dir = Path(cfg.output_dir)
        self.precision: dict | None = None  # the engine's dtypes, read after this process's first step

    def run(self) -> Path:
        with self._stop_signals_caught():
            return self._run()

    def _run(self) -> Path:
        cfg, dist = self.cfg, self.dist
        ds_config = deepspeed_config(cfg.deepspeed, cfg, dist.world_size) if dist.deepspeed else None
        checkpoint = self._check_run_dir()
        torch.manual_seed(cfg.seed)

        self.tokenizer, self.tokens = _load_tokenizer(cfg)
        self.data = prepare_data(cfg.data, cfg.seed, self.tokenizer, cfg.format, self.tokens, cfg.max_length)
        self.fill_id = _fill_id(self.tokenizer, self.tokens.split_id)
        self.lengths = [len(s) for s in self.data.train]
        self.steps_per_epoch = steps_per_epoch(len(self.data.train), cfg.batch_size)
        if self.steps_per_epoch == 0:
            raise ConfigError(f"{len(self.data.train)} training samples do not fill one batch of batch_size {cfg.batch_size}")
        total = self.steps_per_epoch * cfg.epochs
        accumulation = cfg.accumulation_steps(dist.world_size)
        if dist.is_main:
            log.info("data: %s", self.data.stats)
            log.info("%d steps (%d per epoch), global batch %d = micro %d x %d processes x %d accumulation",
                     total, self.steps_per_epoch, cfg.batch_size, cfg.micro_batch_size, dist.world_size, accumulation)

        model = _load_model(cfg, self.tokenizer, self.tokens, ds_config)
        if dist.deepspeed:
            self.engine = DeepSpeedEngine(model, cfg, dist, total, ds_config)
        else:
            self.engine = TorchEngine(model, cfg, dist, total)

        state = TrainerState(step=0, total_steps=total, wandb_id=uuid.uuid4().hex[:8])
        if checkpoint is not None:
            state = TrainerState(**read_json(checkpoint / STATE_FILE))
            if state.total_steps != total:
                raise ConfigError(f"{checkpoint}: planned {state.total_steps} steps, this config plans {total}")
            self.engine.load_state(checkpoint / "state")
            log.info("resumed from %s at step %d", checkpoint, state.step)
        if dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            _write_yaml(self.run_dir / CONFIG_FILE, dump_config(cfg))
            if cfg.resume:
                _truncate_metrics(self.run_dir / METRICS_FILE, state.step)
        dist.barrier()
        self.state = state
        if state.step == total and (self.run_dir / RUN_FILE).exists():
            log.info("%s is already complete (%d steps)", self.run_dir, total)
            return self.run_dir

        with _Tracker(cfg, self.run_dir, dist, state.wandb_id) as tracker:
            self.tracker = tracker
            status = self._loop()
            if status == "preempted":
                latest = _latest_checkpoint(self.run_dir)
                raise Preempted(f"stopped after step {self.state.step}; resume=true continues from "
                                f"{latest or 'the start'}")
            self._finish(status)
        return self.run_dir

    def close(self) -> None:
        if hasattr(self, "engine"):
            self.engine.close()

    # -- stopping --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _stop_signals_caught(self) -> Iterator[None]:
        """While the run runs, a stop signal is remembered instead of ending the process; the loop acts on it at
        the next step boundary. Python delivers signals to the main thread only, so a run started from another
        thread keeps the defaults."""
        self.signalled: int | None = None
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def remember(signum, _frame):
            self.signalled = signum
            log.warning("rank %d: %s received; checkpointing at the end of this step", self.dist.rank,
                        signal.Signals(signum).name)

        before = {signum: signal.signal(signum, remember) for signum in STOP_SIGNALS}
        try:
            yield
        finally:
            for signum, handler in before.items():
                signal.signal(signum, handler)

    def _agreed_stops(self) -> tuple[bool, bool]:
        """(a rank was signalled, rank 0's save interval is over): one collective, so every rank acts alike."""
        every = self.cfg.save_every_minutes
        due = self.dist.is_main and every is not None and time.monotonic() - self.last_save >= 60 * every
        signalled, due = self.dist.all_reduce_sum([float(self.signalled is not None), float(due)])
        return signalled > 0, due > 0

    # -- run directory ---------------------------------------------------------------------------

    def _check_run_dir(self) -> Path | None:
        """Refuse to overwrite a run; on resume, check the config is the one the run started with.

        Nothing is written here: a run that fails on its data or model leaves no directory behind.
        """
        cfg, run_dir = self.cfg, self.run_dir
        existing = run_dir / CONFIG_FILE
        if existing.exists():
            if not cfg.resume:
                raise ConfigError(f"{run_dir} already holds a run: pass resume=true to continue it, or pick another output_dir")
            before = load_yaml(existing)
            now = dump_config(cfg)
            changed = sorted(k for k in set(before) | set(now) if k not in RESUMABLE_KEYS and before.get(k) != now.get(k))
            if changed:
                raise ConfigError(f"{existing}: cannot resume with a changed config (differs in {changed})")
        if not cfg.resume:
            return None
        # rank 0's choice for every rank: node-local disks may hold different checkpoints
        chosen = self.dist.broadcast_object(_latest_checkpoint(run_dir) if self.dist.is_main else None)
        if chosen is not None and not (chosen / STATE_FILE).exists():
            raise ConfigError(f"rank {self.dist.rank}: rank 0 resumes from {chosen}, which this rank cannot read")
        return chosen

    # -- training loop ---------------------------------------------------------------------------

    def _loop(self) -> str:
        cfg, dist, engine = self.cfg, self.dist, self.engine
        spe = self.steps_per_epoch
        total = self.state.total_steps
        end = min(total, cfg.stop_after_steps) if cfg.stop_after_steps else total
        ckpt_marks = _marks(spe, cfg.epochs, cfg.checkpoints_per_epoch)
        val_marks = _marks(spe, cfg.epochs, cfg.val_per_epoch) if self.data.val else set()
        plan_epoch, plan = -1, []
        self.last_save = time.monotonic()
        if self._agreed_stops()[0]:
            return "preempted"  # signalled while loading (minutes for a 70B): nothing new to save
        engine.train()
        with _progress(dist, total, self.state.step) as advance:
            for step in range(self.state.step, end):
                epoch, k = divmod(step, spe)
                if epoch != plan_epoch:
                    plan_epoch, plan = epoch, epoch_plan(self.lengths, epoch, cfg.seed, cfg.batch_size, cfg.micro_batch_size)
                row = self._train_step(plan[k])
                if step == self.state.step:
                    self.precision = self._check_precision()
                self.state.step = done = step + 1
                row = {"step": done, "epoch": round(done / spe, 4), **row}
                self.tracker.log(row)
                advance(loss=row["loss"], lr=row["lr"])
                if done in val_marks or (done == total and self.data.val):
                    self.tracker.log({"step": done, "epoch": row["epoch"], **self._validate()})
                signalled, due = self._agreed_stops()
                if done in ckpt_marks or done == end or signalled or due:
                    self._save_checkpoint()
                if signalled and done < end:
                    return "preempted"
        return "complete" if self.state.step == total else "stopped"

    def _check_precision(self) -> dict:
        """What the engine holds after its first step, against PRECISION_POLICY: a DeepSpeed release that casts
        or accumulates otherwise stops the run here, not after it trained at another precision."""
        held = {"base_weights": "bfloat16" if self.cfg.precision == "bf16" else "float32", **self.engine.precision()}
        off = {k: held[k] for k, want in PRECISION_POLICY.items() if held[k] is not None and held[k] != want}
        if off:
            raise RuntimeError(f"the engine trains the adapter in {off}; the policy is {PRECISION_POLICY}")
        if self.dist.is_main:
            log.info("precision: %s", held)
        return held

    def _train_step(self, micro_batches: list[list[int]]) -> dict:
        dist, engine, train = self.dist, self.engine, self.data.train
        t0 = time.perf_counter()
        step_samples = [train[i] for mb in micro_batches for i in mb]
        n_target = target_tokens(step_samples)
        lr = engine.lr()
        ce_sum = 0.0
        for mb in rank_share(micro_batches, dist.rank, dist.world_size):
            batch = collate([train[i] for i in mb], self.fill_id).to(dist.device)
            ce, _ = _forward_ce(engine, batch)
            # sum over this micro-batch / target tokens of the whole step, x world size because
            # gradients are averaged over processes: the step's gradient is that of the token mean
            engine.backward(ce * (dist.world_size / n_target))
            ce_sum += ce.item()
        grad_norm = engine.step()
        (ce_total,) = dist.all_reduce_sum([ce_sum])
        elapsed = time.perf_counter() - t0
        real = sum(len(s) for s in step_samples)
        padded = sum(max(len(train[i]) for i in mb) * len(mb) for mb in micro_batches) - real
        return {"loss": ce_total / n_target, "lr": lr, "grad_norm": grad_norm, "tokens": real,
                "target_tokens": n_target, "padding_frac": padded / (real + padded), "tokens_per_s": real / elapsed,
                "step_time_s": elapsed}

    @torch.no_grad()
    def _validate(self) -> dict:
        """Validation loss (token mean) and teacher-forced flag accuracy, over all processes."""
        cfg, dist, engine, val = self.cfg, self.dist, self.engine, self.data.val
        order = sorted(range(len(val)), key=lambda i: (len(val[i]), i))
        batches = [order[k : k + cfg.micro_batch_size] for k in range(0, len(order), cfg.micro_batch_size)]
        mine = rank_share(batches, dist.rank, dist.world_size)
        # every rank runs the same number of forwards (ZeRO-3 gathers weights collectively); extras count for nothing
        rounds = -(-len(batches) // dist.world_size)
        work = [(mb, 1.0) for mb in mine] + [(batches[0], 0.0)] * (rounds - len(mine))
        ce_sum = tokens = correct = flags = 0.0
        engine.train(False)
        with _checkpointing_paused(engine.module):
            for mb, weight in work:
                samples = [val[i] for i in mb]
                batch = collate(samples, self.fill_id).to(dist.device)
                ce, logits = _forward_ce(engine, batch)
                ids = batch.input_ids
                hits = sum(
                    int(logits[b, p - 1 - batch.keep_from].argmax() == ids[b, p]) for b, p in enumerate(batch.flag_positions)
                )
                ce_sum += weight * ce.item()
                tokens += weight * target_tokens(samples)
                correct += weight * hits
                flags += weight * len(samples)
        engine.train(True)
        ce_sum, tokens, correct, flags = dist.all_reduce_sum([ce_sum, tokens, correct, flags])
        result = {"val_loss": ce_sum / tokens, "val_flag_acc": correct / flags, "val_samples": int(flags)}
        if dist.is_main:
            log.info("step %d: %s", self.state.step, result)
        return result

    # -- saving ----------------------------------------------------------------------------------

    def _save_checkpoint(self) -> None:
        dist = self.dist
        path = self.run_dir / CHECKPOINTS_DIR / f"step_{self.state.step:06d}"
        if dist.is_main and path.exists():
            shutil.rmtree(path)  # an incomplete attempt at this step (no STATE_FILE), or a resumed rerun
        dist.barrier()
        weights = self.engine.adapter_weights()
        if dist.is_main:
            replace_dir(path / ADAPTER_DIR, lambda tmp: _write_adapter(self.engine.module, weights, tmp))
        self.engine.save_state(path / "state")
        dist.barrier()
        if dist.is_main:
            write_json(path / STATE_FILE, asdict(self.state))
            for old in (self.run_dir / CHECKPOINTS_DIR).glob("step_*"):
                if old != path and (old / "state").exists():
                    shutil.rmtree(old / "state")  # only the last optimizer state is needed to resume
        dist.barrier()
        self.last_save = time.monotonic()

    def _finish(self, status: str) -> None:
        """The run directory, written whole (splitpersona.run.save_run)."""
        cfg, dist = self.cfg, self.dist
        weights = self.engine.adapter_weights()
        if dist.is_main:
            result = {"status": status, "steps": self.state.step, "total_steps": self.state.total_steps,
                      "world_size": dist.world_size, "precision": self.precision,
                      "data": self.data.stats, "final": self.tracker.last}
            self.tracker.summary(result)
            info = RunInfo(
                base_model=cfg.base_model, tokens=self.tokens, format=cfg.format, lora_mask=cfg.lora_mask,
                max_length=cfg.max_length, precision=cfg.precision, train_config=dump_config(cfg),
                provenance=provenance(), result=result, wandb=self.tracker.ref(),
            )
            save_run(
                self.run_dir, info, save_adapter=lambda tmp: _write_adapter(self.engine.module, weights, tmp),
                tokenizer=self.tokenizer, split=self.data.split,
            )
            adapter = self.tracker.log_adapter(self.run_dir / ADAPTER_DIR)
            if adapter is not None:
                info.wandb = {**info.wandb, "adapter_artifact": adapter}
                save_run_info(self.run_dir, info)
            write_card(self.run_dir, info)
            log.info("run %s: %s after %d steps", status, self.run_dir, self.state.step)
        dist.barrier()


# --- model and tokenizer -----------------------------------------------------------------------


def _load_tokenizer(cfg: TrainConfig):
    from transformers import AutoTokenizer

    from splitpersona.templates import apply_chat_template
    from splitpersona.token import setup_tokenizer

    tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer or cfg.base_model)
    apply_chat_template(tokenizer, cfg.chat_template)  # saved with the run's tokenizer: inference renders the same bytes
    return tokenizer, setup_tokenizer(tokenizer, cfg.tokens)


def _load_model(cfg: TrainConfig, tokenizer, tokens, ds_config: dict | None):
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from splitpersona.adapter import build_lora_config
    from splitpersona.token import fit_embeddings

    dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float32
    with zero3_loading(ds_config):
        model = AutoModelForCausalLM.from_pretrained(cfg.base_model, dtype=dtype)
        fit_embeddings(model, tokenizer, tokens)
        model.config.use_cache = False
        if cfg.gradient_checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        torch.manual_seed(cfg.seed)
        model = get_peft_model(model, build_lora_config(cfg.lora, lora_mask=cfg.lora_mask, tokens=tokens))
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()  # fp32 master weights, hence fp32 optimizer states, under bf16 too
    return model


def _fill_id(tokenizer, split_id: int) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None and candidate != split_id:
            return candidate
    raise ValueError("no id to fill padded slots with")


def _forward_ce(engine, batch: MicroBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy over the target tokens, and the logits from `batch.keep_from` on.

    Only the positions that predict a target get logits (the targets sit at the end of each row),
    which spares the [batch, length, vocab] tensor over the prompt.
    """
    T = batch.input_ids.shape[1]
    out = engine.forward(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, logits_to_keep=T - batch.keep_from, use_cache=False
    )
    logits = out.logits.float()
    labels = batch.labels[:, batch.keep_from + 1 :]
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE, reduction="sum")
    return ce, logits


@contextlib.contextmanager
def _checkpointing_paused(peft_model) -> Iterator[None]:
    """aLoRA registers per-forward hooks under activation checkpointing and raises on a second forward
    without a backward, so evaluation runs with checkpointing off and turns it back on after."""
    model = peft_model.get_base_model()
    was_on = model.is_activation_checkpointing
    if was_on:
        model.activation_checkpointing_disable()
    try:
        yield
    finally:
        if was_on:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})


def _write_adapter(peft_model, weights: dict[str, torch.Tensor], path: Path) -> None:
    """The PEFT adapter from fp32 weights. Embedding rows are not saved: the loader rebuilds them with
    `fit_embeddings` (deterministic) and the trained split-token row travels as trainable tokens."""
    peft_model.save_pretrained(path, state_dict=weights, save_embedding_layers=False)


# --- bookkeeping -------------------------------------------------------------------------------


def _marks(steps_per_epoch: int, epochs: int, per_epoch: int) -> set[int]:
    """Completed-step counts at which something happens `per_epoch` times per epoch (evenly spread)."""
    return {e * steps_per_epoch + round(j * steps_per_epoch / per_epoch) for e in range(epochs) for j in range(1, per_epoch + 1)}


def _latest_checkpoint(run_dir: Path) -> Path | None:
    done = [p for p in (run_dir / CHECKPOINTS_DIR).glob("step_*") if (p / STATE_FILE).exists() and (p / "state").exists()]
    return max(done, key=lambda p: int(p.name.split("_")[1]), default=None)


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop rows logged after the checkpoint: the resumed run logs those steps again."""
    if not path.exists():
        return
    write_jsonl(path, [row for _, row in iter_jsonl(path, tolerate_torn_tail=True) if row["step"] <= step])


def _write_yaml(path: Path, data: dict) -> None:
    import yaml

    with atomic_write(path) as fh:
        yaml.safe_dump(data, fh, sort_keys=False)


class _Tracker:
    """metrics.jsonl always; W&B on rank 0 unless disabled. Other ranks log nothing."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, dist: Dist, run_id: str):
        self.path = run_dir / METRICS_FILE
        self.main = dist.is_main
        self.last: dict = {}
        self.wandb = None
        if self.main and cfg.wandb.enabled:
            from splitpersona.tracking import start_run, use_files

            self.wandb = start_run(cfg.wandb, dir=run_dir, job_type="train", name=run_dir.name,
                                   group=cfg.wandb.group or run_dir.name, config=dump_config(cfg), run_id=run_id)
            for path in cfg.data.train_files:
                use_files(self.wandb, "dataset", path)
            # our step as the x-axis and W&B's own counter left alone: a resumed run logs the steps after its
            # checkpoint again, which W&B drops as out of order when they are passed as its step
            self.wandb.define_metric("step")
            self.wandb.define_metric("*", step_metric="step")

    def __enter__(self) -> _Tracker:
        return self

    def __exit__(self, *exc) -> None:
        if self.wandb is not None:
            self.wandb.finish(exit_code=0 if exc[0] is None else 1)

    def log(self, row: dict) -> None:
        if not self.main:
            return
        self.last.update({k: v for k, v in row.items() if k not in ("step", "epoch")})
        append_jsonl(self.path, row)
        if self.wandb is not None:
            self.wandb.log(row)

    def summary(self, result: dict) -> None:
        if self.wandb is not None:
            self.wandb.summary.update({"status": result["status"], "steps": result["steps"]})

    def ref(self) -> dict | None:
        """The W&B run for run.json: evaluations join its project and group."""
        from splitpersona.tracking import run_ref

        return None if self.wandb is None else run_ref(self.wandb)

    def log_adapter(self, path: Path) -> dict | None:
        """The saved adapter as a W&B artifact (`adapter-<run name>`), which evaluations name as their input."""
        from splitpersona.tracking import artifact_name, log_files

        if self.wandb is None:
            return None
        return log_files(self.wandb, "model", path, name=artifact_name("adapter", path.parent.name),
                         metadata={"run_dir": str(path.parent)})


@contextlib.contextmanager
def _progress(dist: Dist, total: int, start: int):
    """A rich progress bar on rank 0 in a terminal; elsewhere a no-op."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    if not dist.is_main or not console.is_terminal:
        yield lambda **_: None
        return
    columns = [TextColumn("train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}")]
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("train", total=total, completed=start, info="")
        yield lambda **f: progress.update(task, advance=1, info=" ".join(f"{k} {v:.4g}" for k, v in f.items()))


if __name__ == "__main__":
    try:
        code = main()
    except SystemExit as e:  # argparse
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:  # noqa: BLE001 - report it, then leave the same way as on success
        traceback.print_exc()
        code = 1
    exit_now(code)
