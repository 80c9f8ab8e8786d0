"""Tests for lightning_uda/models/segmentor.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from lightning_uda.models import (
    DeepLabV2,
    TinyUNet,
    build_segmentor,
    load_checkpoint,
    parameter_groups,
)
from lightning_uda.normalization import get_normalization


def _trained_tiny_unet(seed: int, num_classes: int = 4) -> TinyUNet:
    """A TinyUNet with non-default BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    model = build_segmentor("tiny_unet", num_classes=num_classes)
    with torch.no_grad():
        model.train()(torch.randn(4, 3, 32, 32) * 3 + 1)  # moves the running statistics
    return model.eval()


# --- TinyUNet ---------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(32, 32), (64, 64), (37, 50)])
def test_tiny_unet_full_resolution_logits(size: tuple[int, int]) -> None:
    model = build_segmentor("tiny_unet", num_classes=11)
    assert isinstance(model, TinyUNet)
    out = model(torch.randn(2, 3, *size))
    assert out.shape == (2, 11, *size)


def test_tiny_unet_is_small_with_bn_relu() -> None:
    model = TinyUNet(num_classes=11)
    assert 10_000 < sum(p.numel() for p in model.parameters()) < 100_000  # tens of thousands
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.encoder.modules())
    assert any(isinstance(m, nn.ReLU) for m in model.encoder.modules())
    assert model.multi_level is False
    # depth 2 -> two max-pools in the encoder
    shallow = TinyUNet(in_channels=1, num_classes=2, width=8, depth=2)
    assert sum(isinstance(m, nn.MaxPool2d) for m in shallow.encoder.modules()) == 2
    assert shallow(torch.randn(1, 1, 16, 16)).shape == (1, 2, 16, 16)


def test_tiny_unet_fits_a_batch() -> None:
    # Two fixed 32×32 images with a square of class 1 and one of class 2: a few Adam steps must
    # cut the cross-entropy well below its initial value (ln 3 ≈ 1.1 for uniform logits).
    torch.manual_seed(0)
    images = torch.randn(2, 3, 32, 32) * 0.1
    labels = torch.zeros(2, 32, 32, dtype=torch.long)
    labels[0, 4:14, 4:14] = 1
    labels[1, 16:28, 10:22] = 2
    images[0, :, 4:14, 4:14] += 1.0
    images[1, :, 16:28, 10:22] -= 1.0
    model = TinyUNet(num_classes=3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(30):
        loss = F.cross_entropy(model(images), labels)
        first = loss.item() if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.3 * first


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


# --- checkpoints ------------------------------------------------------------------------------


def test_checkpoint_round_trip_lightning_layout(tmp_path: Path) -> None:
    source = _trained_tiny_unet(seed=0)
    state = {f"model.{k}": v for k, v in source.state_dict().items()}
    # A UDA module's Lightning checkpoint also holds the teacher: it must be skipped.
    state.update({f"teacher.{k}": torch.zeros_like(v) for k, v in source.state_dict().items()})
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": state, "epoch": 3}, path)

    torch.manual_seed(1)
    fresh = build_segmentor("tiny_unet", num_classes=4).eval()
    loaded = build_segmentor("tiny_unet", num_classes=4, checkpoint=path).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(fresh(x), source(x))
        torch.testing.assert_close(loaded(x), source(x), rtol=0, atol=0)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"model": sd},
        lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
        lambda sd: {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")},
    ],
    ids=["plain", "under-model", "module-prefix", "no-num-batches-tracked"],
)
def test_checkpoint_layouts(tmp_path: Path, wrap) -> None:
    source = _trained_tiny_unet(seed=0)
    path = tmp_path / "weights.pt"
    torch.save(wrap(source.state_dict()), path)
    target = build_segmentor("tiny_unet", num_classes=4)
    report = load_checkpoint(target, path)
    assert (report.layout, report.target, report.heads) == ("library", "model", ())
    assert report.skipped == {}
    for key, value in source.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(target.state_dict()[key], value), key


