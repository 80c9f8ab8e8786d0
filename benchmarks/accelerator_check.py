"""One-command accelerator check: step time, peak memory and loss of the main recipes' networks
in each precision / memory-format / compile mode, on one GPU, in a few minutes.

    python benchmarks/accelerator_check.py                 # a GPU: the real networks, ≤ 8 min
    python benchmarks/accelerator_check.py --tiny          # any machine: tiny networks, seconds

For every *case* (a method on its recipe's network, crop and batch: DACS on DeepLabV2-R101,
512², 2 + 2; DAFormer on MiT-B5, 512², 2 + 2; HRDA on MiT-B5, 1024², and VFM-UDA on a DINOv2
ViT-B/14, 512², when those architectures are registered) and every *variant*:

- ``fp32``: ``precision="32-true"``;
- ``bf16``: ``precision="bf16-mixed"`` (autocast; weights and optimiser stay fp32);
- ``bf16+cl``: bf16 with the segmentor and the images in ``channels_last`` memory format;
- ``bf16+compile``: bf16 with the segmentor compiled (``nn.Module.compile``, TorchInductor),
  where it compiles (a failure is recorded, not raised);

it trains a fresh module, from the same seed on the same random batches, through Lightning's
``Trainer`` (the code path of a real run) and records the median time of the steps after the
warm-up (synchronised on CUDA), the peak memory (``torch.cuda.max_memory_allocated``; on a CPU
the growth of the process's peak RSS, which only grows: read the first variant's only) and the
loss of every step. The losses show that the faster variants compute the same thing: after a
few identical steps bf16 differs from fp32 by its rounding (a relative 1e-3–1e-2), never by a
different trajectory. A case whose method or architecture is missing is listed as skipped; a
variant the time budget (``--budget-s``) no longer allows is skipped too, so the command ends
in time. Results: one JSON (``--json``) and a printed markdown table.

Extend :data:`CASES` (and :data:`TINY_CASES`, the CPU form run by the test suite) to check
another recipe's network.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True)
class Case:
    """A method on its recipe's network: the module class (by name in
    :mod:`lightning_uda.methods`), its architecture and encoder, the crop side and the batch
    per domain, and further module arguments."""

    name: str
    method: str
    arch: str
    encoder: str | None
    size: int
    batch: int
    kwargs: dict[str, Any] = field(default_factory=dict)


#: The recipes' networks at their crop and batch (the GPU run).
CASES: list[Case] = [
    Case("dacs", "DACSModule", "deeplabv2", "resnet101", 512, 2),
    Case("daformer", "DAFormerModule", "daformer", "mit_b5", 512, 2),
    Case("hrda", "HRDAModule", "hrda", "mit_b5", 1024, 2),
    Case("vfm_uda", "VFMUDAModule", "vfm", "dinov2_vitb14", 512, 2),
]

#: The same code path on tiny networks, for a CPU (the test suite runs it).
TINY_CASES: list[Case] = [
    Case("dacs", "DACSModule", "deeplabv2", "resnet18", 64, 1),
    Case("daformer", "DAFormerModule", "daformer", "mit_b0", 64, 1, {"pseudo_label_crop": (0, 0)}),
]

#: Variant name → (Lightning precision, channels_last, compile).
VARIANTS: dict[str, tuple[str, bool, bool]] = {
    "fp32": ("32-true", False, False),
    "bf16": ("bf16-mixed", False, False),
    "bf16+cl": ("bf16-mixed", True, False),
    "bf16+compile": ("bf16-mixed", False, True),
}

NUM_CLASSES = 19


class _RandomScenes(torch.utils.data.Dataset):
    """``n`` fixed random images with blocky labels (ClassMix needs several classes each)."""

    classes = [str(i) for i in range(NUM_CLASSES)]

    def __init__(self, n: int, size: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, size, size, generator=g)
        coarse = torch.randint(0, NUM_CLASSES, (n, 1, 8, 8), generator=g).float()
        self.masks = torch.nn.functional.interpolate(coarse, size=size).long()[:, 0]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[i], "mask": self.masks[i]}


def skip_reason(case: Case) -> str | None:
    """Why ``case`` cannot run here (its method or architecture is missing), else ``None``."""
    from lightning_uda import methods
    from lightning_uda.models.segmentor import valid_archs

    if not hasattr(methods, case.method):
        return f"no method {case.method} in lightning_uda.methods"
    if case.arch not in valid_archs():
        return f"architecture {case.arch!r} is not registered in build_segmentor"
    return None


def run_variant(case: Case, variant: str, device: str, warmup: int, steps: int) -> dict[str, Any]:
    """Train ``case`` for ``warmup + steps`` steps in ``variant``: times, memory and losses."""
    from lightning.pytorch import Callback, Trainer, seed_everything

    from lightning_uda import methods
    from lightning_uda.data import UDADataModule

    precision, channels_last, compile_model = VARIANTS[variant]
    seed_everything(0, verbose=False)
    total = warmup + steps
    n = case.batch * total
    datamodule = UDADataModule(
        source=_RandomScenes(n, case.size, seed=1),
        target=_RandomScenes(n, case.size, seed=2),
        val=_RandomScenes(1, case.size, seed=3),
        batch_size=case.batch,
        num_workers=0,
    )
    module = getattr(methods, case.method)(
        num_classes=NUM_CLASSES, arch=case.arch, encoder=case.encoder, **case.kwargs
    )
    if channels_last:
        module.model.to(memory_format=torch.channels_last)
    if compile_model:
        module.model.compile()

    class Probe(Callback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.losses: list[float] = []
            self.rss_before = 0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
            if channels_last:
                for domain in batch.values():
                    domain["image"] = domain["image"].contiguous(memory_format=torch.channels_last)
            if batch_idx == 0:
                if device == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                self.rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            if device == "cuda":
                torch.cuda.synchronize()
            self._start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
            if device == "cuda":
                torch.cuda.synchronize()
            if batch_idx >= warmup:
                self.times.append(time.perf_counter() - self._start)
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            self.losses.append(float(loss) if loss is not None else math.nan)

    probe = Probe()
    trainer = Trainer(
        accelerator=device,
        devices=1,
        max_steps=total,
        precision=precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[probe],
    )
    trainer.fit(module, datamodule=datamodule)
    if device == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:  # ru_maxrss is in KiB on Linux
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - probe.rss_before) / 1024
    return {
        "step_s": statistics.median(probe.times) if probe.times else math.nan,
        "peak_mb": peak_mb,
        "losses": probe.losses,
    }


def run_check(
    cases: list[Case],
    variants: list[str],
    device: str,
    warmup: int = 3,
    steps: int = 10,
    budget_s: float = 420.0,
) -> list[dict[str, Any]]:
    """Every case × variant: one row each, ``status`` ``"ok"``, ``"skipped"`` or ``"failed"``."""
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    for case in cases:
        reason = skip_reason(case)
        for variant in variants:
            row: dict[str, Any] = {"case": case.name, "variant": variant, **asdict(case)}
            elapsed = time.perf_counter() - start
            if reason is None and elapsed > budget_s:
                row.update(status="skipped", reason=f"time budget ({elapsed:.0f} s used)")
            elif reason is not None:
                row.update(status="skipped", reason=reason)
            else:
                try:
                    row.update(status="ok", **run_variant(case, variant, device, warmup, steps))
                except Exception as error:  # a variant that does not compile here, an OOM
                    if not VARIANTS[variant][2] and not _out_of_memory(error):
                        raise
                    row.update(status="failed", reason=f"{type(error).__name__}: {error}"[:300])
                finally:
                    _release(device)
            rows.append(row)
    return rows


def _out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error)


def _release(device: str) -> None:
    import gc

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    if hasattr(torch, "_dynamo"):
        torch._dynamo.reset()


def relative_loss_difference(losses: list[float], reference: list[float]) -> float:
    """``max_i |losses_i − reference_i| / |reference_i|`` over the steps (same length)."""
    pairs = zip(losses, reference, strict=True)
    return max(abs(a - b) / max(abs(b), 1e-12) for a, b in pairs)


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: time and memory per variant, its last loss, and the largest relative difference
    of its per-step losses from fp32's ("max rel. Δ loss")."""
    fp32 = {r["case"]: r["losses"] for r in rows if r["variant"] == "fp32" and r["status"] == "ok"}
    header = (
        "| case | variant | step (ms) | × fp32 | peak (MiB) | last loss | max rel. Δ loss vs fp32 |"
    )
    lines = [header, "|---|---|---:|---:|---:|---:|---:|"]
    base = {r["case"]: r["step_s"] for r in rows if r["variant"] == "fp32" and r["status"] == "ok"}
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['case']} | {r['variant']} | {r['status']}: {r['reason']} |||||")
            continue
        reference = fp32.get(r["case"])
        delta = (
            max(
                abs(a - b) / max(abs(b), 1e-12) for a, b in zip(r["losses"], reference, strict=True)
            )
            if reference
            else math.nan
        )
        speed = base[r["case"]] / r["step_s"] if r["case"] in base else math.nan
        lines.append(
            f"| {r['case']} | {r['variant']} | {1000 * r['step_s']:.0f} | {speed:.2f} | "
            f"{r['peak_mb']:.0f} | {r['losses'][-1]:.4f} | {delta:.2e} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny networks (CPU, seconds)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if present)")
    parser.add_argument("--cases", nargs="+", default=None, help="case names (default: all)")
    parser.add_argument("--variants", nargs="+", default=None, choices=list(VARIANTS))
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps (default 3)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 10)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="skip variants after it")
    parser.add_argument(
        "--json", type=Path, default=Path(__file__).parent / "results" / "accelerator_check.json"
    )
    args = parser.parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cases = TINY_CASES if args.tiny else CASES
    if args.cases:
        unknown = sorted(set(args.cases) - {c.name for c in cases})
        if unknown:
            parser.error(f"unknown case(s) {unknown}; choose from {[c.name for c in cases]}")
        cases = [c for c in cases if c.name in args.cases]
    # compiling needs a C++ compiler on a CPU and minutes: the tiny form leaves it out
    variants = args.variants or [v for v in VARIANTS if not (args.tiny and VARIANTS[v][2])]
    warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 3)
    steps = args.steps if args.steps is not None else (2 if args.tiny else 10)
    if device == "cpu":
        torch.set_num_threads(min(torch.get_num_threads(), 4))
    rows = run_check(cases, variants, device, warmup=warmup, steps=steps, budget_s=args.budget_s)
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    report = {
        "device": name,
        "torch": torch.__version__,
        "warmup": warmup,
        "steps": steps,
        "rows": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(f"device: {name}, torch {torch.__version__}, {warmup} warm-up + {steps} timed steps")
    print(table(rows))
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
