"""Sample assembly: one function builds token ids, the loss mask and the persona mask together.

Training, inference, the evaluators' arms and the probe all call `assemble`, so the prompt a
persona is asked with is, token for token, the prefix it was trained on.

Formats (`FormatConfig.elicitation`):
- `hp`: system, user, assistant: response, then the split token, the intervention, and the target
  (review prefix, review, flag prefix, flag) in the same assistant turn.
- `ur`: the intervention is a new user turn that opens with the split token; the target is the
  next assistant turn.
`flag_only` makes the target the flag line alone. The end-of-turn token after the target is
trained. Structure comes from the model's chat template; every piece of content is untrusted text.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from pydantic import Field

from splitpersona.config import StrictModel
from splitpersona.flags import DEFAULT_FLAG_PREFIX, DEFAULT_REVIEW_PREFIX
from splitpersona.gate import gate_mask
from splitpersona.records import TrainingRecord
from splitpersona.token import SpecialTokens, encode_untrusted, special_ids, strip_literal_token

# Used only for tokenizers that ship no chat template.
FALLBACK_CHAT_TEMPLATE = (
    "{% for m in messages %}### {{ m['role'] }}:\n{{ m['content'] }}\n\n{% endfor %}"
    "{% if add_generation_prompt %}### assistant:\n{% endif %}"
)

Marker = Literal["split", "control", "none"]


class FormatConfig(StrictModel):
    elicitation: Literal["hp", "ur"] = "hp"
    flag_only: bool = Field(False, description="Target is the flag line only (no review).")
    review_prefix: str = DEFAULT_REVIEW_PREFIX
    flag_prefix: str = DEFAULT_FLAG_PREFIX
    intervention_prefix: str = Field("", description="Text placed between the split token and the intervention.")


class SampleTooLong(ValueError):
    """The sample cannot fit max_length even with its whole response cut away."""


@dataclass(frozen=True)
class Segment:
    kind: str  # template | system | user | response | split_token | intervention | target | flag | end
    start: int
    end: int


@dataclass
class Sample:
    input_ids: list[int]
    loss_mask: list[int]
    persona_mask: list[int]
    segments: list[Segment]
    prompt_length: int
    flag_position: int | None = None
    truncated: int = 0
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.input_ids)

    def labels(self, ignore_index: int = -100) -> list[int]:
        return [t if m else ignore_index for t, m in zip(self.input_ids, self.loss_mask)]


_SENTINEL = "\ue000{}\ue001"
_SENTINEL_RE = re.compile("\ue000(\\d+)\ue001")


_CACHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _cache(tokenizer) -> dict:
    """Per-tokenizer memo of template renders and structural ids: they depend on roles, not content.

    Keyed on the vocabulary size and template too, so adding a token or swapping the template
    invalidates it.
    """
    key = (len(tokenizer), tokenizer.chat_template)
    entry = _CACHES.get(tokenizer)
    if entry is None or entry[0] != key:
        entry = (key, {})
        _CACHES[tokenizer] = entry
    return entry[1]


def _render(tokenizer, messages: list[dict], add_generation_prompt: bool) -> tuple[list[str], list[int]]:
    """Render the chat template with placeholders: structural strings around each message's content."""
    memo = _cache(tokenizer)
    key = ("render", tuple(m["role"] for m in messages), add_generation_prompt)
    if key not in memo:
        memo[key] = _render_uncached(tokenizer, messages, add_generation_prompt)
    return memo[key]


def _render_uncached(tokenizer, messages: list[dict], add_generation_prompt: bool) -> tuple[list[str], list[int]]:
    placeholders = [{"role": m["role"], "content": _SENTINEL.format(i)} for i, m in enumerate(messages)]
    template = None if tokenizer.chat_template else FALLBACK_CHAT_TEMPLATE
    text = tokenizer.apply_chat_template(
        placeholders, tokenize=False, add_generation_prompt=add_generation_prompt, chat_template=template
    )
    parts = _SENTINEL_RE.split(text)
    structs, order = parts[0::2], [int(x) for x in parts[1::2]]
    if order != list(range(len(messages))):
        raise ValueError(f"chat template reordered or dropped message contents (saw order {order})")
    return structs, order


def _struct_ids(tokenizer, text: str) -> list[int]:
    if not text:
        return []
    memo = _cache(tokenizer)
    if ("struct", text) not in memo:
        memo[("struct", text)] = tokenizer(text, add_special_tokens=False).input_ids
    return list(memo[("struct", text)])


def _end_ids(tokenizer, closing: str, specials: set[int]) -> list[int]:
    """Tokens that close the persona's turn: the template's closing text up to its first special token."""
    ids = _struct_ids(tokenizer, closing)
    for i, t in enumerate(ids):
        if t in specials:
            return ids[: i + 1]
    if tokenizer.eos_token_id is None:
        raise ValueError("chat template closes a turn without a special token and the tokenizer has no eos token")
    return [tokenizer.eos_token_id]


