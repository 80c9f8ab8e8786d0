"""Tests for lightning_uda/models/deeplabv2.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from lightning_uda.models import DeepLabV2
from lightning_uda.models.deeplabv2 import ASPPClassifier, _torchvision_weights


@pytest.fixture(scope="module")
def small_multi_level() -> DeepLabV2:
    torch.manual_seed(0)
    return DeepLabV2(num_classes=5, encoder="resnet18", multi_level=True).eval()


@pytest.mark.parametrize(("size", "expected"), [((64, 64), (8, 8)), ((65, 72), (9, 9))])
def test_output_stride_8(size: tuple[int, int], expected: tuple[int, int]) -> None:
    model = DeepLabV2(num_classes=5, encoder="resnet18").eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, *size))
    assert out.shape == (2, 5, *expected)


def test_resnet101_default_shapes_and_structure() -> None:
    model = DeepLabV2(num_classes=19, dilations=(6, 12, 18, 24)).eval()
    assert model.encoder.name == "resnet101"
    assert len(model.encoder.layer3) == 23  # ResNet-101: 3, 4, 23, 3 blocks
    assert [b.in_channels for b in model.classifier.branches] == [2048] * 4
    assert [b.dilation for b in model.classifier.branches] == [(d, d) for d in (6, 12, 18, 24)]
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 19, 8, 8)


@pytest.mark.parametrize("dilations", [(6, 12), (6, 12, 18, 24), (3,)])
def test_aspp_branches_follow_dilations(dilations: tuple[int, ...]) -> None:
    model = DeepLabV2(num_classes=4, encoder="resnet18", dilations=dilations, multi_level=True)
    for classifier, in_channels in ((model.classifier, 512), (model.aux_classifier, 256)):
        branches = list(classifier.branches)
        assert len(branches) == len(dilations)
        for branch, dilation in zip(branches, dilations, strict=True):
            assert branch.kernel_size == (3, 3)
            assert branch.dilation == (dilation, dilation)
            assert branch.padding == (dilation, dilation)  # keeps the spatial size
            assert branch.in_channels == in_channels
            assert branch.out_channels == 4
            assert branch.bias is not None


def test_aspp_is_sum_of_dilated_convs() -> None:
    torch.manual_seed(0)
    classifier = ASPPClassifier(in_channels=6, num_classes=3, dilations=(1, 2, 4))
    x = torch.randn(2, 6, 10, 10)
    expected = sum(
        F.conv2d(x, branch.weight, branch.bias, padding=d, dilation=d)
        for branch, d in zip(classifier.branches, (1, 2, 4), strict=True)
    )
    with torch.no_grad():
        torch.testing.assert_close(classifier(x), expected)


def test_aspp_weight_init_normal_0_01() -> None:
    torch.manual_seed(0)
    classifier = ASPPClassifier(in_channels=512, num_classes=19, dilations=(6, 12))
    for branch in classifier.branches:  # 87,552 samples each: the std is within ~1%
        assert abs(branch.weight.std().item() - 0.01) < 5e-4
        assert abs(branch.weight.mean().item()) < 2e-4


@pytest.mark.parametrize("encoder", ["resnet18", "resnet101"])
def test_encoder_dilation_2_then_4(encoder: str) -> None:
    resnet = DeepLabV2(num_classes=3, encoder=encoder).encoder
    for layer_name, dilation in (("layer1", 1), ("layer2", 1), ("layer3", 2), ("layer4", 4)):
        convs = [m for m in getattr(resnet, layer_name).modules() if isinstance(m, nn.Conv2d)]
        three_by_three = [c for c in convs if c.kernel_size == (3, 3)]
        assert three_by_three
        assert all(c.dilation == (dilation, dilation) for c in three_by_three), layer_name
        assert all(c.padding == (dilation, dilation) for c in three_by_three), layer_name
        if dilation > 1:  # the stride-2 of layer3/layer4 is replaced by the dilation
            assert all(c.stride == (1, 1) for c in convs), layer_name


def test_encoder_keys_match_torchvision_resnet() -> None:
    # So that a torchvision/ImageNet ResNet state dict loads into `.encoder`.
    encoder = DeepLabV2(num_classes=3, encoder="resnet18").encoder
    reference = torchvision.models.resnet18().state_dict()
    assert set(encoder.state_dict()) == {k for k in reference if not k.startswith("fc.")}


def test_forward_multi_main_and_aux(small_multi_level: DeepLabV2) -> None:
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        main, aux = small_multi_level.forward_multi(x)
        plain = small_multi_level(x)
    assert small_multi_level.multi_level is True
    assert main.shape == aux.shape == (2, 5, 8, 8)
    torch.testing.assert_close(plain, main)  # forward returns the main output only
    assert not torch.allclose(main, aux)


def test_single_level_has_no_aux() -> None:
    model = DeepLabV2(num_classes=3, encoder="resnet18")
    assert model.multi_level is False
    assert model.aux_classifier is None
    with pytest.raises(RuntimeError, match="multi_level=True"):
        model.forward_multi(torch.randn(1, 3, 32, 32))


def test_bn_affine_frozen_by_default() -> None:
    frozen = DeepLabV2(num_classes=3, encoder="resnet18")
    trainable = DeepLabV2(num_classes=3, encoder="resnet18", freeze_bn_affine=False)
    for model, bn_grad in ((frozen, False), (trainable, True)):
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                assert all(p.requires_grad is bn_grad for p in module.parameters())
            elif isinstance(module, nn.Conv2d):
                assert module.weight.requires_grad


def test_imagenet_maps_to_torchvision_v1_weights() -> None:
    # Resolving the enum downloads nothing; only constructing with it would.
    assert _torchvision_weights("resnet50", None) is None
    weights = _torchvision_weights("resnet50", "imagenet")
    assert weights is torchvision.models.ResNet50_Weights.IMAGENET1K_V1


def test_errors() -> None:
    with pytest.raises(ValueError, match="resnet101"):
        DeepLabV2(num_classes=3, encoder="vgg16")
    with pytest.raises(ValueError, match="encoder_weights"):
        DeepLabV2(num_classes=3, encoder="resnet18", encoder_weights="coco")
    with pytest.raises(ValueError, match="dilations"):
        DeepLabV2(num_classes=3, encoder="resnet18", dilations=())
    with pytest.raises(ValueError, match="num_classes"):
        DeepLabV2(num_classes=0, encoder="resnet18")
