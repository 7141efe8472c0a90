"""The release's quality tags, written onto stage-3 batches exactly as the public SPT tagger writes them.

Tags live at three levels. Intervention tags judge one stage-3 record on its own fields
(confidence, faulty data, review focus, detection difficulty, leakage, failed external review).
Variant tags judge all interventions of one (item, model, variant) together (the verdicts
disagree, the response hit the token limit, the item has no B prompt). Model tags compare the A
and B consensus verdicts of one (item, model) and are copied onto both variants and all their
interventions. The release's quirks are kept on purpose, so that filters built on its tags mean
the same thing on our data as on the release; re-deriving the tags of the whole shared release
reproduces every stored tag list, in order. The quirks:

- consensus and disagreement pool every remaining intervention of a variant: both intervention
  types and every version, so the strictness depends on how many reruns a model received;
- AMBIGUOUS and ERROR verdicts do not vote; a tie or no votes is UNCLEAR, and two UNCLEAR
  consensuses count as "the same" (`unclear_a_b_separation`);
- the leakage patterns match case-insensitively, so the A/B pattern also hits the article in
  "a prompt", while "split-personality" (hyphen) escapes the "split personality" pattern; the
  audit-style patterns are checked in the review only;
- `generation_exceeded_token_limit` and `no_a_b_separation` exist only on variants;
- keys ending in `_baseline` are deleted before anything is voted on, and variants that never got
  interventions are deleted (counted as dropped).

Tags are recomputed from the stored fields: tags and ids already present are replaced, so tagging
is idempotent and works on fresh generator output that carries none.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from itertools import groupby
from typing import Any

from pydantic import ValidationError

from splitpersona.io import DataError, describe_validation_error
from splitpersona.records import ReleaseBatch
from splitpersona.release import Slot, intervention_id, walk

TOKEN_LIMIT = 2048
BASELINE_SUFFIX = "_baseline"

# Tag names, as the release writes them.
DATA_IS_FAULTY = "data_is_faulty"
MISMATCHING_REVIEW_FOCUS = "mismatching_review_focus"
EASIER_EXTERNALLY = "detection_difficulty_easier_externally_than_internally"
TRAINING_DATA_LEAKAGE = "training_data_leakage"
FAILED_EXTERNAL_REVIEW = "failed_external_review"
TOKEN_LIMIT_EXCEEDED = "generation_exceeded_token_limit"
DISAGREE_ONCE = "intervention_tags_disagree_once"
DISAGREE_TWICE = "intervention_tags_disagree_twice"
NO_A_B_SEPARATION = "no_a_b_separation"
MISSING_CONSENSUS_ON_A = "missing_consensus_on_a"
MISSING_CONSENSUS_ON_B = "missing_consensus_on_b"
UNCLEAR_A_B_SEPARATION = "unclear_a_b_separation"
A_FAILS_BUT_B_PASSES = "a_fails_but_b_passes"
CONFIDENCE_THRESHOLDS = (5, 4, 3, 2)
DIFFICULTY_RANK = {"easy": 1, "medium": 2, "hard": 3}


def _patterns(*pairs: tuple[str, str]) -> tuple[tuple[str, re.Pattern[str]], ...]:
    return tuple((name, re.compile(rx, re.IGNORECASE)) for name, rx in pairs)


# Project vocabulary that must not reach a training field; checked in both I and R.
LEAKAGE_ANY_FIELD = _patterns(
    ("A/B variant or prompt", r"\b[ab]\s+(?:variant|prompt)\b"),
    ("biased [A/B] prompt", r"\b(?:un)?biased\s+\[?[ab]\]?\s+prompt\b"),
    ("system prompt A/B", r"\bsystem\s+prompt\s+[ab]\b"),
    ("stage N", r"\bstage\s+[123]\b"),
    ("Sample N:", r"\bsample\s+\d+\s*[:\-]"),
    ("batch N", r"\bbatch\s+\d+\b"),
    ("item N of M", r"\bitem\s+\d+\s+of\s+\d+\b"),
    ("FPT", r"\bFPT\b"),
    ("False Positive Test", r"\bfalse\s+positive\s+test\b"),
    ("honesty scare", r"\bhonesty\s+scare\b"),
    ("split personality", r"\bsplit\s+personality\b"),
    ("intervention type/name/method", r"\bintervention\s+(?:type|name|method)\b"),
    ("this sample tests/demonstrates/uses", r"\bthis\s+sample\s+(?:tests|demonstrates|uses)\b"),
    ("using/applying the X intervention", r"\b(?:using|applying)\s+the\s+\w+\s+intervention\b"),
    ("this response (was) generated using", r"\bthis\s+response\s+(?:was\s+)?generated\s+using\b"),
)
# Meta-talk about the review itself: fine in an auditor-voiced intervention, leakage in a review.
LEAKAGE_REVIEW_ONLY = _patterns(
    ("review focus is/was/should", r"\breview\s+focus\s+(?:is|was|should)\b"),
    ("selected review focus", r"\bselected\s+review\s+focus\b"),
    ("intended review focus", r"\bintended\s+review\s+focus\b"),
    ("formal investigation", r"\bformal\s+investigation\b"),
    ("under review/investigation/audit", r"\bunder\s+(?:review|investigation|audit)\b"),
)


# One alternation per field scans each text once: three times faster than pattern by pattern.
_ANY_FIELD_RX = re.compile("|".join(rx.pattern for _, rx in LEAKAGE_ANY_FIELD), re.IGNORECASE)
_REVIEW_RX = re.compile("|".join(rx.pattern for _, rx in LEAKAGE_ANY_FIELD + LEAKAGE_REVIEW_ONLY), re.IGNORECASE)


def has_leakage(intervention: str, review: str) -> bool:
    return bool(_ANY_FIELD_RX.search(intervention) or _REVIEW_RX.search(review))


def leakage_hits(intervention: str, review: str) -> list[str]:
    """Which patterns leak, as `I: <pattern>` / `R: <pattern>`: for explaining a `training_data_leakage` tag."""
    hits = [f"I: {name}" for name, rx in LEAKAGE_ANY_FIELD if rx.search(intervention)]
    hits += [f"R: {name}" for name, rx in LEAKAGE_ANY_FIELD + LEAKAGE_REVIEW_ONLY if rx.search(review)]
    return hits


def consensus(verdicts: Iterable[str]) -> str:
    """Majority of PASS against FAIL votes; a tie (or no vote) is UNCLEAR."""
    votes = Counter(verdicts)
    if votes["PASS"] > votes["FAIL"]:
        return "PASS"
    if votes["FAIL"] > votes["PASS"]:
        return "FAIL"
    return "UNCLEAR"


def intervention_tags(record: dict[str, Any], intended_review_focus: str | None) -> list[str]:
    """The tags one stage-3 record earns on its own, in the release's order."""
    tags: list[str] = []
    confidence = record.get("confidence")
    if confidence is not None:
        tags += [f"confidence_below_{t}" for t in CONFIDENCE_THRESHOLDS if confidence < t]
    if record.get("faulty_data"):
        tags.append(DATA_IS_FAULTY)
    selected = record.get("selected_review_focus")
    if intended_review_focus and selected and selected not in intended_review_focus and intended_review_focus not in selected:
        tags.append(MISMATCHING_REVIEW_FOCUS)
    external, internal = record.get("detection_difficulty_external"), record.get("detection_difficulty_internal")
    if external in DIFFICULTY_RANK:
        tags.append(f"{external}_detection_difficulty_external")
    if internal in DIFFICULTY_RANK:
        tags.append(f"{internal}_detection_difficulty_internal")
    if external in DIFFICULTY_RANK and internal in DIFFICULTY_RANK and DIFFICULTY_RANK[external] < DIFFICULTY_RANK[internal]:
        tags.append(EASIER_EXTERNALLY)
    if has_leakage(record.get("I") or "", record.get("R") or ""):
        tags.append(TRAINING_DATA_LEAKAGE)
    if record.get("stage_3_reviews_passed") is False:
        tags.append(FAILED_EXTERNAL_REVIEW)
    return tags


