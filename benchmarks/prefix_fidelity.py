"""Prefix fidelity: are the ids before the split token what the deployed model saw?

    python benchmarks/prefix_fidelity.py --release ../shared/reference/stage_3_tagged \
        --tokenizers ~/.cache/splitpersona/tokenizers/{llama3,qwen2,qwen35,phi3}

For every record of the release (one conversation per item, model and variant; interventions on
one conversation share it) and each tokenizer, with the record's system prompt and without one,
three id sequences of the hp prefix (the conversation up to the end of the reviewed response):
- deployed: `apply_chat_template(messages + [assistant: response], tokenize=True)`;
- piecewise: every template piece and every content tokenized apart;
- assembled: `assemble(...)`, the ids before the split token.
A prefix differs when it is not the deployed ids' prefix of its length followed only by the
template's closing. Tokenizers without a chat template get Llama-3's layout (splitpersona.tiny).
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

from transformers import AutoTokenizer

from splitpersona.assemble import FALLBACK_CHAT_TEMPLATE, FormatConfig, assemble
from splitpersona.conversation import build_messages
from splitpersona.release import find_batch_files, flatten, iter_batches, load_filter
from splitpersona.tiny import LLAMA3_STYLE_TEMPLATE
from splitpersona.token import TokenConfig, encode_untrusted, setup_tokenizer

SENTINEL = "\ue000{}\ue001"


def piecewise_prefix(tokenizer, messages: list[dict]) -> list[int] | None:
    """The piecewise encoding: template text around placeholders and each content tokenized apart.

    None where it refused: the template drops or reorders a content (Phi-3 drops the system prompt).
    """
    template = None if tokenizer.chat_template else FALLBACK_CHAT_TEMPLATE
    holders = [{"role": m["role"], "content": SENTINEL.format(i)} for i, m in enumerate(messages)]
    parts = re.split("\ue000(\\d+)\ue001", tokenizer.apply_chat_template(holders, tokenize=False, chat_template=template))
    if [int(x) for x in parts[1::2]] != list(range(len(messages))):
        return None
    ids: list[int] = []
    for i, m in enumerate(messages):
        if parts[2 * i]:
            ids += tokenizer(parts[2 * i], add_special_tokens=False).input_ids
        ids += encode_untrusted(tokenizer, m["content"])
    return ids


def is_prefix(prefix: list[int], full: list[int]) -> bool:
    return full[: len(prefix)] == prefix


def conversations(release: str) -> list[tuple[str | None, str, str]]:
    records, _ = flatten(iter_batches(find_batch_files([release])), load_filter())
    return list(dict.fromkeys((r.system, r.user, r.response) for r in records))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--release", required=True)
    ap.add_argument("--tokenizers", nargs="+", required=True)
    ap.add_argument("--limit", type=int, default=None, help="At most this many conversations (evenly spaced).")
    args = ap.parse_args()
    convs = conversations(args.release)
    if args.limit and args.limit < len(convs):  # evenly spaced, so every topic is in the sample
        convs = [convs[i * len(convs) // args.limit] for i in range(args.limit)]
    rows = []
    for path in args.tokenizers:
        tok = AutoTokenizer.from_pretrained(path)
        if not tok.chat_template:
            tok.chat_template = LLAMA3_STYLE_TEMPLATE
        tokens = setup_tokenizer(tok, TokenConfig())
        for with_system in (True, False):
            c: Counter = Counter()
            for system, user, response in convs:
                msgs = build_messages(system if with_system else None, user)
                chat = [m.model_dump() for m in msgs] + [{"role": "assistant", "content": response}]
                deployed = tok.apply_chat_template(chat, tokenize=True, return_dict=False)
                c["n"] += 1
                old = piecewise_prefix(tok, chat)
                c["piecewise_refused" if old is None else "piecewise_differs"] += old is None or not is_prefix(old, deployed)
                try:
                    s = assemble(tok, FormatConfig(), tokens, messages=msgs, response=response, intervention="x")
                except ValueError:
                    c["assembled_refused"] += 1
                    continue
                prefix = s.input_ids[: s.input_ids.index(tokens.split_id)]
                c["assembled_differs"] += not is_prefix(prefix, deployed)
            rows.append({"tokenizer": Path(path).name, "system_prompt": with_system, **c})
            print(json.dumps(rows[-1]), flush=True)
    print("\n| tokenizer | system prompt | conversations | piecewise: differs / refused | assembled: differs / refused |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        pct = lambda key: f"{r.get(key, 0) / r['n']:.1%}"  # noqa: E731
        print(f"| {r['tokenizer']} | {'yes' if r['system_prompt'] else 'no'} | {r['n']} | "
              f"{pct('piecewise_differs')} / {pct('piecewise_refused')} | "
              f"{pct('assembled_differs')} / {pct('assembled_refused')} |")


if __name__ == "__main__":
    main()
