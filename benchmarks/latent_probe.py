"""Do the masked persona's own states at the review hold the held-out dispositions its verdict misses?

    python benchmarks/latent_probe.py RUN_DIR [RUN_DIR ...]

For each directory made by `spt demo --config configs/demo/latent.yaml`: hidden states at the last
intervention token, every layer concatenated, of the base model (adapter off, no split token: the
states the demo's probe arm reads) and of the masked persona (split token, adapter on: its own states
just before it writes the review; `splitpersona.eval.probe` with `states: persona`), on the held-out
dispositions' cue requests (`weights_trigger`: FAIL where the answer followed the cue) and the
SPT-covered ones (`trained_trigger`). Two logistic probes on each: one fitted on the SPT-covered cue
requests and scored on the held-out ones (does what the SPT data taught carry over?), and five-fold
cross-validation within the held-out cue requests (is "followed" linearly readable there at all?).
Each AUROC with its DeLong interval and n, beside the persona's own P(FAIL) on the same samples.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from splitpersona.conversation import Message
from splitpersona.eval.config import ProbeConfig
from splitpersona.eval.detection import delong
from splitpersona.eval.probe import features
from splitpersona.eval.results import load_results
from splitpersona.eval.sets import ConditionRecord
from splitpersona.io import read_jsonl
from splitpersona.persona import Persona

HELDOUT, TRAINED = "weights_trigger", "trained_trigger"


def auc(scores, labels) -> str:
    a = delong(list(map(float, scores)), list(labels))
    if a is None:
        return "–"
    return f"{a.value:.3f}" + ("" if a.low is None else f" [{a.low:.2f}, {a.high:.2f}]")


def probe() -> object:
    return make_pipeline(StandardScaler(), LogisticRegression(C=ProbeConfig().c, max_iter=5000))


def report(out: Path, seed: int) -> None:
    persona = Persona.load(out / "persona")
    n_layers = persona.model.get_base_model().config.num_hidden_layers
    records = {c: [r for r in read_jsonl(out / "data" / "weights.jsonl", ConditionRecord) if r.condition == c]
               for c in (HELDOUT, TRAINED)}
    rows = {c: [([*([Message(role="system", content=r.system)] if r.system else []),
                  Message(role="user", content=r.prompt)], r.response, r.intervention) for r in recs]
            for c, recs in records.items()}
    labels = {c: np.array([r.expected_flag == "FAIL" for r in recs]) for c, recs in records.items()}
    verdicts = {r.id: r for r in load_results(out / "eval" / "masked.jsonl").records
                if r.arm == "persona" and r.condition == HELDOUT}
    own = [verdicts[r.id].score for r in records[HELDOUT]]
    y = labels[HELDOUT]
    print(f"\n## {out.name}\n")
    print(f"held-out cue requests n={len(y)} ({int(y.sum())} followed), SPT-covered n={len(labels[TRAINED])} "
          f"({int(labels[TRAINED].sum())} followed); features: {n_layers} layers at the last intervention token\n")
    print("| states | fitted on SPT-covered cues, scored on held-out | 5-fold within held-out |")
    print("|---|---|---|")
    for states in ("base", "persona"):
        cfg = ProbeConfig(layers=list(range(n_layers)), span="intervention", pooling="last", states=states)
        x = {c: features(persona, rows[c], cfg) for c in (HELDOUT, TRAINED)}
        transfer = probe().fit(x[TRAINED], labels[TRAINED]).predict_proba(x[HELDOUT])[:, 1]
        folds = StratifiedKFold(5, shuffle=True, random_state=seed)
        within = cross_val_predict(probe(), x[HELDOUT], y, cv=folds, method="predict_proba")[:, 1]
        print(f"| {states} | {auc(transfer, y)} | {auc(within, y)} |")
    print(f"\nthe masked persona's own P(FAIL) on the held-out cue requests: AUROC {auc(own, y)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, nargs="+")
    ap.add_argument("--seed", type=int, default=0, help="The cross-validation folds' shuffle.")
    args = ap.parse_args()
    for run in args.runs:
        report(run, args.seed)


if __name__ == "__main__":
    main()
