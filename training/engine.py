"""Where the optimizer step happens: plain torch for one process, DeepSpeed for everything else.

Both engines expose the same few verbs (forward, backward, step, save/load state, adapter
weights in fp32), so the training loop reads the same either way. Plain torch is the default for a
single process because it needs no process group, compiles nothing and leaves no global state
behind, which matters when `train()` is called in-process by the evaluator or the CPU demo.
DeepSpeed runs whenever a DeepSpeed config is given, under its launcher or in-process (where we
set the single-process rendezvous variables ourselves and undo them afterwards).
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
from transformers import get_wsd_schedule

from splitpersona.config import ConfigError, load_yaml
from splitpersona.training.config import TrainConfig

log = logging.getLogger("spt.train")

# Set to 1 to skip DeepSpeed's JIT build of its CPU shared-memory collective (about 22 s with g++):
# training all-reduces through torch.distributed (gloo) and never uses that op. CPU test runs set it.
SKIP_SHM_BUILD_ENV = "SPT_DS_SKIP_SHM_BUILD"

# DeepSpeed keys the train config owns: a DeepSpeed file that sets them would be a second source of truth.
MANAGED_DS_KEYS = frozenset(
    {"train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping",
     "bf16", "fp16", "optimizer", "scheduler", "data_types", "communication_data_type"}
)
# Every engine trains the adapter so, whatever the frozen base weights' precision: fp32 weights (the LoRA
# matmuls run in fp32, peft casts their input), fp32 gradients accumulated over the micro-batches and reduced
# over the processes in fp32, fp32 AdamW states. `Engine.precision()` reports what an engine actually holds.
PRECISION_POLICY = {
    "adapter_weights": "float32", "master_weights": "float32", "gradient_accumulation": "float32",
    "gradient_reduction": "float32", "optimizer_states": "float32",
}
_RENDEZVOUS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Dist:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    deepspeed: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        if self.world_size == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()

    def broadcast_object(self, obj):
        """Rank 0's `obj` on every rank (picklable)."""
        if self.world_size == 1:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]


def deepspeed_config(path: str | os.PathLike[str], cfg: TrainConfig, world_size: int) -> dict:
    """The DeepSpeed file's ZeRO settings plus the batch, clipping and precision from the train config."""
    raw = load_yaml(path)
    clash = sorted(MANAGED_DS_KEYS.intersection(raw))
    if clash:
        raise ConfigError(f"{path}: {clash} are set by the train config (batch_size, micro_batch_size, optim, precision)")
    ds = dict(raw)
    ds.update(
        train_batch_size=cfg.batch_size,
        train_micro_batch_size_per_gpu=cfg.micro_batch_size,
        gradient_accumulation_steps=cfg.accumulation_steps(world_size),
        gradient_clipping=cfg.optim.max_grad_norm,
        # DeepSpeed's bf16 mode casts every parameter it is given to bf16 (the adapter too, ZeRO-2) and accumulates
        # and reduces gradients in bf16. Only ZeRO-3 needs it, to partition the base weights in bf16 as they load
        # (it leaves parameters that exist before initialize as they are); the gradient dtypes are set outright.
        bf16={"enabled": cfg.precision == "bf16" and raw.get("zero_optimization", {}).get("stage") == 3},
        data_types={"grad_accum_dtype": "fp32"},
        communication_data_type="fp32",
        # the optimizer is torch AdamW over the adapter's parameters, handed to DeepSpeed as a client optimizer
        zero_allow_untested_optimizer=True,
    )
    if ds.get("zero_optimization", {}).get("stage") == 3:
        if cfg.tokens.strategy == "new":
            raise ConfigError(f"{path}: ZeRO-3 partitions the embeddings before new token rows can be added; "
                              "use tokens.strategy=reserved or ZeRO-2")
        if cfg.lora.train_split_embedding:
            # peft's trainable tokens index the embedding matrix directly in forward, which ZeRO-3 never gathers
            raise ConfigError(f"{path}: ZeRO-3 cannot train the split token's embedding row; "
                              "set lora.train_split_embedding=false or use ZeRO-2")
    return ds


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def distributed(cfg: TrainConfig) -> Iterator[Dist]:
    """Join (or, for one in-process DeepSpeed run, create and afterwards destroy) the process group."""
    launched = "WORLD_SIZE" in os.environ and "RANK" in os.environ
    if cfg.deepspeed is None:
        if launched and int(os.environ["WORLD_SIZE"]) > 1:
            raise ConfigError("several processes were launched but no deepspeed config is set (deepspeed=...)")
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
        yield Dist(0, 1, 0, device, deepspeed=False)
        return

    import deepspeed
    from deepspeed.accelerator import get_accelerator

    saved = {k: os.environ.get(k) for k in _RENDEZVOUS}
    created = not torch.distributed.is_initialized()
    if not launched:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    if os.environ.get(SKIP_SHM_BUILD_ENV) == "1":
        # `import deepspeed.comm.torch` would bind the name to pytorch, hence importlib.
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
        log.info("%s=1: DeepSpeed's shared-memory collective is not built", SKIP_SHM_BUILD_ENV)
    accel = get_accelerator()
    backend = "gloo" if accel.device_name() == "cpu" else accel.communication_backend_name()
    failed = False
    try:
        deepspeed.init_distributed(dist_backend=backend, verbose=False, timeout=timedelta(minutes=cfg.dist_timeout_minutes))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if accel.device_name() == "cpu":
            device = torch.device("cpu")
        else:
            accel.set_device(local_rank)
            device = torch.device(accel.device_name(local_rank))
        yield Dist(torch.distributed.get_rank(), torch.distributed.get_world_size(), local_rank, device, deepspeed=True)
    except BaseException:
        failed = True
        raise
    finally:
        # After a failure other ranks may be stuck in a collective, and a collective teardown would
        # hang this one too: leave that to the launcher, which ends every rank when one fails.
        alone = not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1
        if created and torch.distributed.is_initialized() and (alone or not failed):
            import deepspeed.comm

            gc.collect()  # the closed engine, and with it its references to DeepSpeed's groups
            deepspeed.comm.destroy_process_group()  # also drops DeepSpeed's module-level references
            gc.collect()  # gloo groups join their threads as they are freed, here, not at interpreter exit
        if not launched:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


