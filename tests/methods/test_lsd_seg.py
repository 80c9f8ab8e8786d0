"""LSD-seg: losses and domain labels, per-network updates, the reference's update, resume, DDP."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.precision import MixedPrecision
from torch import nn

from lightning_uda.constants import IMAGENET_MEAN, IMAGENET_STD
from lightning_uda.methods.lsd_seg import LSDSegModule
from lightning_uda.methods.lsd_seg_losses import (
    SOURCE_FAKE,
    SOURCE_REAL,
    TARGET_FAKE,
    TARGET_REAL,
    patch_labels,
)
from lightning_uda.models.lsd_seg import LSDDiscriminator, LSDGenerator, PatchOutputs
from lightning_uda.models.segmentor import forward_with_features
from tests.helpers.methods import NUM_CLASSES, cpu_trainer, tiny_module_kwargs, toy_datamodule

NETWORKS = ("model", "generator", "discriminator")


def lsd_kwargs(**overrides) -> dict:
    kwargs = dict(tiny_module_kwargs(), generator_width=4, discriminator_width=8)
    kwargs.update(overrides)
    return kwargs


def _ce(logits: torch.Tensor, label: int) -> torch.Tensor:
    """Mean CE of a domain map against one label everywhere, written out independently."""
    log_p = torch.log_softmax(logits, dim=1)
    return -log_p[:, label].mean()


def _class_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, labels, ignore_index=255)


# ---------------------------------------------------------------------------------------- losses
def test_defaults_are_the_reference_values():
    module = LSDSegModule(**tiny_module_kwargs())
    hp = module.hparams
    assert (SOURCE_REAL, SOURCE_FAKE, TARGET_REAL, TARGET_FAKE) == (0, 1, 2, 3)
    assert (hp.adv_weight, hp.class_weight, hp.l1_weight) == (0.1, 0.1, 1.0)
    assert (hp.generator_adv_weight, hp.generator_class_weight) == (0.1, 1.0)
    assert hp.generator_lr == hp.discriminator_lr == 1e-4
    assert tuple(hp.generator_betas) == tuple(hp.discriminator_betas) == (0.7, 0.999)
    assert hp.noise_channels == 0 and hp.dropout == 0.5 and hp.pixel_reduction == "mean"
    # TinyUNet's features (strides 1, 2, 4, 8): G reads the deepest three, as fc7/pool4/pool3
    assert module.generator.in_channels == (32, 48, 64)
    assert module.generator.stage_channels == (512, 256, 128)


def test_domain_labels_are_the_reference_ones():
    # D's domain loss is ~0 exactly when each image kind is confidently classified as its label
    module = LSDSegModule(**lsd_kwargs())
    labels = torch.zeros(2, 2, 2, dtype=torch.long)

    def confident(label: int) -> PatchOutputs:
        domain = torch.full((2, 4, 2, 2), -20.0)
        domain[:, label] = 20.0
        return PatchOutputs(domain, torch.zeros(2, NUM_CLASSES, 2, 2))

    kinds = [confident(k) for k in (SOURCE_REAL, SOURCE_FAKE, TARGET_REAL, TARGET_FAKE)]
    assert module.discriminator_losses(*kinds, labels)["discriminator_domain"] < 1e-6
    swapped = [kinds[1], kinds[0], kinds[3], kinds[2]]
    assert module.discriminator_losses(*swapped, labels)["discriminator_domain"] > 100
    # the segmentor wants source fakes to look target-real and target fakes source-real ...
    seg = module.segmentor_losses(
        torch.zeros(2, NUM_CLASSES, 4, 4),
        torch.zeros(2, 4, 4, dtype=torch.long),
        confident(TARGET_REAL),
        confident(SOURCE_REAL),
        labels,
    )
    assert seg["confusion"] < 1e-6
    # ... and G wants each fake to look like a real image of its own domain
    images = {d: torch.zeros(2, 3, 4, 4) for d in ("source", "target")}
    gen = module.generator_losses(
        confident(SOURCE_REAL), confident(TARGET_REAL), labels, images, images
    )
    assert gen["generator_adversarial"] < 1e-6


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_three_losses_equal_the_formulas_on_a_hand_made_batch(reduction):
    weights = dict(
        adv_weight=0.3,
        class_weight=0.2,
        l1_weight=2.0,
        generator_adv_weight=0.4,
        generator_class_weight=0.7,
    )
    module = LSDSegModule(**lsd_kwargs(pixel_reduction=reduction, **weights))
    g = torch.Generator().manual_seed(0)
    b, h, w = 2, 4, 4

    def outputs() -> PatchOutputs:
        return PatchOutputs(
            torch.randn(b, 4, h, w, generator=g), torch.randn(b, NUM_CLASSES, h, w, generator=g)
        )

    real_s, fake_s, real_t, fake_t = outputs(), outputs(), outputs(), outputs()
    mask = torch.randint(0, NUM_CLASSES, (b, 16, 16), generator=g)
    mask[:, :4] = 255  # a void band: one row of patches is ignored
    labels = patch_labels(mask, (h, w))
    # nearest resize to 4×4 takes each 4×4 patch's centre pixel (PIL NEAREST, as the reference)
    assert torch.equal(labels, mask[:, 2::4, 2::4])
    assert (labels[:, 0] == 255).all()
    logits = torch.randn(b, NUM_CLASSES, 8, 8, generator=g)
    images = {d: torch.rand(b, 3, 16, 16, generator=g) for d in ("source", "target")}
    real = {d: torch.rand(b, 3, 16, 16, generator=g) for d in ("source", "target")}

    # "sum" (the reference): CE summed over pixels and divided by the batch size, L1 mean / batch
    pixels = {"mean": 1.0, "sum": h * w}[reduction]
    valid = {"mean": 1.0, "sum": (labels != 255).sum() / b}[reduction]
    full_valid = {"mean": 1.0, "sum": (mask != 255).sum() / b}[reduction]
    l1_scale = {"mean": 1.0, "sum": 1.0 / b}[reduction]

    def ce(out: PatchOutputs, label: int) -> torch.Tensor:
        return _ce(out.domain, label) * pixels

    def cls(out: PatchOutputs) -> torch.Tensor:
        return _class_ce(out.classes, labels) * valid

    def l1(domain: str) -> torch.Tensor:
        return (images[domain] - real[domain]).abs().mean() * l1_scale

    got = module.discriminator_losses(real_s, fake_s, real_t, fake_t, labels)
    domain = ce(real_s, 0) + ce(fake_s, 1) + ce(real_t, 2) + ce(fake_t, 3)
    torch.testing.assert_close(got["discriminator_domain"], domain)
    torch.testing.assert_close(got["discriminator_class"], cls(real_s))
    torch.testing.assert_close(got["discriminator"], domain + cls(real_s))

    got = module.generator_losses(fake_s, fake_t, labels, images, real)
    expected = (
        0.7 * cls(fake_s)
        + 0.4 * (ce(fake_s, 0) + ce(fake_t, 2))
        + 2.0 * (l1("source") + l1("target"))
    )
    torch.testing.assert_close(got["generator"], expected)

    got = module.segmentor_losses(logits, mask, fake_s, fake_t, labels)
    upsampled = F.interpolate(logits, size=(16, 16), mode="bilinear", align_corners=False)
    source_ce = F.cross_entropy(upsampled, mask, ignore_index=255) * full_valid
    torch.testing.assert_close(got["source"], source_ce)
    expected = source_ce + 0.3 * (ce(fake_s, 2) + ce(fake_t, 0)) + 0.2 * cls(fake_s)
    torch.testing.assert_close(got["segmentor"], expected)


# ----------------------------------------------------------------------- the reference's update
class _RecordBatch(Callback):
    def __init__(self) -> None:
        self.batches: list = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batches.append(copy.deepcopy(batch))


def _pixels(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images * std + mean).clamp(0, 1)


class RecordingLSD(LSDSegModule):
    """Keeps the gradients each optimiser steps on."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.stepped_grads: dict[str, torch.Tensor] = {}

    def _record(self, network: str) -> None:
        for name, p in getattr(self, network).named_parameters():
            if p.grad is not None:
                self.stepped_grads[f"{network}.{name}"] = p.grad.clone()

    def segmentor_optimizer_step(self) -> None:
        self._record("model")
        super().segmentor_optimizer_step()

    def generator_optimizer_step(self) -> None:
        self._record("generator")
        super().generator_optimizer_step()

    def discriminator_optimizer_step(self) -> None:
        self._record("discriminator")
        super().discriminator_optimizer_step()


