"""Tests for lightning_uda/models/checkpoints.py and state_dicts.py: the library layout, reading
files and the errors. The papers' DeepLab-v2 files are tested in test_reference_checkpoints.py,
SegFormer's MiT files in test_daformer.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from lightning_uda.models import DeepLabV2, TinyUNet, build_segmentor, load_checkpoint


def _trained_tiny_unet(seed: int, num_classes: int = 4) -> TinyUNet:
    """A TinyUNet with non-default BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    model = build_segmentor("tiny_unet", num_classes=num_classes)
    with torch.no_grad():
        model.train()(torch.randn(4, 3, 32, 32) * 3 + 1)  # moves the running statistics
    return model.eval()


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
