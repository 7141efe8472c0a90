"""Sample assembly: one function builds token ids, the loss mask and the persona mask together.

Training, inference, the evaluators' arms and the probe all call `assemble`, so the prompt a
persona is asked with is, token for token, the prefix it was trained on.

Formats (`FormatConfig.elicitation`):
- `hp`: the conversation (system, user and assistant turns), assistant: response, then the split token, the intervention, and the target
  (review prefix, review, flag prefix, flag) in the same assistant turn.
- `ur`: the intervention is a new user turn that opens with the split token; the target is the
  next assistant turn.
`flag_only` makes the target the flag line alone. The end-of-turn token after the target is
trained. Structure comes from the model's chat template. The conversation is tokenized as the
template renders it, so the ids before the marker are what the deployed model saw; every piece of
content stays text (a content that spells a special token never becomes that token's id).
"""

from __future__ import annotations

import itertools
import re
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field

from splitpersona.config import StrictModel
from splitpersona.conversation import Elicitation, Message, as_messages
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
TemplateOptions = tuple[tuple[str, Any], ...]  # a chat template's keyword arguments, hashable for the memo


class FormatConfig(StrictModel):
    elicitation: Elicitation = "hp"
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


def _memo(tokenizer, key, make):
    """Per-tokenizer memo of template renders and structural ids: they depend on roles, not content.

    Keyed on the vocabulary size and template too, so adding a token or swapping the template
    invalidates it.
    """
    version = (len(tokenizer), tokenizer.chat_template)
    entry = _CACHES.get(tokenizer)
    if entry is None or entry[0] != version:
        entry = _CACHES[tokenizer] = (version, {})
    if key not in entry[1]:
        entry[1][key] = make()
    return entry[1][key]


def _template_name(tokenizer) -> str:
    return f"the chat template of {getattr(tokenizer, 'name_or_path', '') or type(tokenizer).__name__}"


def _apply_template(tokenizer, messages: list[dict], add_generation_prompt: bool, options: TemplateOptions = ()) -> str:
    template = None if tokenizer.chat_template else FALLBACK_CHAT_TEMPLATE
    try:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt, chat_template=template,
            **dict(options),
        )
    except Exception as e:  # jinja's raise_exception (e.g. "System role not supported") and template bugs
        roles = [m["role"] for m in messages]
        raise ValueError(f"{_template_name(tokenizer)} refuses the roles {roles}: {e}") from e


def _render(tokenizer, roles: tuple[str, ...], add_generation_prompt: bool, options: TemplateOptions = ()) -> list[str]:
    """The template's structural strings around each message's content (memoized: they depend on roles only)."""

    def render() -> list[str]:
        placeholders = [{"role": r, "content": _SENTINEL.format(i)} for i, r in enumerate(roles)]
        parts = _SENTINEL_RE.split(_apply_template(tokenizer, placeholders, add_generation_prompt, options))
        order = [int(x) for x in parts[1::2]]
        if order != list(range(len(roles))):
            raise ValueError(
                f"{_template_name(tokenizer)} drops or reorders message contents (roles {list(roles)}, contents "
                f"appear in order {order}); what the model would see is not the conversation given"
            )
        return parts[0::2]

    return _memo(tokenizer, ("render", roles, add_generation_prompt, options), render)


def _content_variants(text: str) -> list[str]:
    """What a template may have made of a content: itself, or trimmed (Gemma trims; Qwen3 lstrips newlines)."""
    return list(dict.fromkeys(
        (text, text.strip(), text.lstrip(), text.rstrip(), text.strip("\n"), text.lstrip("\n"), text.rstrip("\n"))
    ))


def _align(tokenizer, text: str, structs: list[str], contents: list[str]) -> list[str]:
    """Each content as the template wrote it into `text` (the real render), between the known structs."""
    out, pos = [], 0
    for i, content in enumerate(contents):
        if not text.startswith(structs[i], pos):
            raise ValueError(f"{_template_name(tokenizer)} renders message {i}'s surroundings differently with real "
                             "content than with a placeholder")
        pos += len(structs[i])
        for v in _content_variants(content):
            after = pos + len(v)
            if text.startswith(v + structs[i + 1], pos) and (i + 1 < len(contents) or after + len(structs[-1]) == len(text)):
                out.append(v)
                pos = after
                break
        else:
            raise ValueError(f"{_template_name(tokenizer)} rewrites message {i}'s content beyond trimming it")
    return out