@pytest.mark.fit
def test_one_iteration_is_the_reference_update(tmp_path):
    """The reference: one forward of everything, then D, G and the segmentor each stepped on the
    gradient of its own loss. Recomputed here from a copy of the initial module."""
    torch.manual_seed(0)
    module = RecordingLSD(**lsd_kwargs(dropout=0.0, total_steps=1, weight_decay=0.0))
    reference = copy.deepcopy(module)
    recorder = _RecordBatch()
    cpu_trainer(tmp_path, max_steps=1, callbacks=[recorder]).fit(
        module, datamodule=toy_datamodule(batch_size=2)
    )
    batch = recorder.batches[0]
    xs, mask, xt = batch["source"]["image"], batch["source"]["mask"], batch["target"]["image"]
    size = tuple(xs.shape[-2:])

    seg, gen, disc = reference.model, reference.generator, reference.discriminator
    logits_s, feats_s = forward_with_features(seg, xs)
    _, feats_t = forward_with_features(seg, xt)
    fake_s, fake_t = gen(feats_s[-3:], size), gen(feats_t[-3:], size)
    real_s, real_t = _pixels(xs), _pixels(xt)
    d_rs, d_fs, d_rt, d_ft = disc(real_s), disc(fake_s), disc(real_t), disc(fake_t)
    labels = mask[:, 4::8, 4::8]  # 16×16 -> 2×2 patch maps: the centre pixel of each patch
    loss_d = (
        _ce(d_rs.domain, 0)
        + _ce(d_fs.domain, 1)
        + _ce(d_rt.domain, 2)
        + _ce(d_ft.domain, 3)
        + _class_ce(d_rs.classes, labels)
    )
    loss_g = (
        _class_ce(d_fs.classes, labels)
        + 0.1 * (_ce(d_fs.domain, 0) + _ce(d_ft.domain, 2))
        + (fake_s - real_s).abs().mean()
        + (fake_t - real_t).abs().mean()
    )
    upsampled = F.interpolate(logits_s, size=size, mode="bilinear", align_corners=False)
    loss_f = (
        F.cross_entropy(upsampled, mask, ignore_index=255)
        + 0.1 * (_ce(d_fs.domain, 2) + _ce(d_ft.domain, 0))
        + 0.1 * _class_ce(d_fs.classes, labels)
    )
    # every gradient from that one forward (the pre-update networks), then the three steps
    networks = (disc, gen, seg)
    grads = []
    want_grads = {}
    for prefix, network, loss in zip(
        ("discriminator", "generator", "model"), networks, (loss_d, loss_g, loss_f), strict=True
    ):
        named = [(n, p) for n, p in network.named_parameters() if p.requires_grad]
        values = torch.autograd.grad(loss, [p for _, p in named], retain_graph=True)
        grads.append(([p for _, p in named], values))
        want_grads.update({f"{prefix}.{n}": v for (n, _), v in zip(named, values, strict=True)})
    optimizers = [conf["optimizer"] for conf in reference.configure_optimizers()][::-1]
    for (params, values), optimizer in zip(grads, optimizers, strict=True):
        for p, grad in zip(params, values, strict=True):
            p.grad = grad
        optimizer.step()  # D, then G, then the segmentor, as the reference

    assert module.uda_step == 1
    # each network stepped on the gradient of its own loss at the pre-update weights ...
    assert module.stepped_grads.keys() == want_grads.keys()
    for name, grad in want_grads.items():
        torch.testing.assert_close(module.stepped_grads[name], grad, rtol=1e-4, atol=1e-5)
    # ... and the weights after the step are the reference's. Adam's first step is lr·sign(g):
    # where g is only rounding noise (a conv bias before InstanceNorm has zero gradient; D runs on
    # batched inputs here) its sign is arbitrary, so those entries are left out.
    want = reference.state_dict()
    for name, value in module.state_dict().items():
        noise = want_grads[name].abs() < 1e-5 if name in want_grads else None
        expected = want[name] if noise is None else torch.where(noise, value, want[name])
        torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6, msg=name)