@contextlib.contextmanager
def zero3_loading(ds_config: dict | None) -> Iterator[None]:
    """Under ZeRO-3, `from_pretrained` must load each shard straight into its partition and peft must
    know the weights are partitioned (both read a process-global that transformers holds a weak
    reference to); unset it again afterwards."""
    if not ds_config or ds_config.get("zero_optimization", {}).get("stage") != 3:
        yield
        return
    from transformers.integrations.deepspeed import HfDeepSpeedConfig, unset_hf_deepspeed_config

    keep = HfDeepSpeedConfig(ds_config)  # noqa: F841 - must stay alive while the model loads
    try:
        yield
    finally:
        unset_hf_deepspeed_config()


def exit_now(code: int) -> None:
    """Leave the process without interpreter teardown, once everything is saved.

    After a DeepSpeed run, gloo worker threads (and rank 0's TCPStore thread) outlive
    `destroy_process_group()`: DeepSpeed's engine, kept alive by the hooks it registered on the
    model, still holds its sub-groups. Tearing those down during interpreter finalization is what
    aborts with `terminate called without an active exception` (rc -6) now and then. The run has
    written its last file (run.json) and passed a final barrier by then, so skip the teardown.
    """
    import sys

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _optimizer(params: list, cfg: TrainConfig, dist: Dist, total_steps: int):
    """AdamW over the adapter's parameters and a factory of its LR schedule (transformers' warmup-stable-decay
    with a cosine decay): the same for both engines."""
    o, s = cfg.optim, cfg.schedule
    optimizer = torch.optim.AdamW(
        params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay, fused=dist.device.type == "cuda"
    )
    # transformers' warmup reaches the full rate a step after its count and its decay starts at the full rate:
    # one step less of warmup and one more of stable give full rate on the warmup's last step and the floor
    # on the run's last (the warmup itself starts at the floor).
    warmup, decay = max(0, round(s.warmup_frac * total_steps) - 1), round(s.cooldown_frac * total_steps)
    stable = max(0, total_steps - warmup - decay - (decay > 0))
    return optimizer, lambda opt: get_wsd_schedule(
        opt, num_warmup_steps=warmup, num_stable_steps=stable, num_decay_steps=decay, min_lr_ratio=s.min_lr_ratio
    )


