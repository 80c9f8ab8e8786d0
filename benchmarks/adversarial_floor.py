"""The least step time AdvEnt's exact update can take, as a ratio to a SourceOnly step.

An AdvEnt (or AdaptSegNet) iteration runs the segmentor twice, forward and backward (source CE,
then the adversarial loss on the target): about 2× a SourceOnly step. On top of that the
discriminator, whatever the implementation, has to

* run forward on the B target maps and back-propagate to its input (the adversarial gradient);
* run forward and backward on the 2B maps of its own step (source and target, weight gradients).

This script counts that discriminator work in floating-point operations against a SourceOnly
forward + backward of the same segmentor, crop and batch (``torch.utils.flop_counter``: exact and
independent of the machine's load), and times it, on maps of the crop size (AdvEnt's D sees the
input-resolution maps) in the layout the library uses (channels-last), against a SourceOnly step
of ``benchmarks/step_time.py``. It prints ``floor = 2 + D / SourceOnly`` for both. Measured
times follow the operation count only as far as D's convolutions run as efficiently as the
segmentor's, and a shared machine's drift moves them by 10–20%; the count does not move.

    python benchmarks/adversarial_floor.py --threads 1
    python benchmarks/adversarial_floor.py --threads 1 --encoder resnet101
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path


def discriminator_ms(args: argparse.Namespace) -> dict[str, float]:
    """Median milliseconds of D's two phases per iteration, per output level."""
    import torch

    from lightning_uda.models import Discriminator

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    fmt = torch.channels_last
    disc = Discriminator(in_channels=args.num_classes).to(memory_format=fmt)
    size = (args.batch_size, args.num_classes, args.size, args.size)

    def target_pass() -> None:  # D frozen, gradient to its input
        maps = torch.rand(size).contiguous(memory_format=fmt).requires_grad_()
        for p in disc.parameters():
            p.requires_grad_(False)
        disc(maps).mean().backward()
        for p in disc.parameters():
            p.requires_grad_(True)

    def discriminator_step() -> None:  # both domains, weight gradients, detached maps
        maps = torch.rand((2 * size[0],) + size[1:]).contiguous(memory_format=fmt)
        disc(maps).mean().backward()
        disc.zero_grad(set_to_none=True)

    times: dict[str, list[float]] = {"target_pass": [], "discriminator_step": []}
    for i in range(args.warmup + args.repeats):
        phases = (("target_pass", target_pass), ("discriminator_step", discriminator_step))
        for name, phase in phases:
            start = time.perf_counter()
            phase()
            if i >= args.warmup:
                times[name].append(1000 * (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in times.items()}


def flop_counts(args: argparse.Namespace) -> dict[str, float]:
    """GFLOP of a SourceOnly forward + backward and of D's two phases (one output level)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from lightning_uda.losses import cross_entropy
    from lightning_uda.models import Discriminator, build_segmentor

    kwargs = {"encoder": args.encoder} if args.encoder else {}
    model = build_segmentor(args.arch, num_classes=args.num_classes, **kwargs).train()
    images = torch.randn(args.batch_size, 3, args.size, args.size)
    labels = torch.randint(0, args.num_classes, (args.batch_size, args.size, args.size))
    disc = Discriminator(in_channels=args.num_classes)
    maps = torch.rand(args.batch_size, args.num_classes, args.size, args.size)

    def count(fn) -> float:  # noqa: ANN001
        with FlopCounterMode(display=False) as counter:
            fn()
        return counter.get_total_flops() / 1e9

    def source_only() -> None:
        cross_entropy(model(images), labels).backward()

    def target_pass() -> None:
        for p in disc.parameters():
            p.requires_grad_(False)
        disc(maps.clone().requires_grad_()).mean().backward()
        for p in disc.parameters():
            p.requires_grad_(True)

    def discriminator_step() -> None:
        disc(torch.cat([maps, maps])).mean().backward()

    return {
        "source_only": count(source_only),
        "target_pass": count(target_pass),
        "discriminator_step": count(discriminator_step),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="deeplabv2")
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--num-classes", type=int, default=19)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--json", type=Path, default=Path(__file__).parent / "results" / "adversarial_floor.json"
    )
    args = parser.parse_args()

    flops = flop_counts(args)
    d_flops = flops["target_pass"] + flops["discriminator_step"]
    d = discriminator_ms(args)
    cmd = [sys.executable, str(Path(__file__).parent / "step_time.py"), "--method", "source_only"]
    for option in ("arch", "encoder", "size", "batch_size", "threads", "warmup"):
        cmd += [f"--{option.replace('_', '-')}", str(getattr(args, option))]
    cmd += ["--steps", str(args.repeats)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        print(out.stderr[-3000:], file=sys.stderr)
        raise SystemExit("the SourceOnly run failed")
    source_only_ms = 1000 * json.loads(out.stdout.strip().splitlines()[-1])["step_s"]
    d_ms = d["target_pass"] + d["discriminator_step"]
    result = {
        "config": f"{args.arch}/{args.encoder} {args.size}², batch {args.batch_size}"
        f"+{args.batch_size}, {args.threads} thread(s), one output level",
        "discriminator_target_pass_ms": d["target_pass"],
        "discriminator_step_ms": d["discriminator_step"],
        "source_only_step_ms": source_only_ms,
        "discriminator_ratio": d_ms / source_only_ms,
        "advent_floor_ratio": 2 + d_ms / source_only_ms,
        "gflop": flops,
        "discriminator_flop_ratio": d_flops / flops["source_only"],
        "advent_floor_flop_ratio": 2 + d_flops / flops["source_only"],
    }
    print(
        f"{result['config']}: D {flops['target_pass']:.1f} + {flops['discriminator_step']:.1f} "
        f"GFLOP, SourceOnly {flops['source_only']:.1f} GFLOP -> D = "
        f"{result['discriminator_flop_ratio']:.2f}× SourceOnly; AdvEnt's exact update >= "
        f"{result['advent_floor_flop_ratio']:.2f}× SourceOnly in operations"
    )
    print(
        f"{result['config']}: D {d['target_pass']:.0f} + {d['discriminator_step']:.0f} ms, "
        f"SourceOnly step {source_only_ms:.0f} ms -> D = {result['discriminator_ratio']:.2f}× "
        f"SourceOnly; AdvEnt's exact update >= {result['advent_floor_ratio']:.2f}× SourceOnly"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
