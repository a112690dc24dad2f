"""Tests of taskspace_utils.probing.first_order: the differential store and the first-order
prediction (hand dot product; finite-difference agreement with the measured transfer).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from taskspace_utils.data import load_blimp, split_pairs
from taskspace_utils.ftgd import FTGDConfig, SparseDelta
from taskspace_utils.gradients import GradientConfig, extract_task_differentials, task_differential
from taskspace_utils.probing import (
    ProbingConfig,
    differential_store,
    first_order_prediction,
    load_transfer_deltas,
    probe_transfer,
)

TASKS = ["anaphor_gender_agreement", "anaphor_number_agreement", "npi_present_1"]
FAST = FTGDConfig(steps=2, batch_size=4, lr=1e-2, k=0.05)


@pytest.fixture(scope="module")
def pairs():
    return split_pairs(load_blimp(tasks=TASKS), n_train=6, n_test=5, seed=0)


def test_first_order_prediction_is_a_dot_product():
    gen = torch.Generator().manual_seed(0)
    shapes = {"a": (4, 3), "b": (5,)}
    diffs = {u: {n: torch.randn(s, generator=gen) for n, s in shapes.items()} for u in ("u1", "u2")}
    base = {n: torch.randn(s, generator=gen) for n, s in shapes.items()}
    # task t1: a sparse change of "a"; task t2: a dense change of "b" and a sparse one of "a"
    idx = torch.tensor([1, 7, 10])
    d1 = SparseDelta({"a": idx}, {"a": base["a"].view(-1)[idx] + 0.5}, {"a": base["a"].view(-1)[idx]})
    tuned_b = base["b"] + torch.arange(5.0)
    d2 = SparseDelta({"a": torch.tensor([0]), "b": None}, {"a": base["a"].view(-1)[:1] - 1.0, "b": tuned_b},
                     {"a": base["a"].view(-1)[:1], "b": base["b"]})
    pred = first_order_prediction(diffs, {"t1": d1, "t2": d2})
    for u in ("u1", "u2"):
        flat_a = diffs[u]["a"].view(-1).double()
        expect1 = float(0.5 * flat_a[idx].sum())
        step_a = float(d2.tuned["a"][0] - d2.original["a"][0])  # the float32 update, as stored
        step_b = (d2.tuned["b"] - d2.original["b"]).double()
        expect2 = float(step_a * flat_a[0] + (diffs[u]["b"].double() * step_b).sum())
        assert pred.loc["t1", u] == pytest.approx(expect1, rel=1e-12)
        assert pred.loc["t2", u] == pytest.approx(expect2, rel=1e-12)
    assert list(pred.index) == ["t1", "t2"] and pred.index.name == "tuned" and pred.columns.name == "evaluated"


def test_first_order_prediction_matches_measured_change(tiny_lm64, pairs, tmp_path):
    """One plain SGD step of size lr: the measured margin change on u equals <D_u, delta_t> up to
    O(lr^2), where D_u is u's differential on the evaluated (test) pairs."""
    model, tok = tiny_lm64
    test = pairs[pairs.split == "test"]
    diffs = {u: task_differential(model, tok, test[test.task == u]) for u in TASKS}
    errors = {}
    for lr in (2e-5, 1e-5):
        sgd = FTGDConfig(optimizer="sgd", lr=lr, steps=1, batch_size=100, k=0.05)
        folder = tmp_path / f"lr{lr}"
        result = probe_transfer(model, tok, pairs, folder, ProbingConfig(tasks=TASKS, ftgd=sgd), progress=False)
        pred = first_order_prediction(diffs, load_transfer_deltas(folder, TASKS))
        measured = result.margin.loc[TASKS, TASKS].to_numpy()
        assert np.abs(measured).max() > 1e-3, "the step should move the margins measurably"
        np.testing.assert_allclose(pred.to_numpy(), measured, rtol=0.01, atol=2e-5)
        errors[lr] = np.abs(pred.to_numpy() - measured).max()
    # second-order remainder: halving the step quarters the error (allow a wide margin)
    assert errors[1e-5] < errors[2e-5] / 3


def test_differential_store_offers_matching_tasks_only(tiny_lm, pairs, tmp_path):
    model, tok = tiny_lm
    train = pairs[pairs.split == "train"]
    extract_task_differentials(model, tok, train, tmp_path, GradientConfig(n_train=6, per_pair=False), progress=False)
    store = differential_store(tmp_path, train, variant="sentence")
    assert sorted(store) == sorted(TASKS) and len(store) == 3
    assert set(store[TASKS[0]]) == {n for n, _ in model.named_parameters()}
    assert len(differential_store(tmp_path, train.groupby("task").head(3), variant="sentence")) == 0
    assert len(differential_store(tmp_path, train, variant="critical")) == 0
    with pytest.raises(KeyError):
        store["not_a_task"]
    result = probe_transfer(model, tok, pairs, tmp_path / "probe", ProbingConfig(tasks=TASKS, ftgd=FAST),
                            differentials=store, progress=False)
    assert result.margin.notna().all().all()


def test_first_order_prediction_subset_and_missing():
    diffs = {u: {"a": torch.full((3,), float(i + 1))} for i, u in enumerate(["u1", "u2", "u3"])}
    delta = SparseDelta({"a": torch.tensor([0, 2])}, {"a": torch.tensor([1.0, 1.0])}, {"a": torch.tensor([0.0, 0.0])})
    pred = first_order_prediction(diffs, {"t": delta}, evaluated=["u3", "u1"])
    assert list(pred.columns) == ["u3", "u1"] and pred.loc["t"].tolist() == [6.0, 2.0]
    with pytest.raises(KeyError, match="u9"):
        first_order_prediction(diffs, {"t": delta}, evaluated=["u9"])