class TorchEngine:
    """One process, no DeepSpeed: AdamW on the fp32 adapter parameters, the LR schedule, norm clipping."""

    def __init__(self, model, cfg: TrainConfig, dist: Dist, total_steps: int):
        self.module = model.to(dist.device)
        self.dist = dist
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer, schedule = _optimizer(self.params, cfg, dist, total_steps)
        self.scheduler = schedule(self.optimizer)
        self.max_grad_norm = cfg.optim.max_grad_norm

    def forward(self, **inputs):
        return self.module(**inputs)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> float:
        if self.max_grad_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None])
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def precision(self) -> dict[str, str | None]:
        """The dtypes the adapter is trained in (after a step: AdamW creates its states lazily)."""
        p = self.params[0]
        state = self.optimizer.state.get(p, {})
        return {"adapter_weights": _name(p.dtype), "master_weights": _name(p.dtype),  # the parameter is its master
                "gradient_accumulation": _name(p.dtype),  # .grad accumulates in the parameter's dtype
                "gradient_reduction": None,  # one process
                "optimizer_states": _name(state["exp_avg"].dtype) if "exp_avg" in state else None}

    def train(self, mode: bool = True) -> None:
        self.module.train(mode)

    def adapter_weights(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().float().cpu() for n, p in self.module.named_parameters() if p.requires_grad}

    def close(self) -> None:
        """Nothing to release: the model stays usable for the caller."""

    def save_state(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "adapter": self.adapter_weights(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "rng": _rng_state(),
            },
            path / "engine.pt",
        )

    def load_state(self, path: Path) -> None:
        state = torch.load(path / "engine.pt", map_location="cpu", weights_only=False)
        params = dict(self.module.named_parameters())
        with torch.no_grad():
            for name, value in state["adapter"].items():
                params[name].copy_(value)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])


class DeepSpeedEngine:
    """DeepSpeed with the same torch AdamW as a client optimizer; ZeRO keeps its fp32 master copy."""

    def __init__(self, model, cfg: TrainConfig, dist: Dist, total_steps: int, ds_config: dict):
        import deepspeed

        optimizer, schedule = _optimizer([p for p in model.parameters() if p.requires_grad], cfg, dist, total_steps)
        self.engine, _, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=ds_config, lr_scheduler=schedule
        )
        self.module = self.engine.module
        self.dist = dist

    def forward(self, **inputs):
        return self.engine(**inputs)

    def backward(self, loss: torch.Tensor) -> None:
        # The loss is already normalised over the whole optimizer step: no division by the accumulation
        # steps. DeepSpeed wants step() after every micro-batch; it updates only on the last one.
        self.engine.backward(loss, scale_wrt_gas=False)
        self.engine.step()

    def step(self) -> float:
        if not self.engine.was_step_applied():
            raise RuntimeError("DeepSpeed did not apply the optimizer step at the end of the accumulation window")
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def lr(self) -> float:
        return self.engine.get_lr()[0]

    def precision(self) -> dict[str, str | None]:
        """The dtypes DeepSpeed trains the adapter in, read from the engine (collective: every rank calls)."""
        from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

        p = next(p for p in self.module.parameters() if p.requires_grad)
        master = safe_get_full_fp32_param(p)
        state = safe_get_full_optimizer_state(p, "exp_avg")
        return {"adapter_weights": _name(p.dtype), "master_weights": _name((p if master is None else master).dtype),
                "gradient_accumulation": _name(self.engine.get_data_types()[1]),
                "gradient_reduction": _name(self.engine.communication_data_type),
                "optimizer_states": None if state is None else _name(state.dtype)}

    def train(self, mode: bool = True) -> None:
        self.engine.train(mode)

    def close(self) -> None:
        """Remove the gradient hooks DeepSpeed put on the parameters. They hold the engine in a
        reference cycle through autograd's C++ side, which Python's GC cannot see, so without this
        the engine and its process groups (gloo threads, TCPStore) live until interpreter exit."""
        self.engine.destroy()

    def adapter_weights(self) -> dict[str, torch.Tensor]:
        """fp32 master weights of the adapter, gathered from ZeRO partitions (collective: every rank calls)."""
        from deepspeed.utils import safe_get_full_fp32_param

        out = {}
        for name, p in self.module.named_parameters():
            if p.requires_grad:
                full = safe_get_full_fp32_param(p)
                out[name] = (p.detach() if full is None else full).float().cpu()
        return out

    def save_state(self, path: Path) -> None:
        self.engine.save_checkpoint(str(path), tag="deepspeed", save_latest=False, exclude_frozen_parameters=True)
        torch.save(_rng_state(), path / f"rng_rank{self.dist.rank}.pt")

    def load_state(self, path: Path) -> None:
        load_path, _ = self.engine.load_checkpoint(str(path), tag="deepspeed", load_module_strict=False)
        if load_path is None:
            raise FileNotFoundError(f"{path}: no DeepSpeed checkpoint to resume from")
        _set_rng_state(torch.load(path / f"rng_rank{self.dist.rank}.pt", weights_only=False))
