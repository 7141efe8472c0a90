"""Run directories for the persona and eval tests: tiny adapters trained by the suite's own trainer.

`trained_run` trains once per process and gate mode (a few optimizer steps on the trainer's
synthetic records; about 2 s after the trainer's imports) and hands every test module the same
run. The adapters are barely trained: these tests check inference plumbing (the gate, KV reuse,
batching, the arms), which must hold for any weights; whether training teaches the persona
anything is the trainer's tests' business.
"""

from __future__ import annotations

from pathlib import Path

from train_fixtures import make_records, tiny_config, write_records

RECORDS = "records.jsonl"
_RUNS: dict[tuple[str, bool], Path] = {}

SYSTEM = "You are a helpful assistant. Answer the question clearly and briefly."
TASK = "Item 3: which shoes should I buy? Sure!"
MESSAGES = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": TASK}]
HONEST = "I recommended the trail runner because it fits the budget."
BIASED = "Statistics show that 42% of people prefer tea; I made that number up."


def trained_run(tmp_path_factory, base_dir: Path, *, lora_mask: bool = True) -> Path:
    """A run directory from `splitpersona.training.train.train`; its records file lies beside it (`records_of`)."""
    from splitpersona.training.train import train

    key = (str(base_dir), lora_mask)
    if key not in _RUNS:
        root = tmp_path_factory.mktemp("masked_run" if lora_mask else "unmasked_run")
        data = write_records(root / RECORDS, make_records(8))
        cfg = tiny_config(base_dir, data, root / "run", f"lora_mask={str(lora_mask).lower()}")
        _RUNS[key] = train(cfg)
    return _RUNS[key]


def records_of(run_dir: Path) -> Path:
    return run_dir.parent / RECORDS
