"""Tests of taskspace_utils.probing.probe: the transfer space against a hand computation, the model
left bitwise unchanged, resuming, subsets and non-square spaces, and the normalised variant.

References are computed with the public building blocks independently of the probe's loop:
``tune_task`` + ``applied`` + ``score_pairs`` (which de-duplicates and scores whole sentences,
not the probe's prefix-skipping batches).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from taskspace_utils.data import load_blimp, split_pairs
from taskspace_utils.encoding import encode
from taskspace_utils.ftgd import FTGDConfig, applied, tune_task
from taskspace_utils.probing import ProbingConfig, load_transfer, probe, probe_transfer
from taskspace_utils.results import ConfigMismatchError
from taskspace_utils.scoring import score_pairs

from probe_helpers import kill_after_first_tune  # noqa: E402 (tests/ helper)

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
    assert (out / "config.json").exists() and len(list((out / "deltas").iterdir())) == 3
    loaded = load_transfer(out)
    pd.testing.assert_frame_equal(loaded.margin, result.margin)
    assert loaded.config["complete"]


def test_resume_recomputes_nothing_and_equals_uninterrupted_run(tiny_lm, pairs, tmp_path, monkeypatch):
    model, tok = tiny_lm
    config = ProbingConfig(tasks=TASKS, n_train=6, n_test=5, ftgd=FAST)
    full = probe_transfer(model, tok, pairs, tmp_path / "full", config, progress=False)

    real_tune = probe.tune_task
    tuned = kill_after_first_tune(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        probe_transfer(model, tok, pairs, tmp_path / "resumed", config, progress=False)
    assert tuned == TASKS[:1]
    assert sorted(p.stem for p in (tmp_path / "resumed" / "rows").iterdir()) == TASKS[:1]
    assert not (tmp_path / "resumed" / "task_space_transfer.csv").exists()

    def recording(*args, **kwargs):
        tuned.append(kwargs["task"])
        return real_tune(*args, **kwargs)

    tuned.clear()
    monkeypatch.setattr(probe, "tune_task", recording)
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


def test_encoded_pairs_probe_the_same(tiny_lm, pairs, tmp_path):
    model, tok = tiny_lm
    config = ProbingConfig(tasks=TASKS[:2], n_train=3, n_test=2, ftgd=FAST)
    a = probe_transfer(model, tok, pairs, tmp_path / "frame", config, progress=False)
    b = probe_transfer(model, tok, encode(tok, pairs), tmp_path / "encoded", config, progress=False)
    pd.testing.assert_frame_equal(a.margin, b.margin)
    pd.testing.assert_frame_equal(a.baseline, b.baseline)
    assert a.config == b.config