def assemble(
    tokenizer,
    fmt: FormatConfig,
    tokens: SpecialTokens,
    *,
    system: str | None,
    user: str,
    response: str,
    intervention: str,
    review: str | None = None,
    flag: str | None = None,
    marker: Marker = "split",
    max_length: int | None = None,
) -> Sample:
    """Build one sample. Without `flag` it is an inference prompt that ends where the persona writes.

    `marker` chooses what opens the persona part: the split token, the never-trained control token,
    or nothing (a plain follow-up). Over `max_length`, tokens are cut from the left of the
    response, never from the persona part; the cut is recorded in `Sample.truncated`.
    """
    memo = _cache(tokenizer)
    if "specials" not in memo:
        memo["specials"] = special_ids(tokenizer)
    specials = memo["specials"]
    enc = lambda text: encode_untrusted(tokenizer, text, specials)  # noqa: E731
    messages: list[dict] = []
    if system:
        messages.append({"role": "system", "content": system})
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": response}]
    closed_structs, _ = _render(tokenizer, messages, add_generation_prompt=False)
    end_ids = _end_ids(tokenizer, closed_structs[-1], specials)
    kinds = [m["role"] if m["role"] != "assistant" else "response" for m in messages]

    pieces: list[tuple[str, list[int]]] = []
    if fmt.elicitation == "hp":
        structs = closed_structs
    else:
        messages.append({"role": "user", "content": "<intervention>"})
        structs, _ = _render(tokenizer, messages, add_generation_prompt=True)
    for i, kind in enumerate(kinds):
        pieces.append(("template", _struct_ids(tokenizer, structs[i])))
        pieces.append((kind, enc(messages[i]["content"])))
    if fmt.elicitation == "ur":
        pieces.append(("template", _struct_ids(tokenizer, structs[len(kinds)])))

    marker_id = {"split": tokens.split_id, "control": tokens.control_id, "none": None}[marker]
    if marker_id is not None:
        pieces.append(("split_token", [marker_id]))
    pieces.append(("intervention", enc(fmt.intervention_prefix + strip_literal_token(intervention))))
    if fmt.elicitation == "ur":
        pieces.append(("template", _struct_ids(tokenizer, structs[-1])))

    flag_offset = 0
    if flag is not None:
        if review is None and not fmt.flag_only:
            raise ValueError("a training sample needs a review unless the format is flag_only")
        marker_text = fmt.flag_prefix.rstrip(" \t")
        gap = fmt.flag_prefix[len(marker_text) :]
        head = marker_text if fmt.flag_only else fmt.review_prefix + review + marker_text
        pieces.append(("target", enc(head)))
        pieces.append(("flag", enc(gap + flag)))
        pieces.append(("end", end_ids))
        flag_offset = _flag_token_offset(enc, gap)

    truncated = 0
    total = sum(len(ids) for _, ids in pieces)
    if max_length is not None and total > max_length:
        truncated = total - max_length
        r = next(i for i, (k, _) in enumerate(pieces) if k == "response")
        if truncated > len(pieces[r][1]):
            raise SampleTooLong(
                f"{total} tokens > max_length {max_length}, and the response holds only {len(pieces[r][1])} to cut"
            )
        pieces[r] = ("response", pieces[r][1][truncated:])

    input_ids: list[int] = []
    segments: list[Segment] = []
    for kind, ids in pieces:
        if not ids:
            continue
        segments.append(Segment(kind, len(input_ids), len(input_ids) + len(ids)))
        input_ids.extend(ids)
    loss_mask = [0] * len(input_ids)
    prompt_length = len(input_ids)
    flag_position = None
    for s in segments:
        if s.kind in ("target", "flag", "end"):
            prompt_length = min(prompt_length, s.start)
            loss_mask[s.start : s.end] = [1] * (s.end - s.start)
        if s.kind == "flag":
            flag_position = s.start + flag_offset
    return Sample(
        input_ids=input_ids,
        loss_mask=loss_mask,
        persona_mask=gate_mask(input_ids, tokens.split_id),
        segments=segments,
        prompt_length=prompt_length,
        flag_position=flag_position,
        truncated=truncated,
    )


def _flag_token_offset(enc, gap: str) -> int:
    """First token of the flag line at which PASS and FAIL are tokenized differently."""
    a, b = enc(gap + "PASS"), enc(gap + "FAIL")
    return next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)


def assemble_record(
    tokenizer,
    fmt: FormatConfig,
    tokens: SpecialTokens,
    record: TrainingRecord,
    *,
    max_length: int | None = None,
    system: str | None | Literal["as_is"] = "as_is",
) -> Sample:
    """A training sample from a record; `system` replaces the record's system prompt (augmentations)."""
    sample = assemble(
        tokenizer,
        fmt,
        tokens,
        system=record.system if system == "as_is" else system,
        user=record.user,
        response=record.response,
        intervention=record.intervention,
        review=record.review,
        flag=record.flag,
        max_length=max_length,
    )
    sample.meta["id"] = record.id
    return sample


def segment_spans(sample: Sample, kinds: Sequence[str]) -> list[tuple[int, int]]:
    return [(s.start, s.end) for s in sample.segments if s.kind in kinds]
