"""DINOv2 encoders on timm: both weight layouts give the same features, sizes, errors, options."""

from __future__ import annotations

import pytest
import torch

from lightning_uda.models import build_segmentor, forward_with_features, parameter_groups
from lightning_uda.models.vit import DINOV2_FILES, create_dinov2


def _random_encoder(name: str, seed: int = 0):
    """A timm DINOv2 with every tensor drawn at random (LayerScale large enough for the blocks
    to matter)."""
    torch.manual_seed(seed)
    encoder = create_dinov2(name)
    with torch.no_grad():
        for key, tensor in encoder.state_dict().items():
            tensor.copy_(torch.randn_like(tensor) * (0.3 if "gamma" in key else 0.05))
        # multiples of 2^-10: moving the class token's position in and out of it is exact
        encoder.cls_token.copy_(torch.randint(-64, 64, encoder.cls_token.shape) / 1024)
    return encoder.eval()


def _official_layout(timm_state: dict, registers: bool, mask_token: torch.Tensor) -> dict:
    """The DINOv2 authors' layout of a timm state dict, written out by hand (the inverse of the
    conversion the loader uses): register models keep the class token's position inside
    ``pos_embed`` (any split of ``cls_token + pos[0]`` is the same model), ``register_tokens``
    instead of ``reg_token``, plus the ``mask_token``."""
    state = {k: v.clone() for k, v in timm_state.items()}
    if registers:
        class_position = torch.randint(-64, 64, (1, 1, state["cls_token"].shape[-1])) / 1024
        state["pos_embed"] = torch.cat([class_position, state["pos_embed"]], dim=1)
        state["cls_token"] = state["cls_token"] - class_position
        state["register_tokens"] = state.pop("reg_token")
    state["mask_token"] = mask_token
    return state


@pytest.mark.parametrize("name", ["dinov2_vits14", "dinov2_vits14_reg"])
def test_official_and_timm_layouts_give_the_same_features(name, tmp_path):
    source = _random_encoder(name)
    mask_token = torch.randn(1, source.embed_dim)
    timm_file, official_file = tmp_path / "timm.pth", tmp_path / DINOV2_FILES[name]
    torch.save(source.state_dict(), timm_file)
    official = _official_layout(source.state_dict(), name.endswith("_reg"), mask_token)
    assert ("register_tokens" in official) == name.endswith("_reg")
    torch.save(official, official_file)
    images = torch.randn(2, 3, 28, 42)
    with torch.no_grad():
        expected = source.forward_features(images)
        for path in (timm_file, official_file):
            segmentor = build_segmentor("vfm", num_classes=4, encoder=name, checkpoint=path).eval()
            got = segmentor.encoder.forward_features(images)
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # the official file's mask token initialises the segmentor's
    torch.testing.assert_close(segmentor.mask_token.detach(), mask_token)


def test_segmentor_features_are_timms_patch_tokens_and_grids_follow_the_input():
    segmentor = build_segmentor("vfm", num_classes=3, encoder="dinov2_vits14_reg").eval()
    encoder = _random_encoder("dinov2_vits14_reg")
    segmentor.encoder.load_state_dict(encoder.state_dict())
    images = torch.randn(1, 3, 28, 70)
    with torch.no_grad():
        logits, (tokens,) = forward_with_features(segmentor, images)
        timm_tokens = encoder.forward_features(images)[:, encoder.num_prefix_tokens :]
    assert tokens.shape == (1, 384, 2, 5)
    torch.testing.assert_close(tokens.flatten(2).transpose(1, 2), timm_tokens)
    assert logits.shape == (1, 3, 8, 20)  # the light head upsamples ×4
    backbone, head = parameter_groups(segmentor)
    assert {id(p) for p in backbone} == {id(p) for p in segmentor.encoder.parameters()}
    assert any(p is segmentor.mask_token for p in head)


def test_pyramid_head_returns_four_strides():
    segmentor = build_segmentor("vfm", num_classes=3, encoder="dinov2_vits14", head="pyramid")
    logits, features = forward_with_features(segmentor.eval(), torch.randn(1, 3, 224, 224))
    assert [f.shape[-1] for f in features] == [56, 28, 14, 7]  # strides 4, 8, 16, 32
    assert logits.shape == (1, 3, 56, 56)


