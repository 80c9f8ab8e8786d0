"""Datasets read straight from their zip archives: folders that were never extracted.

A file inside an archive is named by a *member path*, the archive's path joined with the member's
name, as :class:`zipfile.Path` writes it: ``root/gtFine_trainvaltest.zip/gtFine/val/frankfurt/
frankfurt_000000_000294_gtFine_labelIds.png``. Datasets keep such paths where they would keep a
file's path, so everything that names files (``dataset.samples``, rare-class statistics, error
messages, ``return_meta``) works unchanged; :func:`lightning_uda.data.files.read_image` and the
label readers see the ``.zip`` component and read the member's bytes (:func:`read_member`)
instead of opening a file, then decode them with the same OpenCV/Pillow calls as files on disk.

**One handle per archive and process.** Each process opens an archive once, lazily, on the first
read, and keeps the :class:`zipfile.ZipFile` in a module-level cache, never in the dataset: a
dataset pickled into a DataLoader worker (``spawn``) carries paths only. A worker started with
``fork`` inherits the parent's cache, but a forked handle shares its file offset with the parent's
(two processes seeking the same descriptor read each other's bytes), so the cache notices the new
process id and opens its own handles. Nothing is extracted to disk.

**Errors.** A truncated download (no end-of-archive record) raises :class:`ArchiveError` naming
the file and its size on the first open; a damaged member (CRC mismatch) raises
:class:`~lightning_uda.data.files.CorruptImageError` naming the member, with the fix (download the
archive again). An archive that does not hold the folder its name promises is a layout error that
says what it does hold (see :func:`find_tree`).

Differences from tue-mps' VFM-UDA code (``datasets/zip_dataset.py``), which reads the same
archives: handles are cached per process id rather than per DataLoader worker id (a worker id is
reused across epochs and by other loaders), and an unreadable member is an error, not silently
replaced by the next item.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import NamedTuple

from lightning_uda.data.errors import CorruptImageError, DatasetLayoutError, _show

__all__ = [
    "ArchiveError",
    "ZipFolder",
    "close_archives",
    "find_tree",
    "member_path",
    "members",
    "missing_tree_error",
    "read_member",
    "split_member_path",
    "top_level",
]

PathLike = str | os.PathLike


class ArchiveError(DatasetLayoutError):
    """A zip archive is unreadable (truncated), misnamed, or lacks the files it should hold."""


class _Opened(NamedTuple):
    handle: zipfile.ZipFile
    #: normalised member name -> its entry (files only, no directory entries)
    members: dict[str, zipfile.ZipInfo]
    #: (inode, size, mtime) when opened: a file replaced since is reopened when listed
    stamp: tuple[int, int, int]


class _HandleCache:
    """The archives this process has open: one :class:`zipfile.ZipFile` per archive."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.opened: dict[Path, _Opened] = {}

    def get(self, archive: Path, fresh: bool = False) -> _Opened:
        """The open archive; ``fresh``: first reopen it if the file changed since (listing
        does, when a dataset is built; reads do not, so they cost no ``stat``)."""
        if self.pid != os.getpid():  # a forked worker: never read through the parent's handles
            self.pid, self.opened = os.getpid(), {}
        opened = self.opened.get(archive)
        if opened is not None and fresh and _stamp(archive) != opened.stamp:
            opened.handle.close()
            opened = None
        if opened is None:
            opened = self.opened[archive] = _open(archive)
        return opened

    def close(self) -> None:
        for opened in self.opened.values():
            opened.handle.close()
        self.opened = {}


_HANDLES = _HandleCache()


def close_archives() -> None:
    """Close every archive this process opened (they reopen on the next read)."""
    _HANDLES.close()


def _normalise(name: str) -> str:
    # Archives packed on Windows may store "RGB\\0000001.png"; "./images/x.png" is "images/x.png".
    return PurePosixPath(name.replace("\\", "/")).as_posix().lstrip("/")


