"""Tests for lightning_uda/models/daformer.py and loading SegFormer MiT files into it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_uda.models import (
    DAFormer,
    DAFormerHead,
    build_segmentor,
    forward_with_features,
    load_checkpoint,
    parameter_groups,
)
from lightning_uda.models.checkpoints import CHECKPOINT_LAYOUTS
from lightning_uda.models.daformer import (
    MIT_CHANNELS,
    ConvBNReLU,
    DepthwiseSeparableConv,
    LinearEmbed,
    SeparableASPP,
)
from lightning_uda.normalization import get_normalization

B0_CHANNELS = (32, 64, 160, 256)
B0_DEPTHS = (2, 2, 2, 2)


@pytest.fixture(scope="module")
def b0() -> DAFormer:
    torch.manual_seed(0)
    return build_segmentor("daformer", num_classes=5, encoder="mit_b0").eval()


def _segformer_keys(
    depths: tuple[int, ...], sr_ratios: tuple[int, ...] = (8, 4, 2, 1)
) -> list[str]:
    """The parameter names of SegFormer's MiT (its ImageNet files, without ``head.*``), written
    out from the architecture rather than read from smp."""
    keys = []
    for stage, (depth, sr_ratio) in enumerate(zip(depths, sr_ratios, strict=True), start=1):
        layers = [f"patch_embed{stage}.proj", f"patch_embed{stage}.norm"]
        for block in range(depth):
            prefix = f"block{stage}.{block}"
            attn = ["attn.q", "attn.kv"]
            if sr_ratio > 1:  # spatial reduction of the keys/values
                attn += ["attn.sr", "attn.norm"]
            names = ["norm1", *attn, "attn.proj", "norm2", "mlp.fc1", "mlp.dwconv.dwconv"]
            layers += [f"{prefix}.{name}" for name in [*names, "mlp.fc2"]]
        layers.append(f"norm{stage}")
        keys += [f"{layer}.{kind}" for layer in layers for kind in ("weight", "bias")]
    return keys


def _segformer_file(model: DAFormer, seed: int = 1) -> dict[str, Tensor]:
    """A SegFormer-layout ImageNet file for ``model``'s encoder: random values (different from
    the model's), the ImageNet classifier ``head.*`` included."""
    generator = torch.Generator().manual_seed(seed)
    shapes = {k: v.shape for k, v in model.encoder.state_dict().items()}
    state = {k: torch.randn(shapes[k], generator=generator) for k in _segformer_keys(B0_DEPTHS)}
    state["head.weight"] = torch.randn(1000, model.stage_channels[-1], generator=generator)
    state["head.bias"] = torch.randn(1000, generator=generator)
    return state


# --- architecture -----------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "expected"), [((64, 64), (16, 16)), ((72, 50), (18, 13))])
def test_logits_at_stride_4(b0: DAFormer, size: tuple[int, int], expected: tuple) -> None:
    with torch.no_grad():
        out = b0(torch.randn(2, 3, *size))
    assert out.shape == (2, 5, *expected)


def test_mit_b5_default_build_shapes_and_parameter_count() -> None:
    model = build_segmentor("daformer", num_classes=19)
    assert isinstance(model, DAFormer)
    assert type(model.encoder).__name__ == "MixVisionTransformerEncoder"
    assert [len(getattr(model.encoder, f"block{i}")) for i in range(1, 5)] == [3, 6, 40, 3]
    assert model.stage_channels == (64, 128, 320, 512) == MIT_CHANNELS["mit_b5"]
    assert [e.proj.in_features for e in model.decode_head.embeds] == [64, 128, 320, 512]
    embeds = (64 + 128 + 320 + 512) * 256 + 4 * 256
    aspp = (1024 * 256 + 2 * 256) + 3 * (1024 * 9 + 2 * 1024 + 1024 * 256 + 2 * 256)
    bottleneck = 1024 * 256 * 9 + 2 * 256
    classifier = 256 * 19 + 19
    head = sum(p.numel() for p in model.decode_head.parameters())
    assert head == embeds + aspp + bottleneck + classifier
    total = sum(p.numel() for p in model.parameters())
    assert 85.1e6 < total < 85.3e6  # the paper's 85.2 M for DAFormer (MiT-B5)
    with torch.no_grad():
        logits, features = model.eval().forward_features(torch.randn(1, 3, 64, 64))
    assert logits.shape == (1, 19, 16, 16)
    assert [f.shape[1] for f in features] == [64, 128, 320, 512]


