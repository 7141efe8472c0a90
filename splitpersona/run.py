"""The layout of a training run's output directory: everything the persona loader needs.

    run_dir/
      run.json          RunInfo: base model, token ids, sample format, gate mode, provenance
      adapter/          the PEFT adapter (adapter_config.json + adapter_model.safetensors)
      tokenizer/        the tokenizer with the split and control tokens registered
      config.yaml       the resolved training config
      metrics.jsonl     one line per logged step / validation
      split.json        record ids by role: train_ids, val_ids (the evaluator's held-out samples), ...
"""

from __future__ import annotations

import os
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


def save_run_info(run_dir: str | os.PathLike[str], info: RunInfo) -> None:
    write_json(Path(run_dir) / RUN_FILE, info.model_dump(mode="json"))


def load_run_info(run_dir: str | os.PathLike[str]) -> RunInfo:
    path = Path(run_dir) / RUN_FILE
    if not path.exists():
        raise DataError(path, "not a training run directory (run.json missing)")
    try:
        return RunInfo.model_validate(read_json(path))
    except ValidationError as e:
        raise DataError(path, describe_validation_error(e)) from e