def _stamp(archive: Path) -> tuple[int, int, int]:
    try:
        stat = archive.stat()
    except OSError:
        return (-1, -1, -1)
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


def _open(archive: Path) -> _Opened:
    if not archive.is_file():
        raise DatasetLayoutError(f"Archive {archive} does not exist or is not a file.")
    try:
        handle = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as error:
        size = archive.stat().st_size
        raise ArchiveError(
            f"{archive} is not a readable zip archive ({error}; {size:,} bytes on disk). It is "
            "most likely truncated by an interrupted download or copy: download it again and "
            "compare its size (or MD5) with the one on the dataset's download page."
        ) from error
    members = {
        _normalise(info.filename): info
        for info in handle.infolist()
        if not (info.is_dir() or info.filename.endswith("\\"))
    }
    return _Opened(handle, members, _stamp(archive))


def members(archive: Path) -> list[str]:
    """The files in ``archive``: normalised member names (``/``-separated, no ``./``)."""
    return list(_HANDLES.get(Path(archive), fresh=True).members)


def member_path(archive: Path, member: str) -> Path:
    """The path that names ``member`` of ``archive`` (``archive / member``)."""
    return Path(archive).joinpath(*member.split("/"))


def split_member_path(path: PathLike) -> tuple[Path, str] | None:
    """``(archive, member)`` if ``path`` names a file inside a ``.zip`` archive, else ``None``.

    The archive is the first ``.zip`` component that is a file (a folder that happens to be
    called ``x.zip`` is a folder). Paths without a ``.zip`` component cost no file-system call.
    """
    parts = Path(path).parts
    for i, part in enumerate(parts[:-1]):
        if part.lower().endswith(".zip"):
            archive = Path(*parts[: i + 1])
            if archive in _HANDLES.opened or archive.is_file():
                return archive, "/".join(parts[i + 1 :])
    return None


def read_member(archive: Path, member: str) -> bytes:
    """The bytes of ``member`` of ``archive``, through this process's handle.

    Raises:
        ArchiveError: the archive is unreadable, or has no such member.
        CorruptImageError: the member's data are damaged (CRC mismatch, cut deflate stream) or
            packed with a compression method Python cannot read.
    """
    opened = _HANDLES.get(archive)
    info = opened.members.get(member)
    if info is None:
        raise ArchiveError(
            f"{archive} has no member {member!r}: the archive changed since the dataset was "
            "built (rebuild it), or the archive is incomplete (download it again)."
        )
    try:
        return opened.handle.read(info)
    except NotImplementedError as error:  # e.g. Deflate64, which Windows' own zipper writes
        raise CorruptImageError(
            f"{member_path(archive, member)}: {error}. Repack the archive with a standard "
            "method, e.g. `zip -r -0 NAME.zip FOLDER` (stored: PNG and JPEG are compressed "
            "already), or extract it."
        ) from error
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as error:
        raise CorruptImageError(
            f"{member_path(archive, member)} cannot be read from the archive ({error}): "
            f"{archive.name} is damaged. Download it again."
        ) from error


def find_tree(archive: Path, folder: str) -> str | None:
    """Where ``folder/`` lies in ``archive``: ``""`` at the top, ``"<top>/"`` inside one
    top-level folder (an archive of the extracted tree), ``None`` if nowhere."""
    head = folder.strip("/") + "/"
    wrappers: set[str] = set()
    for name in members(archive):
        if name.startswith(head):
            return ""
        top, _, rest = name.partition("/")
        if rest.startswith(head):
            wrappers.add(top + "/")
    return min(wrappers) if wrappers else None


def top_level(archive: Path) -> str:
    """What ``archive`` holds at its top, for messages: ``"README, leftImg8bit/ (5000 files)"``."""
    counts: dict[str, int] = {}
    for name in members(archive):
        top, slash, _ = name.partition("/")
        key = top + slash
        counts[key] = counts.get(key, 0) + 1
    shown = [k if not k.endswith("/") else f"{k} ({n} files)" for k, n in sorted(counts.items())]
    return _show(shown) if shown else "nothing (an empty archive)"


