"""Tests for lightning_uda/models/segmentor.py."""

from __future__ import annotations

from typing import Any

import pytest
import segmentation_models_pytorch as smp
import torch
from torch import nn

from lightning_uda.models import (
    DeepLabV2,
    TinyUNet,
    build_segmentor,
    parameter_groups,
)
from lightning_uda.normalization import get_normalization

# --- build_segmentor --------------------------------------------------------------------------


def test_build_deeplabv2_passes_options() -> None:
    model = build_segmentor(
        "deeplabv2",
        num_classes=7,
        encoder="resnet18",
        dilations=(6, 12, 18, 24),
        multi_level=True,
    )
    assert isinstance(model, DeepLabV2)
    assert model.multi_level is True
    assert model.encoder.name == "resnet18"
    assert len(model.classifier.branches) == 4
    with torch.no_grad():
        main, aux = model.eval().forward_multi(torch.randn(1, 3, 64, 64))
    assert main.shape == aux.shape == (1, 7, 8, 8)


def test_build_deeplabv2_defaults_to_resnet101_dacs_head() -> None:
    model = build_segmentor("deeplabv2", num_classes=19)
    assert model.encoder.name == "resnet101"
    assert model.classifier.dilations == (6, 12)
    assert model.multi_level is False
    assert model.style == "torchvision"


def test_build_deeplabv2_caffe_style() -> None:
    model = build_segmentor("deeplabv2", num_classes=5, encoder="resnet18", style="caffe")
    assert model.style == model.encoder.style == "caffe"
    assert model.encoder.maxpool.ceil_mode is True
    with pytest.raises(ValueError, match="style='caffe'.*checkpoint=PATH"):
        build_segmentor(
            "deeplabv2",
            num_classes=5,
            encoder="resnet18",
            encoder_weights="imagenet",
            style="caffe",
        )
    with pytest.raises(TypeError, match="style"):  # not an smp option
        build_segmentor("unet", num_classes=5, encoder="resnet18", style="caffe")


@pytest.mark.parametrize(
    ("arch", "kwargs", "expected"),
    [
        ("tiny_unet", {}, "imagenet"),
        ("deeplabv2", {"encoder": "resnet18"}, "imagenet"),
        ("deeplabv2", {"encoder": "resnet18", "style": "torchvision"}, "imagenet"),
        ("deeplabv2", {"encoder": "resnet18", "style": "caffe"}, "caffe"),
        ("unet", {"encoder": "resnet18"}, "imagenet"),
        ("fpn", {"encoder": "resnet18"}, "imagenet"),
    ],
)
def test_input_normalization_attribute(arch: str, kwargs: dict[str, Any], expected: str) -> None:
    model = build_segmentor(arch, num_classes=3, **kwargs)
    assert model.input_normalization == expected
    assert get_normalization(model.input_normalization).name == expected  # a known space
    assert "input_normalization" not in "".join(model.state_dict())  # not saved as a tensor


def test_build_smp_architecture() -> None:
    model = build_segmentor(
        "Unet", num_classes=3, encoder="resnet18", decoder_channels=(32, 16, 8, 8, 8)
    )
    assert isinstance(model, smp.Unet)
    assert hasattr(model, "encoder")
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 3, 64, 64)


def test_smp_encoder_weights_default_none_and_imagenet_passes_through(monkeypatch) -> None:
    calls: list[dict[str, Any]] = []

    def fake_create_model(arch: str, **kwargs: Any) -> nn.Module:
        calls.append({"arch": arch, **kwargs})
        return TinyUNet(num_classes=kwargs["classes"])

    monkeypatch.setattr(smp, "create_model", fake_create_model)
    build_segmentor("fpn", num_classes=5)
    build_segmentor("fpn", num_classes=5, encoder="resnet50", encoder_weights="imagenet")
    assert calls[0] == {
        "arch": "fpn",
        "encoder_name": "resnet34",
        "encoder_weights": None,
        "classes": 5,
    }
    assert calls[1]["encoder_name"] == "resnet50"
    assert calls[1]["encoder_weights"] == "imagenet"


def test_unknown_arch_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match="unknown segmentor arch 'segnet'") as info:
        build_segmentor("segnet", num_classes=3)
    for name in ("tiny_unet", "deeplabv2", "unet", "deeplabv3plus"):
        assert name in str(info.value)


@pytest.mark.parametrize(
    ("arch", "kwargs"),
    [
        ("tiny_unet", {"widht": 8}),
        ("deeplabv2", {"encoder": "resnet18", "aspp_dilations": (6,)}),
        ("unet", {"encoder": "resnet18", "decoder_chanels": (8,)}),
    ],
)
def test_unknown_kwargs_raise_type_error(arch: str, kwargs: dict[str, Any]) -> None:
    bad = next(k for k in kwargs if k != "encoder")
    with pytest.raises(TypeError, match=f"unexpected keyword argument.*{bad}.*accepts"):
        build_segmentor(arch, num_classes=3, **kwargs)


def test_option_errors() -> None:
    with pytest.raises(ValueError, match="fixed encoder"):
        build_segmentor("tiny_unet", num_classes=3, encoder="resnet18")
    with pytest.raises(ValueError, match="no pretrained weights"):
        build_segmentor("tiny_unet", num_classes=3, encoder_weights="imagenet")
    with pytest.raises(ValueError, match="logits"):
        build_segmentor("unet", num_classes=3, encoder="resnet18", activation="softmax2d")
    with pytest.raises(ValueError, match="resnet1800"):
        build_segmentor("unet", num_classes=3, encoder="resnet1800")


# --- parameter_groups -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "kwargs"),
    [
        ("tiny_unet", {}),
        ("deeplabv2", {"encoder": "resnet18", "multi_level": True}),
        ("unet", {"encoder": "resnet18"}),
    ],
)
def test_parameter_groups_partition(arch: str, kwargs: dict[str, Any]) -> None:
    model = build_segmentor(arch, num_classes=3, **kwargs)
    backbone, head = parameter_groups(model)
    ids = [id(p) for p in backbone + head]
    assert len(ids) == len(set(ids))  # nothing twice
    assert set(ids) == {id(p) for p in model.parameters()}  # nothing left out
    assert {id(p) for p in backbone} == {id(p) for p in model.encoder.parameters()}
    assert head  # classifier at least
    encoder_param_ids = {id(p) for p in model.encoder.parameters()}
    assert all(id(p) not in encoder_param_ids for p in head)


def test_parameter_groups_head_is_everything_but_encoder() -> None:
    model = build_segmentor("deeplabv2", num_classes=3, encoder="resnet18", multi_level=True)
    _, head = parameter_groups(model)
    expected = [
        *model.classifier.parameters(),
        *model.aux_classifier.parameters(),
    ]
    assert [id(p) for p in head] == [id(p) for p in expected]


def test_parameter_groups_needs_encoder() -> None:
    with pytest.raises(TypeError, match="encoder"):
        parameter_groups(nn.Linear(2, 2))
