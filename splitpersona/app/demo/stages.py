"""`spt demo`: the CPU model organism, every stage of the real pipeline on a case whose answer is known.

main model (organism.py) -> SPT data from our generator (data.py) -> the persona trained masked and
unmasked by our trainer -> our evaluator on held-out templates and products, every arm -> the
alignment-tax and KV-reuse checks (splitpersona.eval.checks) -> report.md, report.json, charts, a printed table
(measure.py computes the demo's own table and targets, report.py renders them).

Each stage leaves its output in DIR and is skipped when that output is complete, so an interrupted
demo resumes where it stopped; DIR/demo_config.yaml pins the config a directory was started with.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import torch

from splitpersona.eval import registry
from splitpersona.eval.results import load_results
from splitpersona.eval.sets import ConditionRecord
from splitpersona.app.demo.config import DemoConfig
from splitpersona.app.demo.data import balance, describe, disposition_records, generate_records, weights_records
from splitpersona.app.demo.measure import (
    expectations,
    headline,
    latent,
    prompt_reader_swap,
    pushed_products,
    shown_prompt_flags,
)
from splitpersona.app.demo.organism import SUMMARY_FILE, OrganismSummary, run_organism, timed, torch_threads
from splitpersona.app.demo.report import CHART, draw_chart, print_table, render_header, render_latent
from splitpersona.app.demo.world import World
from splitpersona.io import DataError, atomic_write, read_json, read_jsonl, write_json, write_jsonl
from splitpersona.records import TrainingRecord

CONFIG_FILE = "demo_config.yaml"
SUMMARY = "demo.json"
BASE, PERSONA, UNMASKED = "base", "persona", "persona_unmasked"
RUNS = {"masked": PERSONA, "unmasked": UNMASKED}
# The masked run carries every arm; the unmasked one only what differs between the two runs (the
# LoRA-off arms read the same base model, and share all but the split token's trained row).
ARMS = {
    "masked": list(registry.ARMS),
    "unmasked": ["persona", "control_token_adapter"],
}


class Paths:
    def __init__(self, out: Path):
        self.out = out
        self.base = out / BASE
        self.data = out / "data"
        self.train = self.data / "train.jsonl"
        self.heldout = self.data / "heldout.jsonl"
        self.weights = self.data / "weights.jsonl"
        self.data_stats = self.data / "stats.json"
        self.eval = out / "eval"

    def results(self, run: str) -> Path:
        return self.eval / f"{run}.jsonl"


def _pin_config(cfg: DemoConfig, out: Path) -> None:
    """Refuse to resume a directory started with another config: its stages would not fit together."""
    import yaml

    text = yaml.safe_dump(cfg.model_dump(mode="json", exclude={"quick"}), sort_keys=False)
    path = out / CONFIG_FILE
    if path.exists() and path.read_text() != text:
        raise DataError(path, "this directory holds a demo started with another config; pick a new --out")
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as fh:
        fh.write(text)


def _main_model(cfg: DemoConfig, paths: Paths, log) -> OrganismSummary:
    summary = paths.base / SUMMARY_FILE
    if summary.exists():
        log("main model: done earlier")
    else:
        log("main model: pretraining from scratch on the world's corpus")
        run_organism(cfg, paths.base)
    return OrganismSummary.model_validate(read_json(summary))


def _data(cfg: DemoConfig, paths: Paths, log) -> dict:
    if paths.data_stats.exists():
        log("SPT data: done earlier")
        return read_json(paths.data_stats)
    d = cfg.data
    log(f"SPT data: stages 1-3 on {d.train_scenarios} train and {d.heldout_scenarios} held-out scenarios")
    train, _ = generate_records(cfg, paths.base, paths.data / "gen_train", "train", d.train_scenarios)
    raw = describe(train)
    kept, balanced = balance(train, d.noncompliant_frac, d.a_frac, d.seed)
    heldout, _ = generate_records(cfg, paths.base, paths.data / "gen_heldout", "heldout", d.heldout_scenarios)
    habits = disposition_records(cfg, paths.base)
    write_jsonl(paths.train, kept + habits)
    write_jsonl(paths.heldout, heldout)
    write_jsonl(paths.weights, weights_records(cfg, paths.base))
    stats = {"train_generated": raw.as_dict(), "train": balanced.as_dict(), "heldout": describe(heldout).as_dict()}
    if habits:
        stats["dispositions"] = {"records": len(habits), "flags": dict(Counter(r.flag for r in habits))}
    write_json(paths.data_stats, stats)  # last: its presence marks the stage complete
    return stats


def _train(cfg: DemoConfig, paths: Paths, log) -> None:
    from splitpersona.training.train import train

    for masked, name in ((True, PERSONA), (False, UNMASKED)):
        log(f"persona ({'masked' if masked else 'unmasked'}): training")
        train(cfg.train_config(masked, str(paths.base), [str(paths.train)], str(paths.out / name)))


def _evaluate(cfg: DemoConfig, paths: Paths, log) -> None:
    from splitpersona.eval.evaluate import run_eval

    sets = [
        {"name": "heldout", "kind": "records", "path": str(paths.heldout), "held_out": False},
        {"name": "weights", "kind": "conditions", "path": str(paths.weights), "held_out": False},
    ]
    for run, name in RUNS.items():
        log(f"evaluation ({run}): arms {', '.join(ARMS[run])}")
        ecfg = cfg.eval_config(
            run=str(paths.out / name), output=str(paths.results(run)), label=run, sets=sets, arms=ARMS[run],
            trained_topics=[cfg.data.topic], progress=True,
            external={**cfg.eval.get("external", {}), "train_data": [str(paths.train)]},
            probe={**cfg.eval.get("probe", {}), "train_data": [str(paths.train)]},
        )
        run_eval(ecfg)


def _checks(cfg: DemoConfig, paths: Paths) -> dict:
    """eval's alignment-tax and KV-reuse checks on held-out conversations of the masked persona."""
    from splitpersona.eval.checks import run_checks

    world = World(cfg.world)
    scenarios = world.scenarios(cfg.checks.conversations, "heldout", seed=cfg.data.seed + 3)
    chats = [s.messages(v) for s in scenarios for v in ("A", "B")][: cfg.checks.conversations]
    questions = [world.intervention(random.Random(f"checks:{i}"), "heldout") for i in range(len(chats))]
    return run_checks(paths.out / PERSONA, chats, questions, max_new_tokens=cfg.sampling.max_new_tokens)


