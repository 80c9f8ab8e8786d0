"""Tests for lightning_uda/mixing/classmix.py (ClassMix masks and mixing)."""

from __future__ import annotations

import pytest
import torch

from lightning_uda.mixing import class_mix_mask, mix


def labels_with_classes(classes: list[int], height: int = 6) -> torch.Tensor:
    """``H×2n`` labels holding exactly the ``n`` ``classes`` (2-pixel stripes) and a void row."""
    labels = torch.tensor(classes).repeat_interleave(2).expand(height, 2 * len(classes)).clone()
    labels[0] = 255
    return labels


def mask_classes(labels: torch.Tensor, mask: torch.Tensor) -> set[int]:
    """Classes of ``labels`` (H×W) under ``mask``, checking each class is all-in or all-out."""
    chosen = set()
    for value in labels.unique().tolist():
        in_mask = mask[labels == value]
        assert in_mask.all() or not in_mask.any(), f"class {value} is split by the mask"
        if in_mask.all():
            chosen.add(value)
    return chosen


@pytest.mark.parametrize(
    ("rounding", "num_present", "expected"),
    [
        ("ceil", 5, 3),
        ("floor", 5, 2),
        ("ceil", 4, 2),
        ("floor", 4, 2),
        ("ceil", 1, 1),
        ("floor", 1, 0),
    ],
)
def test_chosen_class_count(rounding: str, num_present: int, expected: int) -> None:
    labels = torch.stack(
        [labels_with_classes(list(range(num_present))), labels_with_classes([7] * num_present)]
    )
    for seed in range(5):
        mask = class_mix_mask(
            labels, rounding=rounding, generator=torch.Generator().manual_seed(seed)
        )
        assert mask.dtype == torch.bool and mask.shape == labels.shape
        assert len(mask_classes(labels[0], mask[0])) == expected
        # The second image has a single class: ceil(1/2) = 1, floor(1/2) = 0.
        assert len(mask_classes(labels[1], mask[1])) == (1 if rounding == "ceil" else 0)


def test_mask_is_union_of_chosen_classes_and_never_ignore() -> None:
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 6, (3, 9, 9), generator=generator)
    labels[:, :, :2] = 255
    mask = class_mix_mask(labels, generator=generator)
    for image_labels, image_mask in zip(labels, mask, strict=True):
        chosen = mask_classes(image_labels, image_mask)
        assert 255 not in chosen
        union = torch.zeros_like(image_mask)
        for value in chosen:
            union |= image_labels == value
        assert torch.equal(image_mask, union)


def test_all_void_image_gives_empty_mask() -> None:
    labels = torch.full((1, 4, 4), 255)
    assert not class_mix_mask(labels).any()


