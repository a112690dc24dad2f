"""Tests of taskspace_utils.probing.evaluation: the reusable evaluation set against score_pairs
(padded and prefix-tree packing), ties of identical pairs, and encoded pairs taken as test pairs.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from taskspace_utils.data import load_blimp, split_pairs
from taskspace_utils.encoding import encode
from taskspace_utils.probing import prepare_evaluation
from taskspace_utils.scoring import score_pairs

TASKS = ["anaphor_gender_agreement", "anaphor_number_agreement", "npi_present_1"]


@pytest.fixture(scope="module")
def pairs():
    return split_pairs(load_blimp(tasks=TASKS), n_train=6, n_test=5, seed=0)


def per_task(scored: pd.DataFrame) -> pd.DataFrame:
    return scored.groupby("task").agg(accuracy=("correct", "mean"), mean_margin=("margin", "mean"))


def test_prepared_evaluation_matches_score_pairs(tiny_lm64, pairs):
    model, tok = tiny_lm64
    test = pairs[pairs.split == "test"]
    identical = test.iloc[:1].assign(bad=test.iloc[0]["good"], task="identical")  # a tie by construction
    frame = pd.concat([test, identical], ignore_index=True)
    prepared = prepare_evaluation(tok, frame, batch_tokens=64)  # many small batches
    assert len(prepared.batches) > 1 and prepared.n_scored < prepared.n_tokens
    margins = prepared.margins(model)
    reference = score_pairs(model, tok, frame)["margin"].to_numpy()
    np.testing.assert_allclose(margins, reference, rtol=0, atol=1e-10)
    assert margins[-1] == 0.0
    scores = prepared.summarise(margins)
    assert scores.loc["identical", "ties"] == 1 and scores.loc["identical", "accuracy"] == 0.0
    expected = per_task(score_pairs(model, tok, frame))
    np.testing.assert_allclose(scores.loc[expected.index, "mean_margin"], expected["mean_margin"], atol=1e-10)


def test_prepared_evaluation_tree_and_padded_packing_agree(tiny_lm64, pairs):
    model, tok = tiny_lm64
    test = pairs[pairs.split == "test"]
    tree = prepare_evaluation(tok, test, batch_tokens=48)
    padded = prepare_evaluation(tok, test, batch_tokens=48, packing="padded")
    assert tree.uses_tree(model) and not padded.uses_tree(model)
    assert padded.tree_batches is None
    # shared beginnings are fed once, and only the scored (non-shared) nodes reach the head
    assert tree.n_tree_tokens < tree.n_tokens and tree.n_tree_scored <= tree.n_scored
    reference = score_pairs(model, tok, test)["margin"].to_numpy()
    np.testing.assert_allclose(tree.margins(model), reference, rtol=0, atol=1e-10)
    np.testing.assert_allclose(padded.margins(model), reference, rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="packing='rows'"):
        prepare_evaluation(tok, test, packing="rows")


def test_prepared_evaluation_takes_encoded_pairs(tiny_lm64, pairs):
    """An EncodedPairs (of all pairs, a task subset selected) gives the same rows and margins."""
    model, tok = tiny_lm64
    test = pairs[pairs.split == "test"]
    tasks = TASKS[1:]
    plain = prepare_evaluation(tok, test, tasks, batch_tokens=48)
    encoded = prepare_evaluation(tok, encode(tok, test), tasks, batch_tokens=48)
    assert (plain.n_rows, plain.n_tokens, plain.n_scored, plain.n_tree_tokens) == \
        (encoded.n_rows, encoded.n_tokens, encoded.n_scored, encoded.n_tree_tokens)
    np.testing.assert_array_equal(plain.pair_task, encoded.pair_task)
    np.testing.assert_array_equal(plain.margins(model), encoded.margins(model))
    with pytest.raises(KeyError, match="not_a_task"):
        prepare_evaluation(tok, encode(tok, test), ["not_a_task"])
