"""Layer-wise learning rates against the formula, and VFM-UDA's warm-up + linear schedule."""

from __future__ import annotations

import pytest
import torch

from lightning_uda.models import build_segmentor
from lightning_uda.optim import layer_decay_param_groups, warmup_linear_factor


@pytest.fixture(scope="module")
def segmentor():
    return build_segmentor("vfm", num_classes=3, encoder="dinov2_vits14_reg")


def test_block_i_of_n_gets_lr_times_mult_times_decay_to_the_n_minus_i(segmentor):
    lr, mult, decay, depth = 1e-5, 0.1, 0.9, 12
    groups = layer_decay_param_groups(segmentor, lr=lr, encoder_lr_mult=mult, decay=decay)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(segmentor.parameters()))  # each param once
    encoder = segmentor.encoder
    for i in range(1, depth + 1):  # block i (1-based) is blocks[i - 1]
        for p in encoder.blocks[i - 1].parameters():
            assert lr_of[id(p)] == pytest.approx(lr * mult * decay ** (depth - i))
    assert lr_of[id(next(encoder.blocks[-1].parameters()))] == pytest.approx(1e-6)  # deepest
    deepest = lr * mult * decay**depth  # the embeddings: 1e-6 · 0.9^12 = 2.82e-7
    for p in (encoder.cls_token, encoder.reg_token, encoder.pos_embed, segmentor.mask_token,
              encoder.patch_embed.proj.weight, encoder.norm.weight):  # fmt: skip
        assert lr_of[id(p)] == pytest.approx(deepest)
    for p in segmentor.head.parameters():
        assert lr_of[id(p)] == pytest.approx(lr)


def test_groups_drive_adamw_and_refuse_non_vits():
    groups = layer_decay_param_groups(
        build_segmentor("vfm", num_classes=3, encoder="dinov2_vits14"), lr=1.0, decay=0.5
    )
    optimizer = torch.optim.AdamW(groups, lr=123.0)
    assert [g["lr"] for g in optimizer.param_groups][:3] == [1.0, 0.1, 0.05]  # head, 12, 11
    with pytest.raises(TypeError, match="blocks"):
        layer_decay_param_groups(build_segmentor("tiny_unet", num_classes=3), lr=1.0)


def test_warmup_then_linear_matches_the_reference_schedule():
    # warm-up: linspace(1e-3, 1, 1500); then linspace(1, 0, 40001)[1500:]
    assert warmup_linear_factor(0, 40_000, 1500) == pytest.approx(1e-3)
    assert warmup_linear_factor(749, 40_000, 1500) == pytest.approx(1e-3 + 0.999 * 749 / 1499)
    assert warmup_linear_factor(1499, 40_000, 1500) == pytest.approx(1.0)
    assert warmup_linear_factor(1500, 40_000, 1500) == pytest.approx(1 - 1500 / 40_000)
    assert warmup_linear_factor(40_000, 40_000, 1500) == 0.0
    assert warmup_linear_factor(50_000, 40_000, 1500) == 0.0
