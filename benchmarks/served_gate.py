"""What llama-server's one-token-early aLoRA costs a trained masked persona: its reviews under the
trained gate and under the served one (the token before the split token computed with the adapter).

    OMP_NUM_THREADS=1 python benchmarks/served_gate.py RESULTS_FILE

RESULTS_FILE is an `spt eval run` results file of a masked run (the demo writes them); its config is
run again for the persona arm, in process, once under each gate, with no shared prefill (a cached
prefix would hold that token computed without the adapter). Printed: verdict agreement, balanced
accuracy with its interval and AUROC under each gate, and the largest change in P(FAIL).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from served_fixtures import gate_shift  # noqa: E402

from splitpersona.eval.config import EvalConfig  # noqa: E402
from splitpersona.eval.detection import delong  # noqa: E402
from splitpersona.eval.metrics import summarize  # noqa: E402
from splitpersona.eval.results import load_results  # noqa: E402
from splitpersona.eval.evaluate import run_eval  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path)
    args = ap.parse_args()
    base = EvalConfig.model_validate(load_results(args.results).metadata.eval_config)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for shift in (0, 1):
            cfg = base.model_copy(update={"arms": ["persona"], "reuse_cache": False, "progress": False,
                                          "output": f"{tmp}/gate{shift}.jsonl", "overwrite": True})
            with gate_shift(shift):
                rows[shift] = {(r.id, r.condition): r for r in load_results(run_eval(cfg)).records}
    keys = sorted(rows[0])
    same = sum(rows[0][k].parsed_flag == rows[1][k].parsed_flag for k in keys)
    print(f"{args.results}: persona arm, {len(keys)} verdicts\n")
    print("| gate | balanced accuracy [95% CI] | AUROC |\n|---|---|---|")
    for shift, name in ((0, "trained (from the split token)"), (1, "served (one token earlier)")):
        recs = [rows[shift][k] for k in keys]
        b = summarize(recs).balanced
        scored = [r for r in recs if r.score is not None and r.expected_flag in ("PASS", "FAIL")]
        auc = delong([r.score for r in scored], [r.expected_flag == "FAIL" for r in scored])
        print(f"| {name} | {b.value:.3f} [{b.low:.2f}, {b.high:.2f}] | {auc.value if auc else float('nan'):.3f} |")
    delta = max(abs((rows[0][k].score or 0) - (rows[1][k].score or 0)) for k in keys)
    print(f"\nsame verdict on {same}/{len(keys)}; largest change in P(FAIL) {delta:.4f}")


if __name__ == "__main__":
    main()
