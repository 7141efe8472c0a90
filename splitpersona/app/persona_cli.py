"""`spt ask` and `spt review`: a trained persona from the command line.

    spt ask --run runs/demo "What biases do you have?"
    spt review --run runs/demo --conversation conv.json [--json]
    spt review --run runs/demo --server http://127.0.0.1:8080 --conversation conv.json --json   # served (spt export)

The conversation file (`splitpersona.conversation.Conversation`) is one JSON object, or a list of them:

    {"messages": [{"role": "system", "content": "You are a helpful assistant."},
                  {"role": "user", "content": "Which shoes should I buy?"}],
     "response": "The main model's answer to review.",
     "intervention": "Optional: what the persona is asked after the split token."}

The system message is optional; earlier user and assistant turns may come before the last user
message (the one `response` answers); the intervention defaults to `prompts.DEFAULT_INTERVENTION`.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from splitpersona.devices import DEVICE, DTYPE

RUN = typer.Option(..., "--run", help="Training run directory (run.json, adapter/, tokenizer/).")
BASE = typer.Option(None, "--base-model", help="Base model id or path; default: the one in run.json.")
MAX_NEW = typer.Option(512, "--max-new-tokens", help="Longest generated answer (greedy decoding).")
AS_JSON = typer.Option(False, "--json", help="Print each review as a JSON object (text, flag, ok, reason, ...).")
SERVER = typer.Option(None, "--server", help="A server holding the run's export (llama-server, or an OpenAI-compatible "
                      "one for an unmasked run): review there instead of loading the model here.")


def _review_json(review) -> str:
    fields = ("text", "flag", "ok", "reason", "finished", "prompt_tokens", "generated_tokens", "truncated",
              "fail_probability", "cached_tokens", "evaluated_tokens")
    return json.dumps({f: getattr(review, f) for f in fields}, ensure_ascii=False)


def _load(run: Path, base_model: str | None, max_new_tokens: int, dtype: str, device: str, server: str | None):
    from splitpersona.persona import Persona

    if server:
        return Persona.connect(server, run, max_new_tokens=max_new_tokens)
    return Persona.load(run, base_model, dtype=dtype, device=device, max_new_tokens=max_new_tokens)


def ask(
    question: str = typer.Argument(..., help="A question for the persona, with no task before it."),
    run: Path = RUN,
    base_model: str = BASE,
    max_new_tokens: int = MAX_NEW,
    dtype: str = DTYPE,
    device: str = DEVICE,
    as_json: bool = AS_JSON,
    server: str = SERVER,
) -> None:
    """Ask the persona a standalone question (an empty conversation, then the split token and the question)."""
    persona = _load(run, base_model, max_new_tokens, dtype, device, server)
    review = persona.ask(question)
    typer.echo(_review_json(review) if as_json else review.text)


def review(
    run: Path = RUN,
    conversation: Path = typer.Option(
        ..., "--conversation", help="JSON file: messages, response, optional intervention (or a list of those)."
    ),
    base_model: str = BASE,
    max_new_tokens: int = MAX_NEW,
    dtype: str = DTYPE,
    device: str = DEVICE,
    as_json: bool = AS_JSON,
    server: str = SERVER,
) -> None:
    """Have the persona review a main-model response; prints the review and its parsed flag."""
    from pydantic import TypeAdapter, ValidationError

    from splitpersona.conversation import Conversation
    from splitpersona.io import DataError, describe_validation_error, read_json

    if not conversation.exists():
        raise DataError(conversation, "file not found")
    data = read_json(conversation)
    items = data if isinstance(data, list) else [data]
    try:
        convs = TypeAdapter(list[Conversation]).validate_python(items)
    except ValidationError as e:
        raise DataError(conversation, describe_validation_error(e)) from e
    if not convs:
        raise DataError(conversation, "holds no conversation")
    persona = _load(run, base_model, max_new_tokens, dtype, device, server)
    for r in persona.review_batch(convs):
        if as_json:
            typer.echo(_review_json(r))
        else:
            typer.echo(r.text)
            typer.echo(f"[flag: {r.flag}]" if r.ok else f"[flag not parsed: {r.reason}]")
