"""What an offline W&B run holds, read back from its `run-<id>.wandb` file.

wandb 0.31 ships no Python reader of that file (the writer lives in wandb-core), so this walks the
file's block format (a LevelDB log with a W&B header, CRC-checked) and decodes every entry with W&B's
own protobuf, `wandb_internal_pb2.Record`.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

BLOCK = 32768
HEADER = 7  # checksum uint32, length uint16, type uint8
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _payloads(data: bytes):
    ident, magic, version = struct.unpack("<4sHB", data[:HEADER])
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), "not a W&B transaction log"
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:
            pos += BLOCK - pos % BLOCK  # block trailer
            continue
        checksum, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        chunk = data[pos + HEADER : pos + HEADER + length]
        if kind == 0 and length == 0:
            break
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF == checksum, f"bad checksum at {pos}"
        pos += HEADER + length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield pending + chunk


def records(wandb_file: Path) -> list:
    from wandb.proto import wandb_internal_pb2

    out = []
    for payload in _payloads(Path(wandb_file).read_bytes()):
        rec = wandb_internal_pb2.Record()
        rec.ParseFromString(payload)
        out.append(rec)
    return out


class OfflineRun:
    """The run record, the logged history rows and summary, and the artifacts of one offline run."""

    def __init__(self, run_dir: Path):
        (self.file,) = Path(run_dir).glob("run-*.wandb")
        self.dir = Path(run_dir)
        self.records = records(self.file)
        kinds = [r.WhichOneof("record_type") for r in self.records]
        runs = [r.run for r, k in zip(self.records, kinds) if k == "run"]
        assert runs, f"{self.file} holds no run record: {kinds}"
        self.run = runs[0]
        self.history = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
                        for r, k in zip(self.records, kinds) if k == "history"]
        self.summary = {}
        for r, k in zip(self.records, kinds):
            if k == "summary":
                self.summary.update({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.summary.update})
        self.artifacts = [r.artifact for r, k in zip(self.records, kinds) if k == "artifact"]
        self.uses = [r.use_artifact for r, k in zip(self.records, kinds) if k == "use_artifact"]
        self.config = {i.key: json.loads(i.value_json) for i in self.run.config.update}
        for r, k in zip(self.records, kinds):  # later updates (run.config.update) after the run's own
            if k == "config":
                self.config.update({i.key: json.loads(i.value_json) for i in r.config.update})

    def table(self, key: str) -> dict:
        """A logged wandb.Table: its file (columns and data) as the history row names it."""
        row = next(row for row in self.history if f"{key}/_type" in row)  # a logged dict's entries: key/field
        assert row[f"{key}/_type"] == "table-file", row
        return json.loads((self.dir / "files" / row[f"{key}/path"]).read_text())

    def logged(self, prefix: str) -> list[dict]:
        """The media logged under `prefix` (images, tables): their fields by name, one dict each."""
        out: dict[str, dict] = {}
        for row in self.history:
            for k, v in row.items():
                if k.startswith(prefix) and "/" in k[len(prefix):]:
                    name, field = k.rsplit("/", 1)
                    out.setdefault(name, {})[field] = v
        return list(out.values())


def offline_runs(root: Path) -> list[OfflineRun]:
    """The offline runs under `root`/wandb, once W&B's service has written them out: `finish` can return before
    its writer flushes the file, and `teardown` waits for the service to end."""
    import wandb

    wandb.teardown()
    return [OfflineRun(d) for d in sorted(Path(root).glob("wandb/offline-run-*"))]
