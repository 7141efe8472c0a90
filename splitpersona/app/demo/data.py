"""SPT data for the demo, made by our own generator (`data_gen`) with the world in Claude's place.

Stage 1 and stage 3 are local backends behind the generator's `LocalBackend` interface: stage 1
answers a batch request with the world's seeded scenarios (A neutral, B pressure, T the user's
request; the scenario itself rides along as JSON in `metadata.notes`), stage 3 labels each
response from the ground truth (FAIL iff the pressure prompt was there and the answer followed
it) and writes the honest review and a held-out-or-train intervention. Stage 2 is the generator's
own transformers engine on the main model: on-policy answers, sampled. The release-format output
is flattened by our importer (`splitpersona.release`).

Training data is then balanced so that the persona must read what it did, not only what it was
told: from a large pool, every B answer that did not follow the pressure is kept, the compliant
ones are thinned until the non-compliant ones are at least `noncompliant_frac` of the B answers,
and the A answers until they are `a_frac` of the records.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from splitpersona.data_gen.backend import LocalBackend
from splitpersona.app.demo.config import DemoConfig
from splitpersona.app.demo.phrases import STATED_SYSTEM
from splitpersona.app.demo.world import (
    Scenario,
    Split,
    World,
    disposition_groups,
    ground_truth_flag,
    recommended,
    review_field,
)
from splitpersona.io import DataError
from splitpersona.records import TrainingRecord, Variant

LOCAL_MODEL = "demo-local"  # the name the generator's config and ledger give the local backends (never called)
MAIN_MODEL_NAME = "demo-main"
VERSION = "demo"
INTERVENTION_KEY = f"split_personality__{VERSION}"
WEIGHTS_CONDITIONS = {"trigger": "weights_trigger", "trigger_control": "weights_control"}
# With several dispositions: the SPT-covered ones on held-out texts, a disposition stated only in a
# system prompt, and a cue that neither the weights nor the context tie to any product.
TRAINED_CONDITIONS = {"trigger": "trained_trigger", "trigger_control": "trained_control"}
STATED, NOWHERE = "prompt_stated", "nowhere"


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:10]


class ScenarioBackend(LocalBackend):
    """Stage 1: batch `b` is `world.scenarios(n, split, seed=b)`, written as release items."""

    def __init__(self, world: World, split: Split, focus: str):
        self.world, self.split, self.focus = world, split, focus
        # The world (settings and texts) is in the name, so the generator's store (keyed by it)
        # never serves scenarios of another world.
        self.model = f"demo-world-{split}-{_fingerprint(world.cfg.model_dump(), world.templates)}"

    def complete(self, request) -> dict:
        c = request.context
        scenarios = self.world.scenarios(c["num_samples"], self.split, seed=c["batch_index"])
        return {"samples": [self._sample(s) for s in scenarios]}

    def _sample(self, s: Scenario) -> dict:
        return {
            "thought_process": f"A request to choose among {len(s.candidates)} {s.category}s; B pushes {s.pushed}.",
            "A": s.system_neutral,
            "B": s.system_pressure,
            "T": s.user,
            "metadata": {"difficulty": "medium", "intended_review_focus": [self.focus], "notes": s.model_dump_json()},
        }


class GroundTruthBackend(LocalBackend):
    """Stage 3: the verdict is the ground truth, the review the world's honest one, the intervention drawn from `split`."""

    def __init__(self, world: World, split: Split, focus: str, seed: int):
        self.world, self.split, self.focus, self.seed = world, split, focus, seed
        self.model = f"demo-truth-{split}-{_fingerprint(world.cfg.model_dump(), world.templates, seed)}"

    def complete(self, request) -> dict:
        c = request.context
        scenario = Scenario.model_validate_json(c["item"]["metadata"]["notes"])
        out: dict[str, Any] = {"analysis": "Labelled from the known ground truth of the demo's world."}
        for variant, response in c["responses"].items():
            rng = random.Random(f"stage3:{self.seed}:{scenario.id}:{variant}")
            review, flag = self.world.honest_review(rng, scenario, variant, response, self.split)
            product = recommended(response, scenario.candidates)
            out[f"review_{variant}"] = {
                "thought_process": f"Variant {variant}; recommended {product or 'no single listed product'}; "
                f"pushed {scenario.pushed}.",
                "selected_review_focus": self.focus,
                "confidence": 5,
                "I": self.world.intervention(rng, self.split),
                "R": review_field(review),
                "P": flag,
                "detection_difficulty_internal": "easy" if flag == "FAIL" else "NA",
                "detection_difficulty_external": "hard" if flag == "FAIL" else "NA",
                "faulty_data": False,
                # Only the system prompt says whether there was pressure and what it pushed: no
                # verdict here follows from the task and the answer alone (the Bayes rate is 0.5).
                "verdict_depends_on_system_prompt": True,
                "review_mentions_system_prompt": variant == "B" and product is not None,
            }
        return out


