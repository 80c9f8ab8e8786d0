"""The segmentor feature contract: logits and encoder features from one forward."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_uda.models import build_segmentor, forward_with_features


@pytest.mark.parametrize(
    ("arch", "kwargs", "size"),
    [
        ("tiny_unet", {}, 32),
        ("deeplabv2", {"encoder": "resnet18", "style": "caffe"}, 64),
        ("deeplabv2", {"encoder": "resnet18"}, 64),
        ("unet", {"encoder": "resnet18"}, 64),
        ("fpn", {"encoder": "resnet18"}, 64),
    ],
)
def test_logits_equal_forward_and_the_encoder_runs_once(arch, kwargs, size):
    torch.manual_seed(0)
    model = build_segmentor(arch, num_classes=5, **kwargs).eval()
    calls = []
    model.encoder.register_forward_hook(lambda *_: calls.append(1))
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        logits, features = forward_with_features(model, x)
        assert len(calls) == 1
        expected = model(x)
    torch.testing.assert_close(logits, expected)
    assert isinstance(features, list) and len(features) >= 2
    assert all(f.shape[0] == 2 for f in features)
    # shallow → deep: spatial size never grows
    sizes = [f.shape[-1] for f in features]
    assert sizes == sorted(sizes, reverse=True)


def test_a_users_segmentor_with_forward_features_works_and_others_are_told():
    class Mine(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.Conv2d(3, 4, 1)
            self.head = nn.Conv2d(4, 2, 1)

        def forward(self, x):
            return self.head(self.encoder(x))

        def forward_features(self, x):
            feature = self.encoder(x)
            return self.head(feature), [feature]

    logits, features = forward_with_features(Mine(), torch.randn(1, 3, 4, 4))
    assert logits.shape == (1, 2, 4, 4) and features[0].shape == (1, 4, 4, 4)
    with pytest.raises(TypeError, match="forward_features"):
        forward_with_features(nn.Conv2d(3, 2, 1), torch.randn(1, 3, 4, 4))
