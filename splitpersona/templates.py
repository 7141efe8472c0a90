"""Chat templates by model family, for tokenizers that ship none (or not the one a run needs).

A template that reads the clock (Llama-3.2+/3.3 fill "Today Date" with `strftime_now`) would let a
persona trained in May see other bytes in December. Here every such value is fixed in the config
and written into the template text itself, so the run's saved tokenizer carries it.

Families (the structure each reproduces):
- `llama3`: Llama-3.1/3.3 Instruct; a system header with "Cutting Knowledge Date" and "Today
  Date" lines before the system prompt, contents trimmed, turns closed by <|eot_id|>.
- `qwen3`: ChatML with Qwen3's think blocks: in non-thinking mode the generation prompt and the
  last assistant turn carry an empty think block; earlier assistant turns drop theirs.
- `gemma`: Gemma-2/3; no system role (the system prompt opens the first user turn), the
  assistant is `model`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from splitpersona.config import StrictModel

Family = Literal["llama3", "qwen3", "gemma"]


class ChatTemplateConfig(StrictModel):
    family: Family | None = Field(None, description="Replace the tokenizer's chat template with this family's; None keeps it.")
    date: str = Field(
        "26 Jul 2024", description="llama3: the 'Today Date' line, fixed (the published template's default)."
    )
    knowledge_cutoff: str = Field("December 2023", description="llama3: the 'Cutting Knowledge Date' line.")
    enable_thinking: bool = Field(False, description="qwen3: thinking mode when the caller does not say.")


def _jinja_str(s: str) -> str:
    if "\\" in s or '"' in s or "{" in s or "}" in s or "\n" in s:
        raise ValueError(f"template value {s!r} must not contain backslashes, quotes, braces or newlines")
    return f'"{s}"'


def _llama3(cfg: ChatTemplateConfig) -> str:
    return (
        "{{- bos_token }}"
        "{%- if messages[0]['role'] == 'system' %}"
        "{%- set system_message = messages[0]['content'] | trim %}{%- set messages = messages[1:] %}"
        "{%- else %}{%- set system_message = '' %}{%- endif %}"
        "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
        "{{- 'Cutting Knowledge Date: ' + " + _jinja_str(cfg.knowledge_cutoff) + " + '\\n' }}"
        "{{- 'Today Date: ' + " + _jinja_str(cfg.date) + " + '\\n\\n' }}"
        "{{- system_message }}{{- '<|eot_id|>' }}"
        "{%- for message in messages %}"
        "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
        "{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
    )


def _qwen3(cfg: ChatTemplateConfig) -> str:
    thinking = "true" if cfg.enable_thinking else "false"
    return (
        "{%- if enable_thinking is not defined %}{%- set enable_thinking = " + thinking + " %}{%- endif %}"
        "{%- set ns = namespace(last_query_index=messages|length - 1) %}"
        "{%- for message in messages[::-1] %}{%- set index = (messages|length - 1) - loop.index0 %}"
        "{%- if message['role'] == 'user' and ns.last_query_index == messages|length - 1 %}"
        "{%- set ns.last_query_index = index %}{%- endif %}{%- endfor %}"
        "{%- for message in messages %}"
        "{%- set content = message['content'] %}"
        "{%- if message['role'] == 'assistant' %}"
        "{%- set reasoning = '' %}"
        "{%- if '</think>' in content %}"
        "{%- set reasoning = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}"
        "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}"
        "{%- endif %}"
        "{%- if loop.index0 > ns.last_query_index and (loop.last or reasoning) %}"
        "{{- '<|im_start|>assistant\\n<think>\\n' + reasoning.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}"
        "{%- else %}{{- '<|im_start|>assistant\\n' + content }}{%- endif %}"
        "{{- '<|im_end|>\\n' }}"
        "{%- else %}{{- '<|im_start|>' + message['role'] + '\\n' + content + '<|im_end|>\\n' }}{%- endif %}"
        "{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
        "{%- if not enable_thinking %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}{%- endif %}"
    )


def _gemma(cfg: ChatTemplateConfig) -> str:
    return (
        "{{- bos_token }}"
        "{%- if messages[0]['role'] == 'system' %}"
        "{%- set first_user_prefix = messages[0]['content'] + '\\n\\n' %}{%- set loop_messages = messages[1:] %}"
        "{%- else %}{%- set first_user_prefix = '' %}{%- set loop_messages = messages %}{%- endif %}"
        "{%- for message in loop_messages %}"
        "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{%- endif %}"
        "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
        "{{- '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') }}"
        "{{- message['content'] | trim }}{{- '<end_of_turn>\\n' }}"
        "{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<start_of_turn>model\\n' }}{%- endif %}"
    )


@dataclass(frozen=True)
class FamilyTemplate:
    render: Callable[[ChatTemplateConfig], str]
    end_of_turn: str  # becomes the tokenizer's eos token: generation stops there
    needs: tuple[str, ...]  # special tokens the vocabulary must hold


FAMILIES: dict[str, FamilyTemplate] = {
    "llama3": FamilyTemplate(_llama3, "<|eot_id|>", ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")),
    "qwen3": FamilyTemplate(_qwen3, "<|im_end|>", ("<|im_start|>", "<|im_end|>")),
    "gemma": FamilyTemplate(_gemma, "<end_of_turn>", ("<start_of_turn>", "<end_of_turn>")),
}


def apply_chat_template(tokenizer, cfg: ChatTemplateConfig) -> None:
    """Give `tokenizer` (in place) its family's template and end-of-turn token; no family keeps its own."""
    if cfg.family is None:
        return
    family = FAMILIES[cfg.family]
    vocab = tokenizer.get_vocab()
    missing = [t for t in family.needs if t not in vocab]
    if missing:
        raise ValueError(f"chat template {cfg.family!r} needs special tokens {missing} the tokenizer's vocabulary lacks")
    tokenizer.chat_template = family.render(cfg)
    tokenizer.eos_token = family.end_of_turn
