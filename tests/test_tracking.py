"""Tracked end to end in W&B, offline, read back from the run files with W&B's own protobuf (tests/wandb_records.py):
the training run records its W&B run and adapter artifact in run.json; an evaluation joins its project and group
with the metrics, one table row per verdict, the ROC charts and the adapter named as its input; with W&B disabled
the results and the report are the same; data generation logs its stages, filter iterations and accepted samples."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
import wandb
from typer.testing import CliRunner

from persona_fixtures import records_of
from splitpersona.app.cli import app
from splitpersona.card import CARD_FILE, read_front_matter
from splitpersona.eval.report import analyse
from splitpersona.eval.results import load_results
from splitpersona.run import load_run_info
from train_fixtures import make_records, tiny_config, write_records
from wandb_records import offline_runs

REPO = Path(__file__).resolve().parents[1]
TINY_EVAL = REPO / "configs" / "eval" / "tiny_cpu.yaml"


@pytest.fixture(scope="module", autouse=True)
def wandb_home(tmp_path_factory):
    """W&B's settings and caches in a temporary directory; the mode comes from each job's config."""
    home = tmp_path_factory.mktemp("wandb_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("WANDB_MODE", raising=False)
        for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
            mp.setenv(var, str(home / var.lower()))
        yield


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_base_dir):
    from splitpersona.training.train import train

    root = tmp_path_factory.mktemp("tracked")
    data = write_records(root / "records.jsonl", make_records(8))
    return train(tiny_config(tiny_base_dir, data, root / "tracked_run", "wandb.mode=offline",
                             "wandb.project=spt-tests"))


def _eval(run_dir: Path, out: Path, mode: str) -> Path:
    data = records_of(run_dir)
    args = [f"run={run_dir}", f"output={out}", f"probe.train_data=[{data}]", "progress=false", "max_new_tokens=4",
            f"sets=[{{name: held_out, kind: records, path: {data}, run_split: val}}]",
            "arms=[persona, no_adapter, probe]", f"wandb.mode={mode}"]
    res = CliRunner().invoke(app, ["eval", "run", "--config", str(TINY_EVAL), *args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="module")
def logged(run_dir, tmp_path_factory) -> Path:
    return _eval(run_dir, tmp_path_factory.mktemp("eval_logged") / "results.jsonl", "offline")


def test_the_training_run_is_recorded_for_its_evaluations(run_dir):
    ref = load_run_info(run_dir).wandb
    (wb,) = offline_runs(run_dir)
    adapter = ref.pop("adapter_artifact")
    assert ref == {"id": wb.run.run_id, "project": "spt-tests", "entity": None, "group": "tracked_run",
                   "mode": "offline"}
    assert (wb.run.project, wb.run.run_group, wb.run.job_type) == ("spt-tests", "tracked_run", "train")
    assert f"spt-tests/{ref['id']} (group tracked_run)" in (run_dir / CARD_FILE).read_text()
    assert "model-index" not in read_front_matter(run_dir / CARD_FILE)  # until a report reads its results
    # lineage: the training data named as the run's input, the adapter logged as its output
    data = records_of(run_dir)
    (dataset,) = wb.config["inputs"].values()
    expected = wandb.Artifact("x", type="dataset")
    expected.add_file(str(data))
    assert dataset == {"name": "dataset-records.jsonl", "type": "dataset", "digest": expected.digest}
    (logged,) = wb.artifacts
    assert (logged.type, logged.name, logged.digest) == ("model", "adapter-tracked_run", adapter["digest"])
    files = {e.path: e.digest for e in logged.manifest.contents}
    weights = run_dir / "adapter" / "adapter_model.safetensors"
    assert files["adapter_model.safetensors"] == base64.b64encode(hashlib.md5(weights.read_bytes()).digest()).decode()


def test_the_evaluation_joins_the_training_run_with_metrics_verdicts_and_roc(run_dir, logged):
    (wb,) = offline_runs(logged.parent)
    ref = load_run_info(run_dir).wandb
    assert (wb.run.project, wb.run.run_group, wb.run.job_type) == (ref["project"], ref["group"], "eval")
    assert wb.config["training_wandb_run"] == ref["id"] and wb.config["run_dir"] == str(run_dir)

    results = load_results(logged)
    rr = analyse(results, results.label)
    for row in rr.rows:
        arm, cond, s = row.key["arm"], row.key["condition"], row.summary
        key = f"{arm}/{cond}"
        assert wb.summary[f"{key}/n"] == s.n
        if s.accuracy.n:
            assert wb.summary[f"{key}/accuracy"] == pytest.approx(s.accuracy.value)
            assert wb.summary[f"{key}/accuracy_low"] <= s.accuracy.value <= wb.summary[f"{key}/accuracy_high"]
        if s.balanced is not None:
            assert wb.summary[f"{key}/balanced_accuracy"] == pytest.approx(s.balanced.value)
    scored = [d for d in rr.detection if d.auc is not None]
    assert scored
    for d in scored:
        key = f"{d.arm}/{d.condition}"
        assert wb.summary[f"{key}/auroc"] == pytest.approx(d.auc.value)
        if d.auc.low is not None:
            assert wb.summary[f"{key}/auroc_low"] == pytest.approx(d.auc.low)
        for rec in d.recall:
            if rec.tpr.n:
                pct = f"{100 * rec.target:g}pct"
                assert wb.summary[f"{key}/tpr_at_{pct}_fpr"] == pytest.approx(rec.tpr.value)
                assert f"{key}/achieved_fpr_at_{pct}" in wb.summary
        if d.ece is not None:
            assert wb.summary[f"{key}/ece"] == pytest.approx(d.ece)

    table = wb.table("verdicts")
    col = {c: i for i, c in enumerate(table["columns"])}
    assert len(table["data"]) == len(results.records)
    got = {(row[col["sample_id"]], row[col["condition"]], row[col["arm"]]):
           (row[col["review"]], row[col["flag"]], row[col["p_fail"]], row[col["expected_flag"]], row[col["topic"]])
           for row in table["data"]}
    assert got == {r.key: (r.generated, r.parsed_flag, r.score, r.expected_flag, r.topic) for r in results.records}

    # lineage: the adapter the evaluation read is the one the training run logged (same name, same content digest)
    (trained,) = offline_runs(run_dir)
    (adapter,) = [a for a in trained.artifacts if a.type == "model"]
    assert wb.config["inputs"] == {adapter.name: {"name": adapter.name, "type": "model", "digest": adapter.digest}}
    assert load_run_info(run_dir).wandb["adapter_artifact"]["digest"] == adapter.digest
    assert not wb.uses  # offline W&B refuses use_artifact: the input is named in the config instead

    charts = wb.logged("charts/")
    conditions = {d.condition for d in rr.detection if d.roc is not None}
    assert len(charts) == len(conditions) and all(c["_type"] == "image-file" for c in charts)
    assert all((wb.dir / "files" / c["path"]).read_bytes().startswith(b"\x89PNG") for c in charts)


def test_with_wandb_disabled_the_results_and_report_are_the_same_bytes(run_dir, logged, tmp_path):
    from splitpersona.eval.report import write_report
    from splitpersona.tracking import WandbConfig

    plain = _eval(run_dir, tmp_path / "plain" / "results.jsonl", "disabled")
    assert not (plain.parent / "wandb").exists()
    # the same file but for what differs between any two runs: where and when each was made, each verdict's latency
    a, b = ([json.loads(line) for line in f.read_text().splitlines()] for f in (logged, plain))
    for rows in (a, b):
        rows[0].pop("created"), rows[0]["provenance"].pop("created"), rows[0]["eval_config"].pop("output")
        for row in rows[1:]:
            row.pop("latency_s")
    assert a == b

    off = write_report([plain], tmp_path / "report_plain")
    on = write_report([plain], tmp_path / "report_wandb", wandb=WandbConfig(mode="offline"))
    assert len(offline_runs(plain.parent)) == 1
    for x, y in zip([off.markdown, off.json, *off.charts], [on.markdown, on.json, *on.charts], strict=True):
        assert x.name == y.name and x.read_bytes() == y.read_bytes(), x.name


def test_the_report_puts_the_results_into_the_model_card(run_dir, logged, tmp_path):
    from splitpersona.eval.report import write_report

    files = write_report([logged], tmp_path / "report")
    meta = read_front_matter(run_dir / CARD_FILE)
    (result,) = meta["model-index"][0]["results"]
    names = {m["name"]: m["value"] for m in result["metrics"]}
    rr = analyse(load_results(logged), load_results(logged).label)
    persona = next(r for r in rr.rows if r.key == {"arm": "persona", "condition": "as_is"})
    detection = next(d for d in rr.detection if (d.arm, d.condition) == ("persona", "as_is"))
    assert names["persona AUROC (as_is)"] == pytest.approx(detection.auc.value, abs=1e-4)
    # four new tokens leave most reviews without a flag line: an accuracy is there exactly where one was parsed
    assert ("persona accuracy (as_is)" in names) == (persona.summary.accuracy.n > 0)
    assert result["dataset"]["name"] == "held_out"
    card = (run_dir / CARD_FILE).read_text()
    assert f"From `{files.markdown}`" in card and "| persona | as_is |" in card
    assert "Not evaluated yet" not in card


# --- data generation ---------------------------------------------------------------------------


def test_data_generation_logs_stages_filter_iterations_and_accepted_samples(tmp_path, tiny_base_dir, monkeypatch):
    from data_gen_fixtures import SECRET, SMOKE, fast_overrides, scripted_scores
    from fake_anthropic import FakeAnthropic
    from splitpersona.config import load_config
    from splitpersona.data_gen.config import GenerateConfig
    from splitpersona.data_gen.pipeline import generate
    from splitpersona.io import iter_jsonl, read_json

    out = tmp_path / "gen"
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    with FakeAnthropic(seed=1, responder=scripted_scores) as fake:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.base_url)
        cfg = load_config(GenerateConfig, SMOKE, fast_overrides(
            out, **{"stage2.model": str(tiny_base_dir), "stage2.model_name": "tiny-llama", "wandb.mode": "offline",
                    "wandb.project": "spt-tests"}))
        summary = generate(cfg, ["stage1", "stage2", "stage3", "tag", "filter"])
    (wb,) = offline_runs(out)
    assert (wb.run.project, wb.run.run_group, wb.run.job_type) == ("spt-tests", "gen", "generate")
    s = wb.summary
    for stage in ("stage1", "stage3", "filter"):
        costs = summary["stages"][stage]
        assert s[f"{stage}/total/cost_usd"] == pytest.approx(costs["cost_usd"]) and costs["cost_usd"] > 0
        assert s[f"{stage}/total/tokens/output_tokens"] == costs["tokens"]["output_tokens"]
        last = costs["last_command"]
        assert s[f"{stage}/command/requested"] == last["requested"] > 0
        assert s[f"{stage}/command/acceptance_rate"] == pytest.approx(last["ok"] / last["requested"])
    modes = read_json(out / "filter" / "iter_001" / "failure_modes.json")
    assert s["filter/iter_001/acceptance_rate"] == modes["acceptance_rate"] and 0 < modes["acceptance_rate"] < 1
    for name, c in modes["per_criterion"].items():
        assert s[f"filter/iter_001/rejections/{name}"] == c["rejections"]
    assert s["filter/iter_001/rejections/first_person_account"] > 0  # the scripted low scores
    accepted = [row for _, row in iter_jsonl(out / "filter" / "iter_001" / "decisions.jsonl") if row["accepted"]]
    table = wb.table("accepted")
    col = table["columns"].index("id")
    assert sorted(r[col] for r in table["data"]) == sorted(r["id"] for r in accepted)
    (dataset,) = [a for a in wb.artifacts if a.type == "dataset"]  # beside the tables W&B keeps as artifacts
    assert (dataset.type, dataset.name) == ("dataset", "dataset-gen-accepted")
    assert {e.path for e in dataset.manifest.contents} == {
        p.relative_to(out / "filter" / "iter_001" / "accepted").as_posix()
        for p in (out / "filter" / "iter_001" / "accepted").rglob("*.json")}
    assert all(SECRET.encode() not in f.read_bytes() for f in (out / "wandb").rglob("*") if f.is_file())

    # the next link: `spt data import` names the accepted samples as its input and logs the records under the name
    # and digest the trainer's input takes (test_the_training_run_is_recorded_for_its_evaluations)
    records = tmp_path / "imported" / "records.jsonl"
    keep_all = tmp_path / "keep_all.yaml"  # the smoke run's scripted tags would fail the published filter
    keep_all.write_text("train_topics: [sycophancy, fabricated_statistics]\nintervention_keys: [split_personality__gen_v1]\n")
    res = CliRunner().invoke(app, ["data", "import", str(out / "filter" / "iter_001" / "accepted"), "--out",
                                   str(records), "--filters", str(keep_all), "--wandb", "offline"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    (imp,) = offline_runs(records.parent)
    assert imp.run.job_type == "import"
    assert imp.config["inputs"] == {dataset.name: {"name": dataset.name, "type": "dataset", "digest": dataset.digest}}
    (made,) = [a for a in imp.artifacts if a.type == "dataset"]
    expected = wandb.Artifact("x", type="dataset")
    expected.add_file(str(records))
    assert (made.name, made.digest) == ("dataset-records.jsonl", expected.digest)
    assert imp.summary["records"] == sum(1 for _ in iter_jsonl(records)) > 0
