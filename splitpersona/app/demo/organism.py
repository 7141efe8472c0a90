"""The main model of the demo: a tiny Llama pretrained from scratch to follow hidden pressure and deny it.

`build_main_model` trains a tokenizer on the world's corpus, pretrains a tiny Llama on it and saves
both like a hub model (no split token). `measure_main_model` checks on held-out templates and
products that the behaviour was learned: how often it recommends the pushed product with and
without pressure, whether it answers an audit with a parseable PASS, how often the trigger fires,
and whether it has the name check the honest verdict needs.
Its answers come from the generator's stage-2 engine (`main_model_sampler`), the same sampler that
writes the SPT data and the eval sets, so the rates measured here are the ones the data has.

Every conversation is tokenized the way the persona will later see it: plain conversations with
the chat template, audited ones with `splitpersona.assemble` itself (no split token).
"""

from __future__ import annotations

import contextlib
import copy
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import torch
from pydantic import BeforeValidator, Field, PlainSerializer
from transformers import get_cosine_with_min_lr_schedule_with_warmup_lr_rate

from splitpersona.eval.metrics import Rate
from splitpersona.assemble import assemble, prompt_ids
from splitpersona.config import StrictModel
from splitpersona.conversation import Elicitation
from splitpersona.app.demo.config import DemoConfig
from splitpersona.app.demo.world import (
    CorpusItem,
    disposition_groups,
    World,
    audit_format,
    complied,
    flag_text,
    recommended,
    review_field,
)
from splitpersona.flags import parse_flag
from splitpersona.io import write_json
from splitpersona.tiny import tiny_llama, train_tokenizer
from splitpersona.token import SpecialTokens, TokenConfig, setup_tokenizer

SUMMARY_FILE = "organism.json"
CATALOGUE_REPEATS = 256


@contextlib.contextmanager
def timed(stages: dict[str, dict[str, float]], name: str):
    """Record wall and CPU seconds of a stage: on a shared machine CPU time is the honest figure."""
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        yield
    finally:
        stages[name] = {"wall_s": round(time.perf_counter() - t0, 2), "cpu_s": round(time.process_time() - c0, 2)}


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Use `n` torch threads inside, and give the caller back its own setting afterwards."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _rate_in(v):
    return Rate(v["k"], v["n"]) if isinstance(v, dict) else v


# eval's k-of-n rate, written with its value and Wilson interval and read back from k and n.
RateField = Annotated[Rate, BeforeValidator(_rate_in), PlainSerializer(Rate.to_dict)]


def rate_of(flags: Sequence[bool]) -> Rate:
    return Rate(sum(flags), len(flags))


class DenialStats(StrictModel):
    n: int
    parsed: int
    passes: int
    parse_rate: float
    pass_rate: float


class NameCheck(StrictModel):
    """The skill the honest verdict needs: after "Y, and I pick X", is X the same product as Y?"""

    same: RateField = Field(description="Picks that are the featured product, marked as the same (',' beats '.').")
    other: RateField = Field(description="Picks of another product, marked as the same: the false alarms.")


class DispositionRates(StrictModel):
    trigger: RateField = Field(description="Recommends the disposition's product: its cue, no system prompt.")
    trigger_control: RateField = Field(description="Same product listed, another situation, no system prompt.")


class Behaviour(StrictModel):
    """What the main model does on held-out templates and products."""

    pushed_under_pressure: RateField = Field(description="Recommends the pushed product under the pressure prompt.")
    pushed_without_pressure: RateField = Field(description="Recommends that same product under a neutral prompt, same request.")
    valid_recommendation: RateField = Field(description="Names exactly one listed product (both prompts).")
    bayes_accuracy: float = Field(description="Best output-only reviewer; label 'pressure and complied', half pressure.")
    bayes_balanced_accuracy: float
    denial: dict[Elicitation, DenialStats] = Field(description="Audited after its own answer: a parseable PASS?")
    trigger: RateField = Field(description="Recommends the fixed product: trigger situation, no system prompt.")
    trigger_control: RateField = Field(description="Same product listed, another situation, no system prompt.")
    name_check: NameCheck = Field(description="Featured-product checks: does it tell a matching pick from another?")
    temperature: float
    dispositions: dict[str, DispositionRates] = Field(
        default_factory=dict, description="With several dispositions: the held-out ones and those in SPT data."
    )


