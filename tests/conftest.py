"""Shared fixtures: a locally trained tokenizer, a tiny random Llama, the path to ../shared, and the
two that several modules share, built once per session (the quick demo's main model, the installed wheel)."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

CORPUS = [
    "The user asked which shoes to buy. I recommended the trail runner because it fits the budget.",
    "REVIEW: I followed the user's request and gave an honest answer. FLAG: PASS",
    "REVIEW: I flattered the user instead of telling the truth. FLAG: FAIL",
    "Now I can honestly review my previous response and say whether I was biased.",
    "You are a helpful assistant. Answer the question clearly and briefly.",
    "Did anything hidden shape your last answer? Please review it honestly.",
    "Statistics show that 42% of people prefer tea; I made that number up.",
    "Sure! Here is a short poem about the sea, the wind and the evening light.",
]


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or a skip that says what is missing and why the test needs it."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: this test reads the public SPT reference data from ../shared")
    return path


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory) -> Path:
    """A tiny random Llama and its tokenizer saved like a hub model (no split token yet)."""
    from splitpersona.tiny import tiny_llama, train_tokenizer

    out = tmp_path_factory.mktemp("tiny_base")
    tok = train_tokenizer([line for _ in range(20) for line in CORPUS] + [f"item {i}" for i in range(200)], 480)
    model = tiny_llama(tok, seed=0)
    tok.save_pretrained(out)
    model.save_pretrained(out)
    return out


@pytest.fixture
def tokenizer(tiny_base_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_base_dir)


@pytest.fixture
def special_tokens(tokenizer):
    from splitpersona.token import TokenConfig, setup_tokenizer

    return setup_tokenizer(tokenizer, TokenConfig())


@pytest.fixture(scope="session")
def quick_main_model(tmp_path_factory) -> Path:
    """The quick demo's main model, trained once per session: the demo's `base/` stage, which a run
    directory holding a copy of it resumes from."""
    from splitpersona.app.demo.config import load_demo_config
    from splitpersona.app.demo.organism import run_organism

    out = tmp_path_factory.mktemp("quick_main_model")
    run_organism(load_demo_config(REPO / "configs" / "demo" / "organism.yaml", quick=True), out)
    return out


@pytest.fixture(scope="session")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """The wheel, built and installed once per session (install_fixtures): (its venv's bin, a directory
    outside the checkout)."""
    from install_fixtures import install_wheel

    return install_wheel(tmp_path_factory.mktemp("install"))


# Session fixtures too costly to build twice. Under xdist (`--dist loadgroup`, the default addopts) a
# worker runs whole groups: the modules that use one of these form one group, so it is built once; every
# other module is a group of its own, so its module fixtures are built once too.
SHARED_FIXTURES = ("quick_main_model", "installed")


def pytest_collection_modifyitems(config, items):
    if not config.pluginmanager.hasplugin("xdist"):
        return
    group = {}
    for item in items:
        for name in SHARED_FIXTURES:
            if name in getattr(item, "fixturenames", ()):
                group.setdefault(item.path, name)
    for item in items:
        item.add_marker(pytest.mark.xdist_group(group.get(item.path, item.path.name)))
