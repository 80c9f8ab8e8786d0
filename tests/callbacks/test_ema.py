from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lightning_uda.callbacks import EMATeacher, ema_coefficient, ema_update


def test_warmup_coefficient_sequence_matches_dacs():
    # DACS: min(1 - 1/(t+1), alpha) → 0, 1/2, 2/3, 3/4, ... capped at alpha.
    got = [ema_coefficient(t, alpha=0.7) for t in range(5)]
    assert got == pytest.approx([0.0, 0.5, 2 / 3, 0.7, 0.7])
    assert ema_coefficient(0, alpha=0.99, warmup=False) == 0.99


def _pair():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    teacher = copy.deepcopy(student).requires_grad_(False)
    with torch.no_grad():
        for p in teacher.parameters():
            p.fill_(1.0)
        for p in student.parameters():
            p.fill_(3.0)
        student[1].running_mean.fill_(5.0)
        student[1].num_batches_tracked.fill_(7)
    return teacher, student


def test_ema_update_closed_form_and_buffer_modes():
    teacher, student = _pair()
    ema_update(teacher, student, coefficient=0.25, buffers="average")
    # 0.25 * 1 + 0.75 * 3 = 2.5 for every parameter
    for p in teacher.parameters():
        assert torch.allclose(p, torch.full_like(p, 2.5))
    # running_mean: 0.25 * 0 + 0.75 * 5; integer counter copied
    assert torch.allclose(teacher[1].running_mean, torch.full((2,), 3.75))
    assert int(teacher[1].num_batches_tracked) == 7

    teacher, student = _pair()
    ema_update(teacher, student, coefficient=0.5, buffers="copy")
    assert torch.allclose(teacher[1].running_mean, torch.full((2,), 5.0))

    teacher, student = _pair()
    ema_update(teacher, student, coefficient=0.5, buffers="none")
    assert torch.allclose(teacher[1].running_mean, torch.zeros(2))


def test_first_update_makes_teacher_equal_student():
    teacher, student = _pair()
    ema_update(teacher, student, coefficient=ema_coefficient(0, alpha=0.99))
    for t, s in zip(teacher.state_dict().values(), student.state_dict().values(), strict=True):
        assert torch.equal(t, s)


def test_mismatched_teacher_is_a_clear_error():
    with pytest.raises(ValueError, match="copy of"):
        ema_update(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), 0.5)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="alpha"):
        EMATeacher(alpha=1.0)
    with pytest.raises(ValueError, match="buffers"):
        EMATeacher(buffers="mean")


def test_state_dict_round_trip():
    cb = EMATeacher()
    cb.updates, cb._last_step = 12, 12
    restored = EMATeacher()
    restored.load_state_dict(cb.state_dict())
    assert (restored.updates, restored._last_step) == (12, 12)