@pytest.mark.parametrize("name", list(MIT_CHANNELS))
def test_mit_channels_are_smps(name: str) -> None:
    out_channels = smp.encoders.encoders[name]["params"]["out_channels"]
    assert tuple(out_channels[-4:]) == MIT_CHANNELS[name]


def test_head_structure() -> None:
    head = DAFormerHead(B0_CHANNELS, num_classes=19)
    assert len(head.embeds) == 4
    for embed, channels in zip(head.embeds, B0_CHANNELS, strict=True):
        assert isinstance(embed, LinearEmbed)
        assert (embed.proj.in_features, embed.proj.out_features) == (channels, 256)
    assert isinstance(head.fuse, SeparableASPP)
    assert head.fuse.dilations == (1, 6, 12, 18)
    assert not any(isinstance(m, nn.AdaptiveAvgPool2d) for m in head.modules())  # no pooling
    first, *separable = head.fuse.branches
    assert isinstance(first, ConvBNReLU)
    assert first.conv.kernel_size == (1, 1)
    assert (first.conv.in_channels, first.conv.out_channels) == (1024, 256)
    for branch, dilation in zip(separable, (6, 12, 18), strict=True):
        assert isinstance(branch, DepthwiseSeparableConv)
        depthwise, pointwise = branch.depthwise.conv, branch.pointwise.conv
        assert depthwise.kernel_size == (3, 3)
        assert depthwise.dilation == depthwise.padding == (dilation, dilation)
        assert depthwise.groups == depthwise.in_channels == depthwise.out_channels == 1024
        assert pointwise.kernel_size == (1, 1) and pointwise.groups == 1
        assert (pointwise.in_channels, pointwise.out_channels) == (1024, 256)
    bottleneck = head.fuse.bottleneck.conv
    assert bottleneck.kernel_size == (3, 3) and bottleneck.padding == (1, 1)
    assert (bottleneck.in_channels, bottleneck.out_channels) == (4 * 256, 256)
    blocks = [m for m in head.modules() if isinstance(m, ConvBNReLU)]
    assert len(blocks) == 1 + 2 * 3 + 1
    for block in blocks:  # conv (no bias) + BN + ReLU
        assert [type(m) for m in block] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
        assert block.conv.bias is None
        assert block.bn.num_features == block.conv.out_channels
    assert isinstance(head.dropout, nn.Dropout2d) and head.dropout.p == 0.1
    assert head.classifier.kernel_size == (1, 1)
    assert (head.classifier.in_channels, head.classifier.out_channels) == (256, 19)
    assert head.classifier.bias is not None
    assert torch.count_nonzero(head.classifier.bias) == 0
    assert abs(head.classifier.weight.std().item() - 0.01) < 2e-3


def test_head_options() -> None:
    head = DAFormerHead((8, 16), num_classes=3, embed_dim=12, channels=10, dilations=(1, 2))
    assert [e.proj.out_features for e in head.embeds] == [12, 12]
    assert head.fuse.branches[0].conv.in_channels == 24
    assert head.fuse.bottleneck.conv.in_channels == 20
    with pytest.raises(ValueError, match="dilations"):
        DAFormerHead(B0_CHANNELS, num_classes=3, dilations=())
    with pytest.raises(ValueError, match="dropout"):
        DAFormerHead(B0_CHANNELS, num_classes=3, dropout=1.5)
    with pytest.raises(ValueError, match="expects 2 feature maps"):
        head([torch.randn(1, 8, 4, 4)])


def test_head_forward_is_embed_resize_concat_aspp_classify() -> None:
    torch.manual_seed(0)
    head = DAFormerHead((4, 6, 8), num_classes=3, embed_dim=5, channels=7, dilations=(1, 2))
    head.eval()
    features = [torch.randn(2, 4, 8, 8), torch.randn(2, 6, 4, 4), torch.randn(2, 8, 2, 2)]
    with torch.no_grad():
        embedded = []
        for embed, feature in zip(head.embeds, features, strict=True):
            # a linear layer per position is a 1×1 convolution
            weight = embed.proj.weight[:, :, None, None]
            out = F.conv2d(feature, weight, embed.proj.bias)
            embedded.append(F.interpolate(out, size=(8, 8), mode="bilinear", align_corners=False))
        x = torch.cat(embedded, dim=1)  # shallow → deep
        one, separable = head.fuse.branches
        branches = [one(x), separable.pointwise(separable.depthwise(x))]
        expected = head.classifier(head.fuse.bottleneck(torch.cat(branches, dim=1)))
        torch.testing.assert_close(head(features), expected)
        assert head.fuse.branches[1].depthwise.conv.dilation == (2, 2)


