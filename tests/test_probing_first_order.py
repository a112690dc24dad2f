"""Tests of taskspace_utils.probing.first_order: the differential store and the first-order
prediction (hand dot product; finite-difference agreement with the measured transfer).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
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
    extract_task_differentials(model, tok, train, tmp_path, GradientConfig(n_train=6, per_pair=False, store="full"),
                               progress=False)
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


def test_summary_store_gives_the_same_probe_and_prediction(tiny_lm, pairs, tmp_path):
    """A summary folder (top entries at top_k >= FTGD's k) gives bit-identical FTGD masks, hence the
    same transfer rows, and the recomputed D_u the same first-order prediction (per_pair=False and
    ghost norms recompute bit for bit; tolerance 1e-12 relative for the float64 dot products)."""
    model, tok = tiny_lm
    train = pairs[pairs.split == "train"]
    folders = {"full": tmp_path / "full", "summary": tmp_path / "summary"}
    extract_task_differentials(model, tok, train, folders["full"], GradientConfig(n_train=6, per_pair=False, store="full"),
                               progress=False)
    extract_task_differentials(model, tok, train, folders["summary"],
                               GradientConfig(n_train=6, per_pair=False, k=0.01, top_k=FAST.k), progress=False)
    assert len(differential_store(folders["summary"], train, variant="sentence")) == 0  # no k: no masks promised
    assert len(differential_store(folders["summary"], train, k=2 * FAST.k)) == 0  # not covered
    assert len(differential_store(folders["summary"], train, k=FAST.k, per_module=True)) == 0  # other mode
    with pytest.raises(ValueError, match="pass model="):
        differential_store(folders["summary"], train, k=FAST.k).full(TASKS[0])
    results, predicted = {}, {}
    for mode, folder in folders.items():
        store = differential_store(folder, train, "sentence", k=FAST.k, model=model, tokenizer=tok)
        assert sorted(store) == sorted(TASKS)
        results[mode] = probe_transfer(model, tok, pairs, tmp_path / f"probe_{mode}", ProbingConfig(tasks=TASKS, ftgd=FAST),
                                       differentials=store, progress=False)
        predicted[mode] = first_order_prediction(store, load_transfer_deltas(tmp_path / f"probe_{mode}", TASKS))
    for space in ("margin", "accuracy"):
        pd.testing.assert_frame_equal(getattr(results["summary"], space), getattr(results["full"], space), check_exact=True)
    pd.testing.assert_frame_equal(predicted["summary"], predicted["full"], rtol=1e-12)
    full = differential_store(folders["full"], train, k=FAST.k)[TASKS[1]]
    again = differential_store(folders["summary"], train, k=FAST.k, model=model, tokenizer=tok).full(TASKS[1])
    assert all(torch.equal(full[n], again[n]) for n in full)


def test_probe_differentials_reads_a_summary_folder_and_resumes_a_legacy_one(tiny_lm, pairs, tmp_path):
    import json

    from taskspace_utils.probing import probe_differentials

    model, tok = tiny_lm
    train = pairs[pairs.split == "train"]
    config = ProbingConfig(tasks=TASKS, n_train=6, ftgd=FAST)
    store, source = probe_differentials(model, tok, train, tmp_path, config, model_spec="tiny-test", progress=False)
    assert source == tmp_path / "probing" / "differentials" and sorted(store) == sorted(TASKS)
    assert all(store.is_summary(t) for t in TASKS)
    # a probe folder written before GradientConfig.store: full files, config without the new keys
    legacy = tmp_path / "legacy"
    extract_task_differentials(model, tok, train, legacy / "probing" / "differentials", GradientConfig(
        model="tiny-test", n_train=6, k=FAST.k, per_pair=False, store="full"), progress=False)
    path = legacy / "probing" / "differentials" / "config.json"
    old = {k: v for k, v in json.loads(path.read_text()).items() if k not in ("store", "top_k")}
    path.write_text(json.dumps(old))
    store, source = probe_differentials(model, tok, train, legacy, config, model_spec="tiny-test", progress=False)
    assert sorted(store) == sorted(TASKS) and not any(store.is_summary(t) for t in TASKS)


def test_first_order_prediction_subset_and_missing():
    diffs = {u: {"a": torch.full((3,), float(i + 1))} for i, u in enumerate(["u1", "u2", "u3"])}
    delta = SparseDelta({"a": torch.tensor([0, 2])}, {"a": torch.tensor([1.0, 1.0])}, {"a": torch.tensor([0.0, 0.0])})
    pred = first_order_prediction(diffs, {"t": delta}, evaluated=["u3", "u1"])
    assert list(pred.columns) == ["u3", "u1"] and pred.loc["t"].tolist() == [6.0, 2.0]
    with pytest.raises(KeyError, match="u9"):
        first_order_prediction(diffs, {"t": delta}, evaluated=["u9"])