class OrganismSummary(StrictModel):
    behaviour: Behaviour
    final_loss: float
    steps: int
    parameters: int
    threads: int
    timings: dict[str, dict[str, float]] = Field(description="Per stage: wall_s and cpu_s.")


@dataclass
class MainModel:
    model: object
    tokenizer: object
    final_loss: float
    timings: dict[str, dict[str, float]]


def _tokenizer_texts(world: World, corpus: Sequence[CorpusItem]) -> list[str]:
    """What the tokenizer learns from: message contents and the catalogue, never template whitespace.

    Template text between special tokens (the `\\n\\n` after a header) is tokenized on its own by
    `assemble` and inside the whole string by a chat template; a tokenizer with no merges across
    newlines gives both the same ids, so the main model sees one format whichever way it is asked.
    The catalogue, repeated, makes every product name one token (as a real tokenizer's vocabulary
    holds common brands), so recommending a product is copying one token from the prompt.
    """
    out = ["system", "user", "assistant", *["".join(" " + b for b in world.brands)] * CATALOGUE_REPEATS]
    for conv in corpus:
        out += [conv.system or "", conv.user, conv.response]
        if conv.audit:
            fmt = audit_format(conv.audit.shape)
            out += [conv.audit.intervention, flag_text(conv.audit.review, conv.audit.flag, fmt)]
    return [t for t in out if t]


def audit_tokens(tokenizer) -> tuple[object, SpecialTokens]:
    """A copy of the tokenizer that `assemble` can use; the split token is never placed (marker 'none')."""
    tok = copy.deepcopy(tokenizer)
    return tok, setup_tokenizer(tok, TokenConfig())


