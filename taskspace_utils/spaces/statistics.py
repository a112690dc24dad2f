"""Comparing spaces: Mantel tests of (partial) correlation and regression on hypothesis spaces.

Statistics over the compared entries (:mod:`taskspace_utils.spaces.frames`: off-diagonal, both
ordered pairs unless every matrix is symmetric):

- :func:`compare_spaces`: Spearman, Pearson or Kendall correlation of a space with a hypothesis
  (or another space); with controls, the partial correlation ``r = <e_x, e_y> / (|e_x| |e_y|)`` of
  the residuals of x and y on ``[1, controls]`` (ranks first for Spearman).
- :func:`regress_space`: OLS of the z-scored entries on several z-scored hypotheses
  (standardised coefficients, R^2).

Significance (Mantel 1967; Legendre et al. 1994): permute the task labels of the space (rows and
columns together), recompute the statistic with hypothesis and controls fixed. The permutations
and the null distribution come from ``scipy.stats.permutation_test`` (``permutation_type=
"pairings"`` on the one sample ``arange(n_tasks)``, a vectorised statistic that gathers the
permuted entries ``M[p[rows], p[cols]]``, ``rng=numpy.random.default_rng(seed)``: the same draws
as ``default_rng(seed).permuted(tile(arange(n), (n_permutations, 1)), axis=1)``). The *partial*
Mantel test permutes the space only and keeps the controls' residualisation fixed: that
statistic is hand-written here, scipy has no partial Mantel statistic.

p-value convention (:func:`_p_value`): ``(1 + #{null at least as extreme}) / (1 + n_permutations)``
(never 0; Phipson & Smyth 2010), "at least as extreme" with an absolute tolerance of 1e-12;
``two-sided`` counts ``|null| >= |observed|`` (Mantel's convention). scipy's own ``pvalue`` uses
the same ``+1`` form for random permutations but a relative tolerance (100 eps |observed|) and
doubles the smaller one-sided p for ``two-sided``, so the p-value is computed here from scipy's
``null_distribution``. When ``n_tasks! <= n_permutations`` (at most 6 tasks for 1,000) scipy
enumerates every permutation instead (an exact test); the null then holds all ``n!`` statistics,
the identity included, and the p-value is ``#{null at least as extreme} / n!`` (the identity is
the ``+1``).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from .frames import _as_named, _prepare

__all__ = ["SpaceComparison", "SpaceRegression", "compare_spaces", "regress_space"]

_METHODS = ("spearman", "pearson", "kendall")
_ALTERNATIVES = ("greater", "less", "two-sided")
_EPS = 1e-12  # tolerance when counting permuted statistics "at least as extreme"


def result_row(result, drop: str) -> dict:
    """A result dataclass as one results-frame row: its fields without the array ``drop`` (a null
    or bootstrap distribution; not copied), ``controls`` joined with ``", "``."""
    out = {f.name: getattr(result, f.name) for f in dataclasses.fields(result) if f.name != drop}
    out["controls"] = ", ".join(result.controls)
    return out


@dataclasses.dataclass
class SpaceComparison:
    """Result of :func:`compare_spaces`. ``null`` holds the permuted statistics."""

    statistic: float
    p_value: float
    method: str
    partial: bool
    controls: tuple[str, ...]
    alternative: str
    n_permutations: int
    n_tasks: int
    n_entries: int
    symmetric: bool
    include_diagonal: bool
    seed: int
    null: np.ndarray = dataclasses.field(repr=False)

    def to_dict(self) -> dict:
        """Plain values (no null distribution), e.g. for a row of a results frame."""
        return result_row(self, drop="null")




def _columns(vectors: Sequence[np.ndarray], m: int) -> np.ndarray:
    """Control vectors as the columns of an (m, k) matrix; (m, 0) when there are none."""
    return np.column_stack(vectors) if len(vectors) else np.empty((m, 0))


def _transform(vec: np.ndarray, method: str) -> np.ndarray:
    return stats.rankdata(vec) if method == "spearman" else np.asarray(vec, float)


def _orthonormal_basis(z: np.ndarray) -> np.ndarray:
    """Orthonormal basis of the span of ``[1, z]`` (columns), dropping dependent directions."""
    design = np.column_stack([np.ones(len(z)), z]) if z.size else np.ones((len(z), 1))
    u, s, _ = np.linalg.svd(design, full_matrices=False)
    return u[:, s > s[0] * 1e-10]


def _correlate(x: np.ndarray, y: np.ndarray, z: np.ndarray, method: str) -> float:
    """(Partial) correlation of entry vectors x, y given control columns z (m x k, maybe k = 0)."""
    if method == "kendall":
        if z.size:
            raise ValueError("partial correlation (controls) is defined for 'spearman' and 'pearson' only")
        return float(stats.kendalltau(x, y).statistic)
    if not z.size:
        fn = stats.spearmanr if method == "spearman" else stats.pearsonr
        return float(fn(x, y).statistic)
    basis = _orthonormal_basis(np.column_stack([_transform(c, method) for c in z.T]))
    residuals = []
    for v in (_transform(x, method), _transform(y, method)):
        e = v - basis @ (basis.T @ v)
        if np.linalg.norm(e) <= 1e-9 * np.linalg.norm(v - v.mean()):  # v lies in the span of the controls
            return float("nan")
        residuals.append(e)
    ex, ey = residuals
    return float(ex @ ey / (np.linalg.norm(ex) * np.linalg.norm(ey)))



def _permutation_null(
    n: int, statistic: Callable[[np.ndarray], np.ndarray], n_permutations: int, seed: int, batch: int | None = None
) -> tuple[np.ndarray, bool]:
    """``statistic`` of task-label permutations: ``(null distribution, exact)``.

    ``statistic(p)`` takes permutations of ``arange(n)`` along the last axis (shape ``(..., n)``)
    and returns one value (or a trailing vector of values) per permutation. Drawn by
    ``scipy.stats.permutation_test`` (module docstring), ``batch`` permutations at a time (memory
    only: the draws do not depend on it). ``exact``: every one of the ``n!`` permutations was
    enumerated because ``n! <= n_permutations``. No permutations asked for: an empty null."""
    if n_permutations <= 0:  # scipy needs at least one resample
        return np.empty(0), False
    result = stats.permutation_test(
        (np.arange(n),), lambda p, axis=-1: statistic(p), permutation_type="pairings", vectorized=True,
        n_resamples=n_permutations, batch=batch, rng=np.random.default_rng(seed),
    )  # fmt: skip
    return np.asarray(result.null_distribution, dtype=float), math.factorial(n) <= n_permutations


def _p_value(null: np.ndarray, observed: float, alternative: str, exact: bool = False) -> float:
    """Permutation p-value ``(1 + #{null at least as extreme}) / (1 + n_permutations)``
    (never 0; Phipson & Smyth 2010); ``#{...} / n!`` for an ``exact`` null (module docstring)."""
    if len(null) == 0 or not np.isfinite(observed):
        return float("nan")
    if alternative == "greater":
        hits = np.sum(null >= observed - _EPS)
    elif alternative == "less":
        hits = np.sum(null <= observed + _EPS)
    else:
        hits = np.sum(np.abs(null) >= abs(observed) - _EPS)
    extra = 0 if exact else 1
    return float((extra + hits) / (extra + len(null)))


def compare_spaces(
    space: pd.DataFrame,
    hypothesis: pd.DataFrame,
    method: str = "spearman",
    n_permutations: int = 1000,
    seed: int = 0,
    controls: Sequence[pd.DataFrame] | Mapping[str, pd.DataFrame] | None = None,
    include_diagonal: bool = False,
    alternative: str = "greater",
) -> SpaceComparison:
    """Correlate a task space with a hypothesis (or another space) with a Mantel permutation test.

    Both (and any ``controls``) are aligned on their common tasks; the compared entries are the
    off-diagonal ones (both ordered pairs unless all matrices are symmetric).

    - statistic: ``scipy.stats.spearmanr`` (``"spearman"``), ``pearsonr`` or ``kendalltau`` of the
      two entry vectors;
    - with ``controls`` (hypothesis spaces, e.g. :func:`~taskspace_utils.spaces.lexical_spaces`):
      the **partial** correlation: rank-transform every vector (spearman; raw values for pearson),
      residualise the space's and the hypothesis's vectors on ``[1, controls]`` by least squares
      and correlate the residuals: ``r = <e_x, e_y> / (|e_x| |e_y|)``; NaN (with a warning) if the
      space or the hypothesis is a function of the controls;
    - p-value: permute the task labels of ``space`` (rows and columns together, the same permutation
      for both) ``n_permutations`` times (``scipy.stats.permutation_test``, seeded with
      ``numpy.random.default_rng(seed)``), recompute the statistic with hypothesis and controls
      fixed, and report ``(1 + #{null >= observed}) / (1 + n_permutations)`` for
      ``alternative="greater"`` (Mantel's one-sided test: the hypothesis predicts positive
      alignment), ``"less"`` or ``"two-sided"`` (``|null| >= |observed|``). With
      ``n_tasks! <= n_permutations`` every permutation is enumerated once (exact test, module
      docstring): ``null`` holds the ``n!`` statistics and ``n_permutations`` reports ``n!``.

    Speed: ranks, the entry index and the control projection are computed once; each permutation
    gathers pre-ranked entries ``R[p[rows], p[cols]]`` (permuting labels only reorders the
    entries, so their ranks are reordered too) and all permutations of a chunk are correlated by
    one matrix product: 1,000 permutations of a 67 x 67 space take 0.1-0.2 s, partial or not
    (Kendall loops over ``scipy.stats.kendalltau``: about 1 s). Symmetry is decided with ``numpy.allclose``
    (rtol 1e-10), so a float32 gradient space may count as non-symmetric (all ordered pairs used;
    harmless for Spearman and Pearson).
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    if alternative not in _ALTERNATIVES:
        raise ValueError(f"alternative must be one of {_ALTERNATIVES}, got {alternative!r}")
    named = _as_named(controls, "control")
    if named and method == "kendall":
        raise ValueError("partial correlation (controls) is defined for 'spearman' and 'pearson' only")
    names = ["space", "hypothesis", *[f"control {k!r}" for k in named]]
    aligned, values, symmetric, rows, cols, vectors = _prepare(
        [space, hypothesis, *named.values()], include_diagonal, names
    )
    x, y, z = vectors[0], vectors[1], _columns(vectors[2:], len(vectors[0]))
    observed = _correlate(x, y, z, method)
    n = len(aligned[0])
    null, exact = np.full(n_permutations, np.nan), False
    if not np.isfinite(observed):
        warnings.warn(
            "compare_spaces: the space or the hypothesis is (a monotone function of) the controls, so "
            "nothing is left to correlate after residualising; statistic and p-value are NaN",
            stacklevel=2,
        )
    elif method == "kendall":

        def statistic(p: np.ndarray) -> np.ndarray:
            flat = p.reshape(-1, n)
            out = [stats.kendalltau(values[0][q[rows], q[cols]], y).statistic for q in flat]
            return np.asarray(out).reshape(p.shape[:-1])

        null, exact = _permutation_null(n, statistic, n_permutations, seed)
    else:
        # put the transformed entries of the space back into a matrix, so that a permuted entry
        # vector is a gather; the permuted set of entries is the same multiset, hence same ranks
        rx = _transform(x, method)
        ranked = np.full((n, n), np.nan)
        ranked[rows, cols] = rx
        if symmetric:
            ranked[cols, rows] = rx
        basis = _orthonormal_basis(np.column_stack([_transform(c, method) for c in z.T]) if named else z)
        ry = _transform(y, method)
        ey = ry - basis @ (basis.T @ ry)
        ey = ey / np.linalg.norm(ey)

        def statistic(p: np.ndarray) -> np.ndarray:
            xp = ranked[p[..., rows], p[..., cols]]  # (chunk, m)
            resid_sq = np.einsum("...j,...j->...", xp, xp) - np.sum((xp @ basis) ** 2, axis=-1)
            return (xp @ ey) / np.sqrt(np.maximum(resid_sq, 1e-300))

        chunk = max(1, 4_000_000 // max(len(x), 1))
        null, exact = _permutation_null(n, statistic, n_permutations, seed, batch=chunk)
    return SpaceComparison(
        statistic=observed,
        p_value=_p_value(null, observed, alternative, exact),
        method=method,
        partial=bool(named),
        controls=tuple(named),
        alternative=alternative,
        n_permutations=len(null),
        n_tasks=n,
        n_entries=len(x),
        symmetric=symmetric,
        include_diagonal=include_diagonal,
        seed=seed,
        null=null,
    )


@dataclasses.dataclass
class SpaceRegression:
    """Result of :func:`regress_space`: ``coefficients`` has one row per hypothesis with the
    standardised coefficient ``beta`` and its two-sided permutation ``p_value``."""

    coefficients: pd.DataFrame
    r_squared: float
    r_squared_p: float
    n_tasks: int
    n_entries: int
    n_permutations: int
    rank: bool




def regress_space(
    space: pd.DataFrame,
    hypotheses: Mapping[str, pd.DataFrame] | Sequence[pd.DataFrame],
    n_permutations: int = 1000,
    seed: int = 0,
    rank: bool = False,
    include_diagonal: bool = False,
) -> SpaceRegression:
    """Multiple regression of the space's off-diagonal entries on several hypothesis spaces.

    ``z(y) = sum_k beta_k z(x_k) + e`` by least squares, where y are the space's entries, x_k the
    k-th hypothesis's entries, ``z`` the z-score (population sd), so ``beta_k`` are standardised
    coefficients (ranks first if ``rank``). Permutation test (multiple regression on distance
    matrices, Legendre et al. 1994): permute the space's task labels (``scipy.stats.
    permutation_test``, as :func:`compare_spaces`), refit, two-sided
    ``p_k = (1 + #{|beta_k^perm| >= |beta_k|}) / (1 + n_permutations)``; ``r_squared_p`` likewise
    (one-sided); an exact test when ``n_tasks! <= n_permutations`` (module docstring). Raises if
    the hypotheses are collinear on the compared entries.
    """
    hypotheses = _as_named(hypotheses, "hypothesis")
    if not hypotheses:
        raise ValueError("hypotheses: need at least one hypothesis space")
    names = list(hypotheses)
    aligned, values, symmetric, rows, cols, vectors = _prepare(
        [space, *hypotheses.values()], include_diagonal, ["space", *[f"hypothesis {k!r}" for k in names]]
    )
    prep = (lambda v: stats.rankdata(v)) if rank else (lambda v: np.asarray(v, float))
    zscore = lambda v: (v - v.mean(-1, keepdims=True)) / v.std(-1, keepdims=True)  # noqa: E731
    design = np.column_stack([zscore(prep(v)) for v in vectors[1:]])
    if np.linalg.matrix_rank(design) < design.shape[1]:
        raise ValueError(f"hypotheses {names} are collinear on the compared entries; drop one")
    pinv = np.linalg.pinv(design)  # (k, m)
    basis = _orthonormal_basis(design)
    y = zscore(prep(vectors[0]))
    beta = pinv @ y
    r2 = float(np.sum((basis.T @ y) ** 2) / (y @ y))
    n = len(aligned[0])
    ymat = np.full((n, n), np.nan)
    ymat[rows, cols] = y
    if symmetric:
        ymat[cols, rows] = y

    def statistic(p: np.ndarray) -> np.ndarray:
        """``(beta_1 .. beta_k, R^2)`` of each permutation, along the last axis."""
        yp = ymat[p[..., rows], p[..., cols]]
        r2_perm = np.sum((yp @ basis) ** 2, axis=-1) / (y @ y)
        return np.concatenate([yp @ pinv.T, r2_perm[..., None]], axis=-1)

    null, exact = _permutation_null(n, statistic, n_permutations, seed, batch=max(1, 4_000_000 // len(y)))
    null = null.reshape(-1, len(names) + 1)
    p_beta = [_p_value(null[:, k], beta[k], "two-sided", exact) for k in range(len(names))]
    table = pd.DataFrame({"beta": beta, "p_value": p_beta}, index=pd.Index(names, name="hypothesis"))
    r2_p = _p_value(null[:, -1], r2, "greater", exact)
    return SpaceRegression(table, r2, r2_p, n, len(y), len(null), rank)
