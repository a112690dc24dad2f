"""Shared by the tests of taskspace_utils.spaces: synthetic metadata, frames, the compared entries
computed independently, and the `meta`/`planted` fixtures (import them into a test module to use them)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from taskspace_utils import spaces as sp


def make_metadata(n_phen: int = 4, per: int = 3) -> pd.DataFrame:
    """n_phen phenomena of `per` paradigms each; phenomena 0,1 in field f0, the rest in f1."""
    tasks = [f"t{p}_{k}" for p in range(n_phen) for k in range(per)]
    phen = [f"p{p}" for p in range(n_phen) for _ in range(per)]
    field = [f"f{min(p // 2, 1)}" for p in range(n_phen) for _ in range(per)]
    return pd.DataFrame({"phenomenon": phen, "field": field}, index=pd.Index(tasks, name="task"))


def frame(values, tasks) -> pd.DataFrame:
    return pd.DataFrame(np.asarray(values, float), index=list(tasks), columns=list(tasks))


def offdiag(matrix: pd.DataFrame) -> np.ndarray:
    """All ordered off-diagonal entries, row-major (the convention for non-symmetric spaces)."""
    values = matrix.to_numpy()
    return values[~np.eye(len(values), dtype=bool)]


def upper(matrix: pd.DataFrame) -> np.ndarray:
    values = matrix.to_numpy()
    return values[np.triu_indices(len(values), k=1)]


def residual(v: np.ndarray, z: np.ndarray) -> np.ndarray:
    design = np.column_stack([np.ones(len(v)), z])
    coef, *_ = np.linalg.lstsq(design, v, rcond=None)
    return v - design @ coef


@pytest.fixture
def meta():
    return make_metadata()


@pytest.fixture
def planted(meta):
    """A non-symmetric space = 1.5 * phenomenon hypothesis + noise."""
    rng = np.random.default_rng(1)
    hyp = sp.hypothesis_space(meta, "phenomenon")
    return frame(1.5 * hyp.to_numpy() + rng.normal(size=hyp.shape), meta.index), hyp