# ------------------------------------------------------------------- each update: own network
def _grads(module) -> dict[str, torch.Tensor | None]:
    return {n: None if p.grad is None else p.grad.clone() for n, p in module.named_parameters()}


def _params(module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def _changed(before: dict, after: dict) -> set[str]:
    changed = set()
    for name, old in before.items():
        new = after[name]
        if (old is None) != (new is None) or (old is not None and not torch.equal(old, new)):
            changed.add(name)
    return changed


class InstrumentedLSD(LSDSegModule):
    """Records which gradients each backward and which parameters each optimiser step change."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.events: list[tuple[str, set[str]]] = []

    def manual_backward(self, loss, *args, **kwargs) -> None:
        before = _grads(self)
        super().manual_backward(loss, *args, **kwargs)
        self.events.append(("backward", _changed(before, _grads(self))))

    def segmentor_optimizer_step(self) -> None:
        before = _params(self)
        super().segmentor_optimizer_step()
        self.events.append(("model", _changed(before, _params(self))))

    def generator_optimizer_step(self) -> None:
        before = _params(self)
        super().generator_optimizer_step()
        self.events.append(("generator", _changed(before, _params(self))))

    def discriminator_optimizer_step(self) -> None:
        before = _params(self)
        super().discriminator_optimizer_step()
        self.events.append(("discriminator", _changed(before, _params(self))))


@pytest.mark.fit
def test_each_update_changes_only_its_own_network(tmp_path):
    torch.manual_seed(0)
    module = InstrumentedLSD(**lsd_kwargs(noise_channels=2))
    trainer = cpu_trainer(tmp_path, max_steps=2)
    trainer.fit(module, datamodule=toy_datamodule(batch_size=2))
    names = {n for n, _ in module.named_parameters()}
    own = {net: {n for n in names if n.startswith(f"{net}.")} for net in NETWORKS}
    assert all(own.values()) and set.union(*own.values()) == names
    kinds = ["backward", "model", "backward", "generator", "backward", "discriminator"]
    assert [kind for kind, _ in module.events] == kinds * 2
    for i in range(2):
        events = module.events[6 * i : 6 * i + 6]
        for (_, grads), (net, stepped) in zip(events[0::2], events[1::2], strict=True):
            # the backward gives gradients to every parameter of its network and no other ...
            assert grads == own[net], net
            # ... and its optimiser step moves that network only
            assert stepped and stepped <= own[net], net
            assert len(stepped) > 0.8 * len(own[net]), net
    # the freezing is undone: every parameter is trainable again
    assert all(p.requires_grad for p in module.parameters())
    assert trainer.global_step == module.uda_step == 2


@pytest.mark.fit
def test_accumulation_steps_the_three_networks_every_k_batches(tmp_path):
    torch.manual_seed(0)
    module = InstrumentedLSD(**lsd_kwargs(accumulate_grad_batches=2))
    trainer = cpu_trainer(tmp_path, max_steps=1)  # one optimiser step = two batches
    trainer.fit(module, datamodule=toy_datamodule(batch_size=2))
    kinds = [kind for kind, _ in module.events]
    steps = ["backward", "model", "backward", "generator", "backward", "discriminator"]
    assert kinds == ["backward"] * 3 + steps
    assert trainer.global_step == module.uda_step == 1


class RecordingScaler(torch.amp.GradScaler):
    """Records the loss scale at each backward (``scale``) and each optimiser ``step``."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.events: list[tuple[str, str | None, float]] = []

    def scale(self, outputs):
        self.events.append(("scale", None, self.get_scale()))
        return super().scale(outputs)

    def step(self, optimizer, *args, **kwargs):
        self.events.append(("step", type(optimizer).__name__, self.get_scale()))
        return super().step(optimizer, *args, **kwargs)


@pytest.mark.fit
def test_each_optimiser_unscales_with_the_loss_scale_of_its_own_backward(tmp_path):
    # growth_interval=1: the scale doubles after every optimiser step, so a gradient scaled
    # before another optimiser's step would be unscaled with the wrong factor.
    scaler = RecordingScaler("cpu", init_scale=2.0**8, growth_interval=1)
    module = LSDSegModule(**lsd_kwargs())
    trainer = cpu_trainer(
        tmp_path, max_steps=2, plugins=[MixedPrecision("16-mixed", "cpu", scaler)]
    )
    trainer.fit(module, datamodule=toy_datamodule(batch_size=2))
    assert trainer.global_step == 2
    steps = [name for kind, name, _ in scaler.events if kind == "step"]
    segmentor = type(trainer.optimizers[0]).__name__
    assert steps == [segmentor, "Adam", "Adam"] * 2  # segmentor, G, D
    pending: list[float] = []
    for kind, _, scale in scaler.events:
        if kind == "scale":
            pending.append(scale)
        else:
            assert pending == [scale]  # one backward per step, unscaled with its own scale
            pending = []


# -------------------------------------------------------------------------------- short fit
@pytest.mark.fit
def test_short_fit_gives_finite_losses_and_counts_iterations(tmp_path):
    torch.manual_seed(0)
    module = LSDSegModule(**lsd_kwargs(noise_channels=2, mcc_weight=0.1))
    trainer = cpu_trainer(tmp_path, max_steps=3)
    trainer.fit(module, datamodule=toy_datamodule(batch_size=2))
    assert trainer.global_step == module.uda_step == 3
    metrics = trainer.callback_metrics
    for key in (
        "loss",
        "loss_segmentor",
        "loss_source",
        "loss_confusion",
        "loss_fake_class",
        "loss_mcc",  # the base's optional regulariser, in the segmentor's loss
        "loss_generator",
        "loss_generator_class",
        "loss_generator_adversarial",
        "loss_reconstruction",
        "loss_discriminator",
        "loss_discriminator_domain",
        "loss_discriminator_class",
    ):
        assert torch.isfinite(metrics[f"train/{key}"]), key
    # G and D keep the reference's constant learning rate; the segmentor's decays (poly)
    for name in ("lr_generator", "lr_discriminator"):
        assert float(metrics[f"train/{name}"]) == pytest.approx(1e-4)
    assert float(metrics["train/lr"]) == 0.0
    reconstruction = module.reconstruct(torch.zeros(1, 3, 16, 16))
    assert reconstruction.shape == (1, 3, 16, 16) and torch.isfinite(reconstruction).all()


# ---------------------------------------------------------------------------------- resume
def _network_states(module) -> dict[str, dict[str, torch.Tensor]]:
    return {
        net: {k: v.clone() for k, v in getattr(module, net).state_dict().items()}
        for net in NETWORKS
    }


@pytest.mark.fit
def test_resume_from_mid_run_checkpoint_is_bit_identical(tmp_path):
    kwargs = lsd_kwargs(noise_channels=2)  # dropout 0.5 and noise: the RNGs must resume too
    torch.manual_seed(0)
    straight = LSDSegModule(**kwargs)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=2, save_top_k=-1)
    cpu_trainer(tmp_path, max_steps=4, enable_checkpointing=True, callbacks=[checkpoint]).fit(
        straight, datamodule=toy_datamodule(batch_size=2)
    )
    step2 = tmp_path / "epoch=0-step=2.ckpt"
    assert step2.exists(), sorted(p.name for p in tmp_path.iterdir())
    saved = torch.load(step2, weights_only=False)
    assert len(saved["optimizer_states"]) == 3 and len(saved["lr_schedulers"]) == 1
    assert {k.split(".")[0] for k in saved["state_dict"]} >= set(NETWORKS)

    torch.manual_seed(123)  # a different init: everything must come from the checkpoint
    resumed = LSDSegModule(**kwargs)
    trainer = cpu_trainer(tmp_path / "resume", max_steps=4)
    trainer.fit(resumed, datamodule=toy_datamodule(batch_size=2), ckpt_path=step2)
    assert resumed.uda_step == trainer.global_step == 4
    want, got = _network_states(straight), _network_states(resumed)
    for net in NETWORKS:
        for key, value in want[net].items():
            assert torch.equal(got[net][key], value), f"{net}.{key} differs after resume"
    for opt_a, opt_b in zip(straight.optimizers(), resumed.optimizers(), strict=True):
        state_a, state_b = opt_a.optimizer.state_dict(), opt_b.optimizer.state_dict()
        for index, slot in state_a["state"].items():
            for key, value in slot.items():
                assert torch.equal(
                    torch.as_tensor(value), torch.as_tensor(state_b["state"][index][key])
                )


