"""The least step time AdvEnt's exact update can take, as a ratio to a SourceOnly step.

An AdvEnt (or AdaptSegNet) iteration runs the segmentor twice, forward and backward (source CE,
then the adversarial loss on the target): about 2× a SourceOnly step. On top of that the
discriminator, whatever the implementation, has to

* run forward on the B target maps and back-propagate to its input (the adversarial gradient);
* run forward and backward on the 2B maps of its own step (source and target, weight gradients).

This script times exactly that discriminator work, on maps of the crop size (AdvEnt's D sees the
input-resolution maps), in the layout the library uses (channels-last), and a SourceOnly step of
``benchmarks/step_time.py`` with the same model, crop, batch and threads, and prints
``floor = 2 + D / SourceOnly``. A measured AdvEnt ratio near the floor has no overhead left
beyond the algorithm's own arithmetic.

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
    }
    print(
        f"{result['config']}: D {d['target_pass']:.0f} + {d['discriminator_step']:.0f} ms, "
        f"SourceOnly step {source_only_ms:.0f} ms -> D = {result['discriminator_ratio']:.2f}× "
        f"SourceOnly; AdvEnt's exact update >= {result['advent_floor_ratio']:.2f}× SourceOnly"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
