"""A :class:`SegmentationFolder` whose folders may lie inside zip archives, for datasets whose
``root`` holds the official archives instead of the extracted tree.

:class:`ArchiveAwareFolder` is the base of :class:`~lightning_uda.data.datasets.Cityscapes`,
:class:`~lightning_uda.data.datasets.GTA5` and :class:`~lightning_uda.data.datasets.SYNTHIA`. A
subclass finds each folder with :func:`locate` (the extracted folder if present, else the folder
inside the named archives, with a clear error for an archive that holds something else) and
passes ``self._bind(source)`` to :class:`SegmentationFolder`; everything else (pairing, label
checks, loading) is the folder dataset's own, reading files through
:mod:`lightning_uda.data.files`, which opens member paths inside their archives.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from lightning_uda.data.archives import (
    ArchiveError,
    ZipFolder,
    find_tree,
    missing_tree_error,
    split_member_path,
)
from lightning_uda.data.errors import DatasetLayoutError, _show
from lightning_uda.data.folder import SegmentationFolder

__all__ = ["ArchiveAwareFolder", "Source", "child", "exists", "locate", "subfolders"]

#: A folder on disk, or one inside zip archives.
Source = Path | ZipFolder


class ArchiveAwareFolder(SegmentationFolder):
    """A :class:`SegmentationFolder` whose image or mask folder may lie inside zip archives.

    Subclasses pass :meth:`_bind` (``source``) as ``images``/``masks``: a folder stays a path; a
    :class:`ZipFolder` becomes its member path (``root/x.zip/prefix``), which the folder checks
    and scans below resolve back to the archives. Files then carry member paths, which the
    readers of :mod:`lightning_uda.data.files` open inside the archives. A dataset of your own
    whose archives are ``img.zip`` (``img/*.jpg``) and ``ann.zip`` (``ann/*.png``)::

        class MyData(ArchiveAwareFolder):
            LAYOUT = "root/\n├── img/*.jpg\n└── ann/*.png"
            ZIP_LAYOUT = "root/\n├── img.zip   (img/*.jpg)\n└── ann.zip   (ann/*.png)"

            def __init__(self, root, **kwargs):
                root, layouts = Path(root), (self.LAYOUT, self.ZIP_LAYOUT)
                images = locate(root, "img", pattern="img.zip", layouts=layouts,
                                misnamed=lambda a: {"ann": "ann.zip"}, required_by="MyData")
                masks = locate(root, "ann", pattern="ann.zip", layouts=layouts,
                               misnamed=lambda a: {"img": "img.zip"}, required_by="MyData")
                self._check_archive_labels(images, masks, suffixes=("", ""), recursive=False,
                                           labels_archive=lambda a: "ann.zip",
                                           image_extensions=(".jpg",))
                super().__init__(images=self._bind(images), masks=self._bind(masks),
                                 image_extensions=(".jpg",), **kwargs)
    """

    #: The archives' layout, shown instead of ``LAYOUT`` when the dataset reads archives.
    ZIP_LAYOUT = ""

    def _bind(self, source: Source | None) -> Path | None:
        if not hasattr(self, "_zip_folders"):
            self._zip_folders: dict[Path, ZipFolder] = {}
        if isinstance(source, ZipFolder):
            self._zip_folders[source.path] = source
            self.LAYOUT = self.ZIP_LAYOUT  # errors show the layout the user has
            return source.path
        return source

    def _source(self, folder: Path) -> Source:
        """What a path returned by :meth:`_bind` names: its :class:`ZipFolder`, or the folder
        itself (for a subclass's own ``_scan`` that walks sub-folders with :func:`child`)."""
        return getattr(self, "_zip_folders", {}).get(folder, folder)

    def _check_dirs(self) -> None:
        zipped = getattr(self, "_zip_folders", {})
        folders = [self.images_dir] + ([self.masks_dir] if self.return_mask else [])
        for folder in folders:
            if folder is None:
                continue
            inside = zipped.get(folder)
            if inside is None and not folder.is_dir():
                raise DatasetLayoutError(
                    f"{type(self).__name__}: folder {folder} does not exist. "
                    f"Expected layout:\n{self.LAYOUT}"
                )
            if inside is not None and not inside.exists():
                raise ArchiveError(
                    f"{type(self).__name__}: no file under {inside.prefix}/ in "
                    f"{_show([a.name for a in inside.archives])} (looked for {folder}); the "
                    f"archive is incomplete or not the one expected. Expected layout:\n"
                    f"{self.LAYOUT}"
                )

    def _scan(  # type: ignore[override]  (an instance method: it needs the archives)
        self, folder: Path, suffix: str, extensions: tuple[str, ...], recursive: bool
    ) -> dict[str, Path]:
        inside = getattr(self, "_zip_folders", {}).get(folder)
        if inside is None:
            return SegmentationFolder._scan(folder, suffix, extensions, recursive)
        return inside.scan(suffix, extensions, recursive)

    def _check_archive_labels(
        self,
        images: Source,
        masks: Source,
        suffixes: tuple[str, str],
        recursive: bool,
        labels_archive: Callable[[Path], str],
        image_extensions: tuple[str, ...] = (".png",),
    ) -> None:
        """Images without a label when either side is read from archives: the error groups them
        by the archive they come from and names the label archive to fetch (``labels_archive``:
        image archive -> name of the archive holding its labels)."""
        if not (isinstance(images, ZipFolder) or isinstance(masks, ZipFolder)):
            return  # folders: SegmentationFolder's own check
        if not all(exists(source) for source in (images, masks)):
            return  # _check_dirs says which folder is missing
        image_files = scan_source(images, suffixes[0], image_extensions, recursive)
        mask_files = scan_source(masks, suffixes[1], (".png",), recursive=True)
        missing = [image_files[k] for k in sorted(image_files) if k not in mask_files]
        if not missing:
            return
        total = _count_by_archive(image_files.values())
        hints = []
        for archive, count in _count_by_archive(missing).items():
            if archive is None:
                continue
            wanted = labels_archive(archive)
            if count == total[archive]:
                hints.append(
                    f"None of the {count} images from {archive.name} has a label: {wanted} is "
                    f"missing or is not the labels archive of the same part; put {wanted} in "
                    f"{archive.parent}."
                )
            else:
                hints.append(
                    f"{count} of the {total[archive]} images from {archive.name} have no label: "
                    f"{wanted} is incomplete (download it again) or from another release."
                )
        raise ArchiveError(
            f"{len(missing)} of {len(image_files)} images have no label in {masks} (looked for "
            f"<key>{suffixes[1]}.png): {_show(missing)}. {' '.join(hints)} Expected layout:\n"
            f"{self.ZIP_LAYOUT}"
        )


def _check_root(root: Path, name: str, layout: str, zip_layout: str = "") -> None:
    if not root.is_dir():
        archives = f"\nor, not extracted:\n{zip_layout}" if zip_layout else ""
        raise DatasetLayoutError(
            f"{name} root {root} does not exist or is not a folder. Expected layout:\n{layout}"
            f"{archives}"
        )


def locate(
    root: Path,
    folder: str,
    pattern: str,
    layouts: tuple[str, str],
    misnamed: Callable[[Path], Mapping[str, str]],
    required_by: str | None = None,
) -> Source | None:
    """Where a dataset's ``folder`` is: ``root/folder`` if extracted, else ``folder/`` inside the
    archives ``root/pattern`` (e.g. ``"*_images.zip"``), each holding it at its top or inside
    one top-level folder; else ``None``, or, with ``required_by`` (the dataset's name), an error.

    Args:
        layouts: the dataset's (extracted, archived) layouts, for the messages.
        misnamed: archive -> ``{folder that belongs elsewhere: the archive it belongs in}``,
            to recognise an archive under another's name.

    Raises:
        ArchiveError: an archive lacks ``folder/`` (naming what it holds), or the archives hold
            it at different depths.
        DatasetLayoutError: nothing found and ``required_by`` is given.
    """
    if (root / folder).is_dir():
        return root / folder
    present = [archive for archive in sorted(root.glob(pattern)) if archive.is_file()]
    if not present:
        if required_by is None:
            return None
        raise DatasetLayoutError(
            f"{required_by}: {root / folder} does not exist, and {root} holds no {pattern} "
            f"either. Expected layout:\n{layouts[0]}\nor, not extracted:\n{layouts[1]}"
        )
    trees = {}
    for archive in present:
        tree = find_tree(archive, folder)
        if tree is None:
            raise missing_tree_error(archive, folder, layouts[1], misnamed(archive))
        trees[archive] = tree
    if len(set(trees.values())) > 1:
        raise ArchiveError(
            f"The archives in {root} hold {folder}/ at different depths ({trees}); repack them "
            f"with {folder}/ at the top. Expected layout:\n{layouts[1]}"
        )
    return ZipFolder(tuple(present), trees[present[0]] + folder)


def child(source: Source, name: str) -> Source:
    """The sub-folder ``name`` of a folder or a :class:`ZipFolder`."""
    return source.child(name) if isinstance(source, ZipFolder) else source / name


def exists(source: Source) -> bool:
    """Whether the folder exists (a :class:`ZipFolder`: holds any file)."""
    return source.exists() if isinstance(source, ZipFolder) else source.is_dir()


def subfolders(source: Source) -> list[str]:
    """Names of the folders directly under ``source``."""
    if isinstance(source, ZipFolder):
        return source.subfolders()
    return sorted(p.name for p in source.glob("*") if p.is_dir())


def scan_source(
    source: Source, suffix: str, extensions: tuple[str, ...], recursive: bool
) -> dict[str, Path]:
    """``{key: file}`` of a folder or a :class:`ZipFolder` (see ``SegmentationFolder._scan``)."""
    if isinstance(source, ZipFolder):
        return source.scan(suffix, extensions, recursive)
    return SegmentationFolder._scan(source, suffix, extensions, recursive)


def _count_by_archive(paths: Iterable[Path]) -> dict[Path | None, int]:
    counts: dict[Path | None, int] = {}
    for path in paths:
        member = split_member_path(path)
        archive = None if member is None else member[0]
        counts[archive] = counts.get(archive, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: str(item[0])))
