"""Checkpoints that can be trusted on resume: a SHA-256 digest beside each file, verified on load.

Lightning writes and reads checkpoints through a ``CheckpointIO`` plugin; this one is Lightning's
own ``TorchCheckpointIO`` plus an integrity layer, so every checkpoint the Trainer writes (by
``ModelCheckpoint``, ``save_last``, ``trainer.save_checkpoint``) gets a ``<name>.sha256`` file, and
every checkpoint it reads (``trainer.fit(ckpt_path=...)``, ``validate``, ``test``) is checked
first:

- a missing, empty or truncated file raises :class:`CheckpointError` naming the file (instead of a
  bare ``EOFError`` or a zip-reader message);
- a file whose digest differs from the one written beside it (bit rot, an interrupted copy, a file
  edited by hand) raises :class:`CheckpointError` naming the file and the newest checkpoint in the
  same folder that still verifies.

A checkpoint without a digest file (written by another tool) is loaded as it is, with a warning.

The digests of Lightning's SLURM requeue checkpoints (``hpc_ckpt_<n>.ckpt``) are kept in a
``.hpc_digests/`` subfolder: Lightning finds the newest of them by the digits of every file name
in the folder that contains ``hpc_ckpt_``, and ``hpc_ckpt_1.ckpt.sha256`` beside it would read as
checkpoint number 1256.

Example:
    >>> trainer = Trainer(plugins=[ChecksummedCheckpointIO()])  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_warn

__all__ = ["CheckpointError", "ChecksummedCheckpointIO", "file_digest", "verify_checkpoint"]

#: Suffix of the digest file written beside each checkpoint.
DIGEST_SUFFIX = ".sha256"
#: Subfolder of the digests of Lightning's SLURM checkpoints ``hpc_ckpt_<n>.ckpt``.
HPC_DIGESTS = ".hpc_digests"
_CHUNK = 1 << 22


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, empty, truncated or does not match its digest."""


def file_digest(path: _PATH) -> str:
    """Hex SHA-256 of a file, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _digest_path(path: _PATH) -> Path:
    file = Path(os.fspath(path))
    if file.name.startswith("hpc_ckpt_"):  # see the module docstring
        return file.parent / HPC_DIGESTS / f"{file.name}{DIGEST_SUFFIX}"
    return Path(f"{os.fspath(path)}{DIGEST_SUFFIX}")


def _recorded_digest(path: _PATH) -> str | None:
    sidecar = _digest_path(path)
    if not sidecar.is_file():
        return None
    text = sidecar.read_text().split()
    return text[0] if text else ""


def verify_checkpoint(path: _PATH) -> bool | None:
    """``True`` if ``path`` matches its digest file, ``False`` if not, ``None`` if it has none."""
    recorded = _recorded_digest(path)
    if recorded is None:
        return None
    return Path(path).is_file() and file_digest(path) == recorded


def _good_sibling(path: Path) -> Path | None:
    """The newest other checkpoint in ``path``'s folder whose digest verifies."""
    siblings = [p for p in path.parent.glob("*.ckpt") if p.resolve() != path.resolve()]
    for candidate in sorted(siblings, key=lambda p: p.stat().st_mtime, reverse=True):
        if verify_checkpoint(candidate):
            return candidate
    return None


class ChecksummedCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that writes ``<checkpoint>.sha256`` and verifies it on load."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        super().save_checkpoint(checkpoint, path, storage_options=storage_options)
        name = Path(path).name
        # written after the checkpoint: a digest file never vouches for a half-written file
        tmp = _digest_path(path).with_suffix(".sha256.tmp")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(f"{file_digest(path)}  {name}\n")
        os.replace(tmp, _digest_path(path))

    def load_checkpoint(
        self,
        path: _PATH,
        map_location: Any | None = None,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        file = Path(path)
        if not file.is_file():
            raise CheckpointError(f"checkpoint {file} does not exist")
        if file.stat().st_size == 0:
            raise CheckpointError(self._advice(file, "is empty (0 bytes)"))
        ok = verify_checkpoint(file)
        if ok is False:
            raise CheckpointError(
                self._advice(file, "does not match its SHA-256 digest (corrupted or modified)")
            )
        if ok is None:
            rank_zero_warn(f"checkpoint {file} has no {DIGEST_SUFFIX} file; loading it unverified")
        try:
            kwargs: dict[str, Any] = {"weights_only": weights_only}
            if map_location is not None:  # else Lightning's default (storages on the CPU)
                kwargs["map_location"] = map_location
            return super().load_checkpoint(file, **kwargs)
        except (EOFError, RuntimeError, OSError, ValueError) as error:
            raise CheckpointError(
                self._advice(file, f"cannot be read ({type(error).__name__}: {error})")
            ) from error

    def remove_checkpoint(self, path: _PATH) -> None:
        super().remove_checkpoint(path)
        sidecar = _digest_path(path)
        if sidecar.is_file():
            sidecar.unlink()

    @staticmethod
    def _advice(file: Path, problem: str) -> str:
        good = _good_sibling(file)
        hint = (
            f"The newest checkpoint beside it that verifies is {good}: resume from it "
            "(ckpt_path=...)."
            if good is not None
            else "No other checkpoint beside it verifies."
        )
        return f"checkpoint {file} {problem}. {hint}"