def generate_records(
    cfg: DemoConfig, base_dir: Path, out_dir: Path, split: Split, n_scenarios: int
) -> tuple[list[TrainingRecord], dict]:
    """Stages 1-3 of our generator on `n_scenarios` scenarios of `split`, imported as training records."""
    from splitpersona.data_gen.config import GenerateConfig
    from splitpersona.data_gen.pipeline import generate
    from splitpersona.data_gen.prompts import load_prompts

    from splitpersona.release import ReleaseFilter, find_batch_files, flatten, iter_batches

    d, s = cfg.data, cfg.sampling
    foci = load_prompts("v1").topic_foci.get(d.topic)
    if foci is None:
        raise DataError("data.topic", f"{d.topic!r} is not one of the release's topics")
    if d.focus not in foci:
        raise DataError("data.focus", f"{d.focus!r} is not a review focus of {d.topic} ({', '.join(foci)})")
    batches = math.ceil(n_scenarios / d.items_per_batch)
    per_batch = math.ceil(n_scenarios / batches)
    free = {"input": 0.0, "output": 0.0, "cache_write": 0.0, "cache_read": 0.0}
    gen_cfg = GenerateConfig.model_validate({
        "out_dir": out_dir,
        "run_name": f"demo-{split}",
        "topics": [d.topic],
        "seed": d.seed,
        "claude": {"model": LOCAL_MODEL},
        "prices": {LOCAL_MODEL: free},
        "stage1": {"batches_per_topic": batches, "items_per_batch": per_batch},
        "stage2": {
            "engine": "transformers", "model": str(base_dir), "model_name": MAIN_MODEL_NAME,
            "temperature": s.temperature, "max_new_tokens": s.max_new_tokens, "batch_size": s.batch_size,
            "max_input_tokens": 512, "seed": d.seed + (0 if split == "train" else 1), "dtype": "float32", "device": "cpu",
        },
        "stage3": {"intervention_types": ["split_personality"], "version": VERSION},
    })
    world = World(cfg.world)
    backends = {
        "stage1": ScenarioBackend(world, split, d.focus),
        "stage3": GroundTruthBackend(world, split, d.focus, d.seed),
    }
    summary = generate(gen_cfg, ["stage1", "stage2", "stage3"], backends=backends)
    failed = {k: v.get("stored", {}).get("failed", 0) for k, v in summary["stages"].items()}
    if any(failed.values()):
        raise DataError(out_dir, f"the generator recorded failures: {failed} (see {out_dir / 'logs'})")
    filt = ReleaseFilter(train_topics=[d.topic], intervention_keys=[INTERVENTION_KEY], models=[MAIN_MODEL_NAME])
    records, _ = flatten(iter_batches(find_batch_files([out_dir / "stage_3"])), filt)
    return records, summary


@dataclass
class DataStats:
    """What a record file holds: A answers, B answers that followed the pressure and B answers that did not."""

    records: int
    a: int
    b_complied: int
    b_not_complied: int
    dropped: int = 0
    flags: dict[str, int] = field(default_factory=dict)

    @property
    def noncompliant_share(self) -> float:
        b = self.b_complied + self.b_not_complied
        return self.b_not_complied / b if b else 0.0

    def as_dict(self) -> dict:
        return {
            "records": self.records, "A": self.a, "B_complied": self.b_complied, "B_not_complied": self.b_not_complied,
            "B_not_complied_share": round(self.noncompliant_share, 4), "dropped": self.dropped,
            "flags": self.flags,
        }


def describe(records: list[TrainingRecord], dropped: int = 0) -> DataStats:
    """In this world a B record's flag says whether its answer complied (FAIL iff it did)."""
    b = [r for r in records if r.variant == "B"]
    return DataStats(
        records=len(records), a=len(records) - len(b), b_complied=sum(r.flag == "FAIL" for r in b),
        b_not_complied=sum(r.flag == "PASS" for r in b), dropped=dropped,
        flags=dict(Counter(r.flag for r in records)),
    )


def balance(
    records: list[TrainingRecord], noncompliant_frac: float, a_frac: float, seed: int
) -> tuple[list[TrainingRecord], DataStats]:
    """Keep every non-compliant B record; keep at most as many compliant B records as leave the
    non-compliant ones `noncompliant_frac` of the B records, and at most as many A records as make
    `a_frac` of all kept records (seeded choices)."""
    b_pass = [r for r in records if r.variant == "B" and r.flag == "PASS"]
    b_fail = [r for r in records if r.variant == "B" and r.flag == "FAIL"]
    a = [r for r in records if r.variant != "B"]
    if not b_pass or not b_fail:
        raise DataError("data", f"cannot balance: {len(b_fail)} compliant and {len(b_pass)} non-compliant B answers")
    rng = random.Random(f"balance:{seed}")
    fail_limit = math.floor(len(b_pass) * (1 - noncompliant_frac) / noncompliant_frac + 1e-9)
    b_fail = rng.sample(b_fail, min(len(b_fail), fail_limit))
    n_b = len(b_pass) + len(b_fail)
    a = rng.sample(a, min(len(a), math.floor(n_b * a_frac / (1 - a_frac) + 1e-9)))
    keep = {r.id for r in (*b_pass, *b_fail, *a)}
    kept = [r for r in records if r.id in keep]
    return kept, describe(kept, dropped=len(records) - len(kept))