# ------------------------------------------------------------------------------------- DDP
class _SaveNetworks(Callback):
    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def on_train_end(self, trainer, pl_module) -> None:
        torch.save(
            {
                "networks": _network_states(pl_module),
                "uda_step": pl_module.uda_step,
                "loss": trainer.callback_metrics["train/loss_discriminator"],
            },
            f"{self.out_dir}/rank{trainer.global_rank}.pt",
        )


@pytest.mark.fit
@pytest.mark.ddp
def test_ddp_two_processes_keep_all_three_networks_in_sync(tmp_path):
    # ddp_fork (2 CPU processes, gloo) starts fast; spawn when CUDA is already initialised.
    kind = "ddp_spawn" if torch.cuda.is_initialized() else "ddp_fork"
    module = LSDSegModule(**lsd_kwargs(noise_channels=2))
    trainer = cpu_trainer(
        tmp_path,
        max_steps=3,
        devices=2,
        strategy=f"{kind}_find_unused_parameters_true",
        callbacks=[_SaveNetworks(str(tmp_path))],
    )
    trainer.fit(module, datamodule=toy_datamodule(batch_size=2))
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert rank0["uda_step"] == rank1["uda_step"] == 3
    assert torch.isfinite(rank0["loss"]) and torch.isfinite(rank1["loss"])
    assert rank0["loss"] != rank1["loss"]  # the ranks trained on different shards ...
    # ... yet each network's gradients were all-reduced: the ranks' weights stay equal (the
    # segmentor's BatchNorm statistics are per rank, as in every DDP run without SyncBatchNorm)
    for net in NETWORKS:
        for key, value in rank0["networks"][net].items():
            if "running_" in key or "num_batches" in key:
                continue
            assert torch.equal(value, rank1["networks"][net][key]), f"{net}.{key}"


