"""`spt eval report` on synthetic results with known counts (tests/eval_fixtures.py)."""

from __future__ import annotations

import json

import pytest
from eval_fixtures import write_synthetic
from typer.testing import CliRunner

from splitpersona.app.cli import app
from eval.metrics import Rate
from eval.report import write_report
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
    from eval.report import bar_chart

    rates = {("as_is", "persona"): Rate(10, 10), ("as_is", "external"): Rate(0, 7), ("swapped", "persona"): Rate(13, 13)}
    bar_chart(tmp_path / "c.png", ["as_is", "swapped"], ["persona", "external"], rates, "edge rates")
    assert (tmp_path / "c.png").stat().st_size > 0
