"""Tests of taskspace_utils.probing.config: ProbingConfig's checks and the pairs a probe selects."""

from __future__ import annotations

import pytest

from taskspace_utils.data import load_blimp, split_pairs
from taskspace_utils.encoding import encode
from taskspace_utils.probing import ProbingConfig, select_pairs

TASKS = ["anaphor_gender_agreement", "anaphor_number_agreement", "npi_present_1"]


@pytest.fixture(scope="module")
def pairs():
    return split_pairs(load_blimp(tasks=TASKS), n_train=6, n_test=5, seed=0)


def test_config_checks():
    assert ProbingConfig(tasks=["a", "b"]).tasks == ("a", "b")
    assert ProbingConfig(seed=4).tuning.seed == 4
    assert ProbingConfig(ftgd={"steps": 3}).ftgd.steps == 3
    with pytest.raises(ValueError, match="duplicated"):
        ProbingConfig(tasks=["a", "a"])
    with pytest.raises(TypeError):
        ProbingConfig(tasks="a")
    with pytest.raises(ValueError):
        ProbingConfig(n_test=0)


def test_select_pairs_counts_and_errors(pairs, tiny_tokenizer):
    config = ProbingConfig(tasks=TASKS[:1], eval_tasks=TASKS, n_train=3, n_test=2)
    train, test = select_pairs(pairs, config)
    assert train.groupby("task").size().to_dict() == {TASKS[0]: 3}
    assert test.groupby("task").size().to_dict() == {t: 2 for t in TASKS}
    again = select_pairs(encode(tiny_tokenizer, pairs), config)
    assert again[0].equals(train) and again[1].equals(test)
    unsplit = select_pairs(pairs.drop(columns="split"), config)  # split here, with the config's seed
    assert len(unsplit[0]) == 3 and len(unsplit[1]) == 6
    with pytest.raises(KeyError, match="not_a_task"):
        select_pairs(pairs, config.replace(tasks=("not_a_task",)))
