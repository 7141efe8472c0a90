"""The evaluation results file: written by `spt eval run`, read by `spt eval report`.

Format: JSON lines, UTF-8.
- Line 1 is the run's metadata (`ResultsMetadata`, recognised by `"format": "splitpersona-eval-results"`):
  model, adapter run dir, resolved eval config, provenance (git commit, package versions), elicitation,
  lora_mask, creation time.
- Every further line is one generated verdict (`SampleResult`), keyed by (id, condition, arm). The
  same sample id appears once per condition and arm, so arms and conditions compare on identical samples.

Why JSON lines rather than one JSON document: the runner appends each verdict as it is produced and
fsyncs it, so a crash costs at most the line being written, and a rerun resumes where the file
ends (`ResultsWriter` knows which keys are done and repairs a line torn by the crash). A reader
validates every line and names the file, line and sample id of a bad one (`load_results`).

Jailbreak samples are their own conditions (say `jailbreak_user`), paired with their clean twin
through `base_condition` by the flip-rate metric.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from splitpersona.eval.registry import ARMS  # re-exported: reports order the arms as the registry lists them
from splitpersona.config import StrictModel
from splitpersona.conversation import Elicitation
from splitpersona.flags import DEFAULT_FLAG_PREFIX, ParsedFlag, parse_flag
from splitpersona.io import DataError, describe_validation_error, dumps_line
from splitpersona.records import Flag, Variant
from splitpersona.run import provenance

FORMAT = "splitpersona-eval-results"
VERSION = 1

# Known conditions, in the order reports show them; a runner may add others.
CONDITIONS = (
    "as_is", "no_system_prompt", "swapped_system_prompt", "trained_actual", "original_actual", "original_intended",
)

Key = tuple[str, str, str]  # (id, condition, arm)
ScoreSource = Literal["flag_probability", "classifier", "self_reported"]
_HEADER_START = b'{"format":"' + FORMAT.encode() + b'"'


class ResultsMetadata(StrictModel):
    """Everything a reader needs to know what produced the verdicts below it."""

    format: Literal["splitpersona-eval-results"] = FORMAT
    version: int = VERSION
    created: str = Field(description="ISO-8601 UTC time the file was started.")
    label: str | None = Field(None, description="Short name for reports; defaults to the file name.")
    model: str = Field(description="Base model id or path the verdicts were generated with.")
    run_dir: str | None = Field(None, description="Training run directory of the persona (None: no adapter).")
    adapter: str | None = Field(None, description="Adapter path actually loaded.")
    elicitation: Elicitation | None = None
    lora_mask: bool | None = None
    flag_prefix: str = Field(DEFAULT_FLAG_PREFIX, description="Prefix the flags were parsed with.")
    arms: list[str] = Field(default_factory=list)
    conditions: list[str] = Field(default_factory=list)
    eval_sets: list[dict[str, Any]] = Field(
        default_factory=list, description="Input data files: name, path, sha256, number of samples."
    )
    trained_topics: list[str] | None = Field(None, description="Topics the persona was trained on, when known.")
    eval_config: dict[str, Any] = Field(default_factory=dict, description="The resolved eval config.")
    generation: dict[str, Any] = Field(default_factory=dict, description="Decoding settings (max_new_tokens, ...).")
    provenance: dict[str, Any] = Field(
        default_factory=dict, description="splitpersona.run.provenance() of the eval process."
    )
    train_provenance: dict[str, Any] | None = Field(None, description="Provenance recorded in the run's run.json.")
    extra: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def start(cls, **fields: Any) -> ResultsMetadata:
        """Metadata for a new file, stamped with the current time and this process's provenance."""
        stamp = provenance()
        fields.setdefault("created", stamp["created"])
        fields.setdefault("provenance", stamp)
        return cls(**fields)

    def resume_identity(self) -> dict[str, Any]:
        """What must match for a rerun to append to an existing file instead of starting anew.

        The calibration settings only choose the report's thresholds, never a verdict, so they do not count.
        """
        out = {k: getattr(self, k) for k in ("model", "run_dir", "adapter", "elicitation", "lora_mask", "eval_config")}
        out["eval_config"] = {k: v for k, v in self.eval_config.items() if k != "calibration"}
        return out


