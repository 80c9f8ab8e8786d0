"""Argument checks shared by the package: one error format for a value out of its range."""

from __future__ import annotations


def check_range(
    owner: str,
    name: str,
    value: float | None,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """Raise ``ValueError`` naming ``owner``'s argument ``name`` if ``value`` is out of range.

    ``None`` values pass (optional arguments). Bounds are inclusive unless ``low_open`` /
    ``high_open``. NaN is always out of range.
    """
    if value is None:
        return
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high or value != value:  # value != value: NaN
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        bounds = f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"
        raise ValueError(f"{owner}: {name} must be in {bounds}, got {value!r}")
