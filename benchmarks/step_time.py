"""Training-step time and peak memory of each method, as ratios to SourceOnly (one run).

Every method runs in its own subprocess (so peak memory is its own) on the same model, crop and
batch, with in-memory random data (data loading is not timed). Time is the median of the timed
steps after warm-up (on CUDA, synchronised); peak memory is ``torch.cuda.max_memory_allocated`` on
a GPU, and the growth of the process' peak RSS during training on the CPU.

    python benchmarks/step_time.py                       # CPU: DeepLabV2-ResNet18, 256×256
    python benchmarks/step_time.py --arch deeplabv2 --encoder resnet101 --size 512 --device cuda
    python benchmarks/step_time.py --arch daformer --encoder mit_b5 --size 512 --device cuda \
        --precision bf16-mixed --methods source_only dacs daformer mic

DAFormer and MIC run with their recipe's strategies (ImageNet feature distance on, whose frozen
encoder copy costs one more encoder forward on the source batch, pseudo-label crop, AdamW); the
model is the one given here for every method, so the ratios isolate the method's own cost.

Prints a markdown table and writes ``benchmarks/results/step_time.json``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

METHODS = [
    "source_only",
    "dacs",
    "classmix",
    "minent",
    "advent",
    "adaptseg",
    "mcc",
    "dann",
    "fda",
    "lsd_seg",
    "daformer",
    "mic",
]


def _module_class(name: str) -> Any:
    from lightning_uda import methods

    return {
        "source_only": methods.SourceOnlyModule,
        "dacs": methods.DACSModule,
        "classmix": methods.ClassMixModule,
        "minent": methods.MinEntModule,
        "advent": methods.AdvEntModule,
        "mcc": methods.MCCModule,
        "adaptseg": methods.AdaptSegNetModule,
        "dann": methods.DANNModule,
        "fda": methods.FDAModule,
        "lsd_seg": methods.LSDSegModule,
        "daformer": methods.DAFormerModule,
        "mic": methods.MICModule,
    }[name]


def measure(args: argparse.Namespace) -> dict[str, float]:
    """Run one method in this process and return its median step time and peak memory."""
    import torch
    from lightning.pytorch import Callback, Trainer, seed_everything
    from torch.utils.data import Dataset

    from lightning_uda.data import UDADataModule

    torch.set_num_threads(args.threads)
    seed_everything(0, verbose=False)
    num_classes = 19

    class RandomScenes(Dataset):
        classes = [str(i) for i in range(num_classes)]

        def __init__(self, n: int) -> None:
            g = torch.Generator().manual_seed(n)
            self.images = torch.randn(n, 3, args.size, args.size, generator=g)
            # blocky labels so ClassMix has several classes per image
            coarse = torch.randint(0, num_classes, (n, 1, 8, 8), generator=g).float()
            self.masks = torch.nn.functional.interpolate(coarse, size=args.size).long()[:, 0]

        def __len__(self) -> int:
            return len(self.images)

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            return {"image": self.images[i], "mask": self.masks[i]}

    class StepTimer(Callback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.rss_before = 0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
            if batch_idx == 0:  # model and data exist; optimiser state and activations don't
                if torch.cuda.is_available():
                    torch.cuda.reset_peak_memory_stats()
                self.rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self._start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            if batch_idx >= args.warmup:
                self.times.append(time.perf_counter() - self._start)

    n = args.batch_size * (args.warmup + args.steps)
    datamodule = UDADataModule(
        source=RandomScenes(n),
        target=RandomScenes(n),
        val=RandomScenes(1),
        batch_size=args.batch_size,
        num_workers=0,
    )
    model_kwargs = (
        {"arch": args.arch, "encoder": args.encoder} if args.encoder else {"arch": args.arch}
    )
    module = _module_class(args.method)(num_classes=num_classes, **model_kwargs)
    timer = StepTimer()
    trainer = Trainer(
        accelerator=args.device,
        devices=1,
        max_steps=args.warmup + args.steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[timer],
        precision=args.precision,
    )
    trainer.fit(module, datamodule=datamodule)
    if torch.cuda.is_available() and args.device != "cpu":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:  # ru_maxrss is in KiB on Linux
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - timer.rss_before) / 1024
    return {"step_s": statistics.median(timer.times), "peak_mb": peak_mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--arch", default="deeplabv2")
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--size", type=int, default=256, help="square crop side")
    parser.add_argument("--batch-size", type=int, default=2, help="per domain (DACS: 2)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--json", type=Path, default=Path(__file__).parent / "results" / "step_time.json"
    )
    parser.add_argument("--method", help=argparse.SUPPRESS)  # internal: run one method, print JSON
    args = parser.parse_args()

    if args.method:
        print(json.dumps(measure(args)))
        return

    results: dict[str, dict[str, float]] = {}
    for method in args.methods:
        options = ["arch", "encoder", "size", "batch_size", "warmup", "steps", "device"]
        options += ["precision", "threads"]
        cmd = [sys.executable, __file__, "--method", method]
        for option in options:
            cmd += [f"--{option.replace('_', '-')}", str(getattr(args, option))]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            print(out.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"{method} failed")
        results[method] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{method}: {results[method]}", file=sys.stderr, flush=True)

    base = results.get("source_only")
    header = (
        f"{args.arch}/{args.encoder} {args.size}×{args.size}, batch {args.batch_size}"
        f"+{args.batch_size}, {args.device}, {args.precision}"
    )
    print(f"\n### Step time and peak memory ({header})\n")
    print("| method | step (ms) | × SourceOnly | peak memory (MiB) | × SourceOnly |")
    print("|---|---:|---:|---:|---:|")
    for method, r in results.items():
        t_ratio = r["step_s"] / base["step_s"] if base else float("nan")
        m_ratio = r["peak_mb"] / base["peak_mb"] if base and base["peak_mb"] > 0 else float("nan")
        r["time_ratio"], r["memory_ratio"] = t_ratio, m_ratio
        print(
            f"| {method} | {1000 * r['step_s']:.0f} | {t_ratio:.2f} | {r['peak_mb']:.0f} | "
            f"{m_ratio:.2f} |"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"config": header, "results": results}, indent=2))


if __name__ == "__main__":
    main()