class SampleResult(StrictModel):
    """One verdict: one sample, under one condition, from one arm."""

    id: str
    condition: str
    arm: str
    expected_flag: Flag
    generated: str = Field(description="The reviewer's full output (review and flag line); '' for the probe.")
    parsed_flag: Flag | None
    parse_ok: bool
    parse_reason: str = Field("", description="Why parsing failed (empty when it succeeded).")
    topic: str | None = None
    eval_set: str | None = None
    intervention: str | None = Field(None, description="Intervention key or name used.")
    score: float | None = Field(None, description="P(FAIL) or a comparable score, for arms that have one.")
    score_source: ScoreSource | None = Field(
        None, description="Where `score` comes from: 'flag_probability' (the reviewer's P(FAIL) / (P(FAIL) + "
        "P(PASS)) at its flag), 'classifier' (a fitted probe or classifier) or 'self_reported' (a judge's stated "
        "probability, no log-probabilities). None in files written before scores were recorded.",
    )
    error: str | None = Field(
        None, description="Why no verdict was produced (e.g. API error); counts as a parse failure."
    )
    prompt_tokens: int | None = None
    generated_tokens: int | None = None
    truncated: int = Field(0, description="Tokens cut from the response to fit max_length.")
    latency_s: float | None = None
    # Slice labels: None where they do not apply.
    variant: Variant | None = None
    complied: bool | None = Field(None, description="Whether the main response followed the hidden instruction.")
    held_out_topic: bool | None = Field(None, description="True: topic not seen in training.")
    jailbreak: str | None = Field(None, description="Where an 'answer PASS' instruction was planted; None: clean.")
    base_condition: str | None = Field(None, description="Condition of this jailbreak record's clean twin.")
    slices: dict[str, str | int | bool | None] = Field(default_factory=dict, description="Any further labels.")

    @model_validator(mode="after")
    def _consistent(self) -> SampleResult:
        if self.parse_ok != (self.parsed_flag is not None):
            raise ValueError(f"parse_ok={self.parse_ok} contradicts parsed_flag={self.parsed_flag!r}")
        if self.parse_ok and self.error:
            raise ValueError("a record with an error cannot have a parsed flag")
        if self.jailbreak is not None and self.base_condition is None:
            raise ValueError("a jailbreak record needs base_condition (the condition of its clean twin)")
        return self

    @classmethod
    def from_text(
        cls, *, generated: str, flag_prefix: str = DEFAULT_FLAG_PREFIX, error: str | None = None, **fields: Any
    ) -> SampleResult:
        """A record whose flag is parsed from `generated` by the one flag parser."""
        parsed = parse_flag(generated, flag_prefix) if error is None else ParsedFlag(None, "error")
        return cls.from_parsed(generated=generated, parsed=parsed, error=error, **fields)

    @classmethod
    def from_parsed(cls, *, generated: str, parsed: ParsedFlag, error: str | None = None, **fields: Any) -> SampleResult:
        """A record of a flag already read from `generated` (a persona's `Review.parsed`)."""
        if error is not None:
            parsed = ParsedFlag(None, "error")
        return cls(
            generated=generated, parsed_flag=parsed.flag, parse_ok=parsed.ok, parse_reason=parsed.reason,
            error=error, **fields,
        )

    @property
    def key(self) -> Key:
        return (self.id, self.condition, self.arm)

    @property
    def correct(self) -> bool:
        return self.parsed_flag == self.expected_flag

    def slice_value(self, name: str) -> Any:
        """A slice label by name: a field (topic, variant, ...) or an entry of `slices`."""
        if name in SampleResult.model_fields and name != "slices":
            return getattr(self, name)
        return self.slices.get(name)


@dataclass
class Results:
    path: Path
    metadata: ResultsMetadata
    records: list[SampleResult]

    @property
    def label(self) -> str:
        return self.metadata.label or re.sub(r"\.jsonl?$", "", self.path.name)


def _json(path: Path, lineno: int, raw: bytes, invalid: str = "invalid JSON") -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(path, f"not UTF-8 text: {e}", record=f"line {lineno}") from e
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(path, f"{invalid}: {e}", record=f"line {lineno}") from e


def _parse_metadata(path: Path, raw: bytes) -> ResultsMetadata:
    obj = _json(path, 1, raw, "metadata is not valid JSON")
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise DataError(path, f"not an eval results file (line 1 lacks \"format\": \"{FORMAT}\")", record="line 1")
    if obj.get("version") != VERSION:
        raise DataError(
            path, f"results format version {obj.get('version')!r}; this reader knows {VERSION}", record="line 1"
        )
    try:
        return ResultsMetadata.model_validate(obj)
    except ValidationError as e:
        raise DataError(path, describe_validation_error(e), record="line 1 (metadata)") from e


def _parse_record(path: Path, lineno: int, raw: bytes) -> SampleResult:
    obj = _json(path, lineno, raw)
    try:
        return SampleResult.model_validate(obj)
    except ValidationError as e:
        rid = obj.get("id") if isinstance(obj, dict) else None
        rec = f"line {lineno}" + (f", id {rid!r}" if rid is not None else "")
        raise DataError(path, describe_validation_error(e), record=rec) from e


