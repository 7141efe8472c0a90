"""Shared fixtures: a locally trained tokenizer, a tiny random Llama, the path to ../shared, and the
two that several modules share, built once per session (the quick demo's main model, the installed wheel)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from environment import TEST_ENV

for _name, _value in TEST_ENV.items():
    os.environ.setdefault(_name, _value)

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


# Modules that start first, longest first: xdist hands out whole modules in collection order (addopts:
# --no-loadscope-reorder), and the quick demo (about 8 of the suite's 20 CPU minutes) must not start last.
# test_demo_world, which shares the demo's main model, then comes after that model is built, not beside it.
FIRST = ("test_demo.py", "test_train_deepspeed.py", "test_served.py", "test_architectures.py", "test_gpu_check.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(FIRST)))  # stable: the rest keep their order


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


def once_per_session(tmp_path_factory, name: str, build):
    """`build(directory)` once per test session; its JSON result is shared by every xdist worker through
    a file lock in the session's temporary directory, so the first to ask builds and the others wait."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return build(tmp_path_factory.mktemp(name))
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp().parent  # the session's, above each worker's own
    result = root / f"{name}.json"
    with FileLock(f"{result}.lock"):
        if not result.exists():
            out = root / name
            shutil.rmtree(out, ignore_errors=True)  # left by a worker whose build failed
            out.mkdir()
            result.write_text(json.dumps(build(out)))
        return json.loads(result.read_text())


@pytest.fixture(scope="session")
def quick_main_model(tmp_path_factory) -> Path:
    """The quick demo's main model, trained once per session: the demo's `base/` stage, which a run
    directory holding a copy of it resumes from."""
    from splitpersona.app.demo.config import load_demo_config
    from splitpersona.app.demo.organism import run_organism

    def build(out: Path) -> str:
        # one torch thread, as every test has (OMP_NUM_THREADS): the other xdist worker holds the second core
        run_organism(load_demo_config(REPO / "configs" / "demo" / "organism.yaml", ["threads=1"], quick=True), out)
        return str(out)

    return Path(once_per_session(tmp_path_factory, "quick_main_model", build))


@pytest.fixture(scope="session")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """The wheel, built and installed once per session (install_fixtures): (its venv's bin, a directory
    outside the checkout)."""
    from install_fixtures import install_wheel

    def build(out: Path) -> list[str]:
        return [str(path) for path in install_wheel(out)]

    bin_dir, work = once_per_session(tmp_path_factory, "install", build)
    return Path(bin_dir), Path(work)
