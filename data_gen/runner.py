"""The run: its directory layout, its shared state, and the loop that feeds requests to a backend.

`execute` is the one place that decides what is still to do (keys not in the store), stores each
outcome the moment it arrives, and stops when the budget says so. Stages only build requests and
turn stored answers into batch files.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from splitpersona.data_gen.backend import Backend, BatchPending, BudgetReached, Request
from splitpersona.data_gen.config import GenerateConfig
from splitpersona.data_gen.prompts import PromptSet, load_prompts
from splitpersona.data_gen.store import BudgetMeter, Ledger, ResultStore

log = logging.getLogger("data_gen")
T = TypeVar("T")

STAGE_DIRS = {1: "stage_1", 2: "stage_2", 3: "stage_3", "tagged": "stage_3_tagged"}


@dataclass
class StageResult:
    stage: str
    requested: int = 0
    already_done: int = 0
    ok: int = 0
    failed: int = 0
    not_done: int = 0  # left for a later run: budget reached, batch pending
    failures: Counter[str] = field(default_factory=Counter)
    stopped: str | None = None  # BudgetReached.reason | BatchPending.reason
    files: int = 0
    notes: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k not in ("stage", "notes")}
        return {**out, "failures": dict(self.failures.most_common()), **self.notes}


class GenerationRun:
    """One generator's output directory and everything a stage needs: config, prompts, stores, ledger, backends.

    `backends` maps a stage name ("stage1", "stage3", "filter", "propose") to a Backend that
    replaces Claude for that stage (a local template generator, a ground-truth labeller).
    """

    def __init__(self, cfg: GenerateConfig, backends: Mapping[str, Backend] | None = None):
        self.cfg = cfg
        self.out: Path = cfg.out_dir
        self.prompts: PromptSet = load_prompts(cfg.prompt_version)
        self.ledger = Ledger(self.out / "ledger.jsonl", cfg.prices, cfg.batch_discount)
        self.meter = BudgetMeter(self.ledger, cfg.budget_usd)
        self._overrides = dict(backends or {})
        self._backends: dict[str, Backend] = {}
        self._stores: dict[str, ResultStore] = {}

    def stage_dir(self, stage: int | str) -> Path:
        """A stage's output directory: 1, 2, 3, "tagged", or a directory name under the run."""
        return self.out / STAGE_DIRS.get(stage, stage)

    def batch_files(self, stage: int | str) -> list[Path]:
        """A stage's batch files, topic by topic in the config's order."""
        return [p for t in self.cfg.topics for p in sorted((self.stage_dir(stage) / t).glob("batch_*.json"))]

    def store(self, name: str) -> ResultStore:
        if name not in self._stores:
            self._stores[name] = ResultStore(self.out / "store" / f"{name}.jsonl")
        return self._stores[name]

    def backend(self, stage: str) -> Backend:
        if stage in self._overrides:
            return self._overrides[stage]
        model = self.cfg.claude_models()["filter" if stage == "propose" else stage]
        if model not in self._backends:
            from splitpersona.data_gen.claude import ClaudeBackend

            self._backends[model] = ClaudeBackend(self.cfg.claude, model, self.out)
        return self._backends[model]


@contextlib.contextmanager
def progress(description: str, total: int) -> Iterator[Any]:
    """A transient rich progress bar on stderr; yields a callable that advances it."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=Console(stderr=True), transient=True,
    ) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)


def still_to_do(run: GenerationRun, store: ResultStore, keyed: list[tuple[str, T]], result: StageResult) -> list[T]:
    """What is not stored yet (or stored as failed, when `retry_failed`); the rest counts as already done."""
    todo = [x for key, x in keyed if (row := store.get(key)) is None or (row["status"] != "ok" and run.cfg.retry_failed)]
    result.requested, result.already_done = len(keyed), len(keyed) - len(todo)
    return todo


def execute(run: GenerationRun, stage: str, requests: Sequence[Request], store: ResultStore | None = None) -> StageResult:
    """Send every request whose key is not yet stored; store each outcome as it arrives."""
    backend = run.backend(stage)
    store = store or run.store(stage)
    result = StageResult(stage)
    unique: dict[str, Request] = {}
    for r in requests:
        unique.setdefault(r.key(backend.model), r)
    todo = still_to_do(run, store, list(unique.items()), result)
    if not todo:
        return result
    log.info("%s: %d requests to send (%d already done) to %s", stage, len(todo), result.already_done, backend.model)
    with progress(f"{stage} ({backend.model})", len(todo)) as advance:
        try:
            for outcome in backend.run(todo, run.meter):
                if outcome.status == "deferred":
                    continue
                store.put_outcome(outcome, backend.model)
                if outcome.status == "ok":
                    result.ok += 1
                else:
                    result.failed += 1
                    result.failures[(outcome.failure or "?").split(" ")[0]] += 1
                    log.warning("%s %s failed: %s", stage, outcome.key[:12], outcome.failure)
                advance()
        except BatchPending as e:
            result.stopped = BatchPending.reason
            result.notes["pending_batch"] = e.batch_id
            log.warning(str(e))
    result.not_done = len(todo) - result.ok - result.failed
    if run.meter.exhausted and result.not_done:
        result.stopped = BudgetReached.reason
        log.warning("%s: budget of $%.2f reached ($%.4f spent); %d requests left for a later run",
                    stage, run.cfg.budget_usd, run.ledger.total_usd, result.not_done)
    return result