def test_forward_features_contract(b0: DAFormer) -> None:
    calls = []
    handle = b0.encoder.register_forward_hook(lambda *_: calls.append(1))
    x = torch.randn(2, 3, 64, 64)
    try:
        with torch.no_grad():
            logits, features = forward_with_features(b0, x)
            assert len(calls) == 1  # the encoder ran once
            expected = b0(x)
    finally:
        handle.remove()
    torch.testing.assert_close(logits, expected)
    assert [f.shape[1] for f in features] == list(B0_CHANNELS)
    assert [64 // f.shape[-1] for f in features] == [4, 8, 16, 32]
    assert [64 // f.shape[-2] for f in features] == [4, 8, 16, 32]


def test_dropout_active_in_training_only(b0: DAFormer) -> None:
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(b0(x), b0(x))  # eval: deterministic
        b0.decode_head.dropout.train()
        try:
            assert not torch.equal(b0(x), b0(x))
        finally:
            b0.decode_head.dropout.eval()


def test_every_parameter_gets_a_gradient() -> None:
    torch.manual_seed(0)
    model = build_segmentor("daformer", num_classes=3, encoder="mit_b0").train()
    model(torch.randn(2, 3, 64, 64)).logsumexp(dim=1).mean().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


def test_parameter_groups_split(b0: DAFormer) -> None:
    backbone, head = parameter_groups(b0)
    assert [id(p) for p in backbone] == [id(p) for p in b0.encoder.parameters()]
    assert [id(p) for p in head] == [id(p) for p in b0.decode_head.parameters()]
    ids = [id(p) for p in backbone + head]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in b0.parameters()}
    assert sum(p.numel() for p in backbone) == sum(p.numel() for p in b0.encoder.parameters())


def test_input_normalization(b0: DAFormer) -> None:
    assert b0.input_normalization == "imagenet"
    assert get_normalization(b0.input_normalization).name == "imagenet"
    assert "input_normalization" not in "".join(b0.state_dict())


# --- build_segmentor options ------------------------------------------------------------------


def test_unknown_encoder_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match="resnet50") as info:
        build_segmentor("daformer", num_classes=3, encoder="resnet50")
    for name in MIT_CHANNELS:
        assert name in str(info.value)
    with pytest.raises(ValueError, match="mit_b6"):
        DAFormer(num_classes=3, encoder="mit_b6")


def test_kwargs_are_passed_and_checked() -> None:
    model = build_segmentor(
        "DAFormer", num_classes=4, encoder="mit_b0", embed_dim=32, channels=16, dropout=0.0
    )
    assert model.decode_head.embeds[0].proj.out_features == 32
    assert model.decode_head.classifier.in_channels == 16
    assert model.decode_head.dropout.p == 0.0
    with pytest.raises(TypeError, match="unexpected keyword argument.*embed_dims.*accepts"):
        build_segmentor("daformer", num_classes=3, encoder="mit_b0", embed_dims=64)


def test_encoder_weights_default_none_and_imagenet_passes_through(monkeypatch) -> None:
    calls: list[dict[str, Any]] = []
    original = smp.encoders.get_encoder

    def fake_get_encoder(name: str, **kwargs: Any) -> nn.Module:
        calls.append({"name": name, **kwargs})
        return original(name, **{**kwargs, "weights": None})  # nothing is downloaded

    monkeypatch.setattr(smp.encoders, "get_encoder", fake_get_encoder)
    build_segmentor("daformer", num_classes=3, encoder="mit_b0")
    build_segmentor("daformer", num_classes=3, encoder="mit_b0", encoder_weights="imagenet")
    assert [(c["name"], c["weights"]) for c in calls] == [("mit_b0", None), ("mit_b0", "imagenet")]


# --- checkpoints ------------------------------------------------------------------------------


def test_encoder_names_are_segformers(b0: DAFormer) -> None:
    keys = list(b0.encoder.state_dict())
    assert sorted(keys) == sorted(_segformer_keys(B0_DEPTHS))
    for key in (
        "patch_embed1.proj.weight",
        "patch_embed1.norm.weight",
        "block1.0.norm1.weight",
        "block1.0.attn.q.weight",
        "block1.0.attn.kv.weight",
        "block1.0.attn.sr.weight",
        "block1.0.attn.norm.weight",
        "block1.0.attn.proj.weight",
        "block1.0.mlp.fc1.weight",
        "block1.0.mlp.dwconv.dwconv.weight",
        "block1.0.mlp.fc2.weight",
        "norm1.weight",
        "norm4.weight",
    ):
        assert key in keys
    assert "mit-imagenet" in CHECKPOINT_LAYOUTS


