"""Label-free checkpoint selection on the demo: how well each signal ranks checkpoints.

For every method and seed, trains with the demo's own ``run_method`` (same data, module, Trainer
and seed; the measuring callback consumes no training randomness, so the last checkpoint's
target mIoU is the demo table's) and, every ``--every`` steps (a "checkpoint"), measures:

- the labelled target-val mIoU (what the selection should find, never shown to the signals);
- each label-free signal of :mod:`lightning_uda.selection` on unlabelled target-train images
  (the student's softmax; the agreement signal compares it with the EMA teacher's argmax).

Per run it reports, for each signal, Spearman's ρ between the signal (oriented so that higher
is better) and the target mIoU over the checkpoints, and the regret of the checkpoint the signal
would pick (best target mIoU of the run − target mIoU of the picked checkpoint), beside the
regret of simply taking the last checkpoint. Then the means over seeds per method, and per
method family the signal with the lowest mean regret.

    python benchmarks/selection.py                         # every demo method, seeds 0 1 2
    python benchmarks/selection.py --methods dacs fda --seeds 0 --workers 1

Writes ``benchmarks/results/selection.json`` and prints the README tables (markdown).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results" / "selection.json"

#: Method families for the recommendation table.
FAMILIES: dict[str, list[str]] = {
    "self-training": ["classmix", "dacs", "daformer", "mic"],
    "entropy / output alignment": ["minent", "advent", "adaptseg", "mcc"],
    "feature / generative alignment": ["dann", "lsd_seg"],
    "pixel alignment": ["fda"],
    "no adaptation": ["source_only"],
}


def _orient(values: list[float], mode: str) -> list[float]:
    return values if mode == "max" else [-v for v in values]


def _spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    if len(set(a)) < 2 or len(set(b)) < 2:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def run_one(method: str, seed: int, every: int, steps: int, unlabelled: int) -> dict[str, Any]:
    """Train ``method`` with the demo's own ``run_method`` and measure every signal each
    ``every`` steps (a callback that only evaluates, so the training is the demo's)."""
    import torch
    from lightning.pytorch import Callback

    from lightning_uda import selection
    from lightning_uda.demo import run_method

    records: list[dict[str, Any]] = []

    class Measure(Callback):
        def on_fit_start(self, trainer, pl_module) -> None:  # noqa: ANN001
            # The demo's splits, from the run's own datamodule: labelled target val (the
            # reference), unlabelled target train (what the signals see), the source labels.
            data = trainer.datamodule
            self.num_classes = data.num_classes
            self.val_images, self.val_masks = data.val.images, data.val.masks
            self.target_images = data.target.images[:unlabelled]
            source = data.source.masks
            counts = torch.bincount(source[source != 255].flatten(), minlength=self.num_classes)
            self.source_frequencies = counts.double() / counts.sum()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
            step = trainer.global_step
            if step % every or (records and records[-1]["step"] == step):
                return
            k = self.num_classes
            was_training = pl_module.training
            pl_module.eval()
            with torch.no_grad():
                pred = torch.cat(
                    [pl_module.segment(x).argmax(1) for x in self.val_images.split(100)]
                )
                confusion = selection.confusion_matrix(pred, self.val_masks, k)
                miou = float(selection.miou_from_confusion(confusion))
                probs = torch.cat(
                    [torch.softmax(pl_module.segment(x), 1) for x in self.target_images.split(100)]
                )
                signals = {
                    "entropy": float(selection.mean_entropy(probs)),
                    "im": float(selection.information_maximization(probs)),
                    "confident_fraction": float(selection.confident_fraction(probs)),
                    "class_kl": float(
                        selection.class_distribution_kl(probs, self.source_frequencies)
                    ),
                    "snd": float(selection.soft_neighbourhood_density(probs, seed=0)),
                }
                teacher = getattr(pl_module, "teacher", None)
                if teacher is not None:
                    teacher_pred = torch.cat(
                        [
                            pl_module.upsample(teacher(x), tuple(x.shape[-2:])).argmax(1)
                            for x in self.target_images.split(100)
                        ]
                    )
                    signals["agreement"] = float(
                        selection.prediction_agreement(probs.argmax(1), teacher_pred, k)
                    )
            pl_module.train(was_training)
            records.append({"step": step, "target_miou": miou, "signals": signals})

    result = run_method(method, steps=steps, seed=seed, progress_bar=False, callbacks=[Measure()])
    return {
        "method": method,
        "seed": seed,
        "wall_time_s": result.wall_time_s,
        "records": records,
    }


def score(run: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Spearman ρ and regret of each signal for one run, plus the last checkpoint's regret."""
    from lightning_uda.selection import SIGNALS

    records = run["records"]
    mious = [r["target_miou"] for r in records]
    best = max(mious)
    out: dict[str, dict[str, float]] = {"last": {"rho": float("nan"), "regret": best - mious[-1]}}
    for name in records[0]["signals"]:
        values = _orient([r["signals"][name] for r in records], SIGNALS[name][0])
        finite = [v if math.isfinite(v) else -math.inf for v in values]
        picked = max(range(len(finite)), key=lambda i: (finite[i], i))  # ties: the later one
        out[name] = {"rho": _spearman(values, mious), "regret": best - mious[picked]}
    return out


def _mean(values: list[float]) -> float:
    values = [v for v in values if math.isfinite(v)]
    return sum(values) / len(values) if values else float("nan")


def tables(runs: list[dict[str, Any]]) -> str:
    """The README tables: per method (mean over seeds) and the recommendation per family."""
    from lightning_uda.selection import SIGNALS

    by_method: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by_method.setdefault(run["method"], []).append(run)
    names = ["last", *SIGNALS]
    lines = [
        "| method | seeds | best / last target mIoU | "
        + " | ".join(f"{n} ρ / regret" for n in names)
        + " |",
        "|---|---:|---:|" + "---:|" * len(names),
    ]
    summary: dict[str, dict[str, float]] = {}
    for method, method_runs in by_method.items():
        scores = [score(r) for r in method_runs]
        best = _mean([max(r["target_miou"] for r in run["records"]) for run in method_runs])
        last = _mean([run["records"][-1]["target_miou"] for run in method_runs])
        cells = []
        for name in names:
            rho = _mean([s[name]["rho"] for s in scores if name in s])
            regret = _mean([s[name]["regret"] for s in scores if name in s])
            summary.setdefault(method, {})[name] = regret
            if math.isnan(regret):
                cells.append("—")
            else:
                cells.append(("—" if math.isnan(rho) else f"{rho:+.2f}") + f" / {regret:.1f}")
        row = f"| {method} | {len(method_runs)} | {best:.1f} / {last:.1f} | "
        lines.append(row + " | ".join(cells) + " |")
    lines += ["", "| family | methods | lowest mean regret | last checkpoint's regret |"]
    lines.append("|---|---|---|---:|")
    for family, methods in FAMILIES.items():
        present = [m for m in methods if m in summary]
        if not present:
            continue
        regrets = {
            n: _mean([summary[m].get(n, float("nan")) for m in present])
            for n in names
            if n != "last"
        }
        finite = {n: v for n, v in regrets.items() if math.isfinite(v)}
        pick = min(finite, key=finite.get)
        last = _mean([summary[m]["last"] for m in present])
        lines.append(
            f"| {family} | {', '.join(present)} | `val_unsup/{pick}` ({finite[pick]:.1f}) | "
            f"{last:.1f} |"
        )
    return "\n".join(lines)


def demo_table(runs: list[dict[str, Any]]) -> str:
    """The demo's target-val table from the runs' last checkpoints (= ``lightning-uda demo``)."""
    by_method: dict[str, list[float]] = {}
    times: dict[str, list[float]] = {}
    for run in runs:
        by_method.setdefault(run["method"], []).append(run["records"][-1]["target_miou"])
        times.setdefault(run["method"], []).append(run["wall_time_s"])
    base = by_method.get("source_only")
    base_mean = sum(base) / len(base) if base else float("nan")
    lines = [
        "| method | target-val mIoU (per seed) | mean ± std | Δ vs SourceOnly | train time (s) |",
        "|---|---:|---:|---:|---:|",
    ]
    for method, values in by_method.items():
        mean = sum(values) / len(values)
        std = (
            math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
            if len(values) > 1
            else 0.0
        )
        seeds = " / ".join(f"{v:.1f}" for v in values)
        wall = sum(times[method]) / len(times[method])
        lines.append(
            f"| {method} | {seeds} | {mean:.1f} ± {std:.1f} | {mean - base_mean:+.1f} | "
            f"{wall:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    from lightning_uda.demo import DEMO_METHODS, DEMO_STEPS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    methods = [m for m in DEMO_METHODS if m != "oracle"]
    parser.add_argument("--methods", nargs="+", default=methods, choices=methods)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--every", type=int, default=100, help="steps between checkpoints")
    parser.add_argument("--steps", type=int, default=DEMO_STEPS)
    parser.add_argument("--unlabelled", type=int, default=500, help="target-train images")
    parser.add_argument("--workers", type=int, default=2, help="runs at once (1 thread each)")
    parser.add_argument("--json", type=Path, default=RESULTS)
    parser.add_argument("--run", nargs=2, help=argparse.SUPPRESS)  # internal: method seed
    parser.add_argument(
        "--report", action="store_true", help="only print the tables of an existing --json"
    )
    args = parser.parse_args()

    if args.report:
        runs = json.loads(args.json.read_text())["runs"]
        print(demo_table(runs))
        print()
        print(tables(runs))
        return

    if args.run:
        method, seed = args.run[0], int(args.run[1])
        import torch

        torch.set_num_threads(1)
        result = run_one(method, seed, args.every, args.steps, args.unlabelled)
        print(json.dumps(result))
        return

    jobs = [(m, s) for m in args.methods for s in args.seeds]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    running: list[tuple[tuple[str, int], subprocess.Popen]] = []
    runs: list[dict[str, Any]] = []
    options = ["--every", str(args.every), "--steps", str(args.steps)]
    options += ["--unlabelled", str(args.unlabelled)]
    while jobs or running:
        while jobs and len(running) < args.workers:
            method, seed = jobs.pop(0)
            cmd = [sys.executable, __file__, "--run", method, str(seed), *options]
            proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
            )
            running.append(((method, seed), proc))
        time.sleep(1)
        for job, proc in list(running):
            if proc.poll() is None:
                continue
            running.remove((job, proc))
            out, err = proc.communicate()
            if proc.returncode != 0:
                print(err[-3000:], file=sys.stderr)
                raise SystemExit(f"{job} failed")
            result = json.loads(out.strip().splitlines()[-1])
            runs.append(result)
            last = result["records"][-1]["target_miou"]
            print(f"{job[0]} seed {job[1]}: last target mIoU {last:.1f}", file=sys.stderr)
    runs.sort(key=lambda r: (list(DEMO_METHODS).index(r["method"]), r["seed"]))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"every": args.every, "runs": runs}, indent=1))
    print(demo_table(runs))
    print()
    print(tables(runs))


if __name__ == "__main__":
    main()
