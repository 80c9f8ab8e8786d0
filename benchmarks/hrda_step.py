"""HRDA's training step against DAFormer's, at full and at half resolution (one run).

Three runs of the same self-training step (source CE + ImageNet feature distance, EMA-teacher
pseudo-labels, class mix, mixed CE; AdamW; the same MiT encoder and batch):

- ``hrda``: :class:`~lightning_uda.methods.HRDAModule` on ``S×S`` crops: a context view of the
  crop at ×0.5 and an ``S/2`` detail crop, pseudo-labels from the context fused with ``S/2``
  detail windows every ``S/4`` pixels over the whole crop;
- ``daformer_full``: :class:`~lightning_uda.methods.DAFormerModule` on the same ``S×S`` crops,
  i.e. DAFormer trained on the full-resolution crop;
- ``daformer_half``: DAFormer on ``S/2 × S/2`` crops, DAFormer's own half-resolution setting.

For each, the floating-point operations of one whole step (forward, backward, teacher, optimiser)
are counted first with ``torch.utils.flop_counter.FlopCounterMode`` (convolutions, matmuls and
attention; element-wise work is not counted), and of the student's source pass alone (forward
and backward of the source loss): their ratios are the *floors* a measured time ratio can only
approach (a step cannot get cheaper than its arithmetic). Then each run's median step time and
peak memory are measured in a subprocess of its own, as ``benchmarks/step_time.py`` does (on the
CPU the live memory is the RSS growth with ``MALLOC_MMAP_THRESHOLD_=65536``, so that freed blocks
are returned; ``peak_rss_mb`` is the plain RSS of the timing run).

    python benchmarks/hrda_step.py                       # CPU, MiT-B0, 256² crops, fp32
    python benchmarks/hrda_step.py --size 1024 --encoder mit_b5 --device cuda

Prints a markdown table and writes ``benchmarks/results/hrda_step.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RUNS = ("hrda", "daformer_full", "daformer_half")


def _module(run: str, args: argparse.Namespace) -> Any:
    from lightning_uda.methods import DAFormerModule, HRDAModule

    common = dict(
        num_classes=19,
        encoder=args.encoder,
        pseudo_label_crop=(0, 0),  # DAFormer's (15, 120) rows do not fit the small crops
        warmup_steps=0,
    )
    if run == "hrda":
        detail = {
            "detail_size": (args.size // 2, args.size // 2),
            "detail_window_batch": args.detail_window_batch,
        }
        return HRDAModule(model_kwargs=detail, **common)
    return DAFormerModule(arch="daformer", **common)


def _datamodule(run: str, args: argparse.Namespace, steps: int) -> Any:
    import torch
    from torch.utils.data import Dataset

    from lightning_uda.data import UDADataModule

    size = args.size // 2 if run == "daformer_half" else args.size

    class RandomScenes(Dataset):
        classes = [str(i) for i in range(19)]

        def __init__(self, n: int) -> None:
            g = torch.Generator().manual_seed(n)
            self.images = torch.randn(n, 3, size, size, generator=g)
            coarse = torch.randint(0, 19, (n, 1, 8, 8), generator=g).float()
            self.masks = torch.nn.functional.interpolate(coarse, size=size).long()[:, 0]

        def __len__(self) -> int:
            return len(self.images)

        def __getitem__(self, i: int) -> dict[str, Any]:
            return {"image": self.images[i], "mask": self.masks[i]}

    n = args.batch_size * steps
    return UDADataModule(
        source=RandomScenes(n),
        target=RandomScenes(n),
        val=RandomScenes(1),
        batch_size=args.batch_size,
        num_workers=0,
    )


def _trainer(args: argparse.Namespace, steps: int, callbacks: list) -> Any:
    from lightning.pytorch import Trainer

    return Trainer(
        accelerator=args.device,
        devices=1,
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=callbacks,
        precision=args.precision,
    )


def count_flops(run: str, args: argparse.Namespace) -> dict[str, float]:
    """GFLOP of one whole training step and of the student's source forward + backward."""
    import torch
    from lightning.pytorch import seed_everything
    from torch.utils.flop_counter import FlopCounterMode

    seed_everything(0, verbose=False)
    module = _module(run, args)
    data = _datamodule(run, args, steps=1)
    with FlopCounterMode(display=False) as counter:
        _trainer(args, 1, []).fit(module, datamodule=data)
    step = counter.get_total_flops()
    items = [data.source[i] for i in range(args.batch_size)]
    batch = {key: torch.stack([item[key] for item in items]) for key in ("image", "mask")}
    module.log = lambda *a, **k: None  # outside the trainer
    with FlopCounterMode(display=False) as counter:
        module.source_loss(batch).backward()
    source = counter.get_total_flops()
    return {"step_gflop": step / 1e9, "source_gflop": source / 1e9}


