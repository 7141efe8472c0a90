"""File handling shared by every stage: atomic writes, JSONL that names the bad line, append-only logs.

Every writer of a finished artifact goes through `atomic_write`, so a crash leaves either the old
file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import lzma
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)
_UMASK = os.umask(0)
os.umask(_UMASK)


class DataError(ValueError):
    """Bad input: the message names the file and, where one is at fault, the record."""

    def __init__(self, path: str | os.PathLike[str], message: str, record: str | int | None = None):
        self.path = str(path)
        self.record = record
        where = self.path if record is None else f"{self.path} (record {record})"
        super().__init__(f"{where}: {message}")


def describe_validation_error(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "<record>"
        parts.append(f"{loc}: {e['msg']}")
    return "; ".join(parts)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """Write to a temporary file beside `path` and rename it over `path` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; finished artifacts get the usual mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    with atomic_write(path) as fh:
        json.dump(obj, fh, indent=2, ensure_ascii=False, default=_json_default)
        fh.write("\n")


def write_jsonl(path: str | os.PathLike[str], rows: Iterable[Any]) -> int:
    n = 0
    with atomic_write(path) as fh:
        for row in rows:
            fh.write(dumps_line(row))
            n += 1
    return n


def dumps_line(row: Any) -> str:
    if isinstance(row, BaseModel):
        return row.model_dump_json(exclude_none=False) + "\n"
    return json.dumps(row, ensure_ascii=False, default=_json_default) + "\n"


def append_jsonl(path: str | os.PathLike[str], row: Any) -> None:
    """Append one line and fsync it: a crash loses at most the line being written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(dumps_line(row))
        fh.flush()
        os.fsync(fh.fileno())


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read `.json` or `.json.xz`; a truncated or malformed file raises DataError naming it."""
    path = Path(path)
    try:
        if path.name.endswith(".xz"):
            with lzma.open(path, "rt", encoding="utf-8") as fh:
                return json.load(fh)
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (json.JSONDecodeError, lzma.LZMAError, EOFError, UnicodeDecodeError) as e:
        raise DataError(path, f"not valid JSON ({type(e).__name__}: {e})") from e


def iter_jsonl(path: str | os.PathLike[str], *, tolerate_torn_tail: bool = False) -> Iterator[tuple[int, Any]]:
    """Yield (line number, object). With `tolerate_torn_tail`, a last line cut off by a crash is skipped."""
    path = Path(path)
    with open(path, encoding="utf-8") as fh:
        lines = fh.readlines()
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield i, json.loads(line)
        except json.JSONDecodeError as e:
            if tolerate_torn_tail and i == len(lines) and not line.endswith("\n"):
                return
            raise DataError(path, f"invalid JSON: {e}", record=f"line {i}") from e


def read_jsonl(path: str | os.PathLike[str], model: type[M]) -> list[M]:
    """Read and validate every line; an empty file or a bad record is a DataError naming both."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, "file not found")
    out: list[M] = []
    for lineno, obj in iter_jsonl(path):
        try:
            out.append(model.model_validate(obj))
        except ValidationError as e:
            rid = obj.get("id") if isinstance(obj, dict) else None
            rec = f"line {lineno}" + (f", id {rid!r}" if rid else "")
            raise DataError(path, describe_validation_error(e), record=rec) from e
    if not out:
        raise DataError(path, "file holds no records")
    return out


def _json_default(o: Any) -> Any:
    if isinstance(o, BaseModel):
        return o.model_dump()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, set):
        return sorted(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
