"""HRDA's multi-resolution segmentor: its forwards against the fusion of their own parts and
hand-averaged sliding windows, the inputs it refuses, the DeepLab-v2 head and checkpoints."""

from __future__ import annotations

import pytest
import torch

from lightning_uda.models import HRDA, build_segmentor, fuse_scales, load_checkpoint


@pytest.fixture(scope="module")
def hrda() -> HRDA:
    torch.manual_seed(0)
    return build_segmentor("hrda", 3, encoder="mit_b0", detail_size=(32, 32)).eval()


def test_training_forward_is_the_fusion_of_its_own_parts(hrda):
    x = torch.randn(2, 3, 64, 64)
    out = hrda.forward_train(x, box=(16, 48, 32, 64))
    assert out.box == (16, 48, 32, 64)
    assert out.fused.shape == (2, 3, 16, 16) and out.context.shape == (2, 3, 8, 8)
    assert out.detail.shape == (2, 3, 8, 8) and out.attention.shape == (2, 3, 8, 8)
    assert 0 <= float(out.attention.detach().min()) <= float(out.attention.detach().max()) <= 1
    # the detail logits are the head on the detail crop at full resolution
    torch.testing.assert_close(out.detail, hrda.decode(hrda.extract_features(x[..., 16:48, 32:64])))
    torch.testing.assert_close(
        out.fused, fuse_scales(out.context, out.detail, out.attention, box=(4, 12, 8, 16))
    )


def test_full_resolution_detail_logits_average_the_windows_on_the_fused_grid(hrda):
    # 64×96 input, 32×32 windows every 16 px: 3 × 5 windows, averaged on the 16×24 grid (1/4)
    x = torch.randn(1, 3, 64, 96)
    total = torch.zeros(1, 3, 16, 24)
    count = torch.zeros(1, 1, 16, 24)
    for top in (0, 16, 32):
        for left in (0, 16, 32, 48, 64):
            logits = hrda.decode(hrda.extract_features(x[..., top : top + 32, left : left + 32]))
            total[..., top // 4 : top // 4 + 8, left // 4 : left // 4 + 8] += logits
            count[..., top // 4 : top // 4 + 8, left // 4 : left // 4 + 8] += 1
    expected = total / count
    torch.testing.assert_close(hrda.sliding_detail_logits(x), expected)
    hrda.detail_window_batch = 4  # bounded memory: the same average (eval-mode BatchNorm)
    try:
        torch.testing.assert_close(hrda.sliding_detail_logits(x), expected)
    finally:
        hrda.detail_window_batch = None
    # and the inference forward fuses them with the context over the whole input (no box)
    small = torch.nn.functional.interpolate(x, scale_factor=0.5, mode="bilinear")
    features = hrda.extract_features(small)
    fused = fuse_scales(hrda.decode(features), expected, hrda.attend(features))
    torch.testing.assert_close(hrda(x), fused)


def test_inputs_hrda_cannot_take_are_refused(hrda):
    with pytest.raises(ValueError, match=r"16×64 is smaller than the detail window 32×32"):
        hrda(torch.zeros(1, 3, 16, 64))
    with pytest.raises(ValueError, match="divisible by 8"):
        hrda(torch.zeros(1, 3, 68, 64))
    with pytest.raises(ValueError, match="not divisible by 8"):
        hrda.forward_train(torch.zeros(1, 3, 64, 64), box=(4, 36, 0, 32))
    with pytest.raises(ValueError, match=r"detail crop 32×32 is larger than the training crop"):
        hrda.forward_train(torch.zeros(1, 3, 16, 64))


def test_deeplabv2_head_has_stride_8_and_boxes_divisible_by_16():
    model = build_segmentor("hrda", 3, head="deeplabv2", encoder="resnet18", detail_size=(32, 32))
    assert model.crop_coord_divisible == 16
    out = model.eval().forward_train(torch.randn(1, 3, 64, 64), box=(16, 48, 32, 64))
    assert out.fused.shape == (1, 3, 8, 8) and out.detail.shape == (1, 3, 4, 4)
    with pytest.raises(ValueError, match="style='torchvision'"):
        build_segmentor("hrda", 3, head="deeplabv2", encoder="resnet18", style="caffe")
    with pytest.raises(TypeError, match="unexpected keyword"):
        build_segmentor("hrda", 3, encoder="mit_b0", no_such_option=1)


def test_hrda_and_single_scale_checkpoints_do_not_load_into_each_other(hrda):
    daformer = build_segmentor("daformer", 3, encoder="mit_b0")
    with pytest.raises(RuntimeError, match="is an HRDA .* Build the model with arch='hrda'"):
        load_checkpoint(daformer, hrda.state_dict())
    with pytest.raises(RuntimeError, match="single-scale segmentor .* strict=False"):
        load_checkpoint(hrda, daformer.state_dict())
    # its own state dict and a MiT encoder file still load
    assert load_checkpoint(hrda, hrda.state_dict()).target == "model"
    assert load_checkpoint(hrda, daformer.encoder.state_dict()).target == "encoder"
