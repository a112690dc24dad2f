"""Tests of taskspace_utils.probing.seeds: re-splitting for a second seed, the agreement of two
probes, and dropping spaces that are constant off the diagonal.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from taskspace_utils.data import load_blimp, split_pairs
from taskspace_utils.ftgd import FTGDConfig
from taskspace_utils.probing import ProbingConfig, compare_seeds, probe_transfer, resplit_pairs

TASKS = ["anaphor_gender_agreement", "anaphor_number_agreement", "npi_present_1"]
FAST = FTGDConfig(steps=2, batch_size=4, lr=1e-2, k=0.05)


@pytest.fixture(scope="module")
def pairs():
    return split_pairs(load_blimp(tasks=TASKS), n_train=6, n_test=5, seed=0)


def test_resplit_pairs_keeps_counts_and_pairs(pairs):
    again = resplit_pairs(pairs, seed=1)
    assert again.groupby(["task", "split"]).size().equals(pairs.groupby(["task", "split"]).size())
    assert set(again.pair_id.astype(str) + again.task) == set(pairs.pair_id.astype(str) + pairs.task)
    train_a = set(pairs[pairs.split == "train"].pair_id.astype(str) + pairs.task)
    train_b = set(again[again.split == "train"].pair_id.astype(str) + again.task)
    assert train_a != train_b


def test_compare_seeds(tiny_lm, pairs, tmp_path):
    model, tok = tiny_lm
    config = ProbingConfig(tasks=TASKS, ftgd=FAST)
    first = probe_transfer(model, tok, pairs, tmp_path / "a", config, progress=False)
    second = probe_transfer(model, tok, resplit_pairs(pairs, 1), tmp_path / "b", config.replace(seed=1), progress=False)
    same = compare_seeds(first, first, n_permutations=10)
    assert same.loc["margin", "spearman"] == pytest.approx(1.0) and same.loc["margin", "self_pearson"] == pytest.approx(1.0)
    table = compare_seeds(first, second, n_permutations=10)
    assert list(table.index) == ["accuracy", "margin"] and (table["n_tasks"] == 3).all()
    assert -1 <= table.loc["margin", "spearman"] <= 1 and 0 < table.loc["margin", "p_value"] <= 1
    flat = probe_transfer(model, tok, pairs, tmp_path / "a", config, progress=False)
    flat.accuracy = flat.accuracy * 0.0  # constant off the diagonal: no correlation defined
    assert np.isnan(compare_seeds(flat, second, n_permutations=10).loc["accuracy", "spearman"])
