"""Loading the DeepLab-v2 weight files of DACS and AdvEnt (lightning_uda/models/checkpoints.py).

The reference files are not downloaded: the tests enumerate the reference ResNet's key names and
shapes independently of the library (below, from the reference architecture: Bottleneck stages
of [3, 4, 23, 3] blocks for ResNet-101, widths 64/128/256/512, expansion 4, a projection shortcut
on every stage's first block) and fill them with random tensors.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_uda.models import DeepLabV2, build_segmentor, load_checkpoint
from lightning_uda.models.checkpoints import CHECKPOINT_LAYOUTS

RESNET101_BLOCKS = (3, 4, 23, 3)
RESNET50_BLOCKS = (3, 4, 6, 3)
WIDTHS = (64, 128, 256, 512)
EXPANSION = 4


# --- an independent enumeration of the reference layout -------------------------------------


def _bn(name: str, channels: int) -> dict[str, tuple[int, ...]]:
    """A reference BatchNorm: affine weight/bias and running statistics (no step counter)."""
    return {f"{name}.{s}": (channels,) for s in ("weight", "bias", "running_mean", "running_var")}


def reference_backbone_shapes(blocks: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the DeepLab-v2 reference ResNet backbone (``conv1`` ... ``layer4``)."""
    shapes: dict[str, tuple[int, ...]] = {"conv1.weight": (64, 3, 7, 7), **_bn("bn1", 64)}
    in_channels = 64
    for stage, (width, count) in enumerate(zip(WIDTHS, blocks, strict=True), start=1):
        out_channels = width * EXPANSION
        for index in range(count):
            block = f"layer{stage}.{index}"
            shapes[f"{block}.conv1.weight"] = (width, in_channels, 1, 1)
            shapes.update(_bn(f"{block}.bn1", width))
            shapes[f"{block}.conv2.weight"] = (width, width, 3, 3)
            shapes.update(_bn(f"{block}.bn2", width))
            shapes[f"{block}.conv3.weight"] = (out_channels, width, 1, 1)
            shapes.update(_bn(f"{block}.bn3", out_channels))
            if index == 0:  # channels change (64->256, 256->512, 512->1024, 1024->2048)
                shapes[f"{block}.downsample.0.weight"] = (out_channels, in_channels, 1, 1)
                shapes.update(_bn(f"{block}.downsample.1", out_channels))
            in_channels = out_channels
    return shapes


def reference_classifier_shapes(
    name: str, in_channels: int, num_classes: int, branches: int
) -> dict[str, tuple[int, ...]]:
    """A reference ``ClassifierModule``: ``<name>.conv2d_list.<i>.weight/bias``."""
    shapes: dict[str, tuple[int, ...]] = {}
    for i in range(branches):
        shapes[f"{name}.conv2d_list.{i}.weight"] = (num_classes, in_channels, 3, 3)
        shapes[f"{name}.conv2d_list.{i}.bias"] = (num_classes,)
    return shapes