def missing_tree_error(
    archive: Path, folder: str, layout: str, misnamed: Mapping[str, str] | None = None
) -> ArchiveError:
    """The error for an archive without ``folder/``: what it holds instead, and the fix.

    ``misnamed`` maps a folder that belongs in another archive to that archive's name (e.g.
    ``{"labels": "01_labels.zip"}`` for ``01_images.zip``): an archive holding it is misnamed.
    """
    holds = top_level(archive)
    for other, right_name in (misnamed or {}).items():
        if find_tree(archive, other) is not None:
            return ArchiveError(
                f"{archive} holds {other}/, not {folder}/ (it holds: {holds}): it is "
                f"{right_name} under the wrong name. Rename it to {right_name}, and put the "
                f"archive that holds {folder}/ under the name {archive.name}. Expected "
                f"layout:\n{layout}"
            )
    return ArchiveError(
        f"{archive} holds no {folder}/ folder (at its top or inside one top-level folder); it "
        f"holds: {holds}. Is it the right file? Expected layout:\n{layout}"
    )


@dataclass(frozen=True)
class ZipFolder:
    """A folder inside one or more zip archives: the members under ``prefix`` of each.

    GTA5's ``images`` folder, for example, is spread over ten archives (``01_images.zip`` …
    ``10_images.zip``, each holding ``images/NNNNN.png``): ``ZipFolder(archives, "images")``.
    An empty ``prefix`` is the whole archive.
    """

    archives: tuple[Path, ...]
    prefix: str = ""

    def child(self, name: str) -> ZipFolder:
        """The sub-folder ``name`` (which may not exist; see :meth:`exists`)."""
        return ZipFolder(self.archives, f"{self.prefix}/{name}".strip("/"))

    def _members(self) -> Iterable[tuple[Path, str]]:
        head = f"{self.prefix}/" if self.prefix else ""
        for archive in self.archives:
            for name in members(archive):
                if name.startswith(head):
                    yield archive, name[len(head) :]

    def exists(self) -> bool:
        """Whether any file lies under the folder."""
        return next(iter(self._members()), None) is not None

    def subfolders(self) -> list[str]:
        """Names of the folders directly under this one (e.g. a dataset's splits)."""
        return sorted({rel.split("/")[0] for _, rel in self._members() if "/" in rel})

    def scan(self, suffix: str, extensions: Sequence[str], recursive: bool) -> dict[str, Path]:
        """``{key: member path}`` as :meth:`SegmentationFolder._scan` finds files in a folder:
        ``key`` is the path below the folder without extension and ``suffix``; files whose
        extension is not in ``extensions`` (lower-case, with the dot) or whose stem does not end
        with ``suffix`` are skipped; sub-folders only if ``recursive``. A key found in two
        archives keeps the later archive's file."""
        head = f"{self.prefix}/" if self.prefix else ""
        found: dict[str, Path] = {}
        for archive, rel in self._members():
            if not recursive and "/" in rel:
                continue
            stem, dot, extension = rel.rpartition(".")
            if not dot or "/" in extension or f".{extension.lower()}" not in extensions:
                continue
            if suffix:
                if not stem.endswith(suffix):
                    continue
                stem = stem[: -len(suffix)]
            found[stem] = member_path(archive, head + rel)
        return found

    @property
    def path(self) -> Path:
        """The folder as a member path (several archives: ``root/{a.zip,b.zip}/prefix``)."""
        if len(self.archives) == 1:
            base = self.archives[0]
        else:
            names = [a.name for a in self.archives]
            shown = names if len(names) <= 3 else [names[0], "…", names[-1]]
            base = self.archives[0].parent / ("{" + ",".join(shown) + "}")
        return base / self.prefix if self.prefix else base

    def __str__(self) -> str:
        return str(self.path)
