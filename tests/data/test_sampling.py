"""Tests for lightning_uda/data/sampling.py: the samplers on their own (the stream through
UDADataModule is tested in test_datamodule.py and test_rcs_datamodule.py)."""

from __future__ import annotations

import numpy as np

from lightning_uda.data.rcs import RareClassSampler
from lightning_uda.data.sampling import DomainSampler, RareClassDomainSampler


def test_sampler_resumes_at_any_batch():
    full = DomainSampler(5, batch_size=2, steps_per_epoch=4, seed=3, domain="target")
    stream = list(full) + list(full)  # two epochs, continuous
    for done in range(8):
        epoch_done = done % 4
        resumed = DomainSampler(5, batch_size=2, steps_per_epoch=4, seed=3, domain="target",
                                progress=lambda d=done, e=epoch_done: (d, e))  # fmt: skip
        expected_batches = 4 - epoch_done if epoch_done else 4
        assert list(resumed) == stream[2 * done : 2 * (done + expected_batches)]


def test_sampler_shards_are_disjoint_per_rank():
    shards = [
        [i for i, _ in DomainSampler(12, 2, 3, seed=0, domain="target", rank=r, world_size=2)]
        for r in range(2)
    ]
    assert not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == list(range(12))


def test_ranks_take_disjoint_draws_and_keys_carry_the_class():
    counts = np.array([[50, 20, 0], [50, 0, 30], [60, 10, 10]])
    rcs = RareClassSampler(counts, temperature=0.1, min_pixels=5, seed=7)
    samplers = [
        RareClassDomainSampler(3, rcs=rcs, batch_size=2, steps_per_epoch=4, rank=r, world_size=2)
        for r in range(2)
    ]
    for r, sampler in enumerate(samplers):
        for p in range(8):
            index, _, cls = sampler.key_at(p)
            assert (index, cls) == rcs.draw(2 * p + r)
            assert counts[index, cls] > 5
    assert [k[1] for k in samplers[0]] != [k[1] for k in samplers[1]]  # own item seeds