def random_tensors(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, Tensor]:
    """Random float32 tensors of those shapes, scaled so that a forward pass stays finite."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for key, shape in shapes.items():
        if len(shape) == 4:
            fan_in = shape[1] * shape[2] * shape[3]
            tensors[key] = torch.randn(shape, generator=generator) / fan_in**0.5
        elif key.endswith("running_var"):
            tensors[key] = torch.rand(shape, generator=generator) + 0.5
        else:
            tensors[key] = torch.randn(shape, generator=generator) * 0.1
    return tensors


@functools.lru_cache(maxsize=2)
def reference_backbone(blocks: tuple[int, ...]) -> dict[str, Tensor]:
    """Random reference backbone tensors (cached: ResNet-101 holds 42.5 M values; read only)."""
    return random_tensors(reference_backbone_shapes(blocks), seed=sum(blocks))


def test_enumeration_is_resnet101() -> None:
    # 42,500,160 parameters: torchvision's ResNet-101 (44,549,160) without its fc (2,049,000).
    shapes = reference_backbone_shapes(RESNET101_BLOCKS)
    parameters = sum(
        torch.Size(s).numel() for k, s in shapes.items() if not k.endswith(("_mean", "_var"))
    )
    assert parameters == 42_500_160
    assert len(shapes) == 1 + 4 + 33 * (3 + 3 * 4) + 4 * (1 + 4)  # stem, 33 blocks, 4 shortcuts
    assert shapes["layer3.0.downsample.0.weight"] == (1024, 512, 1, 1)  # stride 1, new width
    assert shapes["layer4.0.downsample.0.weight"] == (2048, 1024, 1, 1)
    assert "layer3.1.downsample.0.weight" not in shapes


def _caffe_model(num_classes: int = 19, encoder: str = "resnet101", **kwargs) -> DeepLabV2:
    torch.manual_seed(0)
    return DeepLabV2(num_classes=num_classes, encoder=encoder, style="caffe", **kwargs)


def _clone_state(module: torch.nn.Module) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def _assert_backbone_loaded(
    model: DeepLabV2, backbone: dict[str, Tensor], prefix: str = ""
) -> None:
    encoder_state = model.encoder.state_dict()
    for key, value in backbone.items():
        assert torch.equal(encoder_state[key], value), key  # bit-equal
    for key in encoder_state:  # nothing left out but BatchNorm's step counters
        assert key in backbone or key.endswith("num_batches_tracked"), key


def _assert_unchanged(module: torch.nn.Module, before: dict[str, Tensor]) -> None:
    for key, value in module.state_dict().items():
        assert torch.equal(value, before[key]), key


# --- the layouts -------------------------------------------------------------------------------


def test_dacs_coco_init_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # resnet101COCO-41f33a49.pth: plain keys, old file (no num_batches_tracked), and a COCO
    # classifier on layer4 with another class count.
    backbone = reference_backbone(RESNET101_BLOCKS)
    coco_head = random_tensors(reference_classifier_shapes("layer5", 2048, 91, 4), seed=1)
    path = tmp_path / "resnet101COCO-41f33a49.pth"
    torch.save({**backbone, **coco_head}, path)
    model = _caffe_model()
    head_before = _clone_state(model.classifier)

    with caplog.at_level(logging.INFO, logger="lightning_uda"):
        report = load_checkpoint(model, path)

    _assert_backbone_loaded(model, backbone)
    _assert_unchanged(model.classifier, head_before)  # still its N(0, 0.01) init
    assert report.layout == "deeplab"
    assert report.target == "encoder"
    assert report.heads == ()
    assert report.source == str(path)
    assert set(report.skipped) == set(coco_head)
    assert all("91 classes, the model has 19" in why for why in report.skipped.values())
    assert len(report.loaded) == len(backbone)
    messages = [r.getMessage() for r in caplog.records if r.name == "lightning_uda"]
    assert any("'deeplab' layout" in m and f"{len(backbone)} backbone" in m for m in messages)
    assert any("skipped 8" in m and "layer5.conv2d_list.0.weight" in m for m in messages)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # style="caffe"


def test_advent_imagenet_init_scale_prefix(caplog: pytest.LogCaptureFixture) -> None:
    # DeepLab_resnet_pretrained_imagenet.pth: every key prefixed "Scale.", its layer5 dropped.
    backbone = reference_backbone(RESNET101_BLOCKS)
    head = random_tensors(reference_classifier_shapes("layer5", 2048, 21, 4), seed=2)
    state = {f"Scale.{k}": v for k, v in {**backbone, **head}.items()}
    torch.manual_seed(0)
    reference = DeepLabV2(19, dilations=(6, 12, 18, 24), multi_level=True, style="caffe")
    torch.manual_seed(0)
    with caplog.at_level(logging.INFO, logger="lightning_uda"):
        model = build_segmentor(
            "deeplabv2",
            19,
            dilations=(6, 12, 18, 24),
            multi_level=True,
            style="caffe",
            checkpoint=state,
        )
    _assert_backbone_loaded(model, backbone)
    for name in ("classifier", "aux_classifier"):  # both keep their seeded initialisation
        _assert_unchanged(getattr(model, name), getattr(reference, name).state_dict())
    report = load_checkpoint(model, state)  # loading twice is harmless
    assert report.layout == "advent-imagenet"
    assert report.target == "encoder"
    assert set(report.skipped) == {f"Scale.{k}" for k in head}
    assert any(
        "kept the initialisation of classifier, aux_classifier" in r.getMessage()
        for r in caplog.records
    )


def test_advent_multi_level_checkpoint_loads_both_classifiers() -> None:
    # An AdvEnt GTA→Cityscapes checkpoint: layer5 = auxiliary classifier on layer3 (1024 ch),
    # layer6 = main classifier on layer4 (2048 ch), 4 branches, 19 classes, saved by a recent
    # PyTorch (with num_batches_tracked).
    backbone = reference_backbone(RESNET101_BLOCKS)
    counters = {
        k.replace("running_mean", "num_batches_tracked"): torch.tensor(1234)
        for k in backbone
        if k.endswith("running_mean")
    }
    aux = random_tensors(reference_classifier_shapes("layer5", 1024, 19, 4), seed=3)
    main = random_tensors(reference_classifier_shapes("layer6", 2048, 19, 4), seed=4)
    model = _caffe_model(dilations=(6, 12, 18, 24), multi_level=True)

    report = load_checkpoint(model, {**backbone, **counters, **aux, **main})

    _assert_backbone_loaded(model, {**backbone, **counters})
    for i in range(4):
        branch, aux_branch = model.classifier.branches[i], model.aux_classifier.branches[i]
        assert torch.equal(branch.weight, main[f"layer6.conv2d_list.{i}.weight"])
        assert torch.equal(branch.bias, main[f"layer6.conv2d_list.{i}.bias"])
        assert torch.equal(aux_branch.weight, aux[f"layer5.conv2d_list.{i}.weight"])
        assert torch.equal(aux_branch.bias, aux[f"layer5.conv2d_list.{i}.bias"])
    assert report.layout == "advent"
    assert report.target == "model"
    assert report.heads == ("classifier", "aux_classifier")
    assert report.skipped == {}


def test_advent_checkpoint_into_other_heads_is_skipped_with_reasons() -> None:
    backbone = reference_backbone(RESNET50_BLOCKS)
    aux = random_tensors(reference_classifier_shapes("layer5", 1024, 19, 4), seed=3)
    main = random_tensors(reference_classifier_shapes("layer6", 2048, 19, 4), seed=4)
    state = {**backbone, **aux, **main}
    # single-level model: the main classifier loads, the auxiliary one has nowhere to go
    single = _caffe_model(encoder="resnet50", dilations=(6, 12, 18, 24))
    report = load_checkpoint(single, state)
    assert report.heads == ("classifier",) and report.target == "model"
    assert torch.equal(single.classifier.branches[3].bias, main["layer6.conv2d_list.3.bias"])
    assert set(report.skipped) == set(aux)
    assert "multi_level=True" in report.skipped["layer5.conv2d_list.0.weight"]
    # a 2-branch head cannot take AdvEnt's 4-branch sum: nothing of it is loaded
    two = _caffe_model(encoder="resnet50", dilations=(6, 12))
    head_before = _clone_state(two.classifier)
    report = load_checkpoint(two, state)
    _assert_unchanged(two.classifier, head_before)
    assert report.heads == () and report.target == "encoder"
    assert "dilations=(6, 12, 18, 24)" in report.skipped["layer6.conv2d_list.0.weight"]


@pytest.mark.parametrize("stored_branches", [2, 4])
def test_dacs_checkpoint_loads_classifier(stored_branches: int) -> None:
    # A DACS checkpoint ({"model": state_dict, "ema_model": ..., ...}): layer5 on layer4, 19
    # classes. DACS builds 4 branches but its Classifier_Module returns after adding the second,
    # so the effective head is the 2-branch (6, 12) one, the library's default.
    backbone = reference_backbone(RESNET101_BLOCKS)
    head = random_tensors(reference_classifier_shapes("layer5", 2048, 19, stored_branches), 5)
    checkpoint = {"iteration": 250000, "model": {**backbone, **head}, "ema_model": {}}
    model = _caffe_model()

    report = load_checkpoint(model, checkpoint)

    _assert_backbone_loaded(model, backbone)
    for i in range(2):
        assert torch.equal(
            model.classifier.branches[i].weight, head[f"layer5.conv2d_list.{i}.weight"]
        )
        assert torch.equal(model.classifier.branches[i].bias, head[f"layer5.conv2d_list.{i}.bias"])
    assert report.layout == "deeplab"
    assert report.target == "model"
    assert report.heads == ("classifier",)
    extra = {k for k in head if int(k.split(".")[2]) >= 2}
    assert set(report.skipped) == extra
    assert all("DACS" in why for why in report.skipped.values())


def test_reference_file_into_torchvision_layout_warns(caplog: pytest.LogCaptureFixture) -> None:
    backbone = reference_backbone(RESNET50_BLOCKS)
    model = DeepLabV2(num_classes=19, encoder="resnet50")  # style="torchvision"
    with caplog.at_level(logging.INFO, logger="lightning_uda"):
        report = load_checkpoint(model, {f"Scale.{k}": v for k, v in backbone.items()})
    _assert_backbone_loaded(model, backbone)  # the tensors load all the same
    assert report.layout == "advent-imagenet"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "style='caffe'" in warnings[0] and "'caffe' input normalisation" in warnings[0]
    assert "BGR" in warnings[0]


# --- errors -------------------------------------------------------------------------------------


def test_unrelated_keys_raise_listing_keys_and_layouts(tmp_path: Path) -> None:
    path = tmp_path / "something_else.pth"
    torch.save({"features.0.weight": torch.zeros(8, 3, 3, 3), "head.bias": torch.zeros(2)}, path)
    model = DeepLabV2(num_classes=3, encoder="resnet18", style="caffe")
    with pytest.raises(RuntimeError) as info:
        load_checkpoint(model, path)
    message = str(info.value)
    assert str(path) in message
    assert "features.0.weight" in message and "head.bias" in message
    for layout in CHECKPOINT_LAYOUTS:
        assert f"- {layout}:" in message
    assert "Scale." in message and "layer6" in message


def test_backbone_shape_mismatch_names_the_tensor() -> None:
    backbone = dict(reference_backbone(RESNET50_BLOCKS))
    backbone["layer3.5.conv2.weight"] = torch.zeros(256, 256, 1, 1)
    model = _caffe_model(encoder="resnet50")
    before = _clone_state(model)
    with pytest.raises(RuntimeError) as info:
        load_checkpoint(model, {f"Scale.{k}": v for k, v in backbone.items()})
    message = str(info.value)
    assert "Scale.layer3.5.conv2.weight: checkpoint (256, 256, 1, 1) vs model (256, 256, 3, 3)" in (
        message
    )
    assert "'advent-imagenet' layout" in message
    _assert_unchanged(model, before)  # nothing is loaded when the backbone does not fit


def test_missing_backbone_tensor_and_wrong_depth_are_errors() -> None:
    backbone = dict(reference_backbone(RESNET50_BLOCKS))
    del backbone["layer2.0.downsample.1.running_var"]
    model = _caffe_model(encoder="resnet50")
    with pytest.raises(RuntimeError, match=r"Missing in the file: 1 \['layer2\.0\.downsample\.1"):
        load_checkpoint(model, backbone)
    # a ResNet-101 file into a ResNet-50 encoder: layer3.6 ... layer3.22 have nowhere to go
    with pytest.raises(RuntimeError, match=r"not in the encoder: 255 \['layer3\.6\.") as info:
        load_checkpoint(model, reference_backbone(RESNET101_BLOCKS))
    assert "encoder='resnet101'" in str(info.value)


# --- the Caffe layout computes what the reference network computes -------------------------


def _reference_forward(params: dict[str, Tensor], x: Tensor, blocks: tuple[int, ...]):
    """The reference DeepLab-v2 ResNet, written out with functional ops (eval-mode BatchNorm).

    Stride 2 on the first 1×1 conv of layer2's first block, ceil-mode max-pool, layer3/layer4
    with stride 1 and dilation 2/4 on every 3×3 conv.
    """

    def bn(t: Tensor, name: str) -> Tensor:
        return F.batch_norm(
            t,
            params[f"{name}.running_mean"],
            params[f"{name}.running_var"],
            params[f"{name}.weight"],
            params[f"{name}.bias"],
            training=False,
            eps=1e-5,
        )

    x = F.relu(bn(F.conv2d(x, params["conv1.weight"], stride=2, padding=3), "bn1"))
    x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1, ceil_mode=True)
    features = []
    for stage, (count, stride, dilation) in enumerate(
        zip(blocks, (1, 2, 1, 1), (1, 1, 2, 4), strict=True), start=1
    ):
        for index in range(count):
            name = f"layer{stage}.{index}"
            step = stride if index == 0 else 1
            out = F.relu(
                bn(F.conv2d(x, params[f"{name}.conv1.weight"], stride=step), f"{name}.bn1")
            )
            out = F.conv2d(out, params[f"{name}.conv2.weight"], padding=dilation, dilation=dilation)
            out = bn(
                F.conv2d(F.relu(bn(out, f"{name}.bn2")), params[f"{name}.conv3.weight"]),
                f"{name}.bn3",
            )
            if index == 0:
                shortcut = F.conv2d(x, params[f"{name}.downsample.0.weight"], stride=step)
                shortcut = bn(shortcut, f"{name}.downsample.1")
            else:
                shortcut = x
            x = F.relu(out + shortcut)
        features.append(x)
    return features[2], features[3]


def test_caffe_resnet101_matches_reference_forward() -> None:
    backbone = reference_backbone(RESNET101_BLOCKS)
    params = {k: v.double() for k, v in backbone.items()}
    x = torch.randn(1, 3, 48, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected3, expected4 = _reference_forward(params, x, RESNET101_BLOCKS)
        model = _caffe_model()
        load_checkpoint(model, backbone)
        layer3, layer4 = model.encoder.double().eval()(x)
        torchvision_layout = DeepLabV2(num_classes=19, encoder="resnet101")
        load_checkpoint(torchvision_layout, backbone)
        _, other4 = torchvision_layout.encoder.double().eval()(x)
    assert expected4.shape == (1, 2048, 7, 6)  # 48 -> 24 -> 13 (ceil) -> 7; 40 -> 20 -> 11 -> 6
    torch.testing.assert_close(layer3, expected3, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(layer4, expected4, rtol=1e-9, atol=1e-9)
    # the torchvision layout, same tensors, computes something else (and a smaller map)
    assert other4.shape == (1, 2048, 6, 5)
