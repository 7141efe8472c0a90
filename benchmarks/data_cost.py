"""Data-generation cost per accepted sample: Message Batches with prompt caching vs sync calls without.

    python benchmarks/data_cost.py [--config configs/data_gen/smoke.yaml] [--items-per-batch 3] [--batches-per-topic 1]

The same generation (stage 1 through the quality filter) runs once per setting against the local
fake Messages API (tests/fake_anthropic.py, which reports cache writes and reads as the API does)
and a fake OpenAI-compatible endpoint for stage 2. No faults are injected and cache marks never
change the fake's answers, so every setting writes, reviews and accepts the same samples: the
costs differ only by how the calls are billed. Each cost is read from the run's own ledger, priced
by the config's `prices` and `batch_discount`. The fake answers a batch's requests in order, the
API's best case for cache hits inside a batch. A dummy key is set for the fake, so no real key is
sent anywhere.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from data_gen_fixtures import SMOKE, FakeOpenAI, fast_overrides, scripted_scores
from fake_anthropic import FakeAnthropic

from splitpersona.data_gen.backend import Attempt
from splitpersona.data_gen.config import GenerateConfig
from splitpersona.data_gen.pipeline import STEPS, generate
from splitpersona.data_gen.store import Ledger, summarise_ledger
from splitpersona.eval.report import md_table
from splitpersona.config import load_config

SETTINGS = (("sync", False), ("sync", True), ("batch", False), ("batch", True))  # the first is the baseline
TOKENS = ("input_tokens", "cache_write_tokens", "cache_read_tokens", "output_tokens")


def cost_if_no_hits(ledger: Ledger) -> float:
    """The ledger's cost had no call found its prefix in the cache (each read a write instead): the
    worst case of a batch, whose requests the API may process before any of them has written it."""
    names = [f.name for f in dataclasses.fields(Attempt)]
    total = 0.0
    for row in ledger.rows():
        a = Attempt(**{k: row[k] for k in names})
        total += ledger.cost(dataclasses.replace(
            a, cache_write_tokens=a.cache_write_tokens + a.cache_read_tokens, cache_read_tokens=0))
    return total


def measure(config: Path, out: Path, mode: str, cache: bool, extra: dict[str, object]) -> dict:
    """One generation run against fresh fake servers; its ledger's tokens and cost, and its accepted samples."""
    with FakeAnthropic(responder=scripted_scores) as fake, FakeOpenAI() as endpoint:
        over = fast_overrides(out, **{
            "claude.base_url": fake.base_url, "claude.mode": mode, "claude.cache_prompts": str(cache).lower(),
            "stage2.engine": "openai", "stage2.model": "fake", "stage2.base_url": endpoint.base_url,
            "budget_usd": "null", **extra,
        })
        cfg = load_config(GenerateConfig, config, over)
        with contextlib.redirect_stdout(sys.stderr):  # the run's log, off the table
            summary = generate(cfg, STEPS)
    if summary["stopped"]:
        raise SystemExit(f"{out}: the {mode} run stopped early ({summary['stopped']})")
    ledger = Ledger(out / "ledger.jsonl", cfg.prices, cfg.batch_discount)
    stages = summarise_ledger(ledger.rows())
    tokens: Counter[str] = Counter()
    for s in stages.values():
        tokens.update(s["tokens"])
    return {"calls": sum(s["calls"] for s in stages.values()), "tokens": tokens,
            "cost_usd": sum(s["cost_usd"] for s in stages.values()), "no_hits_usd": cost_if_no_hits(ledger),
            "accepted": summary["accepted_samples"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=SMOKE, help="Generator YAML (its topics, sizes and prices).")
    ap.add_argument("--items-per-batch", type=int, help="Override stage1.items_per_batch.")
    ap.add_argument("--batches-per-topic", type=int, help="Override stage1.batches_per_topic.")
    args = ap.parse_args()
    extra = {k: v for k, v in (("stage1.items_per_batch", args.items_per_batch),
                               ("stage1.batches_per_topic", args.batches_per_topic)) if v is not None}
    os.environ["ANTHROPIC_API_KEY"] = "dummy-key-for-the-local-fake"
    os.environ.pop("ANTHROPIC_AUTH_TOKEN", None)

    with tempfile.TemporaryDirectory(prefix="data_cost_") as tmp:
        runs = {(m, c): measure(args.config, Path(tmp) / f"{m}_{'cache' if c else 'nocache'}", m, c, extra)
                for m, c in SETTINGS}
    base = runs[SETTINGS[0]]
    if len({r["accepted"] for r in runs.values()}) != 1 or not base["accepted"]:
        raise SystemExit(f"the settings accepted different or no samples: {[r['accepted'] for r in runs.values()]}")
    baseline = base["cost_usd"] / base["accepted"]
    lines = [(f"{m}, caching" if c else m, r["tokens"], r["cost_usd"], r) for (m, c), r in runs.items()]
    r = runs["batch", True]
    missed = r["tokens"] + Counter(cache_write_tokens=r["tokens"]["cache_read_tokens"])
    missed["cache_read_tokens"] = 0
    lines.append(("batch, caching, no cache hit (bound)", missed, r["no_hits_usd"], r))
    rows = [[name, run["calls"], *(f"{tokens[t]:,}" for t in TOKENS), f"{usd:.4f}", run["accepted"],
             f"{usd / run['accepted']:.5f}", f"{usd / run['accepted'] / baseline:.3f}"]
            for name, tokens, usd, run in lines]
    header = ["setting", "calls", "input", "cache write", "cache read", "output", "cost $", "accepted",
              "$ / accepted sample", "ratio to sync"]
    print(md_table(header, rows))


if __name__ == "__main__":
    main()
