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


# --- style="caffe": the Caffe DeepLab-v2 ResNet layout ---------------------------------------


def test_caffe_style_65x65_logits_at_512() -> None:
    # The Caffe layout's ceil-mode max-pool keeps one more row and column: 512 -> 256 -> 129
    # (torchvision: 128) -> 65 (torchvision: 64).
    caffe = DeepLabV2(num_classes=3, encoder="resnet18", style="caffe").eval()
    torchvision_layout = DeepLabV2(num_classes=3, encoder="resnet18").eval()
    x = torch.zeros(1, 3, 512, 512)
    with torch.no_grad():
        assert caffe(x).shape == (1, 3, 65, 65)
        for model, size in ((caffe, 129), (torchvision_layout, 128)):  # stem only: cheap
            encoder = model.encoder
            stem = encoder.maxpool(encoder.relu(encoder.bn1(encoder.conv1(x))))
            assert stem.shape[-2:] == (size, size)


def test_caffe_style_bottleneck_output_size() -> None:
    # conv1 ⌈H/2⌉, max-pool ⌈(h - 1)/2⌉ + 1 (Caffe, ceil) or ⌊(h - 1)/2⌋ + 1, layer2 ⌈h/2⌉.
    models = {
        style: DeepLabV2(num_classes=2, encoder="resnet50", style=style).eval()
        for style in ("caffe", "torchvision")
    }
    cases = [((64, 64), (9, 9), (8, 8)), ((48, 40), (7, 6), (6, 5)), ((33, 41), (5, 6), (5, 6))]
    with torch.no_grad():
        for size, caffe, torchvision_layout in cases:
            x = torch.zeros(1, 3, *size)
            assert models["caffe"](x).shape[-2:] == caffe, size
            assert models["torchvision"](x).shape[-2:] == torchvision_layout, size


@pytest.mark.parametrize("encoder", ["resnet50", "resnet101"])
def test_caffe_style_stride_on_first_1x1_conv(encoder: str) -> None:
    caffe = DeepLabV2(num_classes=3, encoder=encoder, style="caffe").encoder
    torchvision_layout = DeepLabV2(num_classes=3, encoder=encoder).encoder
    block, tv_block = caffe.layer2[0], torchvision_layout.layer2[0]
    assert block.conv1.kernel_size == (1, 1) and block.conv1.stride == (2, 2)
    assert block.conv2.kernel_size == (3, 3) and block.conv2.stride == (1, 1)
    assert block.downsample[0].stride == (2, 2)  # the projection keeps its stride
    assert tv_block.conv1.stride == (1, 1) and tv_block.conv2.stride == (2, 2)
    assert tv_block.downsample[0].stride == (2, 2)
    strided = {
        name for name, m in caffe.named_modules() if isinstance(m, nn.Conv2d) and m.stride != (1, 1)
    }
    assert strided == {"conv1", "layer2.0.conv1", "layer2.0.downsample.0"}
    assert caffe.maxpool.ceil_mode is True
    assert (caffe.maxpool.kernel_size, caffe.maxpool.stride, caffe.maxpool.padding) == (3, 2, 1)
    assert torchvision_layout.maxpool.ceil_mode is False
    for module in caffe.modules():  # BatchNorm affine frozen, as in the references
        if isinstance(module, nn.BatchNorm2d):
            assert not any(p.requires_grad for p in module.parameters())
    # same parameter names and shapes: the layouts differ in strides only
    caffe_shapes = {k: v.shape for k, v in caffe.state_dict().items()}
    assert caffe_shapes == {k: v.shape for k, v in torchvision_layout.state_dict().items()}


def test_caffe_style_basic_block_keeps_its_stride_on_conv1() -> None:
    encoder = DeepLabV2(num_classes=3, encoder="resnet18", style="caffe").encoder
    assert encoder.layer2[0].conv1.stride == (2, 2)  # BasicBlock: 3×3 conv1, as in torchvision
    assert encoder.layer2[0].conv2.stride == (1, 1)
    assert encoder.maxpool.ceil_mode is True


def test_style_attributes_and_input_normalization() -> None:
    caffe = DeepLabV2(num_classes=3, encoder="resnet18", style="caffe")
    default = DeepLabV2(num_classes=3, encoder="resnet18")
    assert (caffe.style, caffe.encoder.style, caffe.input_normalization) == (
        "caffe",
        "caffe",
        "caffe",
    )
    assert (default.style, default.input_normalization) == ("torchvision", "imagenet")


def test_caffe_style_refuses_torchvision_imagenet_weights(monkeypatch) -> None:
    def no_download(*args, **kwargs):
        raise AssertionError("the weights must not be resolved")

    monkeypatch.setattr("lightning_uda.models.deeplabv2._torchvision_weights", no_download)
    with pytest.raises(ValueError, match="torchvision layout") as info:
        DeepLabV2(num_classes=3, encoder="resnet18", encoder_weights="imagenet", style="caffe")
    assert "checkpoint=PATH" in str(info.value)
    with pytest.raises(ValueError, match="style must be one of"):
        DeepLabV2(num_classes=3, encoder="resnet18", style="pytorch")