def test_checkpoint_into_encoder_only(tmp_path: Path) -> None:
    # A torchvision ImageNet-style ResNet file (with its `fc` head) initialises DeepLabV2's encoder.
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(resnet.state_dict(), path)
    torch.manual_seed(1)
    reference = DeepLabV2(num_classes=3, encoder="resnet18")
    torch.manual_seed(1)
    model = build_segmentor("deeplabv2", num_classes=3, encoder="resnet18", checkpoint=path)
    assert torch.equal(model.encoder.layer4[1].conv2.weight, resnet.layer4[1].conv2.weight)
    assert torch.equal(model.encoder.bn1.running_mean, resnet.bn1.running_mean)
    # the head keeps its own (seeded) initialisation
    assert torch.equal(model.classifier.branches[0].weight, reference.classifier.branches[0].weight)
    report = load_checkpoint(model, path)
    assert (report.layout, report.target) == ("library", "encoder")
    assert set(report.skipped) == {"fc.weight", "fc.bias"}  # the ImageNet classifier


def test_tiny_unet_encoder_checkpoint(tmp_path: Path) -> None:
    source = _trained_tiny_unet(seed=0)
    path = tmp_path / "encoder.pt"
    torch.save(source.encoder.state_dict(), path)
    target = build_segmentor("tiny_unet", num_classes=4)
    report = load_checkpoint(target, path)
    assert (report.layout, report.target) == ("library", "encoder")
    assert set(report.loaded) == {f"encoder.{k}" for k in source.encoder.state_dict()}
    assert torch.equal(target.encoder.stem[0].weight, source.encoder.stem[0].weight)
    assert not torch.equal(target.classifier.weight, source.classifier.weight)


def test_missing_checkpoint_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.ckpt"
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        build_segmentor("tiny_unet", num_classes=3, checkpoint=path)


def test_checkpoint_shape_mismatch_names_keys(tmp_path: Path) -> None:
    path = tmp_path / "five_classes.pt"
    torch.save(build_segmentor("tiny_unet", num_classes=5).state_dict(), path)
    expected = r"classifier\.weight: checkpoint \(5, 16, 1, 1\) vs model \(3, 16, 1, 1\)"
    with pytest.raises(RuntimeError, match=expected):
        build_segmentor("tiny_unet", num_classes=3, checkpoint=path)


def test_checkpoint_key_mismatch_shows_missing_and_unexpected(tmp_path: Path) -> None:
    path = tmp_path / "tiny.pt"
    torch.save({"state_dict": build_segmentor("tiny_unet", num_classes=3).state_dict()}, path)
    with pytest.raises(RuntimeError) as info:
        build_segmentor("deeplabv2", num_classes=3, encoder="resnet18", checkpoint=path)
    message = str(info.value)
    assert str(path) in message
    assert "missing keys" in message and "unexpected keys" in message
    assert "stem.0.weight" in message  # an unexpected key
    assert "conv1.weight" in message  # a missing key
    assert "Known layouts" in message and "advent-imagenet" in message


def test_checkpoint_that_is_not_a_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "numbers.pt"
    torch.save({"epoch": 3, "global_step": 10}, path)
    with pytest.raises(RuntimeError, match="does not hold a state dict"):
        build_segmentor("tiny_unet", num_classes=3, checkpoint=path)


def test_checkpoint_with_arbitrary_objects_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "pickled.pt"
    torch.save({"state_dict": TinyUNet(num_classes=3).state_dict(), "extra": Path("x")}, path)
    with pytest.raises(RuntimeError, match="weights_only"):
        build_segmentor("tiny_unet", num_classes=3, checkpoint=path)


def test_checkpoint_given_as_mapping() -> None:
    source = _trained_tiny_unet(seed=0, num_classes=3)
    model = build_segmentor("tiny_unet", num_classes=3, checkpoint=source.state_dict())
    assert torch.equal(model.classifier.weight, source.classifier.weight)


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated"])
def test_empty_or_truncated_checkpoint_file_is_named(tmp_path, content):
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(RuntimeError, match=r"cannot read checkpoint .*weights\.pth"):
        build_segmentor("tiny_unet", num_classes=3, checkpoint=path)