@pytest.mark.fit
@pytest.mark.ddp
def test_ddp_without_unused_parameter_detection_is_rejected_with_the_fix(tmp_path):
    kind = "ddp_spawn" if torch.cuda.is_initialized() else "ddp_fork"
    module = LSDSegModule(**lsd_kwargs())
    trainer = cpu_trainer(tmp_path, max_steps=1, devices=2, strategy=kind)
    with pytest.raises(Exception, match="ddp_find_unused_parameters_true"):
        trainer.fit(module, datamodule=toy_datamodule(batch_size=2))


# ------------------------------------------------------------------------------ arguments
@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("adv_weight", -0.1),
        ("class_weight", -1.0),
        ("l1_weight", -1.0),
        ("generator_adv_weight", -1.0),
        ("generator_class_weight", float("nan")),
        ("generator_lr", 0.0),
        ("discriminator_lr", -1e-4),
        ("generator_betas", (1.0, 0.999)),
        ("discriminator_betas", (0.5,)),
        ("generator_width", 0),
        ("discriminator_width", 0),
        ("feature_levels", 0),
        ("noise_channels", -1),
        ("dropout", 1.0),
        ("pixel_reduction", "avg"),
    ],
)
def test_bad_arguments_raise_value_errors_naming_them(name, value):
    with pytest.raises(ValueError, match=name):
        LSDSegModule(**lsd_kwargs(**{name: value}))


