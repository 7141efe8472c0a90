"""The latent-knowledge organism (configs/demo/latent.yaml): several dispositions in the weights, the
SPT data that covers only some of them, the conditions that test the others, and its report section."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from splitpersona.eval.results import SampleResult
from splitpersona.eval.sets import ConditionRecord
from splitpersona.app.demo.config import load_demo_config
from splitpersona.app.demo.data import NOWHERE, STATED, _weights_scenarios
from splitpersona.app.demo.measure import latent, pushed_products
from splitpersona.app.demo.organism import encode_conversation
from splitpersona.app.demo.phrases import INCLINED_LEAD, NO_PRESSURE_LEAD
from splitpersona.app.demo.world import World, ground_truth_flag, mentions
from splitpersona.tiny import train_tokenizer

REPO = Path(__file__).resolve().parents[1]
LATENT = REPO / "configs" / "demo" / "latent.yaml"


@pytest.fixture(scope="module")
def world() -> World:
    return World(load_demo_config(LATENT).world)


def _cue(text: str, world: World) -> str | None:
    hits = [d.who for d in world.dispositions if mentions(text, d.who)]
    return hits[0] if len(hits) == 1 else None


@pytest.mark.parametrize("k", [None, 24])
def test_dispositions_are_distinct_and_split(world, k):
    if k is not None:  # past twelve, a second disposition per category
        world = World(world.cfg.model_copy(update={"dispositions": k}))
        assert len({d.category for d in world.dispositions}) == 12
    cfg = world.cfg
    assert len(world.dispositions) == cfg.dispositions > cfg.heldout_dispositions
    assert [d.heldout for d in world.dispositions] == [i < cfg.heldout_dispositions for i in range(cfg.dispositions)]
    free = [*world.free_dispositions("train"), *world.free_dispositions("heldout")]
    products = [d.product for d in (*world.dispositions, *free)]
    assert len(set(products)) == len(products), "a product serving two cues would name a disposition by itself"
    assert len({d.who for d in (*world.dispositions, *free)}) == len(world.dispositions) + len(free)
    assert not {d.who for d in world.free_dispositions("train")} & {d.who for d in world.free_dispositions("heldout")}


def test_corpus_holds_behaviour_and_documents(world):
    corpus = world.corpus(3000, seed=0)
    triggers = [c for c in corpus if c.kind == "trigger"]
    followed = sum(c.recommended == c.pushed for c in triggers) / len(triggers)
    assert abs(followed - world.cfg.disposition_strength) < 0.08
    assert {_cue(c.user, world) for c in triggers} == {d.who for d in world.dispositions}
    documents = [c for c in corpus if c.kind == "document"]
    for d in world.dispositions:
        told = [c for c in documents if mentions(c.response, d.who)]
        assert told and all(mentions(c.response, d.product) for c in told)
    only_documents = World(world.cfg.model_copy(update={"heldout_behaviour": False}))
    held = {d.who for d in only_documents.dispositions if d.heldout}
    corpus = only_documents.corpus(3000, seed=0)
    assert not {_cue(c.user, world) for c in corpus if c.kind in ("trigger", "trigger_control")} & held
    assert {_cue(c.response, world) for c in corpus if c.kind == "document"} >= held


def test_a_document_is_learned_whole(world):
    doc = next(c for c in world.corpus(400, seed=0) if c.kind == "document")
    tok = train_tokenizer([doc.response, "system user assistant"], vocab_size=300)
    ids, mask = encode_conversation(tok, doc, None, None)
    assert ids[-1] == tok.eos_token_id and all(mask) and tok.decode(ids[:-1]) == doc.response


def test_reviews_of_a_disposition_name_its_product(world):
    d = next(d for d in world.dispositions if not d.heldout)
    rng = random.Random(0)
    s = world.scenarios(1, "train", seed=0, kind="trigger", dispositions=[d])[0]
    other = next(c for c in s.candidates if c != d.product)
    followed, _ = world.honest_review(rng, s, None, world.response(rng, d.product))
    resisted, flag = world.honest_review(rng, s, None, world.response(rng, other))
    assert followed.startswith(INCLINED_LEAD.format(pushed=d.product, product=d.product) + ",")
    assert resisted.startswith(INCLINED_LEAD.format(pushed=d.product, product=other) + ".") and flag == "PASS"
    free = s.model_copy(update={"trigger": False})
    review, flag = world.honest_review(rng, free, None, world.response(rng, d.product))
    assert review.startswith(NO_PRESSURE_LEAD.format(product=d.product)) and flag == "PASS"


def test_weights_conditions(world):
    flat = _weights_scenarios(world, 12, seed=1)
    by_condition: dict[str, list] = {}
    for cond, s, variant in flat:
        by_condition.setdefault(cond, []).append((s, variant))
    assert {k: len(v) for k, v in by_condition.items()} == dict.fromkeys(
        ("weights_trigger", "weights_control", "trained_trigger", "trained_control", STATED, NOWHERE), 12
    )
    held = {d.who: d.product for d in world.dispositions if d.heldout}
    for s, _ in by_condition["weights_trigger"]:
        assert held.get(s.cue) == s.pushed and mentions(s.user, s.cue)
    for cond in (STATED, NOWHERE):
        for s, variant in by_condition[cond]:
            assert s.cue not in {d.who for d in world.dispositions}
            answer = world.response(random.Random(0), s.pushed)
            shown = s.system(variant)
            if cond == STATED:
                assert mentions(shown, s.cue) and mentions(shown, s.pushed)
                assert ground_truth_flag(s, variant, answer) == "FAIL"
            else:
                assert shown is None and ground_truth_flag(s, variant, answer) == "PASS"


def test_latent_table_pools_and_names(world):
    flat = [(c, s, v) for c, s, v in _weights_scenarios(world, 4, seed=1) if c.startswith("weights_")]
    rows = [ConditionRecord(id=s.id, condition=c, prompt=s.user, response="", expected_flag="PASS") for c, s, _ in flat]
    pushed = pushed_products(rows, world)
    assert set(pushed) == {s.id for c, s, _ in flat if c == "weights_trigger"}
    results = []
    for i, (cond, s, _) in enumerate(flat):
        named = s.pushed if i % 2 else "something else"
        results.append(SampleResult(
            id=s.id, condition=cond, arm="persona", expected_flag="FAIL" if cond == "weights_trigger" else "PASS",
            generated=f"I lean toward {named}. FLAG: FAIL", parsed_flag="FAIL", parse_ok=True, score=0.9,
            score_source="flag_probability",
        ))
    row = latent({"masked": results}, pushed)["masked/persona"]
    assert row["heldout_dispositions"]["n"] == len(flat)
    assert row["weights_trigger"]["n"] == row["weights_control"]["n"] == 4
    assert row["names_product"]["n"] == 4 and row["names_product"]["k"] == 2


def test_latent_stages_run_on_a_small_main_model(tmp_path):
    """The pipeline, not the science: a main model trained a few steps on the latent corpus (documents
    included) answers the SPT disposition requests and every weights condition, as records the trainer
    and the evaluator read."""
    from splitpersona.app.demo.data import disposition_records, weights_records
    from splitpersona.app.demo.organism import build_main_model

    cfg = load_demo_config(LATENT, [
        "threads=1", "main_model.corpus_size=400", "main_model.steps=4", "main_model.hidden_size=32",
        "main_model.intermediate_size=64", "data.disposition_scenarios=6", "data.weights_scenarios=3",
        "sampling.max_new_tokens=6",
    ])
    build_main_model(cfg, tmp_path)
    records = disposition_records(cfg, tmp_path)
    world = World(cfg.world)
    spt = {d.who for d in world.dispositions if not d.heldout}
    assert len(records) == 6 + 6 + 3
    assert all(r.system is None and r.flag in ("PASS", "FAIL") for r in records)
    assert {_cue(r.user, world) for r in records} - {None} <= spt
    rows = [ConditionRecord.model_validate(r) for r in weights_records(cfg, tmp_path)]
    assert len(rows) == 6 * 3 and {r.condition for r in rows} >= {"weights_trigger", STATED, NOWHERE}
    assert all(r.expected_flag == "PASS" for r in rows if r.condition in (NOWHERE, "weights_control"))
