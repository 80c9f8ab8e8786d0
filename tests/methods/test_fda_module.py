from __future__ import annotations

import copy
import math

import pytest
import torch
from lightning.pytorch import Callback
from torch import nn

from lightning_uda.methods.fda import FDAModule, robust_entropy
from lightning_uda.methods.source_only import SourceOnlyModule
from lightning_uda.mixing import fourier_domain_adaptation
from lightning_uda.models import TinyUNet
from lightning_uda.normalization import CAFFE, CAFFE_MEAN_BGR, IMAGENET
from tests.helpers.methods import cpu_trainer, tiny_module_kwargs, toy_datamodule

# The loss hooks are called outside a Trainer here, where self.log() only warns.
pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")


class FixedLogits(nn.Module):
    """Returns fixed logits (plus a zero parameter, so there is something to optimise)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.encoder = nn.Identity()
        self.register_buffer("logits", logits)
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1, -1, -1) + self.dummy


def _tiny(**kwargs) -> FDAModule:
    torch.manual_seed(0)
    return FDAModule(TinyUNet(num_classes=3, width=4, depth=2), num_classes=3, **kwargs)


def _batch(size: int = 16, target_batch: int = 2, classes: int = 3) -> dict:
    g = torch.Generator().manual_seed(1)
    return {
        "source": {
            "image": torch.randn(2, 3, size, size, generator=g),
            "mask": torch.randint(0, classes, (2, size, size), generator=g),
        },
        "target": {"image": torch.randn(target_batch, 3, size, size, generator=g) + 0.5},
    }


# ---------------------------------------------------------------------------------- translation
def test_beta_zero_leaves_the_source_as_is_and_the_loss_is_source_only_ce():
    torch.manual_seed(0)
    model = TinyUNet(num_classes=3, width=4, depth=2)
    fda = FDAModule(copy.deepcopy(model), num_classes=3, fda_beta=0.0)
    source_only = SourceOnlyModule(copy.deepcopy(model), num_classes=3)
    batch = _batch()
    assert (
        fda.translate(batch["source"]["image"], batch["target"]["image"])
        is (batch["source"]["image"])
    )
    name, loss = next(fda.training_losses(batch))
    assert name == "seg"
    assert torch.equal(loss, source_only.source_loss(batch["source"]))


@pytest.mark.parametrize("space", [CAFFE, IMAGENET], ids=["caffe", "imagenet"])
def test_translation_happens_in_pixel_space(space):
    module = _tiny(normalization=space, fda_beta=0.1)
    g = torch.Generator().manual_seed(2)
    # RGB in [0, 1] → the space. A source darker and a target brighter than the space's mean:
    # the mean subtraction flips the sign of the source's zero frequency, whose amplitude FDA
    # swaps, so FDA on the normalised tensors would invert the mean brightness.
    source = space.normalize(0.4 * torch.rand(2, 3, 32, 32, generator=g))
    target = space.normalize(0.6 + 0.4 * torch.rand(2, 3, 32, 32, generator=g))

    def pixels(images: torch.Tensor) -> torch.Tensor:  # 0–255 in the space's channel order
        rgb = space.denormalize(images)
        return (rgb.flip(1) if space.channel_order == "bgr" else rgb) * 255

    translated = module.translate(source, target)
    expected = fourier_domain_adaptation(pixels(source), pixels(target), 0.1)
    torch.testing.assert_close(pixels(translated), expected, atol=2e-3, rtol=0)
    # ... and not on the normalised tensors
    naive = fourier_domain_adaptation(source, target, 0.1)
    assert (pixels(naive) - expected).abs().max() > 1.0
    # each source image takes its own target's amplitude; a single target serves the batch
    one = module.translate(source, target[1:])
    torch.testing.assert_close(one[1], translated[1], atol=1e-4, rtol=0)
    assert not torch.allclose(one[0], translated[0], atol=1e-2)


def test_caffe_translation_is_the_references_fda_of_raw_bgr_then_mean_subtraction():
    module = _tiny(normalization="caffe", fda_beta=0.05)
    g = torch.Generator().manual_seed(3)
    # BGR 0–255, as their loaders yield; dark source, bright target (see above)
    raw_source = 100 * torch.rand(2, 3, 40, 40, generator=g)
    raw_target = 155 + 100 * torch.rand(2, 3, 40, 40, generator=g)
    mean = torch.tensor(CAFFE_MEAN_BGR).view(1, 3, 1, 1)
    translated = module.translate(raw_source - mean, raw_target - mean)
    expected = fourier_domain_adaptation(raw_source, raw_target, 0.05) - mean
    torch.testing.assert_close(translated, expected, atol=2e-3, rtol=0)
    naive = fourier_domain_adaptation(raw_source - mean, raw_target - mean, 0.05)
    assert (naive - expected).abs().max() > 50  # what the reference's README warns about


def test_unpaired_batches_are_rejected():
    module = _tiny(fda_beta=0.1)
    with pytest.raises(ValueError, match="as many images as the source batch"):
        module.check_batch(_batch(target_batch=3))
    mismatched = _batch()
    mismatched["target"]["image"] = torch.zeros(2, 3, 16, 20)
    with pytest.raises(ValueError, match="same size"):
        module.check_batch(mismatched)
    module.check_batch(_batch(target_batch=1))


# ---------------------------------------------------------------------------------- entropy
# Normalised entropies (K = 2, so divided by ln 2), by hand:
# (0.5, 0.5): 1;  (0.8, 0.2): -(0.8 ln 0.8 + 0.2 ln 0.2) / ln 2 = 0.7219280949
# e² = 0.5211801742; robust entropy, η = 2: ((1² + 1e-8)² + (e² + 1e-8)²) / 2
#   = (1.00000002 + 0.5211801842²) / 2 = (1.00000002 + 0.2716287844) / 2 = 0.6358144022
ROBUST_ETA2 = 0.6358144022
# η = 1.5: ((1 + 1e-8)^1.5 + 0.5211801842^1.5) / 2 = (1.000000015 + 0.3762546211) / 2
ROBUST_ETA15 = 0.6881273181


def _two_pixel_logits() -> torch.Tensor:
    probs = torch.tensor([[0.5, 0.8], [0.5, 0.2]])  # K × pixels
    return probs.log().reshape(1, 2, 1, 2)


def test_robust_entropy_against_a_hand_computation():
    logits = _two_pixel_logits()
    assert float(robust_entropy(logits, eta=2.0)) == pytest.approx(ROBUST_ETA2, rel=1e-7)
    assert float(robust_entropy(logits, eta=1.5)) == pytest.approx(ROBUST_ETA15, rel=1e-6)
    # the penalty's ε is the reference code's 1e-8 on e², not the paper's 0.001²
    entropy = -(0.8 * math.log(0.8) + 0.2 * math.log(0.2)) / math.log(2)
    paper = ((1 + 1e-6) ** 2 + (entropy**2 + 1e-6) ** 2) / 2
    assert float(robust_entropy(logits, eta=2.0)) != pytest.approx(paper, rel=1e-7)

    module = FDAModule(FixedLogits(logits), num_classes=2, ent_weight=0.005)
    (name, loss), *rest = list(module.adaptation_losses(_batch(size=2, classes=2)))
    assert name == "ent" and rest == []
    assert float(loss.detach()) == pytest.approx(0.005 * ROBUST_ETA2, rel=1e-6)


def test_entropy_is_off_before_ent_start_step_and_on_after():
    module = FDAModule(FixedLogits(_two_pixel_logits()), num_classes=2, ent_start_step=2)
    batch = _batch(size=2, classes=2)
    for step, expected in [(0, []), (1, []), (2, ["ent"]), (5, ["ent"])]:
        module.uda_step = step
        assert [name for name, _ in module.adaptation_losses(batch)] == expected, step
        assert [name for name, _ in module.training_losses(batch)] == ["seg", *expected], step
    off = FDAModule(FixedLogits(_two_pixel_logits()), num_classes=2, ent_weight=0.0)
    assert list(off.adaptation_losses(batch)) == []


def test_defaults_and_bad_arguments():
    module = _tiny()
    assert (module.fda_beta, module.ent_weight, module.charbonnier_eta) == (0.01, 0.005, 2.0)
    assert module.ent_start_step == 0
    for kwargs, match in [
        ({"fda_beta": 0.6}, "fda_beta"),
        ({"ent_weight": -1.0}, "ent_weight"),
        ({"charbonnier_eta": 0.0}, "charbonnier_eta"),
        ({"ent_start_step": -1}, "ent_start_step"),
        ({"ent_start_step": 1.5}, "ent_start_step must be an int"),
    ]:
        with pytest.raises(ValueError, match=match):
            _tiny(**kwargs)


# ---------------------------------------------------------------------------------- training
@pytest.mark.fit
def test_fda_fits_with_finite_losses(tmp_path):
    torch.manual_seed(0)
    module = FDAModule(**tiny_module_kwargs(), fda_beta=0.1, ent_start_step=1)
    trainer = cpu_trainer(tmp_path, max_steps=3)
    trainer.fit(module, datamodule=toy_datamodule())
    assert module.uda_step == 3
    for key in ("train/loss_seg", "train/loss_ent", "train/entropy", "train/loss"):
        assert torch.isfinite(trainer.callback_metrics[key]), key
    assert float(trainer.callback_metrics["train/loss_ent"]) > 0  # on at the last step


class _SaveState(Callback):
    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def on_train_end(self, trainer, pl_module) -> None:
        torch.save(
            {
                "uda_step": pl_module.uda_step,
                "model": pl_module.model.state_dict(),
                "loss": trainer.callback_metrics["train/loss"].detach().clone(),
            },
            f"{self.out_dir}/rank{trainer.global_rank}.pt",
        )


@pytest.mark.fit
@pytest.mark.ddp
def test_two_process_ddp_runs(tmp_path):
    torch.manual_seed(0)
    module = FDAModule(**tiny_module_kwargs(), fda_beta=0.1)
    strategy = "ddp_spawn" if torch.cuda.is_initialized() else "ddp_fork"
    trainer = cpu_trainer(
        tmp_path, max_steps=3, devices=2, strategy=strategy, callbacks=[_SaveState(str(tmp_path))]
    )
    trainer.fit(module, datamodule=toy_datamodule(batch_size=2))
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert [s["uda_step"] for s in ranks] == [3, 3]
    assert all(torch.isfinite(s["loss"]) for s in ranks)
    for key, value in ranks[0]["model"].items():
        if value.is_floating_point() and "running" not in key:  # BN statistics are per rank
            assert torch.equal(ranks[1]["model"][key], value), key