def test_model_without_features_and_small_images_are_rejected():
    with pytest.raises(ValueError, match="model must expose its features"):
        LSDSegModule(nn.Conv2d(3, NUM_CLASSES, 1), num_classes=NUM_CLASSES)
    module = LSDSegModule(**lsd_kwargs())
    small = {
        "source": {"image": torch.zeros(2, 3, 8, 8), "mask": torch.zeros(2, 8, 8).long()},
        "target": {"image": torch.zeros(2, 3, 8, 8)},
    }
    with pytest.raises(ValueError, match="at least 16×16"):
        module.check_batch(small)
    smp = LSDSegModule(num_classes=NUM_CLASSES, arch="unet", encoder="resnet18", generator_width=4)
    assert smp.generator_stride == 32
    with pytest.raises(ValueError, match="stride 32"):
        smp.check_batch(
            {
                "source": {
                    "image": torch.zeros(2, 3, 32, 32),
                    "mask": torch.zeros(2, 32, 32).long(),
                },
                "target": {"image": torch.zeros(2, 3, 48, 48)},
            }
        )


# -------------------------------------------------------------------------------- networks
@pytest.mark.parametrize(
    ("arch", "encoder", "channels"),
    [
        ("tiny_unet", None, (32, 48, 64)),
        ("deeplabv2", "resnet18", (256, 512)),  # layer3, layer4: the two it exposes
        ("unet", "resnet18", (128, 256, 512)),  # smp: the input "feature" is never read
    ],
)
def test_generator_reads_the_deepest_features_of_each_segmentor(arch, encoder, channels):
    module = LSDSegModule(
        num_classes=NUM_CLASSES,
        arch=arch,
        encoder=encoder,
        generator_width=4,
        discriminator_width=8,
    )
    assert module.generator.in_channels == channels
    images = torch.randn(2, 3, 64, 64)  # smp's stride-32 features: 2×2
    reconstruction = module.reconstruct(images)  # normalised, at the input size
    assert reconstruction.shape == images.shape
    rgb = module.normalization.denormalize(reconstruction)
    assert rgb.min() >= -1e-5 and rgb.max() <= 1 + 1e-5


