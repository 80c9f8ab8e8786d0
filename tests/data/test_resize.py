"""Tests for lightning_uda/data/resize.py: evaluation at a fixed shorter side."""

from __future__ import annotations

import numpy as np
import pytest

from lightning_uda.data.resize import short_side_val_transform
from lightning_uda.normalization import CAFFE


@pytest.mark.parametrize(("shape", "expected"), [((300, 400), (96, 128)), ((400, 300), (128, 96))])
def test_shorter_side_keeps_the_aspect_and_the_full_mask(shape, expected):
    image = np.zeros((*shape, 3), np.uint8)
    mask = np.arange(shape[0] * shape[1]).reshape(shape).astype(np.uint8)
    out = short_side_val_transform(96)(image=image, mask=mask)
    assert tuple(out["image"].shape[1:]) == expected  # 3×H×W, 96 on the shorter side
    assert (np.asarray(out["mask"]) == mask).all()  # "full": the labels untouched


def test_dacs_protocol_resizes_the_mask_nearest_and_records_the_space():
    mask = np.zeros((200, 100), np.uint8)
    mask[:, 50:] = 7  # right half
    out = short_side_val_transform(50, protocol="dacs")(
        image=np.zeros((200, 100, 3), np.uint8), mask=mask
    )
    assert out["mask"].shape == (100, 50) and set(np.unique(out["mask"])) == {0, 7}
    assert short_side_val_transform(8, normalization="caffe").normalization == CAFFE
    with pytest.raises(ValueError, match="protocol"):
        short_side_val_transform(8, protocol="nearest")
    with pytest.raises(ValueError, match="positive"):
        short_side_val_transform(0)
