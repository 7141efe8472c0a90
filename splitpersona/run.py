"""The run directory's contract: its layout, run.json, provenance, and loading the run's tokenizer.

    run_dir/
      run.json          RunInfo: base model, token ids, sample format, gate mode, provenance
      adapter/          the PEFT adapter (adapter_config.json + adapter_model.safetensors)
      tokenizer/        the tokenizer with the split and control tokens registered
      config.yaml       the resolved training config
      metrics.jsonl     one line per logged step / validation
      split.json        record ids by role: train_ids, val_ids (the evaluator's held-out samples), ...
      README.md         the model card (splitpersona.card), written after run.json, refreshed by `spt eval report`

The trainer writes it (`save_run`, run.json last, so its presence means the directory is whole);
`Persona.load` and `spt data` read it (`load_run_tokenizer`, `adapter_dir`).
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import subprocess
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from splitpersona.assemble import FormatConfig
from splitpersona.config import StrictModel
from splitpersona.io import DataError, describe_validation_error, read_json, write_json
from splitpersona.token import SpecialTokens

RUN_FILE = "run.json"
ADAPTER_DIR = "adapter"
TOKENIZER_DIR = "tokenizer"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
SPLIT_FILE = "split.json"

TRACKED_PACKAGES = (
    "splitpersona", "torch", "transformers", "peft", "trl", "deepspeed", "datasets", "anthropic", "wandb", "pydantic",
)


class RunInfo(StrictModel):
    base_model: str
    tokens: SpecialTokens
    format: FormatConfig
    lora_mask: bool
    max_length: int
    precision: str
    train_config: dict[str, Any]
    provenance: dict[str, Any]
    result: dict[str, Any] = {}
    wandb: dict[str, Any] | None = None  # the training run's W&B run (tracking.run_ref), where it logged to W&B


# --- provenance: stamped on every artifact (run.json, eval results, generated data) ---------------


def git_info(start: str | Path | None = None) -> dict[str, str | bool | None]:
    cwd = Path(start) if start else Path(__file__).resolve().parent
    def run(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None
    commit = run("rev-parse", "HEAD")
    status = run("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def provenance() -> dict:
    """The git commit and the versions of the packages that made an artifact, and when."""
    return {
        "git": git_info(),
        "packages": {name: _version(name) for name in TRACKED_PACKAGES},
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


# --- writing ------------------------------------------------------------------------------------


def replace_dir(path: Path, write: Callable[[Path], Any]) -> None:
    """Write a directory beside `path`, then swap it in: a crash leaves the old one or the new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # leftovers of a crashed attempt
    write(tmp)
    old = path.with_name(f".{path.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    if old.exists():
        shutil.rmtree(old)


def save_run_info(run_dir: str | os.PathLike[str], info: RunInfo) -> None:
    write_json(Path(run_dir) / RUN_FILE, info.model_dump(mode="json"))


def save_run(
    run_dir: str | os.PathLike[str], info: RunInfo, *, save_adapter: Callable[[Path], Any], tokenizer,
    split: dict[str, Any],
) -> None:
    """Adapter (`save_adapter(dir)`), tokenizer and split first; run.json last."""
    run_dir = Path(run_dir)
    replace_dir(run_dir / ADAPTER_DIR, save_adapter)
    replace_dir(run_dir / TOKENIZER_DIR, tokenizer.save_pretrained)
    write_json(run_dir / SPLIT_FILE, split)
    save_run_info(run_dir, info)


# --- reading ------------------------------------------------------------------------------------


def load_run_info(run_dir: str | os.PathLike[str]) -> RunInfo:
    path = Path(run_dir) / RUN_FILE
    if not path.exists():
        raise DataError(path, "not a training run directory (run.json missing)")
    try:
        return RunInfo.model_validate(read_json(path))
    except ValidationError as e:
        raise DataError(path, describe_validation_error(e)) from e


def _part(run_dir: str | os.PathLike[str], sub: str) -> Path:
    path = Path(run_dir) / sub
    if not path.is_dir():
        raise DataError(path, f"missing: a run directory holds {RUN_FILE}, {ADAPTER_DIR}/ and {TOKENIZER_DIR}/")
    return path


def adapter_dir(run_dir: str | os.PathLike[str]) -> Path:
    return _part(run_dir, ADAPTER_DIR)


def load_run_tokenizer(run_dir: str | os.PathLike[str]) -> tuple[Any, RunInfo]:
    """(tokenizer, run info), the split and control tokens checked to have the ids run.json recorded."""
    from transformers import AutoTokenizer

    info = load_run_info(run_dir)
    path = _part(run_dir, TOKENIZER_DIR)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise DataError(path, f"cannot load the run's tokenizer: {e}") from e
    t = info.tokens
    for name, tid in ((t.split_token, t.split_id), (t.control_token, t.control_id)):
        if tokenizer.convert_tokens_to_ids(name) != tid:
            raise DataError(Path(run_dir) / RUN_FILE, f"{name!r} has id {tokenizer.convert_tokens_to_ids(name)} in "
                            f"{TOKENIZER_DIR}/, but the run recorded {tid}")
    return tokenizer, info
