"""Teacher BatchNorm modes of the self-training methods, against closed forms."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_uda.methods import ClassMixModule, DACSModule
from lightning_uda.methods.self_training import batch_statistics
from tests.helpers.methods import cpu_trainer, tiny_module_kwargs, toy_datamodule


class BatchNormOnly(nn.Module):
    """A "segmentor" whose logits are its input batch-normalised (no affine): K = 2."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.BatchNorm2d(2, affine=False)
        self.encoder.running_mean.fill_(100.0)
        self.encoder.running_var.fill_(4.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)


def _images() -> torch.Tensor:
    return torch.arange(2 * 2 * 3 * 3, dtype=torch.float32).view(2, 2, 3, 3)


def test_train_mode_teacher_normalises_with_the_batch_statistics():
    module = DACSModule(model=BatchNormOnly(), num_classes=2, teacher_bn="train")
    x = _images()
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    expected = (x - mean) / torch.sqrt(var + 1e-5)
    torch.testing.assert_close(module.teacher_logits(x), expected)
    # running statistics neither used nor updated, and the teacher module stays in eval mode
    bn = module.teacher.encoder
    assert torch.all(bn.running_mean == 100.0) and torch.all(bn.running_var == 4.0)
    assert not module.teacher.training and not bn.training and bn.track_running_stats


def test_eval_mode_teacher_uses_its_running_statistics():
    module = DACSModule(model=BatchNormOnly(), num_classes=2, teacher_bn="eval")
    x = _images()
    torch.testing.assert_close(
        module.teacher_logits(x), (x - 100.0) / torch.sqrt(torch.tensor(4.0 + 1e-5))
    )


def test_batch_statistics_leaves_dropout_and_flags_alone():
    model = nn.Sequential(nn.BatchNorm2d(2), nn.Dropout(0.5)).eval()
    with batch_statistics(model):
        assert model[0].training and not model[0].track_running_stats
        assert not model[1].training
    assert not model[0].training and model[0].track_running_stats


def test_teacher_bn_is_validated():
    with pytest.raises(ValueError, match="teacher_bn"):
        DACSModule(**tiny_module_kwargs(), teacher_bn="frozen")


@pytest.mark.parametrize("module_cls", [DACSModule, ClassMixModule])
@pytest.mark.fit
def test_train_mode_teacher_fits(module_cls, tmp_path):
    module = module_cls(**tiny_module_kwargs(), teacher_bn="train")
    trainer = cpu_trainer(tmp_path, max_steps=2)
    trainer.fit(module, datamodule=toy_datamodule())
    assert torch.isfinite(trainer.callback_metrics["train/loss_mixed"])
    assert not module.teacher.training


def test_pseudo_label_crop_zeroes_top_and_bottom_rows_after_q():
    module = DACSModule(**tiny_module_kwargs(), pseudo_label_crop=(2, 3))
    images = torch.randn(2, 3, 16, 16)
    plain = DACSModule(**tiny_module_kwargs())
    plain.teacher.load_state_dict(module.teacher.state_dict())
    _, full = plain.pseudo_label(images)
    _, cropped = module.pseudo_label(images)
    assert torch.all(cropped[:, :2] == 0) and torch.all(cropped[:, -3:] == 0)
    # rows in between keep q, computed over all pixels as DAFormer does (before the crop)
    torch.testing.assert_close(cropped[:, 2:-3], full[:, 2:-3])
    with pytest.raises(ValueError, match="pseudo_label_crop"):
        DACSModule(**tiny_module_kwargs(), pseudo_label_crop=(-1, 0))


@pytest.mark.fit
def test_feature_distance_is_zero_at_the_start_and_grows_off_the_initial_encoder(tmp_path):
    module = DACSModule(
        **tiny_module_kwargs(), feature_distance_weight=0.005, feature_distance_classes=None
    )
    assert not any(p.requires_grad for p in module.imnet_encoder.parameters())
    groups = module.segmentor_param_groups()
    frozen = {id(p) for p in module.imnet_encoder.parameters()}
    assert not any(id(p) in frozen for g in groups for p in g["params"])  # never optimised
    module.eval()  # BatchNorm on running statistics: student and copy agree exactly
    images = torch.randn(2, 3, 16, 16)
    labels = torch.ones(2, 16, 16, dtype=torch.long)
    plain = DACSModule(**tiny_module_kwargs())
    plain.model.load_state_dict(module.model.state_dict())
    plain.eval()
    # identical encoders: the distance term is 0, the loss is the plain CE
    torch.testing.assert_close(
        module.source_loss({"image": images, "mask": labels}),
        plain.source_loss({"image": images, "mask": labels}),
    )
    trainer = cpu_trainer(tmp_path, max_steps=3)
    trainer.fit(module, datamodule=toy_datamodule())
    assert trainer.callback_metrics["train/feature_distance"] > 0  # the student moved away
