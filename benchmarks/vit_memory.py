"""Peak memory and step time of a DINOv2 ViT segmentor with and without activation checkpointing.

One training step = forward of ``build_segmentor("vfm", ...)`` on a random batch, CE against
random labels, backward, AdamW step (the segmentor's own cost, as in a SourceOnly step). Each
setting runs in its own subprocess so its peak is its own.

- FLOPs first (``torch.utils.flop_counter.FlopCounterMode``, one step each way): checkpointing
  recomputes every block's forward in the backward pass, so the ratio of the two counts is the
  floor of the step-time ratio (about 4/3 when a backward costs twice its forward).
- Peak memory on the CPU: the RSS high-water mark over the training steps (reset through
  ``/proc/self/clear_refs`` once the model is built) minus the RSS before them, with
  ``MALLOC_MMAP_THRESHOLD_=65536`` so that glibc returns freed blocks of 64 KiB or more and RSS
  follows the live tensors (as in ``benchmarks/step_time.py``); it includes the gradients and
  AdamW's two moment buffers, which checkpointing does not change. On CUDA:
  ``torch.cuda.max_memory_allocated``.
- Step time: the median of the timed steps after ``--warmup`` steps; with ``--repeats R`` the
  two settings run R times in turn and each keeps the median of its runs. On a loaded machine
  the separate runs see different loads; ``--paired-only --paired N`` times N pairs of adjacent
  steps of one model (checkpointing toggled, order alternated) and adds the median ratio to the
  results file.

    python benchmarks/vit_memory.py --threads 1                 # CPU: ViT-B, 512², batch 2
    python benchmarks/vit_memory.py --device cuda --batch 8 --size 1024 --precision bf16

512² inputs are resized inside the model to 504² (``input_scale=1.0``: the largest multiple of
14). Prints a table and writes ``benchmarks/results/vit_memory.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]


def _model(args: argparse.Namespace, checkpointing: bool, device: str) -> torch.nn.Module:
    from lightning_uda.models import build_segmentor

    return build_segmentor(
        "vfm",
        num_classes=19,
        encoder=args.encoder,
        head=args.head,
        input_scale=1.0,
        gradient_checkpointing=checkpointing,
    ).to(device)


def _step(model, optimizer, images, labels, precision: str) -> None:
    dtype = torch.bfloat16 if precision == "bf16" else None
    with torch.autocast(images.device.type, dtype=dtype, enabled=dtype is not None):
        logits = model(images)
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear")
        loss = F.cross_entropy(logits.float(), labels)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def count_flops(args: argparse.Namespace, checkpointing: bool) -> float:
    """Floating-point operations of one forward + backward (batch ``args.batch``)."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    model = _model(args, checkpointing, "cpu")
    images = torch.randn(args.batch, 3, args.size, args.size)
    labels = torch.randint(0, 19, (args.batch, args.size, args.size))
    counter = FlopCounterMode(display=False)
    with counter:
        logits = F.interpolate(model(images), size=labels.shape[-2:], mode="bilinear")
        F.cross_entropy(logits, labels).backward()
    return float(counter.get_total_flops())


def _status_kib(field: str) -> int:
    """A ``/proc/self/status`` memory field in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak_rss() -> int:
    """Reset the process' RSS high-water mark (so a transient peak while building the model
    does not hide the step's) and return the current RSS in KiB."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kib("VmRSS")


