"""Who may import whom: the core imports no part, parts import no sibling; the face (`splitpersona.app`) composes all.

Read from the source with `ast`, so an import inside a function counts as much as one at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("splitpersona", "data_gen", "training", "eval")
# What each floor may not import. The face is splitpersona/app and may import everything.
FORBIDDEN = {
    "splitpersona": {"data_gen", "training", "eval", "splitpersona.app"},
    "data_gen": {"training", "eval", "splitpersona.app"},
    "training": {"data_gen", "eval", "splitpersona.app"},
    "eval": {"data_gen", "training", "splitpersona.app"},
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
    bad.write_text("def f():\n    from eval.metrics import Rate\n")
    assert "eval.metrics" in _imports(bad)


def test_only_the_inspect_integration_imports_inspect_ai():
    """inspect-ai is an optional extra (`splitpersona[inspect]`): nothing outside splitpersona/app/inspect_eval needs it."""
    files = [p for part in PARTS for p in sorted((ROOT / part).rglob("*.py"))]
    home = ROOT / "splitpersona" / "app" / "inspect_eval"
    users = {p.relative_to(ROOT).as_posix() for p in files
             if any(n == "inspect_ai" or n.startswith("inspect_ai.") for n in _imports(p))}
    assert users and all((ROOT / u).is_relative_to(home) for u in users), sorted(users)
