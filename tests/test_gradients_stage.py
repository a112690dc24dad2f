"""Tests of taskspace_utils.gradients.stage: all tasks of one model to disk (written, resumed,
mixing refused), the per-pair methods agreeing, and the config's validation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from safetensors.torch import load_file

from gradients_reference import TASKS, blimp3, max_rel  # noqa: F401  (fixtures)
from taskspace_utils import gradients as G
from taskspace_utils.data import split_pairs, task_metadata
from taskspace_utils.encoding import encode
from taskspace_utils.gradients import stage
from taskspace_utils.results import ConfigMismatchError


def test_extract_task_differentials_writes_resumes_and_refuses_mixing(tiny_lm, blimp3, tmp_path, monkeypatch):
    model, tok = tiny_lm
    pairs = split_pairs(blimp3, n_train=4, n_test=2, seed=0)
    config = G.GradientConfig(model="tiny-test", n_train=4, k=0.1, projection_dim=8, store="full")
    stats = G.extract_task_differentials(model, tok, pairs, tmp_path, config, progress=False)
    assert list(stats.index) == sorted(TASKS)
    assert (stats["n_pairs"] == 4).all() and (stats["n_excluded"] == 0).all()
    assert (stats["norm_of_mean"] <= stats["mean_norm"] + 1e-6).all()
    for name in ("config.json", "differential_stats.parquet", "task_space_gradient.csv", "mask_overlap.csv",
                 "task_space_gradient_modules.parquet"):
        assert (tmp_path / name).exists(), name
    loaded = G.load_task_differentials(tmp_path)
    train = pairs[pairs["split"] == "train"]
    direct = G.task_differential(model, tok, train[train["task"] == "wh_island"])
    assert max_rel(loaded["wh_island"], direct) < 1e-5
    space = pd.read_csv(tmp_path / "task_space_gradient.csv", index_col=0)
    np.testing.assert_allclose(space.to_numpy(), G.gradient_space(loaded).to_numpy(), atol=1e-6)
    overlap = pd.read_csv(tmp_path / "mask_overlap.csv", index_col=0)
    masks = {t: G.subnetwork_masks(d, 0.1) for t, d in loaded.items()}
    np.testing.assert_allclose(overlap.to_numpy(), G.mask_overlap_space(masks).to_numpy(), atol=1e-12)
    pd.testing.assert_frame_equal(G.load_gradient_spaces(tmp_path), space)
    modules = G.load_gradient_spaces(tmp_path, by="module")
    expected = G.gradient_space(loaded, by="module")
    assert list(modules) == list(expected) and {"embed", "layer1.mlp", "head"} <= set(modules)
    for m in expected:
        np.testing.assert_allclose(modules[m].to_numpy(), expected[m].to_numpy(), atol=1e-6)
    meta = task_metadata(pairs)
    summary = G.summarise_module_spaces(modules, meta)
    emb = modules["embed"].to_numpy()
    assert summary.loc["embed", "all_pairs"] == pytest.approx(np.mean([emb[0, 1], emb[0, 2], emb[1, 2]]))
    same = [(a, b) for i, a in enumerate(TASKS) for b in TASKS[i + 1:] if meta.loc[a, "field"] != meta.loc[b, "field"]]
    assert summary.loc["embed", "other_field"] == pytest.approx(np.mean([modules["embed"].loc[a, b] for a, b in same]))
    sketches = load_file(str(tmp_path / "sketches" / "wh_island.safetensors"))["sketch"]
    assert sketches.shape == (4, 8)

    # a rerun skips finished tasks (the EncodedPairs of the frame is accepted in its place)
    def fail(*args, **kwargs):
        raise AssertionError("recomputed a finished task")

    monkeypatch.setattr(stage, "_compute_task", fail)
    again = G.extract_task_differentials(model, tok, pairs, tmp_path, config, progress=False)
    pd.testing.assert_frame_equal(again, stats)
    again = G.extract_task_differentials(model, tok, encode(tok, pairs), tmp_path, config, progress=False)
    pd.testing.assert_frame_equal(again, stats)
    monkeypatch.undo()
    with pytest.raises(ConfigMismatchError):
        G.extract_task_differentials(model, tok, pairs, tmp_path, G.GradientConfig(model="tiny-test", n_train=4, k=0.2, store="full"))
    other = split_pairs(blimp3, n_train=4, n_test=2, seed=1)
    with pytest.raises(ConfigMismatchError, match="other pairs"):
        G.extract_task_differentials(model, tok, other, tmp_path, config, progress=False)


def test_extract_without_per_pair_uses_split_halves(tiny_lm, blimp3, tmp_path):
    model, tok = tiny_lm
    pairs = split_pairs(blimp3, n_train=5, n_test=0, seed=0)
    config = G.GradientConfig(model="tiny-test", n_train=5, per_pair=False, variant="critical", store="full")
    stats = G.extract_task_differentials(model, tok, pairs, tmp_path, config, tasks=["wh_island"], progress=False)
    assert list(stats.index) == ["wh_island"] and np.isnan(stats.loc["wh_island", "mean_norm"])
    train = pairs[(pairs["task"] == "wh_island")]
    direct = G.task_differential(model, tok, train, variant="critical")
    assert max_rel(G.load_task_differentials(tmp_path, ["wh_island"])["wh_island"], direct) < 1e-5
    assert -1 <= stats.loc["wh_island", "split_half_cosine"] <= 1


def test_config_validation():
    with pytest.raises(ValueError, match="variant"):
        G.GradientConfig(variant="token")
    with pytest.raises(ValueError, match="k="):
        G.GradientConfig(k=1.5)
    with pytest.raises(ValueError, match="store="):
        G.GradientConfig(store="half")
    with pytest.raises(ValueError, match="top_k="):
        G.GradientConfig(k=0.05, top_k=0.01)
    assert G.GradientConfig(k=0.05).kept_fraction == 0.05 and G.GradientConfig(k=0.05, top_k=0.2).kept_fraction == 0.2


def test_extract_with_ghost_norms_matches_the_vmap_path(tiny_lm64, blimp3, tmp_path):
    model, tok = tiny_lm64
    pairs = split_pairs(blimp3, n_train=5, n_test=0, seed=0)
    stats = {}
    for method in ("auto", "vmap"):  # auto: ghost norms for this model
        config = G.GradientConfig(model="tiny-test", n_train=5, per_pair_method=method, store="full")
        stats[method] = G.extract_task_differentials(model, tok, pairs, tmp_path / method, config, tasks=TASKS[:2], progress=False)
    cols = ["n_pairs", "mean_norm", "norm_of_mean", "consistency", "split_half_cosine"]
    pd.testing.assert_frame_equal(stats["auto"][cols], stats["vmap"][cols], rtol=1e-9)
    a, b = G.load_task_differentials(tmp_path / "auto"), G.load_task_differentials(tmp_path / "vmap")
    assert all(max_rel(a[t], b[t]) < 1e-10 for t in a)
    with pytest.raises(ValueError, match="ghost"):
        G.GradientConfig(per_pair_method="ghost", projection_dim=8)