def disagreement_tags(verdicts: Sequence[str]) -> list[str]:
    votes = Counter(verdicts)
    both = min(votes["PASS"], votes["FAIL"])  # verdicts on each side
    return [tag for tag, at_least in ((DISAGREE_ONCE, 1), (DISAGREE_TWICE, 2)) if both >= at_least]


def model_tags(a_consensus: str, b_consensus: str) -> list[str]:
    """Tags comparing the A and B consensus of one (item, model); only for items with both variants."""
    checks = (
        (MISSING_CONSENSUS_ON_A, a_consensus == "UNCLEAR"),
        (MISSING_CONSENSUS_ON_B, b_consensus == "UNCLEAR"),
        (UNCLEAR_A_B_SEPARATION, a_consensus == b_consensus),
        (A_FAILS_BUT_B_PASSES, a_consensus == "FAIL" and b_consensus == "PASS"),
    )
    return [tag for tag, hit in checks if hit]


@dataclass
class TagReport:
    """Tagged copies of the input batches, and what the tagger did to them."""

    batches: list[ReleaseBatch]
    next_id: int
    interventions: int = 0
    variants: int = 0
    dropped_variants: Counter[str] = field(default_factory=Counter)  # by model: variants with no interventions
    baseline_removed: int = 0
    intervention_tags: Counter[str] = field(default_factory=Counter)
    variant_tags: Counter[str] = field(default_factory=Counter)


