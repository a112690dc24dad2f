"""The statistics behind the claims table (:mod:`taskspace_utils.comparison.claims`).

Every statistic is a function ``stat(mats, idx) -> float`` of a tuple of aligned task x task
matrices (numpy, tasks in one order) and a task resample ``idx`` (``arange(n)`` for the observed
value). Its compared entries (:func:`entries`) follow the spaces package's convention
(:mod:`taskspace_utils.spaces.frames`): every ordered off-diagonal pair, or the upper triangle when
every matrix involved is symmetric; in a resample, only positions ``(i, j)`` with
``idx[i] != idx[j]`` (a task is never compared with a copy of itself; Nili et al. 2014).

- :func:`generalisation_contrast`: ``g = mean_t [(mean_{u != t, phen(u) = phen(t)} S[t, u] -
  mean_{phen(u) != phen(t)} S[t, u]) / S[t, t]]`` over tuned tasks t with ``S[t, t] > 0`` and both
  groups non-empty (within- minus across-phenomenon transfer relative to self-transfer).
- :func:`partial_alignment`: Spearman (or Pearson) of the space's entries with a hypothesis,
  partialling out control spaces (the partial Mantel statistic of
  :func:`taskspace_utils.spaces.compare_spaces`, same residualisation).
- :func:`within_minus_across`: mean entry within minus across phenomena (a symmetric overlap space).
- :func:`agreement`: Spearman of two spaces' entries (rank agreement).

A **contrast** (:func:`contrast`) is ``mean_i stat(a_i) - mean_j stat(b_j)`` over the units of two
sides (one unit per pre-training seed):

- 95 % CI: percentile interval of a bootstrap (``scipy.stats.bootstrap``, ``method="percentile"``,
  ``rng=numpy.random.default_rng(seed)``, as :mod:`taskspace_utils.spaces.uncertainty`) that
  resamples the tasks (one draw shared by every unit: a paired bootstrap) and, independently, the
  seed units of each side that has two or more; NaN replicates (degenerate resamples) are skipped,
  and no interval is formed from fewer than :data:`MIN_TASKS_FOR_CI` tasks or when fewer than
  :data:`MIN_FINITE` of the replicates are defined (the verdict is then ``inconclusive``).
- permutation p (two-sided): task-level exchange between the two sides
  (``scipy.stats.permutation_test``, ``permutation_type="samples"``: each task is swapped or not,
  the same seed): in an asymmetric space (transfer) the swapped task's *row* (its tuning run) comes
  from the other side; in a symmetric space (overlap) the entries between a swapped and an
  unswapped task do. With seeds, the exchange is applied to every pair ``(a_i, b_j)`` and the
  differences averaged (the identity gives the observed value). p convention as in
  :mod:`taskspace_utils.spaces.statistics` (``(1 + hits) / (1 + n)``; exact when ``2**n <= n``).
- minimal detectable difference: ``2.8 x SE`` with SE the bootstrap standard deviation — the
  true difference that a two-sided test at alpha = 0.05 detects with 80 % power
  (``z_0.975 + z_0.80 = 1.96 + 0.84``).

A **trend** (:func:`trend`): OLS slope of the per-step statistic (mean over a step's seed units)
on ``log10(1 + step)``; CI by the task bootstrap, p by permuting the steps (exact when
``k! <= n_permutations``). :func:`estimate`: one statistic with its task-bootstrap CI (no test);
:func:`spread`: the standard deviation (``ddof=1``) of a statistic over the seed units of one
model, with its task-bootstrap CI.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Sequence
from functools import lru_cache

import numpy as np
from scipy import stats

from ..spaces.statistics import _correlate, _p_value
from ..spaces.uncertainty import _percentile_ci

__all__ = ["MIN_FINITE", "MIN_TASKS_FOR_CI", "POWER_FACTOR", "RULE", "ContrastResult", "agreement",
           "alignment_statistic", "contrast", "entries", "estimate", "exchange", "generalisation_contrast",
           "is_symmetric", "partial_alignment", "spread", "trend", "verdict", "within_minus_across"]  # fmt: skip

#: ``z_{0.975} + z_{0.80}``: the minimal detectable difference is this times the bootstrap SE.
POWER_FACTOR = 2.8
#: No CI (nor minimal detectable difference) from a bootstrap over fewer tasks than this (as
#: :func:`taskspace_utils.comparison.probe_alignment`: a bootstrap over few tasks says little) ...
MIN_TASKS_FOR_CI = 10
#: ... or with fewer finite replicates than this fraction (degenerate resamples give NaN).
MIN_FINITE = 0.5

#: The verdict rule, fixed before any data are seen (printed by the report).
RULE = (
    "Verdict rule, fixed in advance: a contrast is 'supported' when its 95 % CI (bootstrap over tasks, "
    "and over pre-training seeds where a model has several) excludes 0 in the claimed direction, "
    "'contradicted' when it excludes 0 in the other direction, and 'inconclusive' otherwise (also when "
    "no CI can be formed). Claimed directions: C1 larger minus smaller model > 0; C2 checkpoint minus "
    "step 0 > 0 and trend over log10(1 + step) > 0; C3 checkpoint agreement minus noise ceiling >= 0 "
    "(a CI wholly below 0 means the space changed more than probing or seed noise). An incisive stage "
    "is a consecutive-checkpoint agreement below the lower CI bound of the noise ceiling (of every ceiling "
    "the run has for that pair: probing seeds, pre-training seeds); the C3 summary "
    "row is 'contradicted' when one occurs, 'supported' when none occurs and every consecutive pair had a "
    "ceiling, 'inconclusive' otherwise. Rows of kind 'reference' (seed spread, agreement without a "
    "ceiling) carry no verdict. No CI is formed from fewer than 10 tasks or when fewer than half of the "
    "bootstrap replicates are defined. min_detectable = 2.8 x bootstrap SE: the smallest true difference the "
    "contrast detects with 80 % power at two-sided alpha = 0.05 with this run's tasks and seeds."
)

Stat = Callable[[tuple, np.ndarray], float]


def verdict(low: float, high: float, direction: int = 1) -> str:
    """``supported`` / ``contradicted`` / ``inconclusive`` by :data:`RULE` for a CI ``[low, high]``
    and the claimed sign ``direction`` (+1 or -1)."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return "inconclusive"
    if low > 0:
        return "supported" if direction > 0 else "contradicted"
    if high < 0:
        return "contradicted" if direction > 0 else "supported"
    return "inconclusive"


