"""Tests of taskspace_utils.probing: the transfer space against a hand computation, the model left
bitwise unchanged, resuming, the normalised variant, the reusable evaluation set, the differential
store and the first-order prediction (hand dot product; finite-difference agreement).

References are computed with the public building blocks independently of the probe's loop:
``tune_task`` + ``applied`` + ``score_pairs`` (which de-duplicates and scores whole sentences,
not the probe's prefix-skipping batches).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from taskspace_utils import probing
from taskspace_utils.data import load_blimp, split_pairs
from taskspace_utils.ftgd import FTGDConfig, SparseDelta, applied, tune_task
from taskspace_utils.gradients import GradientConfig, extract_task_differentials, task_differential
from taskspace_utils.probing import (
    ProbingConfig,
    differential_store,
    drop_constant_spaces,
    first_order_prediction,
    load_transfer,
    load_transfer_deltas,
    prepare_evaluation,
    probe_transfer,
    resplit_pairs,
)
from taskspace_utils.results import ConfigMismatchError
from taskspace_utils.scoring import score_pairs

TASKS = ["anaphor_gender_agreement", "anaphor_number_agreement", "npi_present_1"]
FAST = FTGDConfig(steps=2, batch_size=4, lr=1e-2, k=0.05)


@pytest.fixture(scope="module")
def pairs():
    return split_pairs(load_blimp(tasks=TASKS), n_train=6, n_test=5, seed=0)


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def assert_bitwise(model, snap):
    for name, p in model.named_parameters():
        ints = {8: torch.int64, 4: torch.int32}[p.element_size()]
        assert torch.equal(p.detach().view(ints), snap[name].view(ints)), f"parameter {name} changed"


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


def test_transfer_equals_hand_computation(tiny_lm64, pairs, tmp_path):
    model, tok = tiny_lm64
    before = snapshot(model)
    config = ProbingConfig(tasks=TASKS, n_train=6, n_test=5, seed=3, ftgd=FAST)
    result = probe_transfer(model, tok, pairs, tmp_path / "run", config, progress=False)
    assert_bitwise(model, before)  # every delta reverted bitwise

    test = pairs[pairs.split == "test"]
    base = per_task(score_pairs(model, tok, test))
    for task in TASKS:
        train = pairs[(pairs.split == "train") & (pairs.task == task)]
        delta = tune_task(model, tok, train, FAST.replace(seed=3), task=task)
        with applied(model, delta):
            after = per_task(score_pairs(model, tok, test))
        change = after - base
        np.testing.assert_allclose(result.margin.loc[task, TASKS], change.loc[TASKS, "mean_margin"], rtol=0, atol=1e-9)
        np.testing.assert_array_equal(result.accuracy.loc[task, TASKS], change.loc[TASKS, "accuracy"])
    np.testing.assert_allclose(result.baseline.loc[TASKS, "mean_margin"], base.loc[TASKS, "mean_margin"], atol=1e-10)

    out = tmp_path / "run"
    for name in ("task_space_transfer.csv", "task_space_transfer_margin.csv"):
        frame = pd.read_csv(out / name, index_col=0)
        assert frame.shape == (3, 3) and list(frame.index) == TASKS and list(frame.columns) == TASKS
    assert pd.read_csv(out / "eval_baseline.csv", index_col=0).shape[0] == 3
    assert (out / "transfer_config.json").exists() and len(list((out / "transfer_deltas").iterdir())) == 3
    loaded = load_transfer(out)
    pd.testing.assert_frame_equal(loaded.margin, result.margin)
    assert loaded.config["complete"]


def test_resume_recomputes_nothing_and_equals_uninterrupted_run(tiny_lm, pairs, tmp_path, monkeypatch):
    model, tok = tiny_lm
    config = ProbingConfig(tasks=TASKS, n_train=6, n_test=5, ftgd=FAST)
    full = probe_transfer(model, tok, pairs, tmp_path / "full", config, progress=False)

    real_tune, tuned = probing.tune_task, []

    def killed_after_first(*args, **kwargs):
        if tuned:
            raise KeyboardInterrupt("simulated kill")
        tuned.append(kwargs["task"])
        return real_tune(*args, **kwargs)

    monkeypatch.setattr(probing, "tune_task", killed_after_first)
    with pytest.raises(KeyboardInterrupt):
        probe_transfer(model, tok, pairs, tmp_path / "resumed", config, progress=False)
    assert tuned == TASKS[:1]
    assert sorted(p.stem for p in (tmp_path / "resumed" / "transfer_rows").iterdir()) == TASKS[:1]
    assert not (tmp_path / "resumed" / "task_space_transfer.csv").exists()

    def recording(*args, **kwargs):
        tuned.append(kwargs["task"])
        return real_tune(*args, **kwargs)

    tuned.clear()
    monkeypatch.setattr(probing, "tune_task", recording)
    resumed = probe_transfer(model, tok, pairs, tmp_path / "resumed", config, progress=False)
    assert tuned == TASKS[1:], "finished rows must not be recomputed"
    assert resumed.timings["resumed"].tolist() == [True, False, False]
    pd.testing.assert_frame_equal(resumed.margin, full.margin)
    pd.testing.assert_frame_equal(resumed.accuracy, full.accuracy)
    pd.testing.assert_frame_equal(resumed.baseline, full.baseline)

    with pytest.raises(ConfigMismatchError):
        probe_transfer(model, tok, pairs, tmp_path / "resumed", config.replace(seed=1), progress=False)


def test_subset_and_non_square_space(tiny_lm, pairs, tmp_path):
    model, tok = tiny_lm
    config = ProbingConfig(tasks=TASKS[:1], eval_tasks=TASKS, n_train=3, n_test=2, ftgd=FAST)
    result = probe_transfer(model, tok, pairs, tmp_path, config, progress=False)
    assert result.margin.shape == (1, 3) and result.baseline["n_pairs"].tolist() == [2, 2, 2]
    assert result.config["n_train"] == {TASKS[0]: 3}
    with pytest.raises(KeyError, match="not_a_task"):
        probe_transfer(model, tok, pairs, tmp_path / "x", config.replace(tasks=("not_a_task",)), progress=False)


def test_normalised_variant(tiny_lm, pairs, tmp_path):
    model, tok = tiny_lm
    result = probe_transfer(model, tok, pairs, tmp_path, ProbingConfig(tasks=TASKS, ftgd=FAST), progress=False)
    values = np.array([[2.0, 1.0, -0.5], [0.3, 0.6, 0.0], [1.0, 1.0, -1.0]])  # last row: no self-gain
    result.margin = pd.DataFrame(values, index=result.margin.index, columns=result.margin.columns)
    with pytest.warns(UserWarning, match="non-positive"):
        norm = result.space("margin", normalised=True)
    np.testing.assert_allclose(norm.to_numpy()[:2], [[1.0, 0.5, -0.25], [0.5, 1.0, 0.0]])
    assert norm.iloc[2].isna().all()
    assert result.self_transfer["margin"].tolist() == [2.0, 0.6, -1.0]
    with pytest.raises(ValueError, match="metric"):
        result.space("perplexity")


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


def test_resplit_pairs_keeps_counts_and_pairs(pairs):
    again = resplit_pairs(pairs, seed=1)
    assert again.groupby(["task", "split"]).size().equals(pairs.groupby(["task", "split"]).size())
    assert set(again.pair_id.astype(str) + again.task) == set(pairs.pair_id.astype(str) + pairs.task)
    train_a = set(pairs[pairs.split == "train"].pair_id.astype(str) + pairs.task)
    train_b = set(again[again.split == "train"].pair_id.astype(str) + again.task)
    assert train_a != train_b


def test_drop_constant_spaces(capsys):
    tasks = ["a", "b", "c"]
    varying = pd.DataFrame([[1, 0.2, 0.1], [0.2, 1, 0.5], [0.1, 0.5, 1]], index=tasks, columns=tasks)
    constant = pd.DataFrame(np.eye(3), index=tasks, columns=tasks)
    kept = drop_constant_spaces({"v": varying, "c": constant})
    assert list(kept) == ["v"] and "c" in capsys.readouterr().out


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


def test_compare_seeds(tiny_lm, pairs, tmp_path):
    model, tok = tiny_lm
    config = ProbingConfig(tasks=TASKS, ftgd=FAST)
    first = probe_transfer(model, tok, pairs, tmp_path / "a", config, progress=False)
    second = probe_transfer(model, tok, resplit_pairs(pairs, 1), tmp_path / "b", config.replace(seed=1), progress=False)
    same = probing.compare_seeds(first, first, n_permutations=10)
    assert same.loc["margin", "spearman"] == pytest.approx(1.0) and same.loc["margin", "self_pearson"] == pytest.approx(1.0)
    table = probing.compare_seeds(first, second, n_permutations=10)
    assert list(table.index) == ["accuracy", "margin"] and (table["n_tasks"] == 3).all()
    assert -1 <= table.loc["margin", "spearman"] <= 1 and 0 < table.loc["margin", "p_value"] <= 1
    flat = probe_transfer(model, tok, pairs, tmp_path / "a", config, progress=False)
    flat.accuracy = flat.accuracy * 0.0  # constant off the diagonal: no correlation defined
    assert np.isnan(probing.compare_seeds(flat, second, n_permutations=10).loc["accuracy", "spearman"])


def test_first_order_prediction_subset_and_missing():
    diffs = {u: {"a": torch.full((3,), float(i + 1))} for i, u in enumerate(["u1", "u2", "u3"])}
    delta = SparseDelta({"a": torch.tensor([0, 2])}, {"a": torch.tensor([1.0, 1.0])}, {"a": torch.tensor([0.0, 0.0])})
    pred = first_order_prediction(diffs, {"t": delta}, evaluated=["u3", "u1"])
    assert list(pred.columns) == ["u3", "u1"] and pred.loc["t"].tolist() == [6.0, 2.0]
    with pytest.raises(KeyError, match="u9"):
        first_order_prediction(diffs, {"t": delta}, evaluated=["u9"])


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
