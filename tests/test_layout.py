"""Who may import whom: the core imports no part, parts import no sibling; the face (`splitpersona.app`) composes all.

Read from the source with `ast`, so an import inside a function counts as much as one at the top. The
parts live in top-level folders and are imported as `splitpersona.<part>` only (one namespace).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("splitpersona", "data_gen", "training", "eval")
BARE = ("data_gen", "training", "eval")  # never imported under these top-level names
DG, TR, EV, APP = "splitpersona.data_gen", "splitpersona.training", "splitpersona.eval", "splitpersona.app"
# What each floor may not import. The face is splitpersona/app and may import everything.
FORBIDDEN = {
    "splitpersona": {DG, TR, EV, APP},
    "data_gen": {TR, EV, APP},
    "training": {DG, EV, APP},
    "eval": {DG, TR, APP},
}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def _modules() -> list[Path]:
    files = [p for part in PARTS for p in sorted((ROOT / part).rglob("*.py"))]
    return [p for p in files if not p.relative_to(ROOT).as_posix().startswith("splitpersona/app/")]


@pytest.mark.parametrize("path", _modules(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_floor_imports(path: Path):
    floor = path.relative_to(ROOT).parts[0]
    bad = sorted(
        name for name in _imports(path) for banned in FORBIDDEN[floor] if name == banned or name.startswith(banned + ".")
    )
    assert not bad, f"{path.relative_to(ROOT)} ({floor}) imports {bad}; see the import rule in this test's docstring"


def test_the_rule_sees_a_violation(tmp_path: Path):
    bad = tmp_path / "m.py"
    bad.write_text("def f():\n    from splitpersona.eval.metrics import Rate\n")
    assert "splitpersona.eval.metrics" in _imports(bad)


def _python_files() -> list[Path]:
    return sorted(p for d in (*PARTS, "tests", "benchmarks", "tools") for p in (ROOT / d).rglob("*.py"))


def _module_strings(path: Path) -> set[str]:
    """String constants (f-string parts too) that name a module of a part by its bare name, e.g. for importlib."""
    return {n.value for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Constant)
            and isinstance(n.value, str) and re.match(r"(data_gen|training|eval)\.[a-z_]+$|(data_gen|training|eval)\.$", n.value)}


def test_one_namespace():
    """`training` or `eval` at top level would be whichever package the working directory holds."""
    bare = {p.relative_to(ROOT).as_posix(): sorted(n for n in _imports(p) if n.split(".")[0] in BARE)
            for p in _python_files()}
    assert not {k: v for k, v in bare.items() if v}
    named = {p.relative_to(ROOT).as_posix(): _module_strings(p) for p in _python_files() if p.parts[len(ROOT.parts)] != "tests"}
    assert not {k: v for k, v in named.items() if v}
    assert all((ROOT / "splitpersona" / part).resolve() == ROOT / part for part in BARE)


def test_only_the_inspect_integration_imports_inspect_ai():
    """inspect-ai is an optional extra (`splitpersona[inspect]`): nothing outside splitpersona/app/inspect_eval needs it."""
    files = [p for part in PARTS for p in sorted((ROOT / part).rglob("*.py"))]
    home = ROOT / "splitpersona" / "app" / "inspect_eval"
    users = {p.relative_to(ROOT).as_posix() for p in files
             if any(n == "inspect_ai" or n.startswith("inspect_ai.") for n in _imports(p))}
    assert users and all((ROOT / u).is_relative_to(home) for u in users), sorted(users)