def _struct_ids(tokenizer, text: str) -> list[int]:
    if not text:
        return []
    return list(_memo(tokenizer, ("struct", text), lambda: tokenizer(text, add_special_tokens=False).input_ids))


def _end_ids(tokenizer, closing: str, specials: set[int]) -> list[int]:
    """Tokens that close the persona's turn: the template's closing text up to its first special token."""
    ids = _struct_ids(tokenizer, closing)
    for i, t in enumerate(ids):
        if t in specials:
            return ids[: i + 1]
    if tokenizer.eos_token_id is None:
        raise ValueError("chat template closes a turn without a special token and the tokenizer has no eos token")
    return [tokenizer.eos_token_id]


def _specials(tokenizer) -> set[int]:
    return _memo(tokenizer, "specials", lambda: special_ids(tokenizer))


def _encode_turns(
    tokenizer, messages: list[dict], kinds: list[str], *, add_generation_prompt: bool, n_pieces: int,
    options: TemplateOptions = (),
) -> tuple[list[tuple[str, list[int]]], list[str]]:
    """The conversation as the model sees it: the template's text, tokenized as one string.

    The text is template pieces and contents interleaved (struct 0, content 0, struct 1, ...), of
    which the first `n_pieces` are kept. Tokenizing the whole text (not piece by piece) is what
    `apply_chat_template` does; with SentencePiece the two differ where a content starts. A
    content that spells a special token would be parsed as that special there; then (and only
    then) each piece is encoded apart, the contents as untrusted text. So is a content the
    template rewrites beyond trimming (Qwen3 cuts think blocks out of assistant turns): the
    content as written is what the model generated and what its cache holds.
    `options`: the template's own keyword arguments (Qwen3's `enable_thinking`).
    Returns the pieces and all the template's structural strings.
    """
    structs = _render(tokenizer, tuple(m["role"] for m in messages), add_generation_prompt, options)
    raw = [m["content"] for m in messages]
    try:
        text = _apply_template(tokenizer, messages, add_generation_prompt, options)
        contents, rewritten = _align(tokenizer, text, structs, raw), False
    except ValueError:
        contents, rewritten = raw, True
    texts = [("template", structs[0])]
    for i, content in enumerate(contents):
        texts += [(kinds[i], content), ("template", structs[i + 1])]
    texts = texts[:n_pieces]
    specials = _specials(tokenizer)
    whole = "".join(t for _, t in texts)
    enc = tokenizer(whole, add_special_tokens=False, return_offsets_mapping=True) if whole and not rewritten else None
    bounds = list(itertools.accumulate(len(t) for _, t in texts))
    pieces: list[tuple[str, list[int]]] = [(k, []) for k, _ in texts]
    safe = enc is not None
    if safe:
        p = 0
        for tid, (start, _) in zip(enc.input_ids, enc.offset_mapping):
            while p < len(texts) - 1 and start >= bounds[p]:
                p += 1
            if tid in specials and texts[p][0] != "template":
                safe = False
                break
            pieces[p][1].append(tid)
    if not safe and whole:
        pieces = [(k, _struct_ids(tokenizer, t) if k == "template" else encode_untrusted(tokenizer, t, specials))
                  for k, t in texts]
    return pieces, structs


def prompt_ids(tokenizer, messages: Sequence[Message | dict], **template_options: Any) -> list[int]:
    """The main model's prompt: the conversation up to where the assistant writes (the chat template's ids).

    `template_options` reach the chat template (`enable_thinking=False` for Qwen3)."""
    msgs = [m.model_dump() for m in as_messages(messages)]
    pieces, _ = _encode_turns(tokenizer, msgs, [m["role"] for m in msgs], add_generation_prompt=True,
                              n_pieces=2 * len(msgs) + 1, options=tuple(sorted(template_options.items())))
    return [t for _, ids in pieces for t in ids]