@pytest.mark.parametrize(
    ("prefix", "under_state_dict"),
    [("", False), ("", True), ("backbone.", False), ("backbone.", True)],
)
def test_segformer_imagenet_file_loads_into_the_encoder(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, prefix: str, under_state_dict: bool
) -> None:
    torch.manual_seed(0)
    model = build_segmentor("daformer", num_classes=19, encoder="mit_b0")
    head_before = {k: v.clone() for k, v in model.decode_head.state_dict().items()}
    state = _segformer_file(model)
    assert state["head.weight"].shape == (1000, 256)
    stored: dict[str, Any] = {prefix + k: v for k, v in state.items()}
    if under_state_dict:
        stored = {"state_dict": stored, "meta": {"note": "mmseg checkpoint"}}
    path = tmp_path / "mit_b0.pth"
    torch.save(stored, path)
    with caplog.at_level(logging.INFO, logger="lightning_uda"):
        report = load_checkpoint(model, path)
    assert report.layout == "mit-imagenet" and report.target == "encoder"
    assert report.source == str(path)
    assert set(report.skipped) == {prefix + "head.weight", prefix + "head.bias"}
    assert all("classifier" in reason for reason in report.skipped.values())
    assert sorted(report.loaded) == sorted(f"encoder.{k}" for k in model.encoder.state_dict())
    for key, value in model.encoder.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)
    for key, value in model.decode_head.state_dict().items():
        torch.testing.assert_close(value, head_before[key], rtol=0, atol=0)
    assert "mit-imagenet" in caplog.text and "head.weight" in caplog.text
    # the same file through build_segmentor
    built = build_segmentor("daformer", num_classes=19, encoder="mit_b0", checkpoint=path)
    torch.testing.assert_close(
        built.encoder.patch_embed1.proj.weight, state["patch_embed1.proj.weight"]
    )


def test_segformer_file_missing_a_tensor_names_it(b0: DAFormer) -> None:
    state = _segformer_file(b0)
    del state["block2.1.mlp.fc2.weight"]
    with pytest.raises(RuntimeError, match=r"mit-imagenet.*block2\.1\.mlp\.fc2\.weight"):
        load_checkpoint(b0, state)


def test_segformer_file_of_another_variant_names_the_mismatches(b0: DAFormer) -> None:
    state = {f"backbone.{k}": v for k, v in _segformer_file(b0).items()}
    state["backbone.norm4.weight"] = torch.ones(512)  # a mit_b1..b5 width
    state["backbone.block3.2.norm1.weight"] = torch.ones(160)  # a deeper variant's block
    with pytest.raises(RuntimeError) as info:
        load_checkpoint(b0, state)
    message = str(info.value)
    assert "backbone.norm4.weight: checkpoint (512,) vs model (256,)" in message
    assert "backbone.block3.2.norm1.weight" in message
    assert "encoder=" in message


def test_segformer_file_into_a_resnet_model_is_an_error(b0: DAFormer) -> None:
    model = build_segmentor("deeplabv2", num_classes=3, encoder="resnet18")
    with pytest.raises(RuntimeError, match="mit-imagenet.*does not fit"):
        load_checkpoint(model, _segformer_file(b0))


def test_library_round_trips(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = build_segmentor("daformer", num_classes=4, encoder="mit_b0")
    target = build_segmentor("daformer", num_classes=4, encoder="mit_b0")
    path = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in source.state_dict().items()}}, path)
    report = load_checkpoint(target, path)
    assert (report.layout, report.target) == ("library", "model")
    for key, value in target.state_dict().items():
        torch.testing.assert_close(value, source.state_dict()[key], rtol=0, atol=0)
    # the encoder alone, in its own (= SegFormer's) names, without an ImageNet head
    fresh = build_segmentor("daformer", num_classes=4, encoder="mit_b0")
    report = load_checkpoint(fresh, source.encoder.state_dict())
    assert (report.layout, report.target) == ("library", "encoder")
    torch.testing.assert_close(fresh.encoder.norm4.weight, source.encoder.norm4.weight)
