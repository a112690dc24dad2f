"""Tests for taskspace_utils.spaces.transforms: normalisation, generalisation index, distances and MDS."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.distance import pdist

from taskspace_utils import spaces as sp
from spaces_reference import frame


def test_generalisation_index_hand_example():
    meta = pd.DataFrame(
        {"phenomenon": ["A", "A", "B", "C"], "field": ["F", "F", "F", "G"]}, index=["a1", "a2", "b1", "c1"]
    )
    space = frame(
        [[2.0, 1.0, 0.5, -0.2], [0.4, 1.0, 0.3, 0.1], [0.6, 0.2, -1.0, 0.0], [0.1, 0.3, 0.5, 0.5]], meta.index
    )
    with pytest.warns(UserWarning, match="1 task"):
        gi = sp.generalisation_index(space, meta)
    cols = ["same_phenomenon", "same_field", "other_field"]
    expected = [[0.5, 0.25, -0.1], [0.4, 0.3, 0.1], [np.nan] * 3, [np.nan, np.nan, 0.6]]
    np.testing.assert_allclose(gi[cols].to_numpy(), expected)
    assert gi.attrs["overall"] == pytest.approx({"same_phenomenon": 0.45, "same_field": 0.275, "other_field": 0.2})
    assert gi.attrs["n_undefined"] == 1
    np.testing.assert_array_equal(gi["self"], [2.0, 1.0, -1.0, 0.5])


def test_normalise_rows_and_symmetrise():
    tasks = ["a", "b", "c"]
    space = frame([[2.0, 1.0, -1.0], [3.0, 0.0, 1.0], [1.0, 1.0, 4.0]], tasks)
    with pytest.warns(UserWarning, match="1 task"):
        norm = sp.normalise_rows(space)
    np.testing.assert_allclose(norm.to_numpy(), [[1, 0.5, -0.5], [np.nan] * 3, [0.25, 0.25, 1]])
    sym = sp.symmetrise(space)
    np.testing.assert_allclose(sym.to_numpy(), (space.to_numpy() + space.to_numpy().T) / 2)


def test_embed_mds_recovers_planar_configuration():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(8, 2))
    tasks = [f"t{i}" for i in range(8)]
    dist = frame(np.linalg.norm(points[:, None] - points[None], axis=-1), tasks)
    coords = sp.embed_mds(dist)
    np.testing.assert_allclose(pdist(coords.to_numpy()), pdist(points), atol=1e-10)
    assert coords.attrs["eigenvalues"][2] == pytest.approx(0, abs=1e-10)


def test_task_distances():
    rng = np.random.default_rng(3)
    tasks = [f"t{i}" for i in range(6)]
    space = frame(rng.normal(size=(6, 6)), tasks)
    sym = (space.to_numpy() + space.to_numpy().T) / 2
    dist = sp.task_distances(space, "correlation")
    expected = np.clip(1 - np.corrcoef(sym), 0, None)
    np.fill_diagonal(expected, 0)
    np.testing.assert_allclose(dist.to_numpy(), expected, atol=1e-12)
    sim = sp.task_distances(space, "similarity").to_numpy()
    off = ~np.eye(6, dtype=bool)
    np.testing.assert_allclose(sim[off], (sym[off].max() - sym)[off])
