"""Input spaces against hand-computed pixels (ImageNet RGB and the Caffe BGR mean-only space)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_uda.normalization import CAFFE, IMAGENET, get_normalization

PIXEL_RGB = (10, 128, 250)


def _image(pixel=PIXEL_RGB) -> np.ndarray:
    return np.array(pixel, dtype=np.uint8).reshape(1, 1, 3)


def test_caffe_space_is_bgr_0_255_minus_mean():
    out = CAFFE.normalize_uint8(_image())[0, 0]
    # channel 0 is blue: 250 − 104.00698793, channel 2 is red: 10 − 122.67891434
    np.testing.assert_allclose(
        out, [250 - 104.00698793, 128 - 116.66876762, 10 - 122.67891434], rtol=0, atol=1e-4
    )


def test_imagenet_space_is_rgb_01_standardised():
    out = IMAGENET.normalize_uint8(_image())[0, 0]
    expected = [
        (10 / 255 - 0.485) / 0.229,
        (128 / 255 - 0.456) / 0.224,
        (250 / 255 - 0.406) / 0.225,
    ]
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("space", [IMAGENET, CAFFE])
def test_tensor_and_numpy_paths_agree_and_invert(space):
    rgb = torch.rand(2, 3, 4, 5)
    tensors = space.normalize(rgb)
    torch.testing.assert_close(space.denormalize(tensors), rgb, atol=1e-5, rtol=0)
    pixels = (rgb[0] * 255).round().byte().permute(1, 2, 0).numpy()
    from_numpy = torch.from_numpy(space.normalize_uint8(pixels)).permute(2, 0, 1)
    torch.testing.assert_close(
        space.normalize(torch.from_numpy(pixels).permute(2, 0, 1) / 255.0),
        from_numpy,
        atol=1e-4,
        rtol=0,
    )
    assert space.to_uint8(space.normalize(rgb[:1].round() if False else rgb[:1])).shape == (
        1,
        4,
        5,
        3,
    )


def test_get_normalization_names_and_errors():
    assert get_normalization(None) is IMAGENET
    assert get_normalization("Caffe") is CAFFE
    assert get_normalization(CAFFE) is CAFFE
    with pytest.raises(ValueError, match="imagenet"):
        get_normalization("bgr")