def run_demo(cfg: DemoConfig, out: str | Path, *, console=None) -> dict:
    """Every stage into `out` (resuming completed ones); returns the summary also written to demo.json."""
    from splitpersona.eval.report import write_report

    from rich.console import Console

    console = console or Console(stderr=True)
    out = Path(out)
    paths = Paths(out)
    _pin_config(cfg, out)
    log = console.log
    timings: dict[str, dict[str, float]] = {}
    with timed(timings, "total"), torch_threads(cfg.threads):
        with timed(timings, "main_model"):
            organism = _main_model(cfg, paths, log)
        with timed(timings, "data"):
            data = _data(cfg, paths, log)
        with timed(timings, "train"):
            _train(cfg, paths, log)
        with timed(timings, "eval"):
            _evaluate(cfg, paths, log)
        log("checks: zero alignment tax, KV reuse")
        with timed(timings, "checks"):
            checks_ = _checks(cfg, paths)
    heldout = read_jsonl(paths.heldout, TrainingRecord)
    world = World(cfg.world)
    shown = shown_prompt_flags(heldout, world)
    results = {run: load_results(paths.results(run)).records for run in RUNS}
    table = headline(results, shown)
    summary = {
        "organism": organism.model_dump(mode="json"),
        "data": data,
        "table": table,
        "checks": checks_,
        "expectations": expectations(table, organism, checks_),
        "prompt_reader_swap": prompt_reader_swap(heldout, shown),
        "timings": timings,
        "threads": cfg.threads or torch.get_num_threads(),
    }
    if len(world.dispositions) > 1:
        summary["latent"] = latent(results, pushed_products(read_jsonl(paths.weights, ConditionRecord), world))
    files = write_report([paths.results(r) for r in RUNS], out, labels=list(RUNS))
    draw_chart(results, organism.behaviour.bayes_balanced_accuracy, out)
    evaluator = files.markdown.read_text()
    with atomic_write(files.markdown) as fh:
        latent_md = render_latent(summary) if "latent" in summary else ""
        fh.write(render_header(summary) + latent_md + f"\n![balanced accuracy]({CHART})\n\n" + evaluator)
    report = read_json(files.json)
    write_json(files.json, {"demo": summary, **report})
    write_json(out / SUMMARY, summary)
    print_table(summary, console)
    console.print(f"report: {files.markdown}")
    return summary
