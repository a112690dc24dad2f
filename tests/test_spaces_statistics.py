"""Tests for taskspace_utils.spaces.statistics: Mantel tests (raw, partial) and regression against independent computations."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
from scipy import stats

from taskspace_utils import spaces as sp
from spaces_reference import frame, make_metadata, meta, offdiag, planted, residual, upper  # noqa: F401 (meta, planted: fixtures)


def test_compare_spaces_statistic_equals_scipy_on_offdiagonal(planted):
    space, hyp = planted
    result = sp.compare_spaces(space, hyp, n_permutations=10)
    assert result.statistic == pytest.approx(stats.spearmanr(offdiag(space), offdiag(hyp)).statistic)
    assert result.n_entries == 12 * 11 and not result.symmetric
    sym = sp.symmetrise(space)
    tau = sp.compare_spaces(sym, hyp, method="kendall", n_permutations=10)
    assert tau.symmetric and tau.n_entries == 12 * 11 // 2
    assert tau.statistic == pytest.approx(stats.kendalltau(upper(sym), upper(hyp)).statistic)
    r = sp.compare_spaces(space, hyp, method="pearson", n_permutations=10)
    assert r.statistic == pytest.approx(stats.pearsonr(offdiag(space), offdiag(hyp)).statistic)
    diag = sp.compare_spaces(space, hyp, include_diagonal=True, n_permutations=10)
    assert diag.statistic == pytest.approx(stats.spearmanr(space.to_numpy().ravel(), hyp.to_numpy().ravel()).statistic)


@pytest.mark.parametrize("method", ["spearman", "pearson", "kendall"])
@pytest.mark.parametrize("symmetric", [False, True])
def test_permutation_null_equals_naive_loop(planted, method, symmetric):
    space, hyp = planted
    space = sp.symmetrise(space) if symmetric else space
    n_perm, seed = 30, 7
    result = sp.compare_spaces(space, hyp, method=method, n_permutations=n_perm, seed=seed)
    # documented seeding: numpy default_rng(seed).permuted(tiled labels, axis=1); permute the space
    perms = np.random.default_rng(seed).permuted(np.tile(np.arange(len(space)), (n_perm, 1)), axis=1)
    pick = upper if symmetric else offdiag
    fn = {"spearman": stats.spearmanr, "pearson": stats.pearsonr, "kendall": stats.kendalltau}[method]
    naive = [fn(pick(space.iloc[p, p]), pick(hyp)).statistic for p in perms]
    np.testing.assert_allclose(result.null, naive, atol=1e-10)
    assert result.p_value == pytest.approx((1 + np.sum(np.array(naive) >= result.statistic - 1e-12)) / (1 + n_perm))


def test_permutation_p_small_for_planted_blocks_and_reproducible(planted):
    space, hyp = planted
    a = sp.compare_spaces(space, hyp, n_permutations=999, seed=3)
    assert a.statistic > 0.4 and a.p_value == pytest.approx(1 / 1000)
    b = sp.compare_spaces(space, hyp, n_permutations=999, seed=3)
    np.testing.assert_array_equal(a.null, b.null)
    c = sp.compare_spaces(space, hyp, n_permutations=999, seed=4)
    assert not np.array_equal(a.null, c.null)
    two = sp.compare_spaces(-space, hyp, n_permutations=999, seed=3, alternative="two-sided")
    assert two.p_value == pytest.approx(1 / 1000)
    assert sp.compare_spaces(-space, hyp, n_permutations=999, seed=3).p_value > 0.99


def test_permutation_p_roughly_uniform_under_independence(meta):
    hyp = sp.hypothesis_space(meta, "phenomenon")
    rng = np.random.default_rng(11)
    ps = np.array([
        sp.compare_spaces(frame(rng.normal(size=hyp.shape), meta.index), hyp, n_permutations=199, seed=k).p_value
        for k in range(60)
    ])  # fmt: skip
    assert 0.3 < ps.mean() < 0.7
    assert stats.kstest(ps, "uniform").pvalue > 0.01


def test_partial_correlation_equals_hand_computation(meta):
    rng = np.random.default_rng(5)
    tasks = meta.index
    control = frame(rng.random((12, 12)), tasks)
    hyp = sp.hypothesis_space(meta, "phenomenon")
    space = frame(hyp.to_numpy() + 2 * control.to_numpy() + rng.normal(size=(12, 12)), tasks)
    result = sp.compare_spaces(space, hyp, controls={"lexical": control}, n_permutations=50)
    rx, ry, rz = (stats.rankdata(offdiag(m)) for m in (space, hyp, control))
    expected = stats.pearsonr(residual(rx, rz), residual(ry, rz)).statistic
    assert result.partial and result.controls == ("lexical",)
    assert result.statistic == pytest.approx(expected, abs=1e-12)
    # the null recomputes the same quantity for permuted spaces
    perms = np.random.default_rng(0).permuted(np.tile(np.arange(12), (50, 1)), axis=1)
    naive = [
        stats.pearsonr(residual(stats.rankdata(offdiag(space.iloc[p, p])), rz), residual(ry, rz)).statistic
        for p in perms
    ]
    np.testing.assert_allclose(result.null, naive, atol=1e-10)


def test_partial_correlation_vanishes_when_space_is_function_of_control():
    meta = make_metadata(n_phen=6, per=4)
    tasks, n = meta.index, 24
    rng = np.random.default_rng(2)
    hyp = sp.hypothesis_space(meta, "phenomenon")
    control = frame(hyp.to_numpy() + rng.normal(scale=0.5, size=(n, n)), tasks)  # lexical overlap tracks groups
    space = frame(np.exp(control.to_numpy()) + rng.normal(scale=1e-3, size=(n, n)), tasks)
    raw = sp.compare_spaces(space, hyp, n_permutations=200)
    partial = sp.compare_spaces(space, hyp, controls=[control], n_permutations=200)
    assert raw.statistic > 0.4 and raw.p_value < 0.01
    assert abs(partial.statistic) < 0.1 and partial.p_value > 0.05


def test_partial_correlation_is_nan_when_space_is_exactly_the_control(planted):
    space, hyp = planted
    with pytest.warns(UserWarning, match="controls"):
        out = sp.compare_spaces(np.exp(space), hyp, controls=[space], n_permutations=20)
    assert np.isnan(out.statistic) and np.isnan(out.p_value)
    with pytest.warns(UserWarning, match="controls"):
        out = sp.compare_spaces(space, hyp, controls=[hyp], n_permutations=20)
    assert np.isnan(out.statistic) and np.isnan(out.p_value)


def test_compare_spaces_aligns_on_common_tasks(planted, meta):
    space, hyp = planted
    order = list(reversed(meta.index))
    shuffled = hyp.loc[order, order]
    sub = space.iloc[:9, :9]
    a = sp.compare_spaces(sub, shuffled, n_permutations=20)
    b = sp.compare_spaces(sub, hyp.iloc[:9, :9], n_permutations=20)
    assert a.n_tasks == 9 and a.statistic == pytest.approx(b.statistic)
    np.testing.assert_allclose(a.null, b.null)


def test_compare_spaces_errors(planted, meta):
    space, hyp = planted
    with pytest.raises(ValueError, match=r"share only 2 task\(s\) \['t0_0', 't0_1'\]"):
        sp.compare_spaces(space.iloc[:2, :2], hyp)
    with pytest.raises(ValueError, match="paradigm hypothesis"):
        sp.compare_spaces(space, sp.hypothesis_space(meta, "paradigm"))
    with_nan = space.copy()
    with_nan.iloc[0, 1] = np.nan
    with pytest.raises(ValueError, match=r"space: 1 NaN.*t0_0.*drop_incomplete_tasks"):
        sp.compare_spaces(with_nan, hyp)
    with pytest.raises(ValueError, match="spearman"):
        sp.compare_spaces(space, hyp, method="kendall", controls=[hyp])
    with pytest.raises(ValueError, match="not square"):
        sp.compare_spaces(space.iloc[:, :5], hyp)


def test_permutation_test_speed_67_tasks():
    rng = np.random.default_rng(0)
    tasks = [f"t{i}" for i in range(67)]
    labels = np.repeat(np.arange(13), 6)[:67]
    hyp = frame((labels[:, None] == labels[None, :]).astype(float), tasks)
    space = frame(rng.normal(size=(67, 67)) + hyp.to_numpy(), tasks)
    lexical = frame(rng.random((67, 67)), tasks)
    sp.compare_spaces(space, hyp, n_permutations=10)  # warm up
    start = time.perf_counter()
    sp.compare_spaces(space, hyp, n_permutations=1000)
    sp.compare_spaces(space, hyp, n_permutations=1000, controls=[lexical])
    assert time.perf_counter() - start < 4.0  # typically ~0.2 s for both on one core


def test_regress_space_coefficients_and_p(meta, planted):
    space, hyp = planted
    rng = np.random.default_rng(9)
    noise_hyp = frame(rng.random((12, 12)), meta.index)
    field = sp.hypothesis_space(meta, "field")
    fit = sp.regress_space(space, {"phenomenon": hyp, "field": field, "noise": noise_hyp}, n_permutations=499)
    z = lambda v: (v - v.mean()) / v.std()  # noqa: E731
    design = np.column_stack([z(offdiag(h)) for h in (hyp, field, noise_hyp)])
    beta, *_ = np.linalg.lstsq(design, z(offdiag(space)), rcond=None)
    np.testing.assert_allclose(fit.coefficients["beta"].to_numpy(), beta, atol=1e-10)
    residuals = z(offdiag(space)) - design @ beta
    assert fit.r_squared == pytest.approx(1 - residuals @ residuals / len(residuals))
    assert fit.coefficients.at["phenomenon", "p_value"] == pytest.approx(1 / 500)
    assert fit.coefficients.at["noise", "p_value"] > 0.05
    with pytest.raises(ValueError, match="collinear"):
        sp.regress_space(space, {"a": hyp, "b": hyp})


@pytest.mark.parametrize("alternative", ["greater", "two-sided"])
def test_exact_permutation_test_when_all_permutations_fit(alternative):
    """n_tasks! <= n_permutations: scipy enumerates every permutation once (identity included) and
    p = #{null at least as extreme} / n!."""
    tasks = ["a", "b", "c", "d"]
    rng = np.random.default_rng(2)
    hyp = frame([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]], tasks)
    space = frame(hyp.to_numpy() + rng.normal(size=(4, 4)), tasks)
    result = sp.compare_spaces(space, hyp, n_permutations=1000, alternative=alternative)
    naive = np.array([stats.spearmanr(offdiag(space.iloc[list(p), list(p)]), offdiag(hyp)).statistic
                      for p in itertools.permutations(range(4))])  # fmt: skip
    np.testing.assert_allclose(np.sort(result.null), np.sort(naive), atol=1e-10)
    assert result.n_permutations == 24
    extreme = naive >= result.statistic - 1e-12 if alternative == "greater" else np.abs(naive) >= abs(result.statistic) - 1e-12
    assert result.p_value == pytest.approx(extreme.sum() / 24)
    fit = sp.regress_space(space, {"h": hyp}, n_permutations=1000)
    assert fit.n_permutations == 24 and fit.coefficients.at["h", "p_value"] * 24 == pytest.approx(round(fit.coefficients.at["h", "p_value"] * 24))
