"""The pinned llama-cpp-python source distribution: its vendored llama.cpp tree, downloaded once.

It carries vocabulary-only GGUF files of real tokenizers (`fetch_tokenizers.py`) and the whole
llama.cpp source (`build_llamacpp.py`: llama-server and the GGUF converters). The archive is kept in
$SPT_CACHE (default ~/.cache/splitpersona) and checked against its sha256 before every use.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

SDIST = "llama-cpp-python==0.3.36"
SDIST_FILE = "llama_cpp_python-0.3.36.tar.gz"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
VENDORED = "llama_cpp_python-0.3.36/vendor/llama.cpp/"


def cache() -> Path:
    return Path(os.environ.get("SPT_CACHE") or Path.home() / ".cache/splitpersona")


def sdist() -> Path:
    """The checked archive, downloaded through pip on first use (written beside, then renamed)."""
    path = cache() / "sdist" / SDIST_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        print(f"downloading {SDIST} (sdist)", flush=True)
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", SDIST, "-d", tmp]
            subprocess.run(cmd, check=True)
            os.replace(Path(tmp) / SDIST_FILE, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        path.unlink()
        raise SystemExit(f"{path}: sha256 {digest}, expected {SDIST_SHA256}; removed, run again to download it anew")
    return path


def extract(prefix: str, dest: Path) -> Path:
    """Every member under `VENDORED + prefix` into `dest` (a missing `dest` only: extracted beside, renamed)."""
    if dest.exists():
        return dest
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    start = VENDORED + prefix
    with tarfile.open(sdist()) as tar:
        members = []
        for m in tar.getmembers():
            if m.name.startswith(start) and (m.isfile() or m.isdir()):
                m.name = m.name[len(start):].lstrip("/")
                if m.name:
                    members.append(m)
        tar.extractall(tmp, members=members, filter="data")
    tmp.rename(dest)
    return dest