def tag_batches(
    batches: Sequence[ReleaseBatch | dict[str, Any]], *, stems: Sequence[str] | None = None, id_start: int = 1
) -> TagReport:
    """Tag stage-3 batches (the inputs are not modified) and give every intervention its ids.

    `stems` are the batches' file stems, used in `id_string`; by default `batch_<batch_id>`, the
    name our generator and the release store a batch under. `id_numeric` counts up from
    `id_start` in walk order (batch, item, model, A then B, intervention key); pass the report's
    `next_id` to continue numbering across calls. A duplicate `id_string` is a DataError.
    """
    if stems is not None and len(stems) != len(batches):
        raise ValueError(f"got {len(stems)} stems for {len(batches)} batches")
    report = TagReport(batches=[], next_id=id_start)
    seen_ids: set[str] = set()
    for n, batch in enumerate(batches):
        batch_id = batch.batch_id if isinstance(batch, ReleaseBatch) else batch["batch_id"]
        stem = stems[n] if stems is not None else f"batch_{batch_id}"
        raw = _as_raw(batch, stem)
        for _, group in groupby(walk(raw, interventions=False), key=lambda s: (s.idx, s.model)):
            _tag_model(report, seen_ids, stem, list(group))
        report.batches.append(ReleaseBatch.model_validate(raw))
    return report


def _as_raw(batch: ReleaseBatch | dict[str, Any], stem: str) -> dict[str, Any]:
    """A deep, plain copy that keeps which keys were present (a variant lacking `interventions` is dropped)."""
    if isinstance(batch, dict):
        try:
            batch = ReleaseBatch.model_validate(batch)
        except ValidationError as e:
            raise DataError(stem, describe_validation_error(e)) from e
    return batch.model_dump(exclude_unset=True)


def _tag_model(report: TagReport, seen_ids: set[str], stem: str, slots: list[Slot]) -> None:
    """Tag one (item, model): `slots` are its variants, A before B."""
    first = slots[0]
    by_variant, intended = first.item["inferences"][first.model], first.item["metadata"]["intended_review_focus"]
    for s in slots:
        if "interventions" not in s.inference:
            del by_variant[s.variant]
            report.dropped_variants[s.model] += 1
    slots = [s for s in slots if s.variant in by_variant]
    present = [s.variant for s in slots]
    votes: dict[str, list[str]] = {}
    for s in slots:
        inference = s.inference
        interventions = inference["interventions"]
        for key in [k for k in interventions if k.endswith(BASELINE_SUFFIX)]:
            del interventions[key]
            report.baseline_removed += 1
        vtags = [TOKEN_LIMIT_EXCEEDED] if (inference.get("output_tokens") or 0) >= TOKEN_LIMIT else []
        for key, record in interventions.items():
            record["id_numeric"] = report.next_id
            report.next_id += 1
            rid = intervention_id(stem, replace(s, key=key))
            if rid in seen_ids:
                raise DataError(stem, f"duplicate intervention id {rid!r}", record=f"item {s.idx}")
            seen_ids.add(rid)
            record["id_string"] = rid
            record["tags"] = intervention_tags(record, intended)
        votes[s.variant] = [record["P"] for record in interventions.values()]
        shared = disagreement_tags(votes[s.variant])
        vtags += shared
        if present == ["A"]:
            vtags.append(NO_A_B_SEPARATION)
        inference["tags"] = vtags
        for record in interventions.values():
            record["tags"] += shared
    if present == ["A", "B"]:
        shared = model_tags(consensus(votes["A"]), consensus(votes["B"]))
        for s in slots:
            s.inference["tags"] += shared
            for record in s.inference["interventions"].values():
                record["tags"] += shared
    for s in slots:
        report.variants += 1
        report.variant_tags.update(s.inference["tags"])
        for record in s.inference["interventions"].values():
            report.interventions += 1
            report.intervention_tags.update(record["tags"])
