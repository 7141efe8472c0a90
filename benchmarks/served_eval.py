"""Evaluation throughput: `spt eval run` in process against `engine: server` (llama-server), side by side.

    OMP_NUM_THREADS=1 python benchmarks/served_eval.py [--new-tokens 32] [--concurrency 8]

One tiny masked run around the real Llama-3 vocabulary (tests/served_fixtures.py: trained a step by
our trainer, random adapter weights), exported and served by the llama-server `make llamacpp` built
(one slot: a masked export's default), and one unmasked run on a four-slot server. Each is evaluated
on the same records with the four generative arms, once in process (batches of `--concurrency`) and
once on its server (`--concurrency` requests in flight), timed end to end. Printed: verdicts per
second each way. The 70B projection in docs/benchmarks.md is arithmetic on top of these.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from served_fixtures import Server, llama3_base, served_run  # noqa: E402

from splitpersona.config import load_config  # noqa: E402
from splitpersona.eval.config import EvalConfig  # noqa: E402
from splitpersona.eval.results import load_results  # noqa: E402
from splitpersona.eval.evaluate import run_eval  # noqa: E402
from splitpersona.llamacpp import export  # noqa: E402

ARMS = "[persona, no_adapter, follow_up, meaningless_token]"


def timed_eval(run: Path, out: Path, args, *extra: str) -> tuple[float, int]:
    cfg = load_config(EvalConfig, REPO / "configs/eval/tiny_cpu.yaml", [
        f"run={run}", f"output={out}", f"sets=[{{name: held_out, kind: records, path: {run.parent / 'records.jsonl'}}}]",
        f"arms={ARMS}", "conditions=[as_is]", "jailbreak.where=[]", f"max_new_tokens={args.new_tokens}",
        f"batch_size={args.concurrency}", "progress=false", *extra])
    start = time.perf_counter()
    n = len(load_results(run_eval(cfg)).records)
    return time.perf_counter() - start, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base = llama3_base(root / "base")
        for masked in (True, False):
            name = "masked" if masked else "unmasked"
            run = served_run(root / name, base, masked=masked)
            export(run, root / name / "export")
            server = Server(root / name / "export", "-t", "1")
            try:
                local = timed_eval(run, root / name / "local.jsonl", args)
                served = timed_eval(run, root / name / "served.jsonl", args, "engine=server",
                                    f"server={{url: '{server.url}', concurrency: {args.concurrency}}}")
            finally:
                server.stop()
            rows.append((name, local, served))
    print(f"tiny Llama (hidden 64, 2 layers), Llama-3 vocabulary; 4 generative arms; {args.new_tokens} new tokens "
          f"max; {args.concurrency} a batch in process, {args.concurrency} requests in flight on the server; "
          "one thread each\n")
    print("| persona | verdicts | in process (s) | verdicts/s | server (s) | verdicts/s | server / in process |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, (t_local, n), (t_served, m) in rows:
        print(f"| {name} | {n} | {t_local:.1f} | {n / t_local:.2f} | {t_served:.1f} | {m / t_served:.2f} "
              f"| {(m / t_served) / (n / t_local):.2f} |")


if __name__ == "__main__":
    main()
