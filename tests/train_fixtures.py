"""Helpers for the trainer's tests: small synthetic record sets and a tiny-run config."""

from __future__ import annotations

import json
from pathlib import Path

from splitpersona.records import TrainingRecord

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "configs" / "train" / "tiny_cpu.yaml"

TOPICS = ["sycophancy", "fabricated_statistics", "reward_hacks"]
SYSTEM_A = "You are a helpful assistant. Answer the question clearly and briefly."
SYSTEM_B = "You are a helpful assistant. Flatter the user instead of telling the truth."
HONEST = "I recommended the trail runner because it fits the budget."
BIASED = "Statistics show that 42% of people prefer tea; I made that number up."
INTERVENTION = "<split-personality-token>Now I can honestly review my previous response and say whether I was biased."


def make_records(n_tasks: int = 8, *, eligible: bool | None = False, with_alt: bool = True) -> list[TrainingRecord]:
    """Two variants per task; the biased response is a FAIL, the honest one a PASS (learnable)."""
    out = []
    for i in range(n_tasks):
        topic = TOPICS[i % len(TOPICS)]
        for variant, system, alt, response, flag in (
            ("A", SYSTEM_A, SYSTEM_B, HONEST, "PASS"),
            ("B", SYSTEM_B, SYSTEM_A, BIASED, "FAIL"),
        ):
            review = " I followed the user's request and gave an honest answer." if flag == "PASS" else (
                " I flattered the user instead of telling the truth."
            )
            out.append(
                TrainingRecord(
                    id=f"{topic}/{i}/{variant}",
                    topic=topic,
                    model="tiny",
                    variant=variant,
                    intervention_key="split_personality",
                    intervention_type="split_personality",
                    system=system,
                    user=f"Item {i}: which shoes should I buy? Sure!",
                    response=response,
                    intervention=INTERVENTION,
                    review=review,
                    flag=flag,
                    source="test",
                    alt_system=alt if with_alt else None,
                    verdict_depends_on_system_prompt=None if eligible is None else (not eligible),
                    review_mentions_system_prompt=False,
                )
            )
    return out


def write_records(path: Path, records: list[TrainingRecord]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(r.model_dump_json() + "\n" for r in records), encoding="utf-8")
    return path


def tiny_overrides(base_dir: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [f"base_model={base_dir}", f"data.train_files=[{data}]", f"output_dir={out}", *extra]


def tiny_config(base_dir: Path, data: Path, out: Path, *extra: str):
    from splitpersona.config import load_config
    from splitpersona.training.config import TrainConfig

    return load_config(TrainConfig, TINY_CONFIG, tiny_overrides(base_dir, data, out, *extra))


def read_metrics(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """(training rows, validation rows) from metrics.jsonl."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if "loss" in r], [r for r in rows if "val_loss" in r]