def measure(args: argparse.Namespace, checkpointing: bool) -> dict[str, float]:
    """One setting, in this process: median step time and peak memory growth."""
    torch.manual_seed(0)
    device = args.device
    model = _model(args, checkpointing, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    images = torch.randn(args.batch, 3, args.size, args.size, device=device)
    labels = torch.randint(0, 19, (args.batch, args.size, args.size), device=device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    before = _reset_peak_rss()
    times = []
    for i in range(args.warmup + args.steps):
        start = time.perf_counter()
        _step(model, optimizer, images, labels, args.precision)
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = (_status_kib("VmHWM") - before) / 1024
    return {"step_s": statistics.median(times), "peak_mb": peak, "steps": len(times)}


def paired_times(args: argparse.Namespace) -> list[float]:
    """Step-time ratios on/off from adjacent steps of one model (checkpointing toggled between
    them), so that a change of load on a shared machine falls on both steps of a pair."""
    torch.manual_seed(0)
    model = _model(args, False, args.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    images = torch.randn(args.batch, 3, args.size, args.size, device=args.device)
    labels = torch.randint(0, 19, (args.batch, args.size, args.size), device=args.device)
    ratios = []
    for pair in range(args.warmup + args.paired):
        times = {}
        for mode in ("off", "on") if pair % 2 == 0 else ("on", "off"):  # alternate the order
            model.encoder.set_grad_checkpointing(mode == "on")
            start = time.perf_counter()
            _step(model, optimizer, images, labels, args.precision)
            if args.device == "cuda":
                torch.cuda.synchronize()
            times[mode] = time.perf_counter() - start
        if pair >= args.warmup:
            ratios.append(times["on"] / times["off"])
            print(f"pair {pair}: off {times['off']:.2f} s, on {times['on']:.2f} s", flush=True)
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="dinov2_vitb14")
    parser.add_argument("--head", default="light", choices=["light", "pyramid"])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="32", choices=["32", "bf16"])
    parser.add_argument("--repeats", type=int, default=1, help="off/on runs, alternating")
    parser.add_argument(
        "--paired", type=int, default=0, help="also time N adjacent off/on step pairs"
    )
    parser.add_argument(
        "--paired-only", action="store_true", help="only the pairs, added to --output"
    )
    parser.add_argument("--skip-flops", action="store_true")
    parser.add_argument("--child", choices=["off", "on"], help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks/results/vit_memory.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(measure(args, checkpointing=args.child == "on")))
        return
    if args.paired_only:
        ratios = paired_times(args)
        summary = json.loads(args.output.read_text())
        summary["paired_step_time_ratios"] = ratios
        summary["paired_step_time_ratio"] = statistics.median(ratios)
        args.output.write_text(json.dumps(summary, indent=2) + "\n")
        print(f"step time ×{summary['paired_step_time_ratio']:.3f} (median of {len(ratios)} pairs)")
        return
    flops = {}
    if not args.skip_flops:
        flops = {mode: count_flops(args, mode == "on") for mode in ("off", "on")}
    results = {}
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": str(args.threads)}
    forwarded = [a for a in sys.argv[1:] if a not in ("--skip-flops",)]
    runs: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
    for _ in range(args.repeats):  # alternating, so a change of load falls on both
        for mode in ("off", "on"):
            done = subprocess.run(
                [sys.executable, __file__, *forwarded, "--child", mode],
                capture_output=True, text=True, env=env, cwd=ROOT, check=True,
            )  # fmt: skip
            runs[mode].append(json.loads(done.stdout.strip().splitlines()[-1]))
    for mode, measured in runs.items():
        results[mode] = {
            "step_s": statistics.median(r["step_s"] for r in measured),
            "peak_mb": max(r["peak_mb"] for r in measured),
            "step_s_runs": [r["step_s"] for r in measured],
            "steps": measured[0]["steps"],
        }
    summary = {
        "settings": {k: v for k, v in vars(args).items() if k not in ("child", "output")},
        "torch": torch.__version__,
        "checkpointing_off": results["off"],
        "checkpointing_on": results["on"],
        "peak_reduction": 1 - results["on"]["peak_mb"] / results["off"]["peak_mb"],
        "step_time_ratio": results["on"]["step_s"] / results["off"]["step_s"],
    }
    if not flops and args.output.is_file():  # --skip-flops: keep a count of the same setting
        previous = json.loads(args.output.read_text())
        same = ("encoder", "head", "size", "batch")
        if all(previous["settings"].get(k) == getattr(args, k) for k in same):
            flops = {m: previous.get(f"gflops_{m}", 0) * 1e9 for m in ("off", "on")}
            flops = flops if all(flops.values()) else {}
    if flops:
        summary["gflops_off"] = flops["off"] / 1e9
        summary["gflops_on"] = flops["on"] / 1e9
        summary["flop_ratio_floor"] = flops["on"] / flops["off"]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(summary, indent=2) + "\n")
    print("| checkpointing | peak MiB | step s |")
    print("|---|---|---|")
    for mode in ("off", "on"):
        print(f"| {mode} | {results[mode]['peak_mb']:.0f} | {results[mode]['step_s']:.2f} |")
    print(
        f"peak memory -{summary['peak_reduction']:.0%}, step time ×{summary['step_time_ratio']:.2f}"
        + (f" (FLOP floor ×{summary['flop_ratio_floor']:.3f})" if flops else "")
    )


if __name__ == "__main__":
    main()
