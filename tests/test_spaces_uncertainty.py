"""Tests for taskspace_utils.spaces.uncertainty: bootstrap intervals, alignment differences and tables, predictions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from taskspace_utils import spaces as sp
from spaces_reference import frame, meta, offdiag, planted  # noqa: F401 (meta, planted: fixtures)


def test_within_across_means_and_bootstrap(planted):
    space, hyp = planted
    values, group = offdiag(space), offdiag(hyp) == 1
    out = sp.within_across(space, hyp, n_boot=500, seed=0)
    assert out.within_mean == pytest.approx(values[group].mean())
    assert out.across_mean == pytest.approx(values[~group].mean())
    assert out.difference == pytest.approx(values[group].mean() - values[~group].mean())
    assert (out.n_within, out.n_across) == (int(group.sum()), int((~group).sum()))
    for est, (low, high) in [(out.within_mean, out.within_ci), (out.across_mean, out.across_ci),
                             (out.difference, out.difference_ci)]:  # fmt: skip
        assert low < est < high
    assert out == sp.within_across(space, hyp, n_boot=500, seed=0)
    assert out.difference_ci != sp.within_across(space, hyp, n_boot=500, seed=1).difference_ci
    assert set(out.to_dict()) >= {"difference_ci_low", "difference_ci_high", "within_mean"}


def test_difference_with_uncertainty(planted, meta):
    space, hyp = planted
    rng = np.random.default_rng(4)
    untrained = frame(0.3 * hyp.to_numpy() + rng.normal(size=hyp.shape), meta.index)
    out = sp.difference_with_uncertainty(space, untrained, hyp, n_boot=300, seed=0)
    a = sp.compare_spaces(space, hyp, n_permutations=0).statistic
    b = sp.compare_spaces(untrained, hyp, n_permutations=0).statistic
    assert (out.statistic_a, out.statistic_b) == (pytest.approx(a), pytest.approx(b))
    assert out.difference == pytest.approx(a - b) and out.ci_low < out.difference < out.ci_high
    np.testing.assert_array_equal(out.boot, sp.difference_with_uncertainty(space, untrained, hyp, n_boot=300).boot)
    same = sp.difference_with_uncertainty(space, space, hyp, n_boot=50)
    assert same.difference == 0 and same.ci_low == 0 and same.ci_high == 0
    # one replicate by hand: resample tasks, drop copies of a task paired with itself
    idx = np.random.default_rng(0).integers(0, 12, size=12)
    r, c = np.nonzero(~np.eye(12, dtype=bool))
    keep = idx[r] != idx[c]
    pick = lambda m: m.to_numpy()[idx[r][keep], idx[c][keep]]  # noqa: E731
    first = stats.spearmanr(pick(space), pick(hyp)).statistic - stats.spearmanr(pick(untrained), pick(hyp)).statistic
    assert out.boot[0] == pytest.approx(first)


def test_compare_prediction(planted):
    space, _ = planted
    predicted = 0.5 * space + 0.1
    out = sp.compare_prediction(predicted, space)
    p, m = offdiag(predicted), offdiag(space)
    assert out["pearson"] == pytest.approx(1.0) and out["spearman"] == pytest.approx(1.0)
    assert out["r2"] == pytest.approx(1 - np.sum((m - p) ** 2) / np.sum((m - m.mean()) ** 2))
    assert out["r2_linear"] == pytest.approx(1.0) and out["n_entries"] == 132


def test_alignment_table(planted, meta):
    space, hyp = planted
    rng = np.random.default_rng(8)
    lexical = frame(rng.random((12, 12)), meta.index)
    hyps = sp.hypothesis_spaces(meta)
    with pytest.warns(UserWarning, match="'paradigm'"):
        table = sp.alignment_table({"trained": space}, hyps, controls={"lexical": lexical},
                                   n_permutations=99, n_boot=100)  # fmt: skip
    assert list(zip(table["hypothesis"], table["controlled"])) == [
        ("phenomenon", "none"), ("phenomenon", "lexical"), ("field", "none"), ("field", "lexical")
    ]
    partial = sp.compare_spaces(space, hyps["field"], controls=[lexical], n_permutations=99)
    row = table.iloc[3]
    assert (row["statistic"], row["p_value"]) == (pytest.approx(partial.statistic), pytest.approx(partial.p_value))
    assert (table["ci_low"] < table["statistic"]).all() and (table["statistic"] < table["ci_high"]).all()
    # a control is not used against itself
    self_table = sp.alignment_table({"s": space}, {"lexical": lexical}, controls={"lexical": lexical}, n_permutations=9)
    assert list(self_table["controlled"]) == ["none"]


def test_bootstrap_with_few_tasks_skips_degenerate_resamples():
    """With 3 tasks some resamples draw one task only (no entries left): they count as NaN, no crash."""
    tasks = ["a", "b", "c"]
    rng = np.random.default_rng(1)
    a = pd.DataFrame(rng.normal(size=(3, 3)), index=tasks, columns=tasks)
    b = pd.DataFrame(rng.normal(size=(3, 3)), index=tasks, columns=tasks)
    h = pd.DataFrame([[1, 1, 0], [1, 1, 0], [0, 0, 1]], index=tasks, columns=tasks, dtype=float)
    res = sp.difference_with_uncertainty(a, b, h, n_boot=200, seed=0)
    assert np.isnan(res.boot).any() and np.isfinite(res.difference)