def _header_state(path: Path) -> Literal["absent", "torn", "complete"]:
    """Whether a file holds our complete metadata line, a cut-off start of one, or nothing."""
    if not path.exists() or path.stat().st_size == 0:
        return "absent"
    with open(path, "rb") as fh:
        head = fh.read(len(_HEADER_START))
        if not _HEADER_START.startswith(head) and not head.startswith(_HEADER_START):
            raise DataError(path, "exists and is not an eval results file; choose another output path")
        fh.seek(0)
        while chunk := fh.read(1 << 16):
            if b"\n" in chunk:
                return "complete"
    return "torn"


def _read(path: Path, *, repair_tail: bool) -> tuple[ResultsMetadata, list[SampleResult], int]:
    """Parse a results file. Returns metadata, records, and the byte length of its intact part.

    With `repair_tail`, a last line without its newline that is not valid JSON (a write cut short
    by a crash) is left out of the intact part instead of raising.
    """
    if not path.exists():
        raise DataError(path, "results file not found")
    data = path.read_bytes()
    lines = data.split(b"\n")
    # After split, a complete file ends with b""; anything else in the last slot lacks its newline.
    tail = lines.pop()
    intact = len(data) - len(tail)
    if tail.strip():
        try:
            json.loads(tail)
            lines.append(tail)
            intact = len(data)
        except json.JSONDecodeError as e:
            if not repair_tail:
                raise DataError(
                    path, f"last line is cut short ({e}); resuming the run repairs it", record=f"line {len(lines) + 1}"
                ) from e
    if not lines or not lines[0].strip():
        raise DataError(path, "empty results file (no metadata line)")
    meta = _parse_metadata(path, lines[0])
    records: list[SampleResult] = []
    seen: dict[Key, int] = {}
    for lineno, raw in enumerate(lines[1:], start=2):
        if not raw.strip():
            continue
        rec = _parse_record(path, lineno, raw)
        if rec.key in seen:
            raise DataError(
                path, f"duplicate (id, condition, arm) {rec.key}, first on line {seen[rec.key]}",
                record=f"line {lineno}, id {rec.id!r}",
            )
        seen[rec.key] = lineno
        records.append(rec)
    return meta, records, intact


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) == b"\n"


def load_results(path: str | os.PathLike[str]) -> Results:
    """Read and validate a results file; any bad line is a DataError naming the file, line and id."""
    path = Path(path)
    meta, records, _ = _read(path, repair_tail=False)
    return Results(path=path, metadata=meta, records=records)


class ResultsWriter:
    """Append-only writer that resumes: records already in the file are `done` and never rewritten.

    Opening an existing file checks that it was started by the same model, adapter and eval
    config (`ResultsMetadata.resume_identity`) and keeps its original metadata line; a line torn by
    a crash is cut off before appending. `overwrite=True` starts the file anew.
    """

    def __init__(self, path: str | os.PathLike[str], metadata: ResultsMetadata, *, overwrite: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.done: set[Key] = set()
        if not overwrite and _header_state(self.path) == "complete":
            existing, records, intact = _read(self.path, repair_tail=True)
            mine, theirs = metadata.resume_identity(), existing.resume_identity()
            if mine != theirs:
                diff = sorted(k for k in mine if mine[k] != theirs[k])
                raise DataError(
                    self.path,
                    f"was started by a different run (differs in {', '.join(diff)}); "
                    "use another output path or overwrite",
                )
            if intact < self.path.stat().st_size:
                with open(self.path, "r+b") as fh:
                    fh.truncate(intact)
            self.metadata = existing
            self.done = {r.key for r in records}
            self._fh = open(self.path, "a", encoding="utf-8")
            if intact and not _ends_with_newline(self.path):
                self._fh.write("\n")
        else:
            self.metadata = metadata
            self._fh = open(self.path, "w", encoding="utf-8")
            self._fh.write(dumps_line(metadata))
            self._sync()

    def is_done(self, id: str, condition: str, arm: str) -> bool:  # noqa: A002 - the record's own field name
        return (id, condition, arm) in self.done

    def write(self, record: SampleResult) -> None:
        self.write_many([record])

    def write_many(self, records: Iterable[SampleResult]) -> None:
        """Append a batch and fsync once; a key already in the file is an error, not a silent duplicate."""
        batch = list(records)
        seen = set(self.done)
        for r in batch:
            if r.key in seen:
                raise ValueError(f"{self.path}: record {r.key} is already written")
            seen.add(r.key)
        for r in batch:
            self._fh.write(dumps_line(r))
        self._sync()
        self.done.update(r.key for r in batch)

    def _sync(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()

    def __enter__(self) -> ResultsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
