"""Teacher BatchNorm on the demo: train mode (batch statistics, as DACS/ClassMix/DAFormer) vs
eval mode (running statistics), for DACS and ClassMix over several seeds.

    python benchmarks/teacher_bn.py [--seeds 0 1 2] [--modes train eval] [--methods dacs classmix]

Prints a markdown table of target-val mIoU and writes ``benchmarks/results/teacher_bn.json``
(merged with earlier results, so modes can run in separate processes).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from lightning_uda.demo import run_method

RESULTS = Path(__file__).resolve().parent / "results" / "teacher_bn.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--modes", nargs="+", default=["train", "eval"])
    parser.add_argument("--methods", nargs="+", default=["dacs", "classmix"])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    for method in args.methods:
        for mode in args.modes:
            for seed in args.seeds:
                result = run_method(
                    method,
                    steps=args.steps,
                    seed=seed,
                    progress_bar=False,
                    overrides={"teacher_bn": mode},
                )
                print(
                    f"{method} teacher_bn={mode} seed {seed}: target {result.target_val_miou:.1f} "
                    f"source {result.source_val_miou:.1f} ({result.wall_time_s:.0f} s)",
                    flush=True,
                )
                # re-read before writing: another process may have added its rows meanwhile
                table = json.loads(args.output.read_text()) if args.output.exists() else {}
                table.setdefault(f"{method}/{mode}", {})[str(seed)] = {
                    "target_val_miou": result.target_val_miou,
                    "source_val_miou": result.source_val_miou,
                    "steps": args.steps,
                }
                args.output.parent.mkdir(parents=True, exist_ok=True)
                args.output.write_text(json.dumps(table, indent=2, sort_keys=True))
    print(format_table(json.loads(args.output.read_text())))


def format_table(table: dict) -> str:
    lines = [
        "| method | teacher BatchNorm | target-val mIoU (seeds) | mean | source-val mean |",
        "|---|---|---:|---:|---:|",
    ]
    for key in sorted(table):
        method, mode = key.split("/")
        runs = [table[key][s] for s in sorted(table[key])]
        target = [r["target_val_miou"] for r in runs]
        source = [r["source_val_miou"] for r in runs]
        lines.append(
            f"| {method} | {mode} | {' / '.join(f'{t:.1f}' for t in target)} | "
            f"{statistics.mean(target):.1f} | {statistics.mean(source):.1f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
