"""The package installed from a wheel into a fresh venv, as a user's `pip install` leaves it.

The venv borrows this environment's dependencies through a .pth file (whose own .pth files, the
editable install's finder among them, stay unread), so the checkout is not importable there and
entry points come from the wheel's own metadata.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

from environment import TEST_ENV

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "splitpersona", "data_gen", "training", "eval", "configs")


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the checkout must not be importable
    return env | TEST_ENV


def install_wheel(tmp: Path) -> tuple[Path, Path]:
    """(the venv's bin directory, a working directory outside the checkout)."""
    src = tmp / "src"  # built from a copy, so build/ and *.egg-info stay out of the checkout
    src.mkdir()
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(path, src / name)
    run = dict(check=True, capture_output=True, text=True, env=clean_env(), cwd=tmp)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "-w", str(tmp / "dist"), str(src)], **run)
    venv.create(tmp / "venv", with_pip=False)
    python = tmp / "venv" / "bin" / "python"
    wheel = next((tmp / "dist").glob("splitpersona-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
                    str(wheel)], **run)
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], **run)
    (Path(site.stdout.strip()) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = tmp / "work"
    work.mkdir()
    where = subprocess.run([python, "-c", "import splitpersona; print(splitpersona.__file__)"], **run | {"cwd": work})
    assert Path(where.stdout.strip()).is_relative_to(tmp / "venv"), where.stdout
    return python.parent, work
