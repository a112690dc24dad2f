"""Tests for taskspace_utils.spaces: every statistic against an independent computation."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.spatial.distance import pdist

from taskspace_utils import spaces as sp


# ------------------------------------------------------------------------------------------------
# fixtures and helpers
# ------------------------------------------------------------------------------------------------
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


# ------------------------------------------------------------------------------------------------
# hypothesis spaces
# ------------------------------------------------------------------------------------------------
def test_hypothesis_spaces_on_hand_made_metadata():
    meta = pd.DataFrame(
        {"phenomenon": ["A", "A", "B", "C"], "field": ["F", "F", "F", "G"]}, index=["a1", "a2", "b1", "c1"]
    )
    hyps = sp.hypothesis_spaces(meta)
    assert list(hyps) == ["paradigm", "phenomenon", "field"]
    np.testing.assert_array_equal(hyps["paradigm"].to_numpy(), np.eye(4))
    np.testing.assert_array_equal(
        hyps["phenomenon"].to_numpy(), [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    )
    np.testing.assert_array_equal(hyps["field"].to_numpy(), [[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 0], [0, 0, 0, 1]])
    assert hyps["field"].index.name == "tuned" and hyps["field"].columns.name == "evaluated"
    assert list(hyps["field"].index) == ["a1", "a2", "b1", "c1"]
    with pytest.raises(ValueError, match="level"):
        sp.hypothesis_space(meta, "family")


def test_load_hypothesis_space_round_trip_and_subset(tmp_path):
    tasks = ["x", "y", "z", "w"]
    matrix = frame(np.arange(16).reshape(4, 4), tasks)
    path = tmp_path / "linguist.csv"
    matrix.to_csv(path)
    loaded = sp.load_hypothesis_space(path, tasks=["z", "x", "y"])
    np.testing.assert_array_equal(loaded.to_numpy(), matrix.loc[["z", "x", "y"], ["z", "x", "y"]].to_numpy())
    np.testing.assert_array_equal(sp.load_hypothesis_space(matrix).to_numpy(), matrix.to_numpy())


def test_load_hypothesis_space_errors_name_file_and_task(tmp_path):
    tasks = ["x", "y", "z"]
    path = tmp_path / "groups.csv"
    frame(np.eye(3), tasks).to_csv(path)
    with pytest.raises(ValueError, match=r"groups\.csv.*'missing_task'"):
        sp.load_hypothesis_space(path, tasks=["x", "y", "missing_task"])
    wide = tmp_path / "wide.csv"
    pd.DataFrame(np.eye(3)[:2], index=["x", "y"], columns=tasks).to_csv(wide)
    with pytest.raises(ValueError, match=r"wide\.csv.*square.*'z'"):
        sp.load_hypothesis_space(wide)
    text = tmp_path / "text.csv"
    bad = frame(np.eye(3), tasks).astype(object)
    bad.loc["y", "z"] = "high"
    bad.to_csv(text)
    with pytest.raises(ValueError, match=r"text\.csv.*'high'.*'y'.*'z'"):
        sp.load_hypothesis_space(text)


# ------------------------------------------------------------------------------------------------
# lexical spaces
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def tiny_pairs():
    rows = [
        ("A", "The cat is here.", "The cat are here."),
        ("A", "The dog is old.", "The dog are old."),
        ("B", "Cats are here.", "Cats is here."),
        ("C", "She saw herself.", "She saw himself."),
        ("D", "He saw himself.", "He saw herself."),
        ("D", "The cats are here.", "The cats is here."),
    ]
    pairs = pd.DataFrame(rows, columns=["task", "good", "bad"])
    pairs["pair_id"] = range(len(pairs))
    return pairs


def test_critical_words():
    assert sp.critical_words("The cat is here.", "The cat are here.") == {"is", "are"}
    assert sp.critical_words("Katherine can't help herself.", "Katherine can't help himself.") == {"herself", "himself"}
    # a transposition: difflib keeps "who ... did see" aligned, so the moved word is "john"
    assert sp.critical_words("Who did John see?", "Who John did see?") == {"john"}
    assert sp.critical_words([1, 2, 3], [1, 5, 3]) == {2, 5}


def test_lexical_spaces_exact_jaccard(tiny_pairs):
    lex = sp.lexical_spaces(tiny_pairs)
    assert set(lex) == {"critical_words", "vocabulary"}
    crit = lex["critical_words"]
    # C_A = C_B = {is, are}; C_C = {herself, himself}; C_D = {himself, herself, are, is}
    expected = [[1, 1, 0, 0.5], [1, 1, 0, 0.5], [0, 0, 1, 0.5], [0.5, 0.5, 0.5, 1]]
    np.testing.assert_allclose(crit.loc[list("ABCD"), list("ABCD")].to_numpy(), expected)
    vocab = lex["vocabulary"]
    # V_A = {the cat is are here dog old}, V_B = {cats are is here}, V_D = {he saw himself herself the cats are is here}
    assert vocab.at["A", "B"] == pytest.approx(3 / 8)
    assert vocab.at["A", "D"] == pytest.approx(4 / 12)
    assert vocab.at["B", "D"] == pytest.approx(4 / 9)
    assert vocab.at["A", "C"] == 0.0
    np.testing.assert_array_equal(np.diag(vocab), 1.0)


def test_lexical_spaces_weighted_and_cosine(tiny_pairs):
    lex = sp.lexical_spaces(tiny_pairs, weighted=True, vocabulary_measure="cosine")
    # critical-word frequencies: A {is .5, are .5}; D {himself, herself, are, is: .25 each}
    assert lex["critical_words"].at["A", "D"] == pytest.approx(0.5 / 1.5)
    assert lex["critical_words"].at["A", "B"] == pytest.approx(1.0)
    # word counts: A the 4, cat/dog/here/old/is/are 2; B cats 2, here 2, are 1, is 1
    # -> (2 * 2 + 2 * 1 + 2 * 1) / (sqrt(40) * sqrt(10)) = 8 / 20
    assert lex["vocabulary"].at["A", "B"] == pytest.approx(0.4)


def test_lexical_spaces_on_token_ids(tiny_pairs):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for s in pd.concat([tiny_pairs.good, tiny_pairs.bad]) for w in s.lower().rstrip(".").split()})
    ids = {w: i for i, w in enumerate(words)}
    as_ids = lambda s: [ids[w] for w in s.lower().rstrip(".").split()]  # noqa: E731
    by_callable = sp.lexical_spaces(tiny_pairs, tokenizer=as_ids)
    # a word-level tokenizer is a bijection of words, so token overlap == word overlap
    pd.testing.assert_frame_equal(by_callable["critical_tokens"], by_callable["critical_words"])
    pd.testing.assert_frame_equal(by_callable["token_vocabulary"], by_callable["vocabulary"])

    tok = Tokenizer(models.WordLevel({**ids, ".": len(ids), "[UNK]": len(ids) + 1}, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    for tokenizer in (tok, PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")):
        lex = sp.lexical_spaces(tiny_pairs, tokenizer=tokenizer)
        # lower-cased word-level ids; "." is a token but never differs between good and bad
        pd.testing.assert_frame_equal(lex["critical_tokens"], by_callable["critical_words"])
        assert lex["token_vocabulary"].at["A", "B"] == pytest.approx(4 / 9)  # word vocabulary plus "."


# ------------------------------------------------------------------------------------------------
# compare_spaces
# ------------------------------------------------------------------------------------------------
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


def test_drop_incomplete_tasks(planted):
    space, _ = planted
    with_nan = space.copy()
    with_nan.iloc[2, :] = np.nan  # a normalised row with non-positive self-transfer
    with_nan.iloc[5, 7] = np.nan
    kept = sp.drop_incomplete_tasks(with_nan)
    assert space.index[2] not in kept.index and len(kept) == 10
    assert not np.isnan(offdiag(kept)).any()


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


# ------------------------------------------------------------------------------------------------
# regression, within/across, differences, predictions
# ------------------------------------------------------------------------------------------------
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


# ------------------------------------------------------------------------------------------------
# transforms and summaries
# ------------------------------------------------------------------------------------------------
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


def test_space_entries(planted):
    space, hyp = planted
    entries = sp.space_entries({"s": space, "h": hyp})
    assert len(entries) == 132
    row = entries.iloc[5]
    assert row["s"] == space.at[row["tuned"], row["evaluated"]] and row["tuned"] != row["evaluated"]


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