def test_custom_ignore_index() -> None:
    labels = torch.tensor([[[0, 0, 1, 1]]])
    for seed in range(10):
        mask = class_mix_mask(labels, ignore_index=1, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(mask, torch.tensor([[[True, True, False, False]]]))


def test_per_image_choices_differ_per_batch_choices_agree() -> None:
    classes = list(range(8))
    labels = torch.stack([labels_with_classes(classes)] * 4)
    per_image_differs = False
    for seed in range(10):
        generator = torch.Generator().manual_seed(seed)
        per_batch = class_mix_mask(labels, mode="per_batch", generator=generator)
        chosen = [mask_classes(labels[i], per_batch[i]) for i in range(4)]
        assert all(c == chosen[0] for c in chosen) and len(chosen[0]) == 4
        per_image = class_mix_mask(labels, mode="per_image", generator=generator)
        chosen = [mask_classes(labels[i], per_image[i]) for i in range(4)]
        per_image_differs |= any(c != chosen[0] for c in chosen)
    assert per_image_differs


def test_per_batch_counts_classes_of_whole_batch() -> None:
    # Batch classes {0, 1, 2, 3, 4, 5}: ceil -> 3 chosen overall, spread over both images.
    labels = torch.stack([labels_with_classes([0, 1, 2]), labels_with_classes([3, 4, 5])])
    for seed in range(5):
        mask = class_mix_mask(
            labels, mode="per_batch", generator=torch.Generator().manual_seed(seed)
        )
        assert len(mask_classes(labels[0], mask[0]) | mask_classes(labels[1], mask[1])) == 3


def test_include_ignore_keeps_void_among_candidates() -> None:
    # Classes {0, 1, 255}: DACS counts n = 3, so ceil → 2 chosen, and 255 can be one of them.
    labels = torch.tensor([[0, 0, 1, 1, 255, 255]]).expand(4, 6).clone().unsqueeze(0)
    chose_void = chose_no_void = False
    for seed in range(30):
        generator = torch.Generator().manual_seed(seed)
        mask = class_mix_mask(labels, include_ignore=True, generator=generator)
        chosen = mask_classes(labels[0], mask[0])
        assert len(chosen) == 2
        if 255 in chosen:
            assert mask[labels == 255].all()  # void pixels are pasted
            chose_void = True
        else:
            chose_no_void = True
        floor = class_mix_mask(labels, rounding="floor", include_ignore=True, generator=generator)
        assert len(mask_classes(labels[0], floor[0])) == 1  # floor(3/2)
        # Default: 255 is no candidate, n = 2 → ceil 1.
        default = class_mix_mask(labels, generator=generator)
        assert mask_classes(labels[0], default[0]) in ({0}, {1})
    assert chose_void and chose_no_void


def test_batch_union_draws_per_image_among_the_batch_classes() -> None:
    # Images 0 and 2 hold all 7 classes of the batch, image 1 only {0, 1, 2}.
    all_classes = labels_with_classes(list(range(7)))
    labels = torch.stack([all_classes, labels_with_classes([0, 1, 2] * 2 + [0]), all_classes])
    image1_counts, draws_differ = set(), False
    for seed in range(60):
        generator = torch.Generator().manual_seed(seed)
        mask = class_mix_mask(labels, mode="batch_union", generator=generator)
        chosen = [mask_classes(labels[i], mask[i]) for i in range(3)]
        # Images 0 and 2 show their whole draw: ceil(|union| / 2) = ceil(7 / 2) = 4 classes.
        assert len(chosen[0]) == 4 and len(chosen[2]) == 4
        assert 255 not in chosen[0] | chosen[1] | chosen[2]
        image1_counts.add(len(chosen[1]))
        draws_differ |= chosen[0] != chosen[2]
        # per_image: image 1 draws among its own 3 classes, always 2 of them.
        per_image = class_mix_mask(labels, mode="per_image", generator=generator)
        assert len(mask_classes(labels[1], per_image[1])) == 2
    assert draws_differ
    # Image 1 got 4 of the 7 batch classes, of which 0 to 3 are its own: not always 2.
    assert image1_counts - {2} and image1_counts <= {0, 1, 2, 3}


def test_batch_union_with_void_counts_it_in_the_union() -> None:
    # Union {0, 1, 2, 255}: include_ignore → n = 4 → 2 per image; 255 drawn sometimes.
    labels = torch.stack([labels_with_classes([0, 1, 2]), labels_with_classes([2, 1, 0])])
    chose_void = False
    for seed in range(30):
        generator = torch.Generator().manual_seed(seed)
        mask = class_mix_mask(labels, mode="batch_union", include_ignore=True, generator=generator)
        for i in range(2):
            chosen = mask_classes(labels[i], mask[i])
            assert len(chosen) == 2
            chose_void |= 255 in chosen
    assert chose_void


def test_generator_reproducibility_and_randomness() -> None:
    labels = torch.randint(0, 10, (2, 8, 8), generator=torch.Generator().manual_seed(1))
    masks = [
        class_mix_mask(labels, generator=torch.Generator().manual_seed(seed)) for seed in range(8)
    ]
    again = class_mix_mask(labels, generator=torch.Generator().manual_seed(0))
    assert torch.equal(masks[0], again)
    assert any(not torch.equal(masks[0], other) for other in masks[1:])


def test_invalid_arguments_are_explained() -> None:
    labels = torch.zeros(1, 2, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="mode"):
        class_mix_mask(labels, mode="per_pixel")
    with pytest.raises(ValueError, match="rounding"):
        class_mix_mask(labels, rounding="round")
    with pytest.raises(ValueError, match="B×H×W"):
        class_mix_mask(labels[0])


def test_mix_images_labels_weights() -> None:
    mask = torch.tensor([[[True, False], [False, True]]])
    # Images: foreground channel c holds c + 1, background holds -1.
    foreground = torch.arange(1.0, 4.0).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    background = -torch.ones(1, 3, 2, 2)
    mixed = mix(mask, foreground, background)
    expected = torch.tensor(
        [[[1.0, -1.0], [-1.0, 1.0]], [[2.0, -1.0], [-1.0, 2.0]], [[3.0, -1.0], [-1.0, 3.0]]]
    )
    assert torch.equal(mixed, expected.unsqueeze(0))
    # Labels stay long.
    labels = mix(mask, torch.tensor([[[1, 2], [3, 4]]]), torch.tensor([[[9, 9], [9, 255]]]))
    assert labels.dtype == torch.long
    assert torch.equal(labels, torch.tensor([[[1, 9], [9, 4]]]))
    # Pixel weights: pasted source pixels 1, target pixels the pseudo-label weight.
    weights = mix(mask, torch.ones(1, 2, 2), torch.full((1, 2, 2), 0.3))
    assert weights.dtype == torch.float32
    assert torch.allclose(weights, torch.tensor([[[1.0, 0.3], [0.3, 1.0]]]))


def test_mix_soft_mask_and_errors() -> None:
    soft = torch.full((1, 2, 2), 0.25)
    blended = mix(soft, torch.full((1, 3, 2, 2), 4.0), torch.zeros(1, 3, 2, 2))
    assert torch.allclose(blended, torch.ones(1, 3, 2, 2))  # 0.25·4 + 0.75·0
    with pytest.raises(ValueError, match="same shape and dtype"):
        mix(soft > 0, torch.zeros(1, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="bool mask"):
        mix(soft, torch.zeros(1, 2, 2, dtype=torch.long), torch.ones(1, 2, 2, dtype=torch.long))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_labels_with_cpu_generator() -> None:
    labels = torch.randint(0, 6, (2, 8, 8), device="cuda")
    for mode in ("per_image", "batch_union", "per_batch"):
        mask = class_mix_mask(labels, mode=mode, generator=torch.Generator().manual_seed(0))
        assert mask.device.type == "cuda"
        cpu = class_mix_mask(labels.cpu(), mode=mode, generator=torch.Generator().manual_seed(0))
        assert torch.equal(mask.cpu(), cpu)
