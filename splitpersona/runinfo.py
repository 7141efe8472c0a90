"""Provenance stamped on every artifact: git commit and the versions of the packages that made it."""

from __future__ import annotations

import datetime as _dt
import subprocess
from importlib import metadata
from pathlib import Path

TRACKED_PACKAGES = (
    "splitpersona", "torch", "transformers", "peft", "trl", "deepspeed", "datasets", "anthropic", "wandb", "pydantic",
)


def git_info(start: str | Path | None = None) -> dict[str, str | bool | None]:
    cwd = Path(start) if start else Path(__file__).resolve().parent
    def run(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None
    commit = run("rev-parse", "HEAD")
    status = run("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def package_versions(names: tuple[str, ...] = TRACKED_PACKAGES) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = None
    return out


def provenance() -> dict:
    return {
        "git": git_info(),
        "packages": package_versions(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