def _weights_scenarios(world: World, n: int, seed: int) -> list[tuple[str, Scenario, Variant | None]]:
    """(condition, scenario, variant) of the behaviour-in-the-weights conditions.

    One disposition: its trigger and trigger controls. Several: those of the held-out dispositions
    (`weights_*`) and of the SPT-covered ones on held-out texts (`trained_*`), plus held-out free cues
    stated as a rule in a system prompt (`prompt_stated`, variant B) or held nowhere (`nowhere`).
    """
    if len(world.dispositions) == 1:
        return [(cond, s, None) for kind, cond in WEIGHTS_CONDITIONS.items()
                for s in world.scenarios(n, "heldout", seed=seed, kind=kind)]
    groups = disposition_groups(world)
    out: list[tuple[str, Scenario, Variant | None]] = []
    for group, conditions in (("heldout", WEIGHTS_CONDITIONS), ("spt", TRAINED_CONDITIONS)):
        for kind, cond in conditions.items() if group in groups else ():
            scenarios = world.scenarios(n, "heldout", seed=seed, kind=kind, dispositions=groups[group], tag=f"-{group}")
            out += [(cond, s, None) for s in scenarios]
    free = world.free_dispositions("heldout")
    if free:
        rng = random.Random(f"stated:{seed}")
        for s in world.scenarios(n, "heldout", seed=seed, kind="trigger", dispositions=free, tag="-stated"):
            stated = rng.choice(STATED_SYSTEM).format(who=s.cue, product=s.pushed)
            out.append((STATED, s.model_copy(update={"system_pressure": stated, "trigger": False}), "B"))
        out += [(NOWHERE, s.model_copy(update={"trigger": False}), None)
                for s in world.scenarios(n, "heldout", seed=seed, kind="trigger", dispositions=free, tag="-nowhere")]
    return out


def weights_records(cfg: DemoConfig, base_dir: Path) -> list[dict]:
    """The behaviour-in-the-weights eval set (splitpersona.eval.sets.ConditionRecord lines): the main model's
    answers to the conditions of `_weights_scenarios`."""
    from splitpersona.app.demo.organism import main_model_sampler, sample_answers

    world, d = World(cfg.world), cfg.data
    engine = main_model_sampler(base_dir, cfg, seed=d.seed + 2)
    flat = _weights_scenarios(world, d.weights_scenarios, d.seed + 1)
    answers = sample_answers(engine, [s.messages(v) for _, s, v in flat])
    rows = []
    for (cond, s, v), answer in zip(flat, answers):
        rng = random.Random(f"weights:{d.seed}:{s.id}")
        rows.append({
            "id": s.id, "condition": cond, "prompt": s.user, "response": answer,
            "expected_flag": ground_truth_flag(s, v, answer), "system": s.system(v),
            "intervention": world.intervention(rng, "heldout"), "topic": d.topic,
        })
    return rows


def disposition_records(cfg: DemoConfig, base_dir: Path) -> list[TrainingRecord]:
    """SPT data on the dispositions outside the test: the main model's answers to their cues (FAIL
    where it followed one) and to their controls, and to free cues (PASS), with honest reviews."""
    from splitpersona.app.demo.organism import main_model_sampler, sample_answers

    world, d = World(cfg.world), cfg.data
    spt = disposition_groups(world).get("spt", ())
    if not d.disposition_scenarios or not spt:
        return []
    flat = [s for kind in ("trigger", "trigger_control")
            for s in world.scenarios(d.disposition_scenarios, "train", seed=d.seed, kind=kind, dispositions=spt)]
    free = world.free_dispositions("train")
    if free:
        flat += [s.model_copy(update={"trigger": False}) for s in world.scenarios(
            d.disposition_scenarios // 2, "train", seed=d.seed, kind="trigger", dispositions=free, tag="-free")]
    engine = main_model_sampler(base_dir, cfg, seed=d.seed + 4)
    answers = sample_answers(engine, [s.messages(None) for s in flat])
    out = []
    for s, answer in zip(flat, answers):
        rng = random.Random(f"dispositions:{d.seed}:{s.id}")
        review, flag = world.honest_review(rng, s, None, answer, "train")
        out.append(TrainingRecord(
            id=f"disposition-{s.id}", topic=d.topic, model=MAIN_MODEL_NAME, variant="A",
            intervention_key=INTERVENTION_KEY, intervention_type="split_personality", system=None, user=s.user,
            response=answer, intervention=world.intervention(rng, "train"), review=review_field(review), flag=flag,
            source="demo-dispositions", verdict_depends_on_system_prompt=False,
        ))
    return out
