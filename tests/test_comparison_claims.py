"""Tests of taskspace_utils.comparison.claims (the claims table) on synthetic run folders with
planted effects, each statistic against an independent hand computation."""

import itertools
import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from taskspace_utils import comparison as cmp
from taskspace_utils import spaces as sp
from taskspace_utils.comparison import claim_statistics as cs
from taskspace_utils.data import load_blimp, split_pairs, task_metadata

TASKS = ["anaphor_gender_agreement", "anaphor_number_agreement", "determiner_noun_agreement_1",
         "determiner_noun_agreement_2", "regular_plural_subject_verb_agreement_1",
         "irregular_plural_subject_verb_agreement_1", "npi_present_1", "sentential_negation_npi_licensor_present",
         "wh_island", "adjunct_island", "principle_A_case_1", "principle_A_domain_1"]
CONFIG = cmp.ComparisonConfig(n_permutations=99, n_boot=100, seed=0)
G_NAME = "generalisation: (within − across phenomenon) / self transfer"


@pytest.fixture(scope="module")
def pairs():
    return split_pairs(load_blimp(tasks=TASKS), 4, 4, 0)


@pytest.fixture(scope="module")
def phen(pairs):
    return task_metadata(pairs).loc[TASKS, "phenomenon"].to_numpy(dtype=object)


def _transfer(phen, strength, rng, noise=0.05):
    """Self-transfer 1, within-phenomenon transfer ``strength``, across 0, plus noise."""
    same = (phen[:, None] == phen[None, :]).astype(float)
    s = strength * same + rng.normal(0, noise, same.shape)
    np.fill_diagonal(s, 1 + rng.normal(0, noise, len(phen)))
    return pd.DataFrame(s, index=TASKS, columns=TASKS)


def _unit(root, pairs, family, step, n_params, transfer=None, seeds=(), overlap=None, info=None):
    folder = root / f"{family}@step{step}"
    (folder / "data").mkdir(parents=True)
    pairs.to_parquet(folder / "data" / "pairs.parquet")
    (folder / "data" / "model_info.json").write_text(json.dumps(
        {"spec": f"{family}@step{step}", "family": family, "step": step, "n_parameters": n_params, **(info or {})}))
    if transfer is not None:
        (folder / "probing").mkdir()
        transfer.to_csv(folder / "probing" / "task_space_transfer_margin.csv")
        for k, s in enumerate(seeds, start=1):
            (folder / "probing" / f"seed{k}").mkdir()
            s.to_csv(folder / "probing" / f"seed{k}" / "task_space_transfer_margin.csv")
    if overlap is not None:
        (folder / "gradients_sentence").mkdir()
        overlap.to_csv(folder / "gradients_sentence" / "mask_overlap.csv")
    return folder


def _hand_g(s, phen):
    vals = []
    for t in range(len(phen)):
        within = [s[t, u] for u in range(len(phen)) if u != t and phen[u] == phen[t]]
        across = [s[t, u] for u in range(len(phen)) if phen[u] != phen[t]]
        if s[t, t] > 0 and within and across:
            vals.append((np.mean(within) - np.mean(across)) / s[t, t])
    return np.mean(vals)


def _pick(table, claim, contrast, statistic_start):
    rows = table[(table.claim == claim) & (table.contrast == contrast) & table.statistic.str.startswith(statistic_start)]
    assert len(rows) == 1, (contrast, statistic_start, table[["contrast", "statistic"]])
    return rows.iloc[0]


