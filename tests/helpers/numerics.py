"""Comparing two computations that are equal up to the order of floating-point additions.

Two programs that compute the same sums in another order (gradients folded into SGD's momentum
buffer after each backward instead of summed by autograd; a channels-last map instead of a
contiguous one; windows batched instead of looped) agree only up to rounding, and how far apart
they end up depends on the CPU's kernels: AVX-512, AVX2 and the default kernels block their sums
differently (``ATEN_CPU_CAPABILITY`` chooses among them). A tolerance tuned to what one machine
printed fails on another. So such tests compare **float64** runs (``Trainer(precision="64-true")``)
with a tolerance derived from float64's precision:

- what reassociation leaves after a few training steps is about ``κ · eps`` relative, with
  ``eps = 2.2e-16`` and ``κ`` how much a few steps amplify a rounding (1–2 ulp in our runs);
- a real difference between the two updates is at least its smallest term, e.g. one step of
  weight decay ``lr · λ`` (≥ 1e-7 relative in any recipe here), or a missed gradient term;
- ``sqrt(eps) ≈ 1.5e-8`` (relative to the tensor's largest magnitude) lies about seven orders of
  magnitude above the first and one below the second, on every kernel set.

In float32 the same gap does not exist (``eps32 = 1.2e-7``: four steps of rounding already reach
1e-6 on AVX2), which is why a float32 comparison with a constant tolerance was machine-dependent.
Tests that run *the same* computation twice (resume, DDP ranks) stay bit-exact (``torch.equal``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor


def reassociation_tolerance(reference: Tensor) -> float:
    """Absolute tolerance for ``reference``: ``sqrt(eps)`` of its dtype × its largest magnitude
    (at least 1, so tensors near zero are compared at ``sqrt(eps)``)."""
    scale = max(1.0, float(reference.detach().abs().max())) if reference.numel() else 1.0
    return math.sqrt(torch.finfo(reference.dtype).eps) * scale


def assert_equal_up_to_reassociation(
    actual: Mapping[str, Tensor], expected: Mapping[str, Tensor]
) -> None:
    """Assert that two float64 results (e.g. two state dicts) agree up to float reassociation.

    Floating-point tensors must be float64 (a float32 comparison cannot tell rounding from a
    small real difference, see the module docstring); integer tensors (BatchNorm's
    ``num_batches_tracked``) must be equal.
    """
    assert actual.keys() == expected.keys(), sorted(set(actual) ^ set(expected))
    for name, want in expected.items():
        got = actual[name]
        if not want.is_floating_point():
            assert torch.equal(got, want), name
            continue
        if want.dtype != torch.float64 or got.dtype != torch.float64:
            raise AssertionError(
                f"{name}: compare float64 runs (Trainer(precision='64-true')), got "
                f"{got.dtype} and {want.dtype}"
            )
        tolerance = reassociation_tolerance(want)
        torch.testing.assert_close(
            got, want, rtol=0.0, atol=tolerance, msg=lambda m, n=name: f"{n}: {m}"
        )
