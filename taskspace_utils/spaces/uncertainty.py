"""Uncertainty of space comparisons: bootstrap intervals, differences of alignments, summary tables.

- :func:`within_across`: mean entry within vs. across the groups of a hypothesis, with
  ``scipy.stats.bootstrap`` percentile intervals over entries.
- :func:`difference_with_uncertainty`: ``r(a, H) - r(b, H)`` (e.g. trained minus untrained) with a
  percentile interval from a bootstrap over tasks (:func:`_bootstrap_tasks`).
- :func:`alignment_table`: every space x hypothesis, raw and controlled, one results frame.
- :func:`compare_prediction`: Pearson, Spearman and R^2 of a predicted vs. a measured space.

Bootstrap over tasks (Nili et al. 2014): draw n task indices with replacement
(``scipy.stats.bootstrap`` of the one sample ``arange(n)``, ``rng=numpy.random.default_rng(seed)``,
the same draws as ``default_rng(seed).integers(0, n, size=n)`` once per replicate), take the
entries ``(idx[i], idx[j])`` of the compared positions ``(i, j)`` with ``idx[i] != idx[j]`` (a task
is never compared with a copy of itself) and recompute the statistic. A replicate where a compared
vector is constant (e.g. one task drawn n times) gives NaN. Interval (:func:`_percentile_ci`): the
``(1 - ci) / 2`` and ``(1 + ci) / 2`` quantiles (``numpy.quantile``, linear) of the finite
replicates; scipy's own interval is not used because it does not skip the NaN replicates.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from .frames import (
    _as_named,
    _entry_index,
    _is_symmetric,
    _prepare,
    align_spaces,
    check_space,
    varies_off_diagonal,
)
from .statistics import _METHODS, _columns, _correlate, compare_spaces, result_row

__all__ = ["WithinAcross", "AlignmentDifference", "within_across", "difference_with_uncertainty",
           "alignment_table", "compare_prediction"]  # fmt: skip


@dataclasses.dataclass
class WithinAcross:
    """Result of :func:`within_across`; CIs are ``(low, high)`` percentile intervals."""

    within_mean: float
    across_mean: float
    difference: float
    within_ci: tuple[float, float]
    across_ci: tuple[float, float]
    difference_ci: tuple[float, float]
    n_within: int
    n_across: int
    n_dropped_nan: int
    ci: float
    n_boot: int

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        for key in ("within", "across", "difference"):
            low, high = out.pop(f"{key}_ci")
            out[f"{key}_ci_low"], out[f"{key}_ci_high"] = low, high
        return out


def within_across(
    space: pd.DataFrame,
    hypothesis: pd.DataFrame,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> WithinAcross:
    """Mean off-diagonal entry within groups vs. across groups, and their difference.

    An entry ``(t, u)``, t != u, is *within* if ``hypothesis[t, u] != 0`` and *across* otherwise
    (entries as in :mod:`taskspace_utils.spaces.frames`; NaN entries of the space are dropped and counted).
    Confidence intervals: ``scipy.stats.bootstrap`` percentile intervals over entries (pairs),
    resampling within and across entries independently (two-sample bootstrap for the difference),
    ``n_boot`` resamples, seeded with ``numpy.random.default_rng(seed)``. Entries sharing a task are
    not independent, so these intervals are optimistic; :func:`difference_with_uncertainty`
    resamples tasks instead."""
    aligned = align_spaces(space, hypothesis, names=["space", "hypothesis"])
    s, h = (a.to_numpy() for a in aligned)
    rows, cols = _entry_index(len(s), _is_symmetric(s) and _is_symmetric(h), False)
    values, group = s[rows, cols], h[rows, cols] != 0
    keep = ~np.isnan(values)
    within, across = values[keep & group], values[keep & ~group]
    if len(within) < 2 or len(across) < 2:
        raise ValueError(f"need at least 2 within and 2 across entries, got {len(within)} and {len(across)}")
    rng = np.random.default_rng(seed)
    kwargs = dict(n_resamples=n_boot, confidence_level=ci, method="percentile", vectorized=True)
    mean = lambda a, axis: np.mean(a, axis=axis)  # noqa: E731
    diff = lambda a, b, axis: np.mean(a, axis=axis) - np.mean(b, axis=axis)  # noqa: E731
    interval = lambda data, fn: tuple(  # noqa: E731
        float(v) for v in stats.bootstrap(data, fn, rng=rng, **kwargs).confidence_interval
    )
    return WithinAcross(
        within_mean=float(within.mean()),
        across_mean=float(across.mean()),
        difference=float(within.mean() - across.mean()),
        within_ci=interval((within,), mean),
        across_ci=interval((across,), mean),
        difference_ci=interval((within, across), diff),
        n_within=len(within),
        n_across=len(across),
        n_dropped_nan=int((~keep).sum()),
        ci=ci,
        n_boot=n_boot,
    )


@dataclasses.dataclass
class AlignmentDifference:
    """Result of :func:`difference_with_uncertainty` (``boot``: bootstrap differences)."""

    statistic_a: float
    statistic_b: float
    difference: float
    ci_low: float
    ci_high: float
    ci: float
    n_boot: int
    n_tasks: int
    method: str
    controls: tuple[str, ...]
    boot: np.ndarray = dataclasses.field(repr=False)

    def to_dict(self) -> dict:
        """Plain values (no bootstrap distribution), e.g. for a row of a results frame."""
        return result_row(self, drop="boot")




def _bootstrap_tasks(
    values: list[np.ndarray],
    rows: np.ndarray,
    cols: np.ndarray,
    statistic: Callable[[list[np.ndarray]], float],
    n_boot: int,
    seed: int,
    n_checked: int,
) -> np.ndarray:
    """``statistic`` of the entry vectors of task-resampled matrices, one value per replicate.

    Each replicate draws n task indices with replacement (``scipy.stats.bootstrap``, module
    docstring) and takes the entries ``(idx[i], idx[j])`` of the compared positions ``(i, j)``,
    keeping those with ``idx[i] != idx[j]`` (and the diagonal positions, if compared), so a task is
    never compared with a copy of itself. Replicates where one of the first ``n_checked`` vectors
    is constant give NaN."""
    if n_boot <= 0:
        return np.empty(0)
    n = len(values[0])

    def replicate(idx: np.ndarray) -> float:
        keep = (idx[rows] != idx[cols]) | (rows == cols)
        r, c = idx[rows][keep], idx[cols][keep]
        vecs = [v[r, c] for v in values]
        if all(v.size > 1 and np.ptp(v) > 0 for v in vecs[:n_checked]):
            return statistic(vecs)
        return np.nan

    def per_resample(idx: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.asarray([replicate(i) for i in idx.reshape(-1, n)], dtype=float).reshape(idx.shape[:-1])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate resamples: scipy warns, we record NaN
        result = stats.bootstrap((np.arange(n),), per_resample, n_resamples=n_boot, vectorized=True,
                                 method="percentile", rng=np.random.default_rng(seed))  # fmt: skip
    return np.asarray(result.bootstrap_distribution, dtype=float)


def _percentile_ci(boot: np.ndarray, ci: float) -> tuple[float, float]:
    """Percentile interval of the finite replicates (module docstring); NaN if there are none."""
    finite = boot[np.isfinite(boot)]
    if not len(finite):
        return float("nan"), float("nan")
    low, high = np.quantile(finite, [(1 - ci) / 2, (1 + ci) / 2])
    return float(low), float(high)


def difference_with_uncertainty(
    space_a: pd.DataFrame,
    space_b: pd.DataFrame,
    hypothesis: pd.DataFrame,
    method: str = "spearman",
    controls: Sequence[pd.DataFrame] | Mapping[str, pd.DataFrame] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    include_diagonal: bool = False,
) -> AlignmentDifference:
    """Difference of two alignments with the same hypothesis, ``r(a, H) - r(b, H)``, e.g. the
    final checkpoint's transfer space (a) minus the untrained initialisation's (b).

    ``r`` is the (partial, given ``controls``) correlation of :func:`compare_spaces`. Uncertainty:
    bootstrap over tasks (all matrices aligned on their common tasks): draw n tasks with
    replacement, take the resampled matrices ``M[idx][:, idx]``, keep the entries ``(i, j)`` with
    ``idx[i] != idx[j]`` (a task is never compared with a copy of itself; Nili et al. 2014),
    recompute both correlations and their difference; percentile CI at level ``ci``
    (``scipy.stats.bootstrap`` seeded with ``numpy.random.default_rng(seed)``; module docstring).
    Resamples with a constant vector give NaN and are skipped.
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    named = _as_named(controls, "control")
    names = ["space_a", "space_b", "hypothesis", *[f"control {k!r}" for k in named]]
    aligned, values, symmetric, rows, cols, vectors = _prepare(
        [space_a, space_b, hypothesis, *named.values()], include_diagonal, names
    )

    def pair(vecs: list[np.ndarray]) -> tuple[float, float]:
        z = _columns(vecs[3:], len(vecs[0]))
        return _correlate(vecs[0], vecs[2], z, method), _correlate(vecs[1], vecs[2], z, method)

    stat_a, stat_b = pair(vectors)
    n = len(aligned[0])
    boot = _bootstrap_tasks(values, rows, cols, lambda v: np.subtract(*pair(v)), n_boot, seed, n_checked=3)
    low, high = _percentile_ci(boot, ci)
    return AlignmentDifference(stat_a, stat_b, stat_a - stat_b, low, high, ci, n_boot, n, method, tuple(named), boot)


