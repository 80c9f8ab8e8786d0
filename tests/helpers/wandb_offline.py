"""Read an offline W&B run back, for tests: its history rows and the console warnings.

An offline run keeps everything it would send in one transaction log, ``run-<id>.wandb``, next to
``files/``. This wandb release ships no Python reader for it, so a small one is here. The format
is a LevelDB-style log: a 7-byte header (``":W&B"``, magic ``0xBEE1``, version 0), then 32 KiB
blocks of chunks, each chunk a 7-byte header (CRC-32C, little-endian length, type: 1 full,
2 first, 3 middle, 4 last) and its bytes; a block's tail shorter than a chunk header is zero
padding. Each assembled payload is a serialised ``wandb_internal_pb2.Record``.

Only what W&B's backend accepted reaches the log: a record it dropped (logged to a past step)
is missing from it, while its media files may still be on disk (they are written before the
record is sent), so a test must count history rows, not files.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2

_FILE_HEADER = struct.Struct("<4sHB")
_CHUNK_HEADER = struct.Struct("<IHB")
_BLOCK = 32 * 1024
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4

#: What W&B prints when it ignores a record logged to a step before its current one.
STEP_WARNING = "less than the current step"


def _payloads(data: bytes) -> Iterator[bytes]:
    """The assembled record payloads of a transaction log's bytes."""
    ident, magic, version = _FILE_HEADER.unpack_from(data, 0)
    if ident != b":W&B" or magic != 0xBEE1 or version != 0:
        raise ValueError(f"not a W&B transaction log: {ident!r} {magic:#x} v{version}")
    pos, parts = _FILE_HEADER.size, []
    while pos + _CHUNK_HEADER.size <= len(data):
        left_in_block = _BLOCK - pos % _BLOCK
        if left_in_block < _CHUNK_HEADER.size:  # zero padding at the end of a block
            pos += left_in_block
            continue
        _crc, length, kind = _CHUNK_HEADER.unpack_from(data, pos)
        pos += _CHUNK_HEADER.size
        chunk = data[pos : pos + length]
        pos += length
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            parts = [chunk]
        elif kind == _MIDDLE:
            parts.append(chunk)
        elif kind == _LAST:
            yield b"".join([*parts, chunk])
            parts = []
        elif kind == 0 and length == 0:  # zero padding inside a block (a run cut short)
            pos += left_in_block - _CHUNK_HEADER.size
        else:
            raise ValueError(f"bad chunk type {kind} at byte {pos - length}")


def read_records(path: str | Path) -> list[wandb_internal_pb2.Record]:
    """Every record of the transaction log ``path`` (``run-<id>.wandb``), in order."""
    records = []
    for payload in _payloads(Path(path).read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        records.append(record)
    return records


def _apply(target: dict[str, Any], items: Iterable[Any]) -> dict[str, Any]:
    """Set each item (``key`` or ``nested_key`` path, ``value_json``) in ``target``.

    W&B flattens dict values (media, config) into ``nested_key`` paths; they are nested back
    here, e.g. ``{"train/mixed_batch": {"_type": ..., "filenames": ...}}``.
    """
    for item in items:
        path = [item.key] if item.key else list(item.nested_key)
        node = target
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = json.loads(item.value_json)
    return target


@dataclass
class OfflineRun:
    """One offline run directory (``<save_dir>/wandb/offline-run-*``) read back.

    Attributes:
        directory: the run directory.
        history: one ``key → decoded JSON value`` dict per history row the run accepted.
        config: the run's config after all its updates (W&B's own part under ``"_wandb"``).
        output: the console output W&B captured (``files/output.log``, empty if absent).
    """

    directory: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    output: str = ""

    @classmethod
    def load(cls, save_dir: str | Path) -> OfflineRun:
        """The single offline run under ``save_dir`` (fails if there is not exactly one)."""
        runs = sorted(Path(save_dir).glob("wandb/offline-run-*"))
        if len(runs) != 1:
            raise AssertionError(f"expected one offline run under {save_dir}, found {runs}")
        directory = runs[0]
        (log,) = directory.glob("run-*.wandb")
        history: list[dict[str, Any]] = []
        config: dict[str, Any] = {}
        for record in read_records(log):
            kind = record.WhichOneof("record_type")
            if kind == "history":
                history.append(_apply({}, record.history.item))
            elif kind == "config":
                _apply(config, record.config.update)
        output_log = directory / "files" / "output.log"
        output = output_log.read_text() if output_log.exists() else ""
        return cls(directory=directory, history=history, config=config, output=output)

    def rows_with(self, key: str) -> list[dict[str, Any]]:
        """The history rows that carry ``key``."""
        return [row for row in self.history if key in row]