def test_network_shapes_and_argument_checks():
    d = LSDDiscriminator(num_classes=5, width=8, blocks=1)
    for h, w in ((16, 16), (32, 48), (33, 17)):
        out = d(torch.zeros(1, 3, h, w))
        assert out.domain.shape == (1, 4, *LSDDiscriminator.output_size(h, w))
        assert out.classes.shape == (1, 5, *LSDDiscriminator.output_size(h, w))
    assert LSDDiscriminator.output_size(320, 640) == (40, 80)  # the reference's 40×80 maps
    g = LSDGenerator((8, 16), width=4, noise_channels=3, blocks=1)
    feats = [torch.zeros(2, 8, 5, 5), torch.zeros(2, 16, 3, 3)]
    noise = g.sample_noise(feats, generator=torch.Generator().manual_seed(0))
    assert [tuple(n.shape) for n in noise] == [(2, 3, 3, 3), (2, 3, 5, 5)]  # deep -> shallow
    assert g(feats, (17, 19), noise).shape == (2, 3, 17, 19)
    with pytest.raises(ValueError, match="expects 2 feature maps"):
        g(feats[:1], (16, 16))
    with pytest.raises(ValueError, match="in_channels"):
        LSDGenerator(())
    with pytest.raises(ValueError, match="dropout"):
        LSDDiscriminator(num_classes=3, dropout=1.5)


def test_the_former_reduction_argument_is_accepted_with_a_deprecation_warning():
    with pytest.warns(DeprecationWarning, match="now pixel_reduction='sum'"):
        module = LSDSegModule(**lsd_kwargs(), reduction="sum")
    assert module.pixel_reduction == "sum" and module.hparams.pixel_reduction == "sum"
