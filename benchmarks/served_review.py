"""A masked review on llama-server: on the main model's cache vs re-reading the conversation, beside in-process.

    OMP_NUM_THREADS=1 python benchmarks/served_review.py [--lengths 2048 8192] [--new-tokens 32] [--rows 8]

One random-weight masked persona around the real Llama-3 vocabulary (a tiny Llama, `--hidden`,
`--layers`), exported with `spt export llamacpp` (f32) and served by the llama-server `make llamacpp`
built, with as many threads as torch uses here. For each conversation length, timed side by side:
- served, reuse: the main model's request has left the conversation in the server's cache (not
  timed: deployed, it has already happened); the review computes only the persona part;
- served, re-read: the same review with the server's cache off, so it reads the conversation again;
- in process, the same two ways (`Persona.review_batch` with and without the main model's prefill).
Reuse and re-read are checked to give the same tokens on each side. Served and in-process texts are
counted, not required, equal: llama-server turns the aLoRA on one token before the split token. With
`--rows N`, N reviews of N conversations: in process one batch; served, in a row (a masked persona's
reviews go one at a time: llama-server mixes up concurrent aLoRA requests across slots), each right
after its own conversation's main-model request. Medians of `--repeats` runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "tests"), str(Path(__file__).resolve().parent)]

from review_latency import SYSTEM, USER, response_of_length, timed  # noqa: E402
from served_fixtures import Server  # noqa: E402

from splitpersona.conversation import Conversation  # noqa: E402
from splitpersona.persona import Persona  # noqa: E402
from splitpersona.prompts import persona_start  # noqa: E402

def build_run(root: Path, hidden: int, layers: int) -> Path:
    """A masked run: a tiny random Llama around the real Llama-3 vocabulary, a random LoRA, split token 128002."""
    from peft import get_peft_model
    from real_tokenizers import load

    from splitpersona.adapter import LoraSettings, build_lora_config
    from splitpersona.assemble import FormatConfig
    from splitpersona.run import ADAPTER_DIR, TOKENIZER_DIR, RunInfo, provenance, save_run_info
    from splitpersona.templates import ChatTemplateConfig, apply_chat_template
    from splitpersona.tiny import tiny_llama
    from splitpersona.token import TokenConfig, setup_tokenizer

    tok = load("llama3")
    model = tiny_llama(tok, hidden_size=hidden, num_layers=layers, num_heads=8, num_kv_heads=4,
                       intermediate_size=4 * hidden, tie_word_embeddings=False, init_std=hidden**-0.5,
                       max_position_embeddings=16384)
    tok.save_pretrained(root / "base")
    model.save_pretrained(root / "base")
    apply_chat_template(tok, ChatTemplateConfig(family="llama3"))
    tokens = setup_tokenizer(tok, TokenConfig(strategy="reserved"))
    peft = get_peft_model(model, build_lora_config(LoraSettings(r=16, train_split_embedding=False), lora_mask=True,
                                                   tokens=tokens))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in peft.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    run = root / "run"
    peft.save_pretrained(run / ADAPTER_DIR, save_embedding_layers=False)
    tok.save_pretrained(run / TOKENIZER_DIR)
    save_run_info(run, RunInfo(base_model=str(root / "base"), tokens=tokens, format=FormatConfig(), lora_mask=True,
                               max_length=16384, precision="fp32", train_config={"note": "benchmark: random adapter"},
                               provenance=provenance()))
    return run


def conversation(persona, target: int, shift: int) -> Conversation:
    """A conversation whose part before the split token is about `target` tokens."""
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}]
    return Conversation(messages=messages, response=response_of_length(persona, messages, target, shift))


def leave_in_cache(served, conv: Conversation) -> None:
    """The main model's request for this conversation (adapter off), as deployment would have made it."""
    sample = served.prompt(conv.messages, conv.response)
    served.client.complete(sample.input_ids[: persona_start(sample)], max_tokens=1, cache=True)


def served_ways(served, convs: list[Conversation]) -> tuple[float, float, list]:
    """(reuse seconds, re-read seconds, reviews) of these conversations' reviews on the server.

    Reuse: each review right after its conversation's main-model request (a one-slot server keeps one
    conversation). Re-read: all reviews sent at once with the server's cache off.
    """
    t_reuse, out = 0.0, []
    for c in convs:
        leave_in_cache(served, c)
        t, (r,) = timed(lambda: served.review_batch([c]))
        t_reuse, out = t_reuse + t, out + [r]
    served.reuse = False
    try:
        t_fresh, fresh = timed(lambda: served.review_batch(convs))
    finally:
        served.reuse = True
    if [r.text for r in out] != [r.text for r in fresh]:
        raise SystemExit("served reuse and re-read disagree")
    return t_reuse, t_fresh, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192])
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 8])
    args = ap.parse_args()
    from splitpersona.llamacpp import export

    threads = str(torch.get_num_threads())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        run = build_run(root, args.hidden, args.layers)
        export(run, root / "export", ctx_size=max(args.lengths) + 1024)
        server = Server(root / "export", "-t", threads)
        try:
            local = Persona.load(run, max_new_tokens=args.new_tokens, batch_size=1)
            served = Persona.connect(server.url, run, max_new_tokens=args.new_tokens, concurrency=max(args.rows))
            rows = []
            for length in args.lengths:
                for n in args.rows:
                    convs = [conversation(local, length, shift) for shift in range(n)]
                    local.batch_size = n
                    prefills = local.prefill_batch(convs)
                    times = {k: [] for k in ("s_reuse", "s_fresh", "l_reuse", "l_fresh")}
                    for _ in range(args.repeats):
                        a, b, out = served_ways(served, convs)
                        c, ours = timed(lambda: local.review_batch(convs, prefills=prefills))
                        d, _ = timed(lambda: local.review_batch(convs))
                        for k, v in zip(times, (a, b, c, d)):
                            times[k].append(v)
                    med = {k: statistics.median(v) for k, v in times.items()}
                    same = sum(r.text == o.text for r, o in zip(out, ours))
                    rows.append((length, n, out[0].cached_tokens, out[0].evaluated_tokens, med, same))
        finally:
            server.stop()
    print(f"tiny Llama, Llama-3 vocabulary: hidden {args.hidden}, {args.layers} layers, f32; {args.new_tokens} new "
          f"tokens max; {threads} thread(s) for torch and llama-server; median of {args.repeats}\n")
    print("| conversation tokens | reviews at once | served: cached / computed prompt tokens | served reuse (s) "
          "| served re-read (s) | served ratio | in-process reuse (s) | in-process re-read (s) | in-process ratio "
          "| served = in-process (text) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for length, n, cached, computed, m, same in rows:
        print(f"| {length} | {n} | {cached} / {computed} | {m['s_reuse']:.2f} | {m['s_fresh']:.2f} "
              f"| {m['s_fresh'] / m['s_reuse']:.2f} | {m['l_reuse']:.2f} | {m['l_fresh']:.2f} "
              f"| {m['l_fresh'] / m['l_reuse']:.2f} | {same}/{n} |")


if __name__ == "__main__":
    main()
