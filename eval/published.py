"""`spt eval published`: re-score the public SPT release's evaluation result files.

Each quantitative file holds one checkpoint, condition and intervention: its run metadata and a
`results` list of samples, each with `generated_review` and the stored `parsed_flag`. We never
trust the stored `parsed_flag`: every flag is re-parsed from `generated_review` by
`splitpersona.flags.parse_flag`, and disagreements with the stored value are counted. Accuracy =
correct / parsed, the release's own denominator; parse failures are reported beside it. Files
whose run did not finish (`processing_complete` false) are skipped with a warning, so a partial
rerun is never pooled with its complete twin. Qualitative files (no expected flag) are summarised
by category; anything else is skipped with the reason.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from splitpersona.eval.metrics import Rate
from splitpersona.flags import parse_flag
from splitpersona.io import DataError, read_json

FLAGS = ("PASS", "FAIL", "AMBIGUOUS")


@dataclass
class FileScore:
    path: Path
    checkpoint: str
    step: str | None
    elicitation: str | None
    lora_patch: bool | None
    condition: str
    intervention: str
    expected_flag: str
    n: int
    parsed: int
    correct: int
    flags: Counter[str]
    failure_reasons: Counter[str]
    disagreements: list[str]

    @property
    def accuracy(self) -> Rate:
        return Rate(self.correct, self.parsed)

    def to_json(self) -> dict[str, Any]:
        plain = ("checkpoint", "step", "elicitation", "lora_patch", "condition", "intervention", "expected_flag", "n",
                 "parsed", "correct")
        return {
            "file": self.path.name,
            **{k: getattr(self, k) for k in plain},
            "accuracy": round(self.correct / self.parsed, 4) if self.parsed else None,
            "parse_failures": self.n - self.parsed,
            "flags": {f: self.flags.get(f, 0) for f in FLAGS},
            "stored_flag_disagreements": len(self.disagreements),
        }


@dataclass
class QualitativeSummary:
    path: Path
    checkpoint: str
    step: str | None
    elicitation: str | None
    # (sample_type, category) -> counts of re-parsed flags, with "unparsed" for failures
    counts: dict[tuple[str, str], Counter[str]]


@dataclass
class GroupScore:
    checkpoint: str
    step: str | None
    elicitation: str | None
    lora_patch: bool | None
    condition: str
    interventions: list[str]
    n: int
    parsed: int
    correct: int

    @property
    def accuracy(self) -> Rate:
        return Rate(self.correct, self.parsed)


@dataclass
class Scan:
    files: list[FileScore] = field(default_factory=list)
    qualitative: list[QualitativeSummary] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def grouped(self) -> list[GroupScore]:
        """Pooled over interventions: checkpoint x elicitation x mask x condition (correct / parsed)."""
        groups: dict[tuple, list[FileScore]] = defaultdict(list)
        for f in self.files:
            groups[(f.checkpoint, f.step, f.elicitation, f.lora_patch, f.condition)].append(f)
        out = []
        for (ckpt, step, elic, patch, cond), fs in sorted(groups.items(), key=lambda kv: tuple(map(str, kv[0]))):
            out.append(GroupScore(
                ckpt, step, elic, patch, cond, sorted({f.intervention for f in fs}),
                sum(f.n for f in fs), sum(f.parsed for f in fs), sum(f.correct for f in fs),
            ))
        return out


def _review_text(path: Path, i: int, row: Any) -> str:
    if not isinstance(row, dict):
        raise DataError(path, f"result is a {type(row).__name__}, not an object", record=f"results[{i}]")
    text = row.get("generated_review")
    if text is None:
        return ""
    if not isinstance(text, str):
        rid = row.get("sample_id", f"results[{i}]")
        raise DataError(path, "generated_review is not a string", record=rid)
    return text


def score_quantitative(path: Path, meta: dict, rows: list) -> FileScore:
    expected = meta.get("expected_flag")
    condition, intervention = meta.get("condition"), meta.get("intervention_name")
    if expected not in ("PASS", "FAIL") or not condition or not intervention:
        raise DataError(path, "metadata lacks condition, intervention_name or a PASS/FAIL expected_flag")
    flags: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    disagreements: list[str] = []
    correct = 0
    for i, row in enumerate(rows):
        text = _review_text(path, i, row)
        sid = str(row.get("sample_id", f"results[{i}]"))
        for key, want in (("expected_flag", expected), ("condition", condition)):
            if key in row and row[key] != want:
                raise DataError(path, f"{key} {row[key]!r} differs from the file's {want!r}", record=sid)
        parsed = parse_flag(text)
        if parsed.ok:
            flags[parsed.flag] += 1
            correct += parsed.flag == expected
        else:
            reasons[parsed.reason] += 1
        stored = row.get("parsed_flag")
        if parsed.flag != (stored if stored in FLAGS else None):
            disagreements.append(sid)
    return FileScore(
        path, *_run_of(path, meta), lora_patch=meta.get("lora_patch"), condition=condition, intervention=intervention,
        expected_flag=expected, n=len(rows), parsed=sum(flags.values()), correct=correct, flags=flags,
        failure_reasons=reasons, disagreements=disagreements,
    )


def _run_of(path: Path, meta: dict) -> tuple[str, str | None, str | None]:
    """(checkpoint, step, elicitation) of a results file."""
    return str(meta.get("checkpoint_name") or path.parent.name), meta.get("step"), meta.get("elicitation_type")


def summarise_qualitative(path: Path, meta: dict, groups: dict) -> QualitativeSummary:
    counts: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    for sample_type, rows in groups.items():
        if not isinstance(rows, list):
            raise DataError(path, f"results[{sample_type!r}] is not a list")
        for i, row in enumerate(rows):
            parsed = parse_flag(_review_text(path, i, row))
            counts[(sample_type, str(row.get("category") or "–"))][parsed.flag or "unparsed"] += 1
    return QualitativeSummary(path, *_run_of(path, meta), counts=dict(counts))


def result_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name.endswith((".json", ".json.xz")))


def scan(directory: str | os.PathLike[str]) -> Scan:
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(directory, "not a directory")
    out = Scan()
    for path in result_files(directory):
        data = read_json(path)
        meta = data.get("metadata") if isinstance(data, dict) else None
        results = data.get("results") if isinstance(data, dict) else None
        if not isinstance(meta, dict) or results is None:
            keys = sorted(data)[:6] if isinstance(data, dict) else type(data).__name__
            out.skipped.append((path, f"not an evaluation results file (top level: {keys})"))
        elif meta.get("processing_complete") is False:
            done, total = meta.get("samples_processed"), meta.get("total_samples")
            out.skipped.append((path, f"processing incomplete ({done} of {total} samples)"))
        elif isinstance(results, list) and "condition" in meta:
            out.files.append(score_quantitative(path, meta, results))
        elif isinstance(results, dict):
            out.qualitative.append(summarise_qualitative(path, meta, results))
        else:
            out.skipped.append((path, "results are neither a scored list nor qualitative groups"))
    if not out.files and not out.qualitative:
        raise DataError(directory, f"no evaluation result files found ({len(out.skipped)} skipped)")
    return out


def _table(title: str, columns: Sequence[str]):
    from rich.table import Table

    t = Table(title=title)
    for col in columns:
        t.add_column(col, overflow="fold")
    return t


def print_tables(result: Scan, console=None) -> None:
    from rich.console import Console

    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=200)

    def acc(rate: Rate) -> str:
        return str(rate) if rate.n else "n/a"

    if result.files:
        t = _table("Per file (flags re-parsed; accuracy = correct / parsed, 95% Wilson)", (
            "checkpoint", "step", "elic.", "lora_patch", "condition", "intervention", "expected", "n", "parsed",
            "PASS / FAIL", "correct", "accuracy", "stored-flag disagreements"))
        for f in sorted(result.files, key=lambda f: (f.checkpoint, str(f.step), f.condition, f.intervention)):
            t.add_row(f.checkpoint, str(f.step), str(f.elicitation), str(f.lora_patch), f.condition, f.intervention,
                      f.expected_flag, str(f.n), str(f.parsed), f"{f.flags['PASS']} / {f.flags['FAIL']}",
                      str(f.correct), acc(f.accuracy), str(len(f.disagreements)))
        console.print(t)
        g = _table("Grouped: checkpoint x elicitation x mask x condition (pooled over interventions)", (
            "checkpoint", "step", "elic.", "lora_patch", "condition", "interventions", "n", "parsed", "correct",
            "correct / parsed", "95% Wilson"))
        for row in result.grouped():
            rate = row.accuracy
            exact = f"{100 * rate.value:.2f}%" if rate.n else "n/a"
            ci = "[{:.1f}, {:.1f}]".format(*(100 * x for x in rate.ci)) if rate.n else "–"
            g.add_row(row.checkpoint, str(row.step), str(row.elicitation), str(row.lora_patch), row.condition,
                      ", ".join(row.interventions), str(row.n), str(row.parsed), str(row.correct), exact, ci)
        console.print(g)
    for q in result.qualitative:
        t = _table(f"Qualitative (no expected flags): {q.path.name} [{q.checkpoint} {q.step}, {q.elicitation}]",
                   ("sample type", "category", "n", "PASS", "FAIL", "AMBIGUOUS", "unparsed"))
        for (stype, cat), c in sorted(q.counts.items()):
            t.add_row(stype, cat, str(sum(c.values())), *(str(c.get(k, 0)) for k in (*FLAGS, "unparsed")))
        console.print(t)