def test_statistics_match_hand_computations(pairs, phen):
    rng = np.random.default_rng(1)
    s = rng.normal(size=(12, 12))
    ident = np.arange(12)
    assert cs.generalisation_contrast(s, phen, ident) == pytest.approx(_hand_g(s, phen), abs=1e-12)
    meta = task_metadata(pairs).loc[TASKS]
    hyp = sp.hypothesis_space(meta, "phenomenon")
    lex = sp.lexical_spaces(pairs)
    controls = [lex[k].loc[TASKS, TASKS] for k in ("critical_words", "vocabulary")]
    frame = pd.DataFrame(s, index=TASKS, columns=TASKS)
    want = sp.compare_spaces(frame, hyp, controls=controls, n_permutations=0).statistic
    got = cs.partial_alignment(s, hyp.to_numpy(), [c.to_numpy() for c in controls], ident)
    assert got == pytest.approx(want, abs=1e-12)
    sym = (s + s.T) / 2
    iu = np.triu_indices(12, 1)
    same = phen[iu[0]] == phen[iu[1]]
    assert cs.within_minus_across(sym, phen, ident) == pytest.approx(sym[iu][same].mean() - sym[iu][~same].mean())
    t = rng.normal(size=(12, 12))
    off = ~np.eye(12, dtype=bool)
    assert cs.agreement(s, t, ident) == pytest.approx(stats.spearmanr(s[off], t[off]).statistic, abs=1e-12)
    # a resample never compares a task with its own copy
    idx = np.array([0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    r, c = cs.entries(idx, False)
    assert np.all(r != c) and len(r) == 12 * 11 - 2


@pytest.mark.parametrize("big, small, want", [(0.6, 0.1, "supported"), (0.3, 0.3, "inconclusive"),
                                              (0.1, 0.6, "contradicted")])
def test_size_effect_verdicts(tmp_path, pairs, phen, big, small, want):
    rng = np.random.default_rng(7)
    spaces = {"tiny-s": _transfer(phen, small, rng), "tiny-m": _transfer(phen, (big + small) / 2, rng),
              "tiny-l": _transfer(phen, big, rng)}
    for n, (family, space) in enumerate(spaces.items()):
        _unit(tmp_path, pairs, family, 100, 10 ** (n + 3), space)
    table = cmp.claims_table(cmp.discover_units(tmp_path), CONFIG)
    row = _pick(table, "C1", "tiny-l − tiny-s @ final", "generalisation")
    hand = _hand_g(spaces["tiny-l"].to_numpy(), phen) - _hand_g(spaces["tiny-s"].to_numpy(), phen)
    assert row.value == pytest.approx(hand, abs=1e-12)
    assert row.verdict == want and row.n_tasks == 12 and row.n_seeds == 1
    assert row.ci_low <= row.value <= row.ci_high
    assert (row.p_value <= 0.05) == (want != "inconclusive")
    assert {"tiny-l − tiny-m @ final", "tiny-m − tiny-s @ final"} <= set(table.contrast)  # adjacent pairs
    lex = _pick(table, "C1", "tiny-l − tiny-s @ final", "phenomenon alignment | lexical")
    meta = task_metadata(pairs).loc[sorted(TASKS)]
    ctrl = {k: v for k, v in sp.lexical_spaces(pairs).items() if k in ("critical_words", "vocabulary")}
    align = lambda f: sp.compare_spaces(spaces[f], sp.hypothesis_space(meta, "phenomenon"),
                                        controls=ctrl, n_permutations=0).statistic
    assert lex.value == pytest.approx(align("tiny-l") - align("tiny-s"), abs=1e-12)


def test_seed_spread_and_seeds_in_the_contrast(tmp_path, pairs, phen):
    rng = np.random.default_rng(3)
    seeds = [_transfer(phen, 0.2 + 0.05 * k, rng) for k in range(3)]
    for k, space in enumerate(seeds):  # seed from the family suffix, and from a "seed" field
        family, info = ("tiny-s", {}) if k == 0 else (f"tiny-s-seed{k}", {"seed": k} if k == 2 else {})
        _unit(tmp_path, pairs, family, 100, 1000, space, info=info)
    big = _transfer(phen, 0.6, rng)
    _unit(tmp_path, pairs, "tiny-l", 100, 9000, big)
    roles = cmp.model_roles(cmp.discover_units(tmp_path))
    assert roles.loc["tiny-s-seed1@step100", ["size", "seed"]].tolist() == ["tiny-s", 1]
    assert roles.loc["tiny-s-seed2@step100", "seed"] == 2 and roles.loc["tiny-l@step100", "seed"] == 0
    table = cmp.claims_table(cmp.discover_units(tmp_path), CONFIG)
    per_seed = [_hand_g(s.to_numpy(), phen) for s in seeds]
    spread = _pick(table, "C1", "seed spread tiny-s @ final", "SD over seeds of generalisation")
    assert spread.value == pytest.approx(np.std(per_seed, ddof=1), abs=1e-12)
    assert spread.verdict == "reference" and spread.n_seeds == 3 and spread.ci_low <= spread.ci_high
    row = _pick(table, "C1", "tiny-l − tiny-s @ final", "generalisation")
    assert row.value == pytest.approx(_hand_g(big.to_numpy(), phen) - np.mean(per_seed), abs=1e-12)
    assert row.n_seeds == 3 and row.verdict == "supported"


def _overlap(phen, strength, rng):
    same = (phen[:, None] == phen[None, :]).astype(float)
    o = 0.1 + strength * same + np.abs(rng.normal(0, 0.02, same.shape))
    o = (o + o.T) / 2
    np.fill_diagonal(o, 1.0)
    return pd.DataFrame(o, index=TASKS, columns=TASKS)


def test_sharing_contrasts_and_trend(tmp_path, pairs, phen):
    rng = np.random.default_rng(5)
    steps = [0, 10, 100, 1000]
    overlaps = {s: _overlap(phen, 0.1 * k, rng) for k, s in enumerate(steps)}
    for s in steps:
        _unit(tmp_path, pairs, "tiny-m", s, 1000, overlap=overlaps[s])
    table = cmp.claims_table(cmp.discover_units(tmp_path), CONFIG)
    iu = np.triu_indices(12, 1)
    same = phen[iu[0]] == phen[iu[1]]
    wa = {s: o.to_numpy()[iu][same].mean() - o.to_numpy()[iu][~same].mean() for s, o in overlaps.items()}
    row = _pick(table, "C2", "tiny-m @ step1000 − step0", "within − across")
    assert row.value == pytest.approx(wa[1000] - wa[0], abs=1e-12)
    assert row.verdict == "supported" and row.space == "overlap (all parameters)"
    trend = _pick(table, "C2", "tiny-m: trend over log10(1 + step), steps [0, 10, 100, 1000]", "slope of within")
    assert trend.value == pytest.approx(np.polyfit(np.log10(1 + np.array(steps)), [wa[s] for s in steps], 1)[0])
    assert trend.verdict == "supported" and trend.p_value == pytest.approx(1 / 24)  # exact: 4! orders, one as extreme


def test_non_embedding_overlap_from_module_counts(tmp_path, pairs):
    rng = np.random.default_rng(2)
    sizes = {"embed": 60, "layer0.mlp": 40, "layer0.attention": 30, "head": 60}
    masks = {t: {m: rng.random(n) < 0.3 for m, n in sizes.items()} for t in TASKS[:4]}
    rows = [{"module": m, "task": t, "other": u, "value": np.nan, "intersection": int((masks[t][m] & masks[u][m]).sum()),
             "size_task": int(masks[t][m].sum()), "size_other": int(masks[u][m].sum())}
            for m in sizes for t in masks for u in masks]
    folder = tmp_path / "u" / "gradients_sentence"
    folder.mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(folder / "mask_overlap_modules.parquet")
    space, label = cmp.overlap_space(tmp_path / "u")
    assert label == "overlap (non-embedding)"
    body = {t: np.concatenate([masks[t]["layer0.mlp"], masks[t]["layer0.attention"]]) for t in masks}
    a, b = TASKS[0], TASKS[3]
    assert space.loc[a, b] == pytest.approx((body[a] & body[b]).sum() / (body[a] | body[b]).sum())
    assert cmp.overlap_space(tmp_path / "nothing") is None


def test_incisive_stage_detection(tmp_path, pairs, phen):
    rng = np.random.default_rng(11)
    noisy = lambda base: pd.DataFrame(base + rng.normal(0, 0.1, base.shape), index=TASKS, columns=TASKS)
    first, second = rng.normal(size=(12, 12)), rng.normal(size=(12, 12))
    for family, bases in (("tiny-a", [first, first, second]), ("tiny-b", [first, first, first])):
        for step, base in zip([0, 10, 100], bases):
            _unit(tmp_path, pairs, family, step, 1000 if family == "tiny-a" else 2000, noisy(base), seeds=[noisy(base)])
    table = cmp.claims_table(cmp.discover_units(tmp_path), CONFIG)
    summary = table[table.statistic.str.startswith("number of consecutive")].set_index("contrast")
    assert summary.loc["tiny-a: incisive stages", "value"] == 1
    assert summary.loc["tiny-a: incisive stages", "verdict"] == "contradicted"
    assert "tiny-a@step10;tiny-a@step100" in summary.loc["tiny-a: incisive stages", "note"]
    assert summary.loc["tiny-b: incisive stages", "value"] == 0
    assert summary.loc["tiny-b: incisive stages", "verdict"] == "supported"
    row = _pick(table, "C3", "tiny-a: spearman(step10, step100) − probing-seed ceiling", "rank agreement with the next")
    a = pd.read_csv(tmp_path / "tiny-a@step10" / "probing" / "task_space_transfer_margin.csv", index_col=0).to_numpy()
    b = pd.read_csv(tmp_path / "tiny-a@step100" / "probing" / "task_space_transfer_margin.csv", index_col=0).to_numpy()
    c = pd.read_csv(tmp_path / "tiny-a@step10" / "probing" / "seed1" / "task_space_transfer_margin.csv", index_col=0).to_numpy()
    off = ~np.eye(12, dtype=bool)
    hand = stats.spearmanr(a[off], b[off]).statistic - stats.spearmanr(a[off], c[off]).statistic
    assert row.value == pytest.approx(hand, abs=1e-12) and row.verdict == "contradicted"


def test_a_family_without_seed_twins_borrows_the_pre_training_seed_ceiling(tmp_path, pairs, phen):
    """The quick profile's case: tiny-m has checkpoints but no second seed, tiny-s has three seeds
    at its final step; tiny-m's consecutive agreement is contrasted with the mean agreement between
    tiny-s and its other seeds (hand computation), labelled with where the ceiling comes from."""
    rng = np.random.default_rng(5)
    noisy = lambda base, sd=0.1: pd.DataFrame(base + rng.normal(0, sd, base.shape), index=TASKS, columns=TASKS)
    base = rng.normal(size=(12, 12))
    for step in (0, 100):
        _unit(tmp_path, pairs, "tiny-m", step, 2000, noisy(base))
    for k, family in enumerate(["tiny-s", "tiny-s-seed1", "tiny-s-seed2"]):
        _unit(tmp_path, pairs, family, 100, 1000, noisy(base, 0.5))
    table = cmp.claims_table(cmp.discover_units(tmp_path), CONFIG)
    row = _pick(table, "C3", "tiny-m: spearman(step0, step100) − pre-training-seed (tiny-s @ step100) ceiling",
                "rank agreement with the next")
    read = lambda unit: pd.read_csv(tmp_path / unit / "probing" / "task_space_transfer_margin.csv", index_col=0).to_numpy()
    off = ~np.eye(12, dtype=bool)
    rho = lambda a, b: stats.spearmanr(read(a)[off], read(b)[off]).statistic
    ceiling = np.mean([rho("tiny-s@step100", "tiny-s-seed1@step100"), rho("tiny-s@step100", "tiny-s-seed2@step100")])
    assert row.value == pytest.approx(rho("tiny-m@step0", "tiny-m@step100") - ceiling, abs=1e-12)
    assert "borrowed" in row.note and row.n_seeds == 2
    # the checkpoints agree more than the noisier seeds do: above the ceiling, no incisive stage
    summary = table[table.statistic.str.startswith("number of consecutive")].set_index("contrast")
    assert summary.loc["tiny-m: incisive stages", "value"] == 0


def test_min_detectable_difference_shrinks_with_more_tasks():
    rng = np.random.default_rng(0)
    widths = []
    for n in (10, 32):
        phen = np.repeat(np.arange(n // 2), 2)

        def make(phen=phen, n=n):
            return np.where(phen[:, None] == phen[None, :], 0.3, 0.0) + rng.normal(0, 0.3, (n, n))

        def stat(m, idx, phen=phen, n=n):
            return cs.generalisation_contrast(m[0] + np.eye(n), phen, idx)

        res = cs.contrast(stat, [(make(),)], [(make(),)], n_boot=200, n_permutations=0)
        assert res.min_detectable == pytest.approx(2.8 * np.std(res.boot[np.isfinite(res.boot)], ddof=1))
        widths.append(res.min_detectable)
    assert widths[1] < widths[0] / 1.5


def test_verdict_rule():
    assert cs.verdict(0.1, 0.3) == "supported" and cs.verdict(-0.3, -0.1) == "contradicted"
    assert cs.verdict(-0.1, 0.3) == "inconclusive" and cs.verdict(np.nan, np.nan) == "inconclusive"
    assert cs.verdict(-0.3, -0.1, direction=-1) == "supported"
    assert "supported" in cmp.RULE and "2.8" in cmp.RULE


def test_no_interval_from_too_few_tasks():
    """Three tasks (the smoke profile): the few distinct resamples would give a degenerate interval
    and a spurious verdict, so none is formed."""
    phen = np.array(["a", "a", "b"])
    rng = np.random.default_rng(0)
    a, b = ((m + m.T) / 2 for m in (rng.random((3, 3)), rng.random((3, 3))))
    stat = lambda m, idx: cs.within_minus_across(m[0], phen, idx)
    res = cs.contrast(stat, [(a,)], [(b,)], n_boot=50, n_permutations=99)
    assert np.isfinite(res.value) and np.isnan(res.ci_low) and np.isnan(res.min_detectable)
    assert cs.verdict(res.ci_low, res.ci_high) == "inconclusive"
    # exact permutation p (2**3 <= 99): every swap pattern, entries between a swapped and an unswapped task exchanged
    wa = lambda m: np.mean([m[0, 1]]) - np.mean([m[0, 2], m[1, 2]])
    null = []
    for f in itertools.product([0, 1], repeat=3):
        swap = np.not_equal.outer(f, f)
        null.append(wa(np.where(swap, b, a)) - wa(np.where(swap, a, b)))
    observed = wa(a) - wa(b)
    assert res.value == pytest.approx(observed)
    assert res.p_value == pytest.approx(np.mean(np.abs(null) >= abs(observed) - 1e-12))


def test_compare_units_writes_claims_beside_its_config(tmp_path, pairs, phen):
    rng = np.random.default_rng(4)
    for n, (family, strength) in enumerate([("tiny-s", 0.1), ("tiny-l", 0.6)]):
        _unit(tmp_path, pairs, family, 100, 10 ** (n + 3), _transfer(phen, strength, rng), overlap=_overlap(phen, 0.1, rng))
    tables = cmp.compare_units(tmp_path, config=cmp.ComparisonConfig(n_permutations=19, n_boot=20))
    out = tmp_path / "comparison"
    assert (out / "config.json").exists()
    claims = pd.read_csv(out / "claims.csv")
    assert list(claims.columns) == cmp.claims.COLUMNS
    assert len(claims) == len(tables["claims"]) and set(claims.claim) == {"C1"}
    assert set(claims.verdict) <= {"supported", "contradicted", "inconclusive", "reference"}
    assert claims.loc[claims.statistic.str.startswith("generalisation"), "verdict"].item() == "supported"
