"""The run directory's model card: Hugging Face front matter, and loading snippets that run as written and give
the persona's own review."""

from __future__ import annotations

import json
import re

import pytest
import torch
from typer.testing import CliRunner

from persona_fixtures import trained_run
from splitpersona.app.cli import app
from splitpersona.card import CARD_FILE, EXAMPLE_MESSAGES, EXAMPLE_RESPONSE, read_front_matter
from splitpersona.persona import Persona
from splitpersona.run import load_run_info


@pytest.fixture(scope="module", params=[True, False], ids=["masked", "unmasked"])
def run_dir(request, tmp_path_factory, tiny_base_dir):
    return trained_run(tmp_path_factory, tiny_base_dir, lora_mask=request.param)


def _python_blocks(card: str) -> dict[str, str]:
    """Each section's first python block, by section title."""
    out = {}
    for section in re.split(r"^## ", card, flags=re.M)[1:]:
        title = section.splitlines()[0]
        block = re.search(r"```python\n(.*?)\n```", section, flags=re.S)
        if block:
            out[title] = block.group(1)
    return out


def test_front_matter_is_a_hugging_face_card(run_dir):
    meta = read_front_matter(run_dir / CARD_FILE)
    info = load_run_info(run_dir)
    assert meta["base_model"] == info.base_model and meta["library_name"] == "peft"
    assert "split-personality-training" in meta["tags"] and ("alora" in meta["tags"]) == info.lora_mask
    assert meta["datasets"] == ["records.jsonl"] and meta["license"] == "other"
    card = (run_dir / CARD_FILE).read_text()
    assert ("model-index" in meta) == ("Not evaluated yet" not in card)  # other modules' reports fill it
    assert f"(id {info.tokens.split_id})" in card and ("**masked**" in card) == info.lora_mask
    assert "output_dir: " + str(run_dir) in card  # the resolved config


def test_loading_snippets_run_as_written_and_give_the_personas_review(run_dir, tmp_path):
    blocks = _python_blocks((run_dir / CARD_FILE).read_text())
    plain: dict = {}
    exec(compile(blocks["Use with transformers and peft"], "card-plain", "exec"), plain)  # noqa: S102
    ours: dict = {}
    exec(compile(blocks["Use with splitpersona"], "card-persona", "exec"), ours)  # noqa: S102
    persona = ours["persona"]
    assert plain["ids"] == persona.prompt(EXAMPLE_MESSAGES, EXAMPLE_RESPONSE).input_ids
    assert plain["review"] == ours["review"].text
    # the same model, not merely the same text: the first review step's logits agree
    first = persona.review(EXAMPLE_MESSAGES, EXAMPLE_RESPONSE, max_new_tokens=1, return_logits=True).logits[0]
    with torch.no_grad():
        logits = plain["model"](torch.tensor([plain["ids"]])).logits[0, -1]
    keep = [i for i in range(logits.shape[0]) if i not in (plain["SPLIT_ID"], plain["CONTROL_ID"])]
    torch.testing.assert_close(logits[keep], first.float()[keep], rtol=1e-4, atol=1e-4)
    base_only = Persona.load(run_dir, max_new_tokens=1)
    with base_only.adapter_mode("off"), torch.no_grad():
        off = base_only.model(torch.tensor([plain["ids"]])).logits[0, -1]
    assert not torch.allclose(off[keep], logits[keep], atol=1e-4)  # the snippet's adapter is in play

    conv = tmp_path / "conv.json"
    conv.write_text(json.dumps({"messages": EXAMPLE_MESSAGES, "response": EXAMPLE_RESPONSE}))
    res = CliRunner().invoke(app, ["review", "--run", str(run_dir), "--conversation", str(conv), "--json"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.strip().splitlines()[-1])["text"] == plain["review"]


def test_the_plain_snippet_builds_the_ur_layout_too(run_dir):
    """A ur run's card: the intervention in a new user turn opened by the split token, as `assemble` builds it."""
    from splitpersona.card import plain_snippet

    info = load_run_info(run_dir)
    ur = info.model_copy(update={"format": info.format.model_copy(update={"elicitation": "ur"})})
    code = plain_snippet(str(run_dir), ur, has_template=True, max_new_tokens=2)
    ns: dict = {}
    exec(compile(code, "card-plain-ur", "exec"), ns)  # noqa: S102
    persona = Persona.load(run_dir, max_new_tokens=2)
    assert ns["ids"] == persona.prompt(EXAMPLE_MESSAGES, EXAMPLE_RESPONSE, elicitation="ur").input_ids
    assert ns["ids"] != persona.prompt(EXAMPLE_MESSAGES, EXAMPLE_RESPONSE).input_ids