def measure(run: str, args: argparse.Namespace) -> dict[str, float]:
    """Median step time and peak memory of ``run`` in this process."""
    import torch
    from lightning.pytorch import Callback, seed_everything

    torch.set_num_threads(args.threads)
    seed_everything(0, verbose=False)

    class StepTimer(Callback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.rss_before = 0
            self.step_kib = 0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
            if batch_idx == 0:
                if torch.cuda.is_available():
                    torch.cuda.reset_peak_memory_stats()
                self.rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            if batch_idx == args.warmup and not torch.cuda.is_available():
                # the step's working memory over the state that persists between steps (model,
                # teacher, optimiser): RSS now, then the high-water mark reset (Linux >= 4.0)
                self._state_kib = _proc_status("VmRSS")
                Path("/proc/self/clear_refs").write_text("5")
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self._start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            if batch_idx >= args.warmup:
                self.times.append(time.perf_counter() - self._start)
            if batch_idx == args.warmup and not torch.cuda.is_available():
                self.step_kib = _proc_status("VmHWM") - self._state_kib

    steps = args.warmup + args.steps
    timer = StepTimer()
    _trainer(args, steps, [timer]).fit(_module(run, args), datamodule=_datamodule(run, args, steps))
    if torch.cuda.is_available() and args.device != "cpu":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:  # ru_maxrss is in KiB on Linux
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - timer.rss_before) / 1024
    return {
        "step_s": statistics.median(timer.times),
        "peak_mb": peak_mb,
        "step_mb": timer.step_kib / 1024,
    }