def is_symmetric(matrix: np.ndarray) -> bool:
    return bool(np.allclose(matrix, matrix.T, rtol=1e-10, atol=0, equal_nan=True))


@lru_cache(maxsize=64)
def _positions(n: int, symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
    return np.triu_indices(n, 1) if symmetric else np.nonzero(~np.eye(n, dtype=bool))


def entries(idx: np.ndarray, symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
    """Original-task indices ``(rows, cols)`` of the compared entries of the matrix resampled by
    ``idx`` (module docstring): pairs of positions with ``idx[i] != idx[j]``."""
    i, j = _positions(len(idx), bool(symmetric))
    keep = idx[i] != idx[j]
    return idx[i][keep], idx[j][keep]


def _varies(*vectors: np.ndarray) -> bool:
    return all(v.size > 2 and np.ptp(v) > 0 for v in vectors)


def generalisation_contrast(space: np.ndarray, phen: np.ndarray, idx: np.ndarray) -> float:
    """``g`` of the module docstring on the tasks ``idx`` of a transfer space (rows tuned)."""
    s, p = space[np.ix_(idx, idx)], phen[idx]
    same = (p[:, None] == p[None, :]) & (idx[:, None] != idx[None, :])
    other = p[:, None] != p[None, :]
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        within = np.nanmean(np.where(same, s, np.nan), axis=1)
        across = np.nanmean(np.where(other, s, np.nan), axis=1)
        value = (within - across) / np.diag(s)
    keep = (np.diag(s) > 0) & np.isfinite(value)
    return float(value[keep].mean()) if keep.any() else float("nan")


def partial_alignment(space: np.ndarray, hypothesis: np.ndarray, controls: Sequence[np.ndarray], idx: np.ndarray,
                      method: str = "spearman") -> float:
    """(Partial) correlation of the space's entries with the hypothesis's, given ``controls``."""
    sym = all(is_symmetric(m) for m in (space, hypothesis, *controls))
    r, c = entries(idx, sym)
    x, y = space[r, c], hypothesis[r, c]
    keep = np.isfinite(x)
    x, y = x[keep], y[keep]
    z = np.column_stack([m[r, c][keep] for m in controls]) if len(controls) else np.empty((len(x), 0))
    if not _varies(x, y):
        return float("nan")
    return _correlate(x, y, z, method)


def alignment_statistic(hypothesis: np.ndarray, controls: Sequence[np.ndarray], method: str = "spearman") -> Stat:
    """``stat(mats, idx)``: :func:`partial_alignment` of ``mats[0]``, with the hypothesis's residual
    and the controls' basis on the observed tasks computed once (the permutations' fast path, as in
    :func:`taskspace_utils.spaces.compare_spaces`); a resample or NaN entries take the full path."""
    from ..spaces.statistics import _orthonormal_basis, _transform

    n = len(hypothesis)
    ident = np.arange(n)
    fixed_sym = all(is_symmetric(m) for m in (hypothesis, *controls))
    cached = {}
    for sym in {False, fixed_sym}:
        r, c = entries(ident, sym)
        z = np.column_stack([_transform(m[r, c], method) for m in controls]) if len(controls) else np.empty((len(r), 0))
        basis = _orthonormal_basis(z)
        ry = _transform(hypothesis[r, c], method)
        ey = ry - basis @ (basis.T @ ry)
        norm = np.linalg.norm(ey)
        cached[sym] = (r, c, basis, ey / norm if norm > 1e-12 else None)

    def stat(mats, idx):
        space = mats[0]
        sym = fixed_sym and is_symmetric(space)
        r, c, basis, ey = cached[sym]
        if len(idx) != n or not np.array_equal(idx, ident) or ey is None:
            return partial_alignment(space, hypothesis, controls, idx, method)
        x = space[r, c]
        if not np.all(np.isfinite(x)) or np.ptp(x) == 0:
            return partial_alignment(space, hypothesis, controls, idx, method)
        ex = _transform(x, method)
        ex = ex - basis @ (basis.T @ ex)
        norm = np.linalg.norm(ex)
        return float(ex @ ey / norm) if norm > 1e-9 * np.linalg.norm(x - x.mean()) else float("nan")

    return stat


def within_minus_across(space: np.ndarray, phen: np.ndarray, idx: np.ndarray) -> float:
    """Mean upper-triangle entry within phenomena minus across phenomena (NaN entries dropped)."""
    r, c = entries(idx, True)
    values, same = space[r, c], phen[r] == phen[c]
    keep = np.isfinite(values)
    within, across = values[keep & same], values[keep & ~same]
    if not (len(within) and len(across)):
        return float("nan")
    return float(within.mean() - across.mean())


def agreement(a: np.ndarray, b: np.ndarray, idx: np.ndarray, method: str = "spearman") -> float:
    """Rank agreement of two spaces: Spearman (or Pearson) of their compared entries."""
    r, c = entries(idx, is_symmetric(a) and is_symmetric(b))
    x, y = a[r, c], b[r, c]
    keep = np.isfinite(x) & np.isfinite(y)
    if not _varies(x[keep], y[keep]):
        return float("nan")
    return _correlate(x[keep], y[keep], np.empty((int(keep.sum()), 0)), method)


def exchange(a: tuple, b: tuple, flips: np.ndarray) -> tuple[tuple, tuple]:
    """Swap the data of the tasks with ``flips`` between the matrices of ``a`` and ``b``
    (element-wise over the tuples; rows of an asymmetric pair, cross entries of a symmetric one)."""
    f = np.asarray(flips).astype(bool)
    out_a, out_b = [], []
    for x, y in zip(a, b):
        if x is y:
            out_a.append(x), out_b.append(y)
            continue
        swap = (f[:, None] != f[None, :]) if (is_symmetric(x) and is_symmetric(y)) else np.repeat(f[:, None], len(f), 1)
        out_a.append(np.where(swap, y, x)), out_b.append(np.where(swap, x, y))
    return tuple(out_a), tuple(out_b)


@dataclasses.dataclass
class ContrastResult:
    """Result of :func:`contrast` (``side_a``/``side_b``: observed side means; ``*_ci``: their
    bootstrap intervals; ``min_detectable``: :data:`POWER_FACTOR` x bootstrap SE)."""

    value: float
    ci_low: float
    ci_high: float
    p_value: float
    min_detectable: float
    n_tasks: int
    n_seeds: int
    side_a: float
    side_b: float
    side_a_ci: tuple[float, float]
    side_b_ci: tuple[float, float]
    boot: np.ndarray = dataclasses.field(repr=False)


def _usable(boot: np.ndarray, n_tasks: int) -> np.ndarray | None:
    """The finite replicates, or ``None`` when a CI cannot be formed (:data:`MIN_TASKS_FOR_CI`,
    :data:`MIN_FINITE`)."""
    boot = np.asarray(boot, float)
    finite = boot[np.isfinite(boot)]
    if n_tasks < MIN_TASKS_FOR_CI or len(finite) < max(3, MIN_FINITE * len(boot)):
        return None
    return finite


def _interval(boot, n_tasks: int, ci: float) -> tuple[float, float]:
    finite = _usable(boot, n_tasks)
    return _percentile_ci(finite, ci) if finite is not None else (float("nan"), float("nan"))


def _spread_of(boot: np.ndarray, n_tasks: int) -> float:
    finite = _usable(boot, n_tasks)
    return float(POWER_FACTOR * finite.std(ddof=1)) if finite is not None else float("nan")


def _bootstrap(replicate: Callable, samples: list[np.ndarray], n_boot: int, seed: int) -> None:
    """Run ``replicate`` on ``n_boot`` independent resamples of each of ``samples`` (scipy)."""
    if n_boot <= 0:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate resamples: scipy warns, the replicate records NaN
        stats.bootstrap(tuple(samples), replicate, n_resamples=n_boot, vectorized=False, paired=False,
                        method="percentile", rng=np.random.default_rng(seed))  # fmt: skip


def contrast(stat: Stat, side_a: Sequence[tuple], side_b: Sequence[tuple], *, n_boot: int = 1000,
             n_permutations: int = 1000, seed: int = 0, ci: float = 0.95) -> ContrastResult:
    """``mean_i stat(a_i) - mean_j stat(b_j)`` with its bootstrap CI, permutation p and minimal
    detectable difference (module docstring). Every tuple holds (n, n) matrices on the same tasks."""
    if not side_a or not side_b:
        raise ValueError("contrast: both sides need at least one unit")
    n = len(side_a[0][0])
    ident = np.arange(n)
    fa, fb = [stat(m, ident) for m in side_a], [stat(m, ident) for m in side_b]
    value = float(np.mean(fa) - np.mean(fb))
    if not np.isfinite(value):
        raise ValueError("contrast: the statistic is undefined on these tasks (too few tasks or groups)")
    many = [len(side_a) >= 2, len(side_b) >= 2]
    boot, boot_a, boot_b = [], [], []

    def replicate(tasks, *seeds):
        draws = iter(seeds)
        pick = [next(draws) if m else np.zeros(1, int) for m in many]
        cache: dict = {}
        means = [np.mean([cache.setdefault((s, k), stat(side[k], tasks)) for k in pick[s]])
                 for s, side in enumerate((side_a, side_b))]  # fmt: skip
        boot_a.append(means[0]), boot_b.append(means[1]), boot.append(means[0] - means[1])
        return boot[-1]

    _bootstrap(replicate, [ident] + [np.arange(len(s)) for s, m in zip((side_a, side_b), many) if m], n_boot, seed)
    boot = np.asarray(boot, float)
    low, high = _interval(boot, n, ci)

    def permuted(flips, _other):
        diffs = []
        for a in side_a:
            for b in side_b:
                pa, pb = exchange(a, b, flips)
                diffs.append(stat(pa, ident) - stat(pb, ident))
        return float(np.mean(diffs))

    p = float("nan")
    if n_permutations > 0:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            res = stats.permutation_test((np.zeros(n), np.ones(n)), permuted, permutation_type="samples",
                                         vectorized=False, n_resamples=n_permutations,
                                         rng=np.random.default_rng(seed))  # fmt: skip
        null = np.asarray(res.null_distribution, float)
        null = null[np.isfinite(null)]
        p = _p_value(null, value, "two-sided", exact=2**n <= n_permutations)
    return ContrastResult(
        value=value, ci_low=low, ci_high=high, p_value=p, min_detectable=_spread_of(boot, n), n_tasks=n,
        n_seeds=max(len(side_a), len(side_b)), side_a=float(np.mean(fa)), side_b=float(np.mean(fb)),
        side_a_ci=_interval(boot_a, n, ci), side_b_ci=_interval(boot_b, n, ci), boot=boot,
    )  # fmt: skip


def _slope(x: np.ndarray, y: np.ndarray) -> float:
    if not np.all(np.isfinite(y)):
        return float("nan")
    xc = x - x.mean()
    return float(xc @ (y - y.mean()) / (xc @ xc))


def trend(stat: Stat, steps: Sequence[float], sides: Sequence[Sequence[tuple]], *, n_boot: int = 1000,
          n_permutations: int = 1000, seed: int = 0, ci: float = 0.95) -> ContrastResult:
    """Slope of the per-step mean statistic on ``log10(1 + step)`` (module docstring); ``sides[k]``
    holds the units (one tuple per seed) of ``steps[k]``."""
    x = np.log10(1.0 + np.asarray(steps, float))
    if len(x) < 3 or np.ptp(x) == 0:
        raise ValueError(f"trend: need at least 3 distinct steps, got {list(steps)}")
    n = len(sides[0][0][0])
    ident = np.arange(n)
    y = np.array([np.mean([stat(m, ident) for m in side]) for side in sides])
    value = _slope(x, y)
    if not np.isfinite(value):
        raise ValueError("trend: the statistic is undefined at some step (too few tasks or groups)")
    boot: list[float] = []

    def replicate(tasks):
        boot.append(_slope(x, np.array([np.mean([stat(m, tasks) for m in side]) for side in sides])))
        return boot[-1]

    _bootstrap(replicate, [ident], n_boot, seed)
    boot_arr = np.asarray(boot, float)
    low, high = _interval(boot_arr, n, ci)
    p = float("nan")
    if n_permutations > 0:
        res = stats.permutation_test((y,), lambda yy: _slope(x, yy), permutation_type="pairings", vectorized=False,
                                     n_resamples=n_permutations, rng=np.random.default_rng(seed))  # fmt: skip
        p = _p_value(np.asarray(res.null_distribution, float), value, "two-sided",
                     exact=math.factorial(len(x)) <= n_permutations)  # fmt: skip
    return ContrastResult(value=value, ci_low=low, ci_high=high, p_value=p, min_detectable=_spread_of(boot_arr, n),
                          n_tasks=n, n_seeds=max(len(s) for s in sides), side_a=float(y[-1]), side_b=float(y[0]),
                          side_a_ci=(np.nan, np.nan), side_b_ci=(np.nan, np.nan), boot=boot_arr)  # fmt: skip


def estimate(stat: Stat, side: Sequence[tuple], *, reduce: Callable = np.mean, n_boot: int = 1000, seed: int = 0,
             ci: float = 0.95) -> ContrastResult:
    """``reduce`` over the units of ``side`` of ``stat`` (default: the mean), with a task-bootstrap
    CI and no test (the units are not resampled)."""
    n = len(side[0][0])
    value = float(reduce([stat(m, np.arange(n)) for m in side]))
    boot: list[float] = []

    def replicate(tasks):
        boot.append(float(reduce([stat(m, tasks) for m in side])))
        return boot[-1]

    _bootstrap(replicate, [np.arange(n)], n_boot, seed)
    boot_arr = np.asarray(boot, float)
    low, high = _interval(boot_arr, n, ci)
    return ContrastResult(value=value, ci_low=low, ci_high=high, p_value=float("nan"),
                          min_detectable=_spread_of(boot_arr, n), n_tasks=n, n_seeds=len(side), side_a=value,
                          side_b=float("nan"), side_a_ci=(low, high), side_b_ci=(np.nan, np.nan), boot=boot_arr)  # fmt: skip


def spread(stat: Stat, side: Sequence[tuple], *, n_boot: int = 1000, seed: int = 0, ci: float = 0.95) -> ContrastResult:
    """Standard deviation (``ddof=1``) of ``stat`` over the seed units of ``side`` (>= 2), with a
    task-bootstrap CI (the seeds are the quantity described, so they are not resampled)."""
    if len(side) < 2:
        raise ValueError("spread: need at least 2 seed units")
    return estimate(stat, side, reduce=lambda v: np.std(v, ddof=1), n_boot=n_boot, seed=seed, ci=ci)