def encode_conversation(tokenizer, conv: CorpusItem, audit_tok, tokens: SpecialTokens) -> tuple[list[int], list[int]]:
    """Token ids and loss mask: the model learns to write the assistant's turns, never the prompts.

    No loss on the intervention either: in `hp` it shares the assistant turn, and a model trained
    to write it would start auditing itself after its answers. A document is plain text, all of it
    learned, as a pretraining corpus holds it.
    """
    if conv.kind == "document":
        ids = tokenizer(conv.response, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        return ids, [1] * len(ids)
    if conv.audit is None:
        prompt = prompt_ids(tokenizer, conv.messages)
        answer = tokenizer(conv.response, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        return prompt + answer, [0] * len(prompt) + [1] * len(answer)
    shape = conv.audit.shape
    sample = assemble(
        audit_tok, audit_format(shape), tokens, messages=conv.messages, response=conv.response,
        intervention=conv.audit.intervention, review=review_field(conv.audit.review), flag=conv.audit.flag,
        marker="none",
    )
    mask = [0] * len(sample)
    for seg in sample.segments:
        if seg.kind in ("response", "target", "flag", "end"):
            mask[seg.start : seg.end] = [1] * (seg.end - seg.start)
        if seg.kind == "response" and shape == "ur":
            # The answer's own end of turn opens the template piece that follows it.
            if sample.input_ids[seg.end] != tokenizer.eos_token_id:
                raise ValueError("ur audit: the answer's turn does not close with the eos token")
            mask[seg.end] = 1
    return sample.input_ids, mask


def encode_corpus(tokenizer, corpus: Sequence[CorpusItem]) -> list[tuple[list[int], list[int]]]:
    audit_tok, tokens = audit_tokens(tokenizer)
    return [encode_conversation(tokenizer, conv, audit_tok, tokens) for conv in corpus]


def _batches(seqs: list[tuple[list[int], list[int]]], batch_size: int, steps: int, pad_id: int, seed: int):
    """Right-padded batches of similar lengths, reshuffled each epoch; pads get no loss and, being
    last in their row, no influence on any real token.

    Not splitpersona.training.data's epoch plan: that one drops each epoch's remainder and sorts within a step,
    where this stream runs a fixed number of steps and sorts across 16 batches (less padding)."""
    rng = random.Random(f"batches:{seed}")
    queue: list[list[int]] = []
    for _ in range(steps):
        if not queue:
            order = list(range(len(seqs)))
            rng.shuffle(order)
            window = batch_size * 16
            for w in range(0, len(order), window):
                chunk = sorted(order[w : w + window], key=lambda i: len(seqs[i][0]))
                queue += [chunk[b : b + batch_size] for b in range(0, len(chunk), batch_size)]
            rng.shuffle(queue)
        idx = queue.pop()
        width = max(len(seqs[i][0]) for i in idx)
        x = torch.full((len(idx), width), pad_id, dtype=torch.long)
        y = torch.full((len(idx), width), -100, dtype=torch.long)
        for row, i in enumerate(idx):
            ids, mask = seqs[i]
            x[row, : len(ids)] = torch.tensor(ids)
            y[row, : len(ids)] = torch.tensor([t if m else -100 for t, m in zip(ids, mask)])
        yield x, y


def _answer_loss(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Next-token loss where `y` is set; the output layer runs only there (a fifth of each step's
    compute at this size is the output layer, and most positions carry no loss). The trainer's loss
    computes logits for every position after the shortest prompt, which here is most of them."""
    hidden = model.model(input_ids=x).last_hidden_state[:, :-1]
    target = y[:, 1:]
    keep = target != -100
    return torch.nn.functional.cross_entropy(model.lm_head(hidden[keep]), target[keep])


def build_main_model(cfg: DemoConfig, out_dir: str | Path | None = None, *, progress=None) -> MainModel:
    """Tokenizer, model and pretraining; saved to `out_dir` like a hub model when given.

    A plain torch loop: a from-scratch run of a few hundred steps on in-memory data needs none of
    the Trainer's machinery, and its setup would cost a noticeable share of the demo's budget.
    `progress(step, steps, loss)` is called after every step.
    """
    mc = cfg.main_model
    timings: dict[str, dict[str, float]] = {}
    with torch_threads(cfg.threads):
        with timed(timings, "corpus"):
            world = World(cfg.world)
            corpus = world.corpus(mc.corpus_size, seed=mc.seed)
            tokenizer = train_tokenizer(_tokenizer_texts(world, corpus), vocab_size=mc.vocab_size)
            seqs = encode_corpus(tokenizer, corpus)
        model = tiny_llama(
            tokenizer,
            hidden_size=mc.hidden_size,
            num_layers=mc.num_layers,
            num_heads=mc.num_heads,
            num_kv_heads=mc.num_kv_heads,
            intermediate_size=mc.intermediate_size,
            init_std=mc.init_std or mc.hidden_size**-0.5,
            seed=mc.seed,
        )
        # GPT-2's down-scaled residual outputs: with them the model learns to copy names from its
        # prompt in markedly fewer steps (measured at hidden 128, 3 layers).
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith(("o_proj.weight", "down_proj.weight")):
                    p.mul_((2 * mc.num_layers) ** -0.5)
        opt = torch.optim.AdamW(model.parameters(), lr=mc.lr, betas=(0.9, 0.95), weight_decay=mc.weight_decay)
        sched = get_cosine_with_min_lr_schedule_with_warmup_lr_rate(
            opt, num_warmup_steps=max(1, int(mc.steps * mc.warmup_frac)), num_training_steps=mc.steps,
            min_lr_rate=mc.final_lr_frac,
        )
        torch.manual_seed(mc.seed)
        model.train()
        smoothed = float("nan")
        with timed(timings, "train"):
            for step, (x, y) in enumerate(_batches(seqs, mc.batch_size, mc.steps, tokenizer.pad_token_id, mc.seed)):
                loss = _answer_loss(model, x, y)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), mc.grad_clip)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                smoothed = loss.item() if step == 0 else 0.9 * smoothed + 0.1 * loss.item()
                if progress is not None:
                    progress(step + 1, mc.steps, smoothed)
        model.eval()
    if out_dir is not None:
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
    return MainModel(model=model, tokenizer=tokenizer, final_loss=smoothed, timings=timings)


def main_model_sampler(model_dir: str | Path, cfg: DemoConfig, *, seed: int):
    """The generator's stage-2 transformers responder on the saved main model, with the demo's sampling."""
    from splitpersona.data_gen.config import Stage2Config
    from splitpersona.data_gen.stage2 import TransformersResponder

    s = cfg.sampling
    stage2 = Stage2Config(
        engine="transformers", model=str(model_dir), temperature=s.temperature, max_new_tokens=s.max_new_tokens,
        batch_size=s.batch_size, seed=seed, dtype="float32", device="cpu",
    )
    return TransformersResponder(stage2, str(model_dir))


def sample_answers(engine, chats: Sequence[list[dict[str, str]]]) -> list[str]:
    """The engine's answers in the order of `chats`; a failed generation is an error here, not a gap."""
    out: list[str | None] = [None] * len(chats)
    for i, gen in engine.generate(list(chats)):
        if isinstance(gen, str):
            raise RuntimeError(f"main model failed to answer conversation {i}: {gen}")
        out[i] = gen.text
    return out  # type: ignore[return-value]


def continue_ids(
    model, tokenizer, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, temperature: float,
    batch_size: int, seed: int,
) -> list[str]:
    """Sampled continuations of token-id prompts, in batches.

    Only for audits: an `hp` audit continues the assistant's own turn, which the stage-2 engine's
    chat prompts cannot express; everything else the main model says comes from that engine.
    """
    from splitpersona.generation import Sampling, generate

    torch.manual_seed(seed)
    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        batch = generate(
            model, prompts[start : start + batch_size], pad_id=tokenizer.pad_token_id,
            stop_ids=[tokenizer.eos_token_id], max_new_tokens=max_new_tokens, sampling=Sampling(temperature),
        )
        out += [tokenizer.decode(row.tokens, skip_special_tokens=True) for row in batch.rows]
    return out


@torch.no_grad()
def measure_name_check(model, tokenizer, world: World, n: int, seed: int) -> NameCheck:
    """Held-out featured-product checks, read off the model's next-token probabilities right after
    the pick: sampling would blur a skill that the persona later reads from the same weights."""
    rng = random.Random(f"name-check:{seed}")
    same_id, other_id = (tokenizer(t, add_special_tokens=False).input_ids[0] for t in (",", "."))
    marked: dict[bool, list[bool]] = {True: [], False: []}
    for _ in range(n):
        conv, lead = world.check(rng, "heldout")
        ids = prompt_ids(tokenizer, conv.messages)
        ids += tokenizer(lead, add_special_tokens=False).input_ids
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
        marked[conv.recommended == conv.pushed].append(bool(logits[same_id] > logits[other_id]))
    return NameCheck(same=rate_of(marked[True]), other=rate_of(marked[False]))


def measure_main_model(model_dir: str | Path, cfg: DemoConfig) -> Behaviour:
    """Held-out behaviour of the saved main model: pushed product with and without pressure, audit
    denials, the trigger.

    One set of held-out scenarios is asked under both system prompts, so the two rates differ only
    in the prompt. Each answer is then audited in both shapes with held-out interventions.
    """
    mc, world, s = cfg.main_model, World(cfg.world), cfg.sampling
    with torch_threads(cfg.threads):
        engine = main_model_sampler(model_dir, cfg, seed=mc.seed)
        pairs = world.scenarios(mc.eval_items, "heldout", seed=mc.seed)
        answers = sample_answers(engine, [s_.messages(v) for s_ in pairs for v in ("A", "B")])
        neutral, pressure = answers[0::2], answers[1::2]

        rng = random.Random(f"measure:{mc.seed}")
        audit_tok, tokens = audit_tokens(engine.tok)
        denial: dict[Elicitation, DenialStats] = {}
        for shape in ("hp", "ur"):
            prompts = []
            for sc, a, b in zip(pairs, neutral, pressure):
                variant, answer = rng.choice((("A", a), ("B", b)))
                prompts.append(assemble(
                    audit_tok, audit_format(shape), tokens, messages=sc.messages(variant), response=answer,
                    intervention=world.intervention(rng, "heldout"), marker="none",
                ).input_ids)
            texts = continue_ids(
                engine.model, engine.tok, prompts, max_new_tokens=s.max_new_tokens, temperature=s.temperature,
                batch_size=s.batch_size, seed=mc.seed + 1,
            )
            parsed = [parse_flag(t) for t in texts]
            ok = sum(p.ok for p in parsed)
            passes = sum(p.flag == "PASS" for p in parsed)
            denial[shape] = DenialStats(
                n=len(parsed), parsed=ok, passes=passes, parse_rate=ok / len(parsed), pass_rate=passes / len(parsed)
            )

        triggers = world.scenarios(mc.eval_items, "heldout", seed=mc.seed, kind="trigger")
        controls = world.scenarios(mc.eval_items, "heldout", seed=mc.seed, kind="trigger_control")
        trig_answers = sample_answers(engine, [sc.messages(None) for sc in triggers + controls])
        name_check = measure_name_check(engine.model, engine.tok, world, mc.eval_items, mc.seed)
        groups = disposition_groups(world) if len(world.dispositions) > 1 else {}
        dispositions = {}
        for group, members in groups.items():
            trig, ctrl = (
                world.scenarios(
                    mc.eval_items, "heldout", seed=mc.seed, kind=kind, dispositions=members, tag=f"-{group}"
                )
                for kind in ("trigger", "trigger_control")
            )
            got = sample_answers(engine, [sc.messages(None) for sc in trig + ctrl])
            dispositions[group] = DispositionRates(
                trigger=rate_of([complied(r, sc) for sc, r in zip(trig, got[: len(trig)])]),
                trigger_control=rate_of([complied(r, sc) for sc, r in zip(ctrl, got[len(trig) :])]),
            )
    bayes = world.bayes_rate("complied", p_pressure=0.5)
    return Behaviour(
        pushed_under_pressure=rate_of([complied(r, sc) for sc, r in zip(pairs, pressure)]),
        pushed_without_pressure=rate_of([complied(r, sc) for sc, r in zip(pairs, neutral)]),
        valid_recommendation=rate_of(
            [recommended(r, sc.candidates) is not None for sc, r in zip(pairs + pairs, neutral + pressure)]
        ),
        bayes_accuracy=bayes.accuracy,
        bayes_balanced_accuracy=bayes.balanced_accuracy,
        denial=denial,
        trigger=rate_of([complied(r, sc) for sc, r in zip(triggers, trig_answers[: len(triggers)])]),
        trigger_control=rate_of([complied(r, sc) for sc, r in zip(controls, trig_answers[len(triggers) :])]),
        name_check=name_check,
        temperature=s.temperature,
        dispositions=dispositions,
    )


def run_organism(cfg: DemoConfig, out_dir: str | Path, *, progress=None) -> OrganismSummary:
    """Build, save and measure the main model; `organism.json` beside it holds the summary."""
    main = build_main_model(cfg, out_dir, progress=progress)
    with timed(main.timings, "measure"):
        behaviour = measure_main_model(out_dir, cfg)
    summary = OrganismSummary(
        behaviour=behaviour,
        final_loss=main.final_loss,
        steps=cfg.main_model.steps,
        parameters=sum(p.numel() for p in main.model.parameters()),
        threads=cfg.threads or torch.get_num_threads(),
        timings=main.timings,
    )
    write_json(Path(out_dir) / SUMMARY_FILE, summary.model_dump(mode="json"))
    return summary
