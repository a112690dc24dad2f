"""Tests of taskspace_utils.gradients.subnetworks: top-k masks of exactly the requested size and
their Jaccard space."""

from __future__ import annotations

import numpy as np
import pytest

from gradients_reference import random_diffs
from taskspace_utils import gradients as G


@pytest.mark.parametrize("k", [0.0, 0.03, 0.1, 0.25, 0.5, 1.0])
@pytest.mark.parametrize("ties", [False, True])
def test_subnetwork_masks_have_exactly_the_requested_size(k, ties):
    diffs = random_diffs(0, ties)
    masks = G.subnetwork_masks(diffs, k)
    total = sum(t.numel() for t in diffs.values())
    assert sum(int(m.sum()) for m in masks.values()) == round(k * total)
    flat = np.concatenate([t.reshape(-1).abs().numpy() for t in diffs.values()])
    expected = np.zeros(total, dtype=bool)
    expected[np.argsort(-flat, kind="stable")[: round(k * total)]] = True
    got = np.concatenate([m.reshape(-1).numpy() for m in masks.values()])
    np.testing.assert_array_equal(got, expected)
    per = G.subnetwork_masks(diffs, k, per_module=True)
    for n, t in diffs.items():
        assert per[n].shape == t.shape and int(per[n].sum()) == round(k * t.numel())
        if 0 < per[n].sum() < t.numel():
            assert t.abs()[per[n]].min() >= t.abs()[~per[n]].max()


def test_mask_overlap_space_is_jaccard():
    masks = {f"t{i}": G.subnetwork_masks(random_diffs(i), 0.3) for i in range(4)}
    space = G.mask_overlap_space(masks)
    sets = {t: set(np.flatnonzero(np.concatenate([m.reshape(-1).numpy() for m in ms.values()]))) for t, ms in masks.items()}
    for a in sets:
        for b in sets:
            assert space.loc[a, b] == pytest.approx(len(sets[a] & sets[b]) / len(sets[a] | sets[b]))
    assert list(space.index) == list(masks) and np.allclose(np.diag(space), 1)
