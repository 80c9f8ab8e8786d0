"""Images per second of the training loader, per worker count, from folders and from zips.

Size ``UDADataModule(num_workers=...)`` with it: a GPU step that takes ``t`` seconds on a batch of
``B`` source + ``B`` target images needs a loader of at least ``2B / t`` images/s to stay fed.

It runs the real training stream, :meth:`UDADataModule.train_dataloader` (GTA5 source with the
``gta5_train`` preset and DAFormer's rare-class sampling, RCS, crops re-drawn until they hold
enough of the drawn class; Cityscapes target with ``cityscapes_train``), so every image costs what
it costs in training: read (a file, or a member of an archive through the worker's own handle),
PNG decode, resize (GTA5 to 1280×720, Cityscapes to 1024×512), 512×512 crop, normalisation, and
for RCS the re-reads of a re-drawn crop. It counts source + target images per second over
``--batches`` batches after ``--warmup`` batches (worker start-up excluded), for each worker
count, with the datasets read from extracted folders and from their official zip archives
(``01_images.zip``/``01_labels.zip``, ``leftImg8bit_trainvaltest.zip``), with and without RCS.
Each configuration runs ``--repeats`` times, in turn with the others, and keeps its median. A
single-process breakdown times one GTA5 item's read + decode and the whole item alone, and the
0-worker runs count how often RCS reads a source image per image delivered.

The data are generated once into ``--data-dir``: ``--images`` GTA5 frames at GTA5's size
(1914×1052) and as many Cityscapes frames (2048×1024), made of the test fixture frame scaled up
with noise added so that each PNG is about as large as a real one (about 2 MB; the content is
not real, so decoding costs may differ a little from the real datasets'). The files are in the
page cache after the first pass (warm reads): on network storage, reading costs more, and zips,
opened once per worker, spare the per-file opens.

    python benchmarks/data_loading.py                       # workers 0 1 2, 20 batches of 2 + 2
    python benchmarks/data_loading.py --workers 0 2 4 8 --batches 40 --batch-size 4

Prints a markdown table and writes ``benchmarks/results/data_loading.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
import zipfile
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from lightning_uda.data import GTA5, Cityscapes, RareClassSampling, UDADataModule
from lightning_uda.data.files import read_image

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests/fixtures/cityscapes_mini"
FRAME = "frankfurt_000000_000294"
GTA_SIZE, CITY_SIZE = (1914, 1052), (2048, 1024)  # width × height on disk


def _frame(size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    rgb = np.array(Image.open(FIXTURE / f"leftImg8bit/val/frankfurt/{FRAME}_leftImg8bit.png"))
    big = cv2.resize(rgb, size, interpolation=cv2.INTER_CUBIC).astype(np.int16)
    noise = rng.normal(0.0, 4.0, size=big.shape).round().astype(np.int16)  # real-PNG entropy
    return np.clip(big + noise, 0, 255).astype(np.uint8)


def _label_ids(size: tuple[int, int]) -> np.ndarray:
    ids = np.array(Image.open(FIXTURE / f"gtFine/val/frankfurt/{FRAME}_gtFine_labelIds.png"))
    return cv2.resize(ids, size, interpolation=cv2.INTER_NEAREST)


def make_data(root: Path, count: int) -> dict[str, Path]:
    """Folders and zips of ``count`` GTA5 and Cityscapes frames (reused if already there)."""
    folders, zips = root / "folders", root / "zips"
    done = root / f"done_{count}"
    if not done.is_file():
        rng = np.random.default_rng(0)
        gta, city = folders / "gta5", folders / "cityscapes"
        for sub in ("images", "labels"):
            (gta / sub).mkdir(parents=True, exist_ok=True)
        label = Image.fromarray(_label_ids(GTA_SIZE))
        label.putpalette([(v * 37) % 256 for v in range(768)])  # paletted, as GTA5's
        for i in range(count):
            cv2.imwrite(str(gta / f"images/{i:05d}.png"), _frame(GTA_SIZE, rng)[..., ::-1])
            label.save(gta / f"labels/{i:05d}.png")
        for split, n in (("train", count), ("val", 1)):
            for kind in ("leftImg8bit", "gtFine"):
                (city / kind / split / "frankfurt").mkdir(parents=True, exist_ok=True)
            for i in range(n):
                stem = city / "{kind}" / split / "frankfurt" / f"frankfurt_000000_{i:06d}"
                image = _frame(CITY_SIZE, rng)[..., ::-1]
                cv2.imwrite(str(stem).format(kind="leftImg8bit") + "_leftImg8bit.png", image)
                Image.fromarray(_label_ids(CITY_SIZE)).save(
                    str(stem).format(kind="gtFine") + "_gtFine_labelIds.png"
                )
        # The official packaging: deflate-compressed members, GTA5 in parts of its own.
        half = count // 2
        parts = {"01": range(half), "02": range(half, count)}
        (zips / "gta5").mkdir(parents=True, exist_ok=True)
        for part, indices in parts.items():
            for sub in ("images", "labels"):
                with zipfile.ZipFile(
                    zips / f"gta5/{part}_{sub}.zip", "w", zipfile.ZIP_DEFLATED
                ) as z:
                    for i in indices:
                        z.write(gta / f"{sub}/{i:05d}.png", f"{sub}/{i:05d}.png")
        (zips / "cityscapes").mkdir(parents=True, exist_ok=True)
        for kind in ("leftImg8bit", "gtFine"):
            with zipfile.ZipFile(
                zips / f"cityscapes/{kind}_trainvaltest.zip", "w", zipfile.ZIP_DEFLATED
            ) as z:
                for path in sorted((city / kind).rglob("*.png")):
                    z.write(path, path.relative_to(city).as_posix())
        done.touch()
    return {"folders": folders, "zips": zips}


class CountingGTA5(GTA5):
    """GTA5 counting its item reads (in this process: meaningful with 0 workers only)."""

    reads = 0

    def __getitem__(self, index: int) -> dict:
        CountingGTA5.reads += 1
        return super().__getitem__(index)


def datamodule(root: Path, workers: int, batch_size: int, rcs: bool) -> UDADataModule:
    return UDADataModule(
        source=CountingGTA5(root / "gta5", transform="gta5_train"),
        target=Cityscapes(
            root / "cityscapes", "train", transform="cityscapes_train", return_mask=False
        ),  # fmt: skip
        val=Cityscapes(root / "cityscapes", "val", transform="cityscapes_val"),
        batch_size=batch_size,
        num_workers=workers,
        pin_memory=False,
        rare_class_sampling=RareClassSampling(min_pixels=3000) if rcs else None,
        label_check_items=0,
    )


def loader_rate(dm: UDADataModule, warmup: int, batches: int) -> tuple[float, float]:
    """(source + target images per second over ``batches`` batches after ``warmup``, source
    item reads per source image: above 1 when RCS re-draws crops; counted with 0 workers)."""
    dm.prepare_data()
    iterator = iter(dm.train_dataloader())
    for _ in range(warmup):
        next(iterator)
    CountingGTA5.reads = 0
    start = time.perf_counter()
    images = sources = 0
    for _ in range(batches):
        batch, _, _ = next(iterator)
        sources += len(batch["source"]["image"])
        images += len(batch["source"]["image"]) + len(batch["target"]["image"])
    return images / (time.perf_counter() - start), CountingGTA5.reads / sources


def stage_times(root: Path, items: int) -> dict[str, float]:
    """CPU ms (this process' CPU time, which other jobs on the machine barely change) per item,
    median over ``items``: a GTA5 image's read + decode alone, a whole GTA5 source item
    (+ label, resize to 1280×720, crop, normalise), a whole Cityscapes target item."""
    source = GTA5(root / "gta5", transform="gta5_train")
    target = Cityscapes(root / "cityscapes", "train", transform="cityscapes_train",
                        return_mask=False)  # fmt: skip
    jobs = {
        "gta5_read_decode_cpu_ms": lambda i: read_image(source.samples[i][0]),
        "gta5_item_cpu_ms": lambda i: source[i],
        "cityscapes_item_cpu_ms": lambda i: target[i],
    }
    out = {}
    for name, job in jobs.items():
        times = []
        for i in range(items):
            start = time.process_time()
            job(i)
            times.append(time.process_time() - start)
        out[name] = 1000 * statistics.median(times)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed batches (default 2 + 2 × workers)"
    )
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each configuration")
    parser.add_argument("--images", type=int, default=64, help="frames per dataset")
    parser.add_argument("--threads", type=int, default=1, help="torch/OpenCV threads per process")
    parser.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "lu_bench")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/data_loading.json")
    args = parser.parse_args()
    most_warmup = args.warmup if args.warmup is not None else 2 + 2 * max(args.workers)
    if args.images < args.batch_size * (most_warmup + args.batches):
        parser.error(
            f"--images {args.images} is less than one epoch of --batch-size × (--warmup + "
            "--batches) images: the timing would include an epoch's restart of the workers"
        )
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    os.environ.setdefault("LIGHTNING_UDA_CACHE", str(args.data_dir / "cache"))
    roots = make_data(args.data_dir, args.images)
    folders = roots["folders"]
    sizes = {
        f"{name}_png_mb": statistics.mean(p.stat().st_size for p in folders.glob(pattern)) / 1e6
        for name, pattern in (
            ("gta5", "gta5/images/*.png"),
            ("cityscapes", "cityscapes/leftImg8bit/train/*/*.png"),
        )
    }
    # The configurations run --repeats times in turn and each keeps its median, so a change of
    # load on a shared machine does not fall on one configuration only.
    configs = [
        (storage, rcs, workers)
        for storage in roots
        for rcs in (False, True)
        for workers in args.workers
    ]
    runs: dict[tuple, list[tuple[float, float]]] = {config: [] for config in configs}
    for repeat in range(args.repeats):
        for storage, rcs, workers in configs:
            # Warm-up until every worker has delivered its prefetched batches (the queue then
            # holds only what the workers produce while the loop runs).
            warmup = args.warmup if args.warmup is not None else 2 + 2 * workers
            dm = datamodule(roots[storage], workers, args.batch_size, rcs)
            runs[storage, rcs, workers].append(loader_rate(dm, warmup, args.batches))
            rate = runs[storage, rcs, workers][-1][0]
            print(f"[{repeat}] {storage:8s} rcs={rcs!s:5s} workers={workers}: {rate:6.1f} img/s")
    rows = []
    for (storage, rcs, workers), results in runs.items():
        rates = [rate for rate, _ in results]
        row = {"storage": storage, "rcs": rcs, "workers": workers}
        row |= {"images_s": statistics.median(rates), "images_s_runs": rates}
        if workers == 0:
            row["source_reads_per_image"] = statistics.mean(reads for _, reads in results)
        rows.append(row)
    stages = {storage: stage_times(root, 10) for storage, root in roots.items()}
    print("\n| storage | RCS | " + " | ".join(f"{w} workers" for w in args.workers) + " |")
    print("|---|---|" + "---|" * len(args.workers))
    for storage in roots:
        for rcs in (False, True):
            rates = [r["images_s"] for r in rows if r["storage"] == storage and r["rcs"] == rcs]
            cells = " | ".join(f"{rate:.1f}" for rate in rates)
            print(f"| {storage} | {'on' if rcs else 'off'} | {cells} |")
    print(f"\nCPU ms per item, one process: {json.dumps(stages)}; PNG sizes {sizes}")
    result = {
        "command": "python benchmarks/data_loading.py "
        + " ".join(
            f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in vars(args).items()
            if k in ("workers", "batches", "warmup", "batch_size", "repeats", "images", "threads")
            and v is not None
        ),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_average_1_5_15": os.getloadavg(),  # other jobs on the machine share its CPUs
        },
        "batch": f"{args.batch_size} source + {args.batch_size} target",
        "rows": rows,
        "stages": stages,
        "sizes": sizes,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