def _proc_status(key: str) -> int:
    """A ``/proc/self/status`` field in KiB (``VmRSS``: resident now; ``VmHWM``: its peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {key}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="mit_b0")
    parser.add_argument("--size", type=int, default=256, help="HRDA's square training crop")
    parser.add_argument("--batch-size", type=int, default=2, help="per domain (HRDA: 2)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1, help="runs per configuration, in turn")
    parser.add_argument(
        "--json", type=Path, default=Path(__file__).parent / "results" / "hrda_step.json"
    )
    parser.add_argument(
        "--detail-window-batch",
        type=int,
        default=None,
        help="HRDA's sliding detail windows per forward (default: all at once, as HRDA)",
    )
    parser.add_argument(
        "--memory-only",
        action="store_true",
        help="only the memory runs (CPU): no operation count, no timing",
    )
    parser.add_argument("--run", choices=RUNS, help=argparse.SUPPRESS)  # internal
    parser.add_argument("--flops", action="store_true", help=argparse.SUPPRESS)  # internal
    args = parser.parse_args()
    if args.run:
        result = count_flops(args.run, args) if args.flops else measure(args.run, args)
        print(json.dumps(result))
        return

    options = ["encoder", "size", "batch_size", "warmup", "steps", "device", "precision"]
    options += ["threads"] + (["detail_window_batch"] if args.detail_window_batch else [])

    def child(run: str, extra: list[str] = (), live_memory: bool = False) -> dict[str, float]:
        cmd = [sys.executable, __file__, "--run", run, *extra]
        for option in options:
            value = getattr(args, option)
            if live_memory and option == "steps":
                value = 1
            cmd += [f"--{option.replace('_', '-')}", str(value)]
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536") if live_memory else None
        out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
        if out.returncode != 0:
            print(out.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"{run} failed")
        return json.loads(out.stdout.strip().splitlines()[-1])

    on_cpu = args.device == "cpu"
    if args.memory_only:
        memory = {run: child(run, live_memory=True) for run in RUNS}
        for run in RUNS:
            print(f"| {run} | {memory[run]['peak_mb']:.0f} | {memory[run]['step_mb']:.0f} |")
        for key in ("peak_mb", "step_mb"):
            for base in ("daformer_full", "daformer_half"):
                ratio = memory["hrda"][key] / memory[base][key]
                print(f"hrda / {base} {key}: {ratio:.2f}")
        args.json.write_text(json.dumps({"size": args.size, "memory": memory}, indent=2))
        return
    results: dict[str, dict[str, Any]] = {run: child(run, ["--flops"]) for run in RUNS}
    for run in RUNS:
        print(f"{run}: {results[run]}", file=sys.stderr, flush=True)
    timed: dict[str, list[dict[str, float]]] = {run: [] for run in RUNS}
    for _ in range(args.repeats):
        for run in RUNS:
            timed[run].append(child(run))
            print(f"{run}: {timed[run][-1]}", file=sys.stderr, flush=True)
    for run in RUNS:
        r = results[run]
        r["step_s"] = statistics.median(t["step_s"] for t in timed[run])
        r["step_s_runs"] = [t["step_s"] for t in timed[run]]
        memory = statistics.median(t["peak_mb"] for t in timed[run])
        if on_cpu:
            r["peak_rss_mb"] = memory
            live = child(run, live_memory=True)
            r["peak_mb"], r["step_mb"] = live["peak_mb"], live["step_mb"]
        else:
            r["peak_mb"] = memory
    ratios: dict[str, dict[str, float]] = {}
    hrda = results["hrda"]
    for base in ("daformer_full", "daformer_half"):
        other = results[base]
        ratios[f"hrda / {base}"] = {
            key: hrda[key] / other[key]
            for key in ("step_gflop", "source_gflop", "step_s", "peak_mb", "step_mb", "peak_rss_mb")
            if key in hrda and other.get(key)
        }
    header = (
        f"{args.encoder}, HRDA crop {args.size}² (detail {args.size // 2}²), batch "
        f"{args.batch_size}+{args.batch_size}, {args.device}, {args.precision}, {args.threads} "
        f"thread(s), {args.warmup} warm-up + {args.steps} timed steps, {args.repeats} run(s), "
        f"HRDA detail windows per forward: {args.detail_window_batch or 'all'}"
    )
    print(f"\n### HRDA vs DAFormer step ({header})\n")
    print(
        "| run | crop | step GFLOP | source pass GFLOP | step (ms) | peak memory (MiB) | "
        "step working memory (MiB) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for run in RUNS:
        r = results[run]
        crop = args.size // 2 if run == "daformer_half" else args.size
        print(
            f"| {run} | {crop}² | {r['step_gflop']:.1f} | {r['source_gflop']:.1f} | "
            f"{1000 * r['step_s']:.0f} | {r['peak_mb']:.0f} | "
            f"{r.get('step_mb', float('nan')):.0f} |"
        )
    print(
        "\n| ratio | step GFLOP (floor) | source pass GFLOP | step time | peak memory | "
        "step working memory |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in ratios.items():
        print(
            f"| {name} | {r['step_gflop']:.2f} | {r['source_gflop']:.2f} | {r['step_s']:.2f} | "
            f"{r['peak_mb']:.2f} | {r.get('step_mb', float('nan')):.2f} |"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps({"config": header, "results": results, "ratios": ratios}, indent=2)
    )


if __name__ == "__main__":
    main()
