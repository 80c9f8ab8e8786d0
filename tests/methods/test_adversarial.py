"""The shared adversarial pieces: domain losses against closed forms, freezing, the mixin's
optimiser configuration and which methods use it."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lightning_uda.methods import AdaptSegNetModule, AdvEntModule, DANNModule, LSDSegModule
from lightning_uda.methods.adversarial import (
    SOURCE_DOMAIN,
    TARGET_DOMAIN,
    AdversarialMixin,
    check_betas,
    discriminator_loss,
    domain_accuracy,
    domain_bce,
    frozen,
)


def test_domain_bce_of_a_constant_logit_is_softplus():
    # BCE(b, 0) = softplus(b) and BCE(b, 1) = softplus(-b) for every element
    logits = torch.full((2, 1, 3, 3), 0.7)
    assert float(domain_bce(logits, SOURCE_DOMAIN)) == pytest.approx(math.log1p(math.exp(0.7)))
    assert float(domain_bce(logits, TARGET_DOMAIN)) == pytest.approx(math.log1p(math.exp(-0.7)))
    assert (SOURCE_DOMAIN, TARGET_DOMAIN) == (0.0, 1.0)  # AdvEnt's labels


def test_discriminator_loss_weighs_each_domain_half_whatever_its_size():
    source = torch.full((1, 1, 2, 2), 2.0)  # 4 positions
    target = torch.full((3, 1, 5, 5), -1.0)  # 75 positions
    expected = 0.5 * (math.log1p(math.exp(2.0)) + math.log1p(math.exp(1.0)))
    assert float(discriminator_loss(source, target)) == pytest.approx(expected)
    # a perfect discriminator: source logits very negative, target very positive
    assert (
        float(discriminator_loss(-20 * torch.ones(1, 1, 2, 2), 20 * torch.ones(1, 1, 2, 2))) < 1e-8
    )
    # another criterion (an LS-GAN one) is scored against the same labels
    squared = discriminator_loss(source, target, lambda x, y: ((x - y) ** 2).mean())
    assert float(squared) == pytest.approx(0.5 * (4.0 + 4.0))


def test_domain_accuracy_hand_case():
    source = torch.tensor([-1.0, -2.0, 3.0, -0.5]).view(1, 1, 2, 2)  # 3 of 4 right (< 0)
    target = torch.tensor([1.0, 0.0, -3.0, -1.0]).view(1, 1, 2, 2)  # 2 of 4 right (>= 0)
    accuracy = domain_accuracy(source, target)
    assert float(accuracy) == pytest.approx(0.5 * (0.75 + 0.5))
    assert not accuracy.requires_grad


def test_frozen_blocks_gradients_and_restores_the_flags():
    net = nn.Linear(2, 1)
    net.bias.requires_grad_(False)  # a flag that must come back as it was
    x = torch.ones(1, 2, requires_grad=True)
    with frozen(net):
        assert not any(p.requires_grad for p in net.parameters())
        net(x).sum().backward()
    assert net.weight.grad is None and x.grad is not None  # the input still gets its gradient
    assert net.weight.requires_grad and not net.bias.requires_grad
    with pytest.raises(RuntimeError), frozen(net):
        raise RuntimeError("restored on errors too")
    assert net.weight.requires_grad


def test_check_betas_names_the_argument():
    check_betas("M", "betas", (0.9, 0.99))
    with pytest.raises(ValueError, match="betas must be a pair"):
        check_betas("M", "betas", (0.9,))
    with pytest.raises(ValueError, match=r"betas\[1\] must be in"):
        check_betas("M", "betas", (0.9, 1.0))


def test_methods_with_their_own_adversary_optimisers_share_the_mixin():
    for method in (AdvEntModule, AdaptSegNetModule, LSDSegModule):
        assert issubclass(method, AdversarialMixin), method
    # DANN's domain classifier learns in the segmentor's own backward (gradient reversal)
    assert not issubclass(DANNModule, AdversarialMixin)


class _Probe(AdversarialMixin):
    """Just enough of a module for :meth:`AdversarialMixin.adversary_optimizer`."""

    def poly_scheduler(self, optimizer, warmup_steps=0):
        self.warmup_steps = warmup_steps
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / 4)


def test_adversary_optimizer_is_adam_with_poly_or_constant_rate():
    probe = _Probe()
    net = nn.Linear(2, 1)
    config = probe.adversary_optimizer(net.parameters(), lr=1e-4, betas=[0.9, 0.99], poly=True)
    optimizer = config["optimizer"]
    assert isinstance(optimizer, torch.optim.Adam)
    assert optimizer.defaults["betas"] == (0.9, 0.99) and optimizer.defaults["lr"] == 1e-4
    assert config["lr_scheduler"]["scheduler"].optimizer is optimizer
    assert probe.warmup_steps == 0  # AdvEnt decays D's rate with no warm-up
    constant = probe.adversary_optimizer(net.parameters(), lr=2e-4, betas=(0.7, 0.999), poly=False)
    assert set(constant) == {"optimizer"}