def alignment_table(
    spaces: Mapping[str, pd.DataFrame],
    hypotheses: Mapping[str, pd.DataFrame],
    controls: Mapping[str, pd.DataFrame] | None = None,
    method: str = "spearman",
    n_permutations: int = 1000,
    n_boot: int = 0,
    seed: int = 0,
    ci: float = 0.95,
) -> pd.DataFrame:
    """Every space against every hypothesis, raw and (with ``controls``) partial: one row per
    (space, hypothesis, controlled) with the :func:`compare_spaces` statistic and permutation
    p-value and, if ``n_boot > 0``, a percentile CI from a bootstrap over tasks (as in
    :func:`difference_with_uncertainty`). Hypotheses whose compared entries are constant
    (:func:`~taskspace_utils.spaces.varies_off_diagonal` is False, e.g. the paradigm identity) are skipped with a warning; a hypothesis is not controlled for itself (its
    partial row is omitted if it is one of the ``controls``, compared by identity). A partial
    bootstrap replicate costs a few ms on 67 tasks (``n_boot=1000``: seconds per row). Ready for
    :func:`taskspace_utils.plotting.plot_alignment` (``x="hypothesis"``, ``hue="space"``)."""
    controls = dict(controls or {})
    records = []
    for h_name, hyp in hypotheses.items():
        if not varies_off_diagonal(check_space(hyp, f"hypothesis {h_name!r}")):
            warnings.warn(f"alignment_table: hypothesis {h_name!r} is constant off the diagonal; skipped", stacklevel=2)
            continue
        variants = [{}]
        if controls and not any(c is hyp for c in controls.values()):
            variants.append(controls)
        for s_name, space in spaces.items():
            for ctrl in variants:
                res = compare_spaces(space, hyp, method, n_permutations, seed, controls=ctrl or None)
                row = {"space": s_name, "hypothesis": h_name, "controlled": ", ".join(ctrl) or "none",
                       "statistic": res.statistic, "p_value": res.p_value, "n_tasks": res.n_tasks,
                       "n_entries": res.n_entries}  # fmt: skip
                if n_boot:
                    aligned, values, _, rows, cols, _ = _prepare(
                        [space, hyp, *ctrl.values()], False, ["space", "hypothesis", *ctrl]
                    )
                    fn = lambda v: _correlate(v[0], v[1], _columns(v[2:], len(v[0])), method)  # noqa: E731
                    boot = _bootstrap_tasks(values, rows, cols, fn, n_boot, seed, n_checked=2)
                    row["ci_low"], row["ci_high"] = _percentile_ci(boot, ci)
                records.append(row)
    return pd.DataFrame.from_records(records)