def assemble(
    tokenizer,
    fmt: FormatConfig,
    tokens: SpecialTokens,
    *,
    messages: Sequence[Message | dict],
    response: str,
    intervention: str,
    review: str | None = None,
    flag: str | None = None,
    marker: Marker = "split",
    max_length: int | None = None,
    seen: Sequence[int] | None = None,
) -> Sample:
    """Build one sample. Without `flag` it is an inference prompt that ends where the persona writes.

    `messages` is the conversation up to the reviewed answer (`splitpersona.conversation`);
    `response` is that answer. In `hp` the ids before the marker are the chat template's ids of
    messages + [assistant: response] up to the end of the response: what the main model saw.
    `seen` (the main model's prompt and generated ids, `Persona.answer`) replaces that part token
    for token; it must start with this conversation's prompt.
    `marker` chooses what opens the persona part: the split token, the never-trained control token,
    or nothing (a plain follow-up). Over `max_length`, tokens are cut from the left of the
    response, never from the persona part; the cut is recorded in `Sample.truncated`.
    """
    specials = _specials(tokenizer)
    enc = lambda text: encode_untrusted(tokenizer, text, specials)  # noqa: E731
    msgs = [m.model_dump() for m in as_messages(messages)]
    n = len(msgs)
    closed = msgs + [{"role": "assistant", "content": response}]
    kinds = [m["role"] for m in msgs] + ["response", "intervention"]
    closed_structs = _render(tokenizer, tuple(m["role"] for m in closed), False)
    end_ids = _end_ids(tokenizer, closed_structs[-1], specials)

    if fmt.elicitation == "hp":
        turns, n_pieces, agp = closed, 2 * n + 2, False
    else:
        turns, n_pieces, agp = closed + [{"role": "user", "content": _SENTINEL.format(n + 1)}], 2 * n + 3, True
    if seen is None:
        pieces, structs = _encode_turns(tokenizer, turns, kinds, add_generation_prompt=agp, n_pieces=n_pieces)
    else:
        pieces, _ = _encode_turns(tokenizer, msgs, kinds, add_generation_prompt=True, n_pieces=2 * n + 1)
        prompt = [t for _, ids in pieces for t in ids]
        if list(seen[: len(prompt)]) != prompt:
            raise ValueError("the ids the main model saw do not start with this conversation's prompt")
        pieces.append(("response", list(seen[len(prompt) :])))
        structs = _render(tokenizer, tuple(m["role"] for m in turns), agp)
        if fmt.elicitation == "ur":
            pieces.append(("template", _struct_ids(tokenizer, structs[n + 1])))

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
        line = flag_line(enc, fmt.flag_prefix)
        head = line.marker if fmt.flag_only else fmt.review_prefix + review + line.marker
        pieces.append(("target", enc(head)))
        pieces.append(("flag", enc(line.gap + flag)))
        pieces.append(("end", end_ids))
        flag_offset = line.offset

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
    return Sample(input_ids, loss_mask, gate_mask(input_ids, tokens.split_id), segments, prompt_length,
                  flag_position=flag_position, truncated=truncated)


@dataclass(frozen=True)
class FlagLine:
    """How a flag line is tokenized, in training targets and wherever a flag is read from ids.

    The target ends with `marker` (the flag prefix without its trailing blanks); the flag segment
    is `gap` (those blanks) + the flag, so the flag word's tokens do not depend on the review
    before it. `offset` is the flag segment's first token at which PASS and FAIL differ.
    """

    marker: str
    gap: str
    offset: int
    pass_ids: list[int]
    fail_ids: list[int]


def flag_line(enc, flag_prefix: str) -> FlagLine:
    """The flag line of `flag_prefix` under `enc` (text -> ids, as `assemble` encodes a target)."""
    marker = flag_prefix.rstrip(" \t")
    gap = flag_prefix[len(marker) :]
    a, b = enc(gap + "PASS"), enc(gap + "FAIL")
    offset = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
    return FlagLine(marker, gap, offset, a, b)


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
        tokenizer, fmt, tokens, messages=record.messages if system == "as_is" else record.messages_with_system(system),
        response=record.response, intervention=record.intervention, review=record.review, flag=record.flag,
        max_length=max_length,
    )
    sample.meta["id"] = record.id
    return sample