def test_input_not_divisible_by_14_is_an_error_unless_rescaled():
    segmentor = build_segmentor("vfm", num_classes=3, encoder="dinov2_vits14")
    with pytest.raises(ValueError, match=r"32×32 .*multiple of DINOv2's 14-pixel.*28×28"):
        segmentor(torch.randn(1, 3, 32, 32))
    rescaled = build_segmentor("vfm", num_classes=3, encoder="dinov2_vits14", input_scale=1.1)
    assert rescaled.vit_input_size(1024, 2048) == (1120, 2240)  # the references' 1.1
    assert rescaled(torch.randn(1, 3, 32, 32)).shape == (1, 3, 8, 8)  # 35 -> 28: 2×2 patches


def _fake_vit_file(path, width: int, depth: int, registers: bool) -> None:
    """A file with the shape-bearing keys of a ViT of ``width`` and ``depth`` (small tensors
    elsewhere): enough for the loader to tell which model it is from."""
    state = {
        "cls_token": torch.zeros(1, 1, width),
        "pos_embed": torch.zeros(1, 1370, width),
        "patch_embed.proj.weight": torch.zeros(width, 3, 14, 14),
        "mask_token": torch.zeros(1, width),
        **{f"blocks.{i}.norm1.weight": torch.zeros(width) for i in range(depth)},
    }
    if registers:
        state["register_tokens"] = torch.zeros(1, 4, width)
    torch.save(state, path)


def test_a_file_of_another_size_or_register_count_is_refused_naming_both(tmp_path):
    base = tmp_path / "dinov2_vitb14_pretrain.pth"
    _fake_vit_file(base, width=768, depth=12, registers=False)
    with pytest.raises(RuntimeError) as info:
        build_segmentor("vfm", num_classes=3, encoder="dinov2_vits14", checkpoint=base)
    message = str(info.value)
    assert str(base) in message and "dinov2_vitb14 (width 768" in message
    assert "dinov2_vits14 (width 384" in message and "dinov2_vits14_pretrain.pth" in message
    assert "encoder='dinov2_vitb14'" in message  # the fix
    registers = tmp_path / "dinov2_vits14_reg4_pretrain.pth"
    _fake_vit_file(registers, width=384, depth=12, registers=True)
    with pytest.raises(RuntimeError, match=r"4 registers.*no registers"):
        build_segmentor("vfm", num_classes=3, encoder="dinov2_vits14", checkpoint=registers)


def test_a_missing_file_names_the_official_files_and_where_they_are_published(tmp_path):
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(FileNotFoundError) as info:
        build_segmentor("vfm", num_classes=3, encoder="dinov2_vitl14_reg", checkpoint=missing)
    message = str(info.value)
    assert str(missing) in message and "register_tokens" in message
    for name in ("dinov2_vitb14_pretrain.pth", "dinov2_vitl14_reg4_pretrain.pth"):
        assert name in message
    assert "facebookresearch/dinov2" in message and "http" not in message


def test_unknown_encoder_and_download_requests_are_refused():
    with pytest.raises(ValueError, match="dinov2_vitb14"):
        build_segmentor("vfm", num_classes=3, encoder="vit_b16")
    with pytest.raises(ValueError, match="downloads nothing"):
        build_segmentor("vfm", num_classes=3, encoder="dinov2_vits14", encoder_weights="lvd142m")


def test_gradient_checkpointing_gives_the_same_gradients():
    images = torch.randn(2, 3, 28, 28, dtype=torch.float64)
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        segmentor = build_segmentor(
            "vfm", num_classes=3, encoder="dinov2_vits14", gradient_checkpointing=checkpointing
        ).double()
        segmentor(images).square().mean().backward()
        grads.append({n: p.grad for n, p in segmentor.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-9, atol=1e-12, msg=name)


def test_bf16_autocast_and_sdpa_attention_on_the_cpu():
    segmentor = build_segmentor("vfm", num_classes=3, encoder="dinov2_vits14", head="pyramid")
    assert all(block.attn.fused_attn for block in segmentor.encoder.blocks)  # SDPA
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = segmentor(torch.randn(2, 3, 56, 56))
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()
    logits.float().mean().backward()
    assert torch.isfinite(segmentor.encoder.blocks[0].attn.qkv.weight.grad).all()