def compare_prediction(
    predicted: pd.DataFrame, measured: pd.DataFrame, include_diagonal: bool = False
) -> dict[str, float]:
    """How well a predicted space (e.g. first-order gradient prediction) matches a measured one.

    On the compared entries (:mod:`taskspace_utils.spaces.frames`; NaN in either dropped): ``pearson``/``spearman``
    (with p-values, scipy), ``r2 = 1 - sum (m - p)^2 / sum (m - mean m)^2`` of the prediction taken
    as is (can be negative) and ``r2_linear = pearson^2`` (after the best affine rescaling)."""
    aligned = align_spaces(predicted, measured, names=["predicted", "measured"])
    p_mat, m_mat = (a.to_numpy() for a in aligned)
    rows, cols = _entry_index(len(p_mat), _is_symmetric(p_mat) and _is_symmetric(m_mat), include_diagonal)
    p, m = p_mat[rows, cols], m_mat[rows, cols]
    keep = ~(np.isnan(p) | np.isnan(m))
    p, m = p[keep], m[keep]
    pearson, spearman = stats.pearsonr(p, m), stats.spearmanr(p, m)
    return {
        "pearson": float(pearson.statistic),
        "pearson_p": float(pearson.pvalue),
        "spearman": float(spearman.statistic),
        "spearman_p": float(spearman.pvalue),
        "r2": float(1 - np.sum((m - p) ** 2) / np.sum((m - m.mean()) ** 2)),
        "r2_linear": float(pearson.statistic**2),
        "n_entries": int(keep.sum()),
        "n_tasks": len(p_mat),
    }
