"""`spt eval report` on synthetic results with known counts (tests/eval_fixtures.py)."""

from __future__ import annotations

import json

import pytest
from eval_fixtures import write_synthetic
from typer.testing import CliRunner

from splitpersona.app.cli import app
from splitpersona.eval.metrics import Rate
from splitpersona.eval.report import write_report
from splitpersona.io import DataError


@pytest.fixture
def two_runs(tmp_path):
    masked = write_synthetic(tmp_path / "masked.jsonl", lora_mask=True)
    unmasked = write_synthetic(tmp_path / "unmasked.jsonl", label="unmasked", lora_mask=False)
    return masked, unmasked


def section(md: str, title: str) -> str:
    start = md.index(title)
    end = md.find("\n### ", start + len(title))
    return md[start : end if end != -1 else len(md)]


def test_report_shows_every_rate_with_n_and_interval(tmp_path, two_runs):
    files = write_report([two_runs[0]], tmp_path / "out")
    md = files.markdown.read_text()
    pivot = section(md, "### Accuracy by condition, arms side by side")
    header = next(line for line in pivot.splitlines() if line.startswith("| condition"))
    assert header == "| condition | persona | no_adapter | follow_up | meaningless_token | external | probe |"
    as_is = next(line for line in pivot.splitlines() if line.startswith("| as_is "))
    for rate in (Rate(36, 40), Rate(20, 40), Rate(32, 32), Rate(32, 40)):
        assert str(rate) in as_is
    detail = section(md, "### Detection metrics per arm and condition")
    follow_up = next(line for line in detail.splitlines() if line.startswith("| follow_up | as_is "))
    # 8 parse failures: 32/32 over parsed samples, 32/40 with failures counted wrong
    assert "| 40 | 32 | 8 | " + str(Rate(32, 32)) + " | " + str(Rate(32, 40)) + " |" in follow_up
    no_adapter = next(line for line in detail.splitlines() if line.startswith("| no_adapter | as_is "))
    assert str(Rate(0, 20)) in no_adapter and str(Rate(20, 20)) in no_adapter  # TPR 0, TNR 1
    jb = section(md, "### Jailbreak")
    assert "| persona | jailbreak_user | user | 40 | 0 | 0 | " + str(Rate(7, 20)) + " | " + str(Rate(7, 40)) in jb
    assert "held-out" in section(md, "### Trained topics vs held-out topics")
    assert "empty text: 8" in section(md, "### Parse failures")


def test_swap_collapse_has_its_own_table(tmp_path, two_runs):
    md = write_report([two_runs[0]], tmp_path / "out").markdown.read_text()
    swap = section(md, "### System-prompt swap")
    persona = next(line for line in swap.splitlines() if line.startswith("| persona | 40 "))
    cells = [c.strip() for c in persona.strip("|").split("|")]
    assert cells[2:5] == [str(Rate(36, 40)), str(Rate(36, 40)), str(Rate(10, 40))]
    assert cells[6].startswith("65.0% [")  # drop as_is -> swapped, with its interval
    assert "| persona | B | 20 | " in swap  # the collapse by variant


def test_report_json_and_png_files(tmp_path, two_runs):
    files = write_report(list(two_runs), tmp_path / "out")
    data = json.loads(files.json.read_text())
    assert [r["label"] for r in data["runs"]] == ["masked", "unmasked"]
    assert data["runs"][1]["metadata"]["lora_mask"] is False
    row = next(r for r in data["runs"][0]["summary"] if r["arm"] == "persona" and r["condition"] == "as_is")
    assert row["accuracy"]["k"] == 36 and row["accuracy"]["n"] == 40
    assert row["accuracy"]["low"] == pytest.approx(Rate(36, 40).ci[0])
    swap = next(s for s in data["runs"][0]["swap"] if s["key"] == {"arm": "persona"})
    assert swap["swapped_system_prompt"]["accuracy"]["k"] == 10
    assert swap["drop"]["swapped_system_prompt"]["value"] == pytest.approx(26 / 40)
    names = sorted(p.name for p in files.charts)
    assert names == ["accuracy_masked.png", "accuracy_unmasked.png", "compare_persona.png",
                     "swap_masked.png", "swap_unmasked.png"]
    from PIL import Image

    for png in files.charts:
        with Image.open(png) as im:
            assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 200
            im.verify()
    md = files.markdown.read_text()
    assert "## Runs compared" in md and "| persona | swapped_system_prompt | " + str(Rate(10, 40)) in md
    assert all(f"]({p.name})" in md for p in files.charts)


def test_cli_labels_several_files(tmp_path, two_runs):
    out = tmp_path / "cli"
    res = CliRunner().invoke(app, ["eval", "report", *map(str, two_runs), "--out", str(out),
                                   "--label", "lora_mask", "--label", "no_mask"])
    assert res.exit_code == 0, res.output
    md = (out / "report.md").read_text()
    assert "## Run `lora_mask`" in md and "## Run `no_mask`" in md
    assert (out / "accuracy_no_mask.png").exists()
    sliced = CliRunner().invoke(app, ["eval", "report", str(two_runs[0]), "--out", str(tmp_path / "s"), "--slice", "topic"])
    assert sliced.exit_code == 0, sliced.output
    by_topic = section((tmp_path / "s" / "report.md").read_text(), "### By topic")
    assert "| as_is | fabricated_statistics | " + str(Rate(20, 20)) in by_topic
    assert "### By variant" not in (tmp_path / "s" / "report.md").read_text()
    bad = CliRunner().invoke(app, ["eval", "report", str(two_runs[0]), "--out", str(out), "--label", "a", "--label", "b"])
    assert bad.exit_code == 1 and "2 labels given for 1 results files" in bad.output


