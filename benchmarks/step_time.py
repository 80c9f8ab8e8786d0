"""Training-step time and peak memory of each method, as ratios to SourceOnly (one run).

Every method runs in its own subprocess (so peak memory is its own) on the same model, crop and
batch, with in-memory random data (data loading is not timed). Time is the median of the timed
steps after warm-up (on CUDA, synchronised). With ``--repeats R`` the methods run R times in
turn (SourceOnly, DACS, …, SourceOnly, DACS, …) and each method's time is the median of its R
runs, so a change of load on a shared machine does not fall on one method only.

Peak memory is ``torch.cuda.max_memory_allocated`` on a GPU. On the CPU it is the growth of the
process' peak RSS during training, measured twice:

* ``peak_mb``, the memory the method's tensors need: a second subprocess per method, run with
  ``MALLOC_MMAP_THRESHOLD_=65536`` so that glibc serves every block of 64 KiB or more with its own
  mapping and returns it when freed. RSS then follows the live tensors (as the GPU counter does).
* ``peak_rss_mb``, with the default allocator (the timing run): what ``top`` shows. It also
  counts freed blocks glibc keeps in its heap for reuse, which depends on the order of
  allocations more than on their sizes (SourceOnly: 253 MiB here against 205 MiB live).

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
import inspect
import json
import os
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
    method_class = _module_class(args.method)
    # folding is opt-in and only for momentum SGD (the AdamW methods run unfolded either way)
    fold = args.fold and _default_optimizer(method_class) == "sgd"
    module = method_class(num_classes=num_classes, fold_gradients=fold, **model_kwargs)
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


def _default_optimizer(method_class: type) -> str:
    """The ``optimizer`` default a method class is built with ("sgd" unless it sets another)."""
    for klass in method_class.__mro__:
        if "__init__" in vars(klass):
            parameter = inspect.signature(klass.__init__).parameters.get("optimizer")
            if parameter is not None and parameter.default is not inspect.Parameter.empty:
                return parameter.default
    return "sgd"


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
    parser.add_argument("--repeats", type=int, default=1, help="runs per method, taken in turn")
    parser.add_argument(
        "--fold",
        action="store_true",
        help="fold_gradients=True for the SGD methods: each loss's gradients go into the "
        "momentum buffer after its backward (the modules' default is off)",
    )
    parser.add_argument(
        "--json", type=Path, default=Path(__file__).parent / "results" / "step_time.json"
    )
    parser.add_argument("--method", help=argparse.SUPPRESS)  # internal: run one method, print JSON
    args = parser.parse_args()

    if args.method:
        print(json.dumps(measure(args)))
        return

    options = ["arch", "encoder", "size", "batch_size", "warmup", "steps", "device"]
    options += ["precision", "threads"]

    def run(method: str, live_memory: bool = False) -> dict[str, float]:
        cmd = [sys.executable, __file__, "--method", method]
        cmd += ["--fold"] if args.fold else []
        for option in options:
            value = getattr(args, option)
            if live_memory and option == "steps":
                value = 1  # memory only: the warm-up steps plus one
            cmd += [f"--{option.replace('_', '-')}", str(value)]
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536") if live_memory else None
        out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
        if out.returncode != 0:
            print(out.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"{method} failed")
        return json.loads(out.stdout.strip().splitlines()[-1])

    on_cpu = args.device == "cpu"
    runs: dict[str, list[dict[str, float]]] = {method: [] for method in args.methods}
    for _ in range(args.repeats):
        for method in args.methods:
            runs[method].append(run(method))
            print(f"{method}: {runs[method][-1]}", file=sys.stderr, flush=True)
    results: dict[str, dict[str, float]] = {}
    for method, timed in runs.items():
        timed_memory = statistics.median(r["peak_mb"] for r in timed)
        results[method] = {
            "step_s": statistics.median(r["step_s"] for r in timed),
            "step_s_runs": [r["step_s"] for r in timed],
        }
        if on_cpu:  # the timing runs' RSS; the live memory from a run of its own
            results[method]["peak_rss_mb"] = timed_memory
            results[method]["peak_mb"] = run(method, live_memory=True)["peak_mb"]
            print(f"{method} live memory: {results[method]['peak_mb']:.0f} MiB", file=sys.stderr)
        else:
            results[method]["peak_mb"] = timed_memory

    base = results.get("source_only")
    header = (
        f"{args.arch}/{args.encoder} {args.size}×{args.size}, batch {args.batch_size}"
        f"+{args.batch_size}, {args.device}, {args.precision}, {args.threads} thread(s), "
        f"{args.repeats} run(s) per method"
        + (", fold_gradients=True (SGD methods)" if args.fold else "")
    )
    print(f"\n### Step time and peak memory ({header})\n")
    rss = " peak RSS (MiB) | × SourceOnly |" if on_cpu else ""
    print(f"| method | step (ms) | × SourceOnly | peak memory (MiB) | × SourceOnly |{rss}")
    print("|---|---:|---:|---:|---:|" + ("---:|---:|" if on_cpu else ""))
    for method, r in results.items():
        ratios = {}
        for key, name in (("step_s", "time"), ("peak_mb", "memory"), ("peak_rss_mb", "rss")):
            if key in r:
                ok = base and base[key] > 0
                ratios[name] = r[key] / base[key] if ok else float("nan")
                r[f"{name}_ratio"] = ratios[name]
        row = (
            f"| {method} | {1000 * r['step_s']:.0f} | {ratios['time']:.2f} | {r['peak_mb']:.0f} | "
            f"{ratios['memory']:.2f} |"
        )
        if on_cpu:
            row += f" {r['peak_rss_mb']:.0f} | {ratios['rss']:.2f} |"
        print(row)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"config": header, "results": results}, indent=2))


if __name__ == "__main__":
    main()