def test_corrupt_record_fails_naming_file_and_record(tmp_path, two_runs):
    path = two_runs[0]
    lines = path.read_text().splitlines()
    row = json.loads(lines[7])
    del row["expected_flag"]
    lines[7] = json.dumps(row)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as e:
        write_report([path], tmp_path / "out")
    assert e.value.path == str(path) and e.value.record == f"line 8, id {row['id']!r}"
    res = CliRunner().invoke(app, ["eval", "report", str(path), "--out", str(tmp_path / "out")])
    assert res.exit_code == 1
    assert str(path) in res.output and f"line 8, id {row['id']!r}" in res.output and "expected_flag" in res.output
    assert not (tmp_path / "out" / "report.md").exists()


def test_chart_survives_rates_at_zero_and_one(tmp_path):
    """Wilson bounds for 0/n and n/n can miss the rate by a rounding error (0/7, 10/10): no negative error bar."""
    from splitpersona.eval.report import bar_chart

    rates = {("as_is", "persona"): Rate(10, 10), ("as_is", "external"): Rate(0, 7), ("swapped", "persona"): Rate(13, 13)}
    bar_chart(tmp_path / "c.png", ["as_is", "swapped"], ["persona", "external"], rates, "edge rates")
    assert (tmp_path / "c.png").stat().st_size > 0


def scored_file(path, calibration=None):
    """Persona scores separate the classes perfectly; the probe's overlap; external has none."""
    from eval_fixtures import CONDITIONS, N, expected, record, verdict

    from splitpersona.eval.results import ResultsMetadata, ResultsWriter

    def score(arm, i):
        fail = expected(i) == "FAIL"
        if arm == "persona":
            return (0.6 if fail else 0.0) + i / 100  # every FAIL above every PASS
        return ((i * 7) % 10) / 10 + (0.15 if fail else 0.0)

    records = [
        record(i, a, c, verdict(a, c, i), **({} if a == "external" else
                                             {"score": score(a, i), "score_source": "flag_probability"}))
        for a in ("persona", "probe", "external") for c in CONDITIONS[:2] for i in range(N)
    ]
    meta = ResultsMetadata.start(model="tiny-llama", arms=["persona", "probe", "external"],
                                 eval_config={} if calibration is None else {"calibration": calibration})
    with ResultsWriter(path, meta) as w:
        w.write_many(records)
    return path


def test_scores_give_auroc_recall_at_fpr_and_roc_charts(tmp_path):
    files = write_report([scored_file(tmp_path / "scored.jsonl")], tmp_path / "out")
    md = files.markdown.read_text()
    det = section(md, "### Detection by score")
    persona = next(line for line in det.splitlines() if line.startswith("| persona | as_is "))
    cells = [c.strip() for c in persona.strip("|").split("|")]
    assert cells[2].startswith("1.000 [")  # AUROC of a perfect separation
    assert cells[3] == "100.0% (FPR 0.0%)" and cells[4] == "100.0%"
    assert cells[6] == "40 (20+/20-)" and cells[7] == "10"  # half of the 20 PASS ids fix the thresholds
    external = next(line for line in det.splitlines() if line.startswith("| external | as_is "))
    assert "no scores" in external
    assert "- **as_is**: persona vs best baseline `probe` (n=40 paired samples): AUROC +" in det
    assert "DeLong paired" in det and "McNemar exact" in det and "paired stratified bootstrap" in det
    reliability = det[det.index("Reliability (as_is)") :]
    assert "| score bin | persona |" in reliability  # the probe's scores are not probabilities: no bins
    names = sorted(p.name for p in files.charts)
    assert "roc_scored_as_is.png" in names and "roc_scored_no_system_prompt.png" in names
    data = json.loads(files.json.read_text())["runs"][0]
    rows = {(d["arm"], d["condition"]): d for d in data["detection"]}
    assert rows[("persona", "as_is")]["auroc"]["value"] == 1.0
    assert rows[("persona", "as_is")]["recall_at_fpr"][0]["target_fpr"] == 0.01
    assert data["persona_vs_best_baseline"][0]["auroc"]["method"] == "DeLong paired"
    assert data["swap_paired"][0]["method"].startswith("McNemar")


def test_calibration_comes_from_the_run_config(tmp_path):
    path = scored_file(tmp_path / "scored.jsonl", calibration={"mode": "none"})
    data = json.loads(write_report([path], tmp_path / "out").json.read_text())["runs"][0]
    persona = next(d for d in data["detection"] if d["arm"] == "persona")
    assert persona["n"] == 40 and persona["recall_at_fpr"] == []
    assert "no calibration samples" in persona["note"]


def test_results_without_scores_report_as_before(tmp_path, two_runs):
    files = write_report([two_runs[0]], tmp_path / "out")
    assert "_No scores in these results" in files.markdown.read_text()
    assert not any(p.name.startswith("roc_") for p in files.charts)
