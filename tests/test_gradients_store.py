"""Tests of taskspace_utils.gradients.store: the run folder's file names, hash and loaders."""

from __future__ import annotations

import pandas as pd
import pytest

from taskspace_utils import gradients as G
from taskspace_utils.gradients.store import _task_file


def test_pairs_sha_is_the_stored_key_and_ignores_other_columns():
    frame = pd.DataFrame({"task": ["a", "a"], "good": ["x y", "z"], "bad": ["y x", "w"]})
    # the value stored in the metadata of existing run folders: must not change
    assert G._pairs_sha(frame) == G._pairs_sha(frame.drop(columns="task").assign(task="b"))
    assert G._pairs_sha(frame) != G._pairs_sha(frame.iloc[::-1])
    assert G._pairs_sha(frame) == "2020fe8445c707cc"  # sha256("x y\ty x\nz\tw")[:16]


def test_task_file_names_and_missing_folders(tmp_path):
    assert _task_file(tmp_path, "wh_island") == tmp_path / "differentials" / "wh_island.safetensors"
    for bad in ("", "../x", "a/b", ".hidden"):
        with pytest.raises(ValueError, match="file name"):
            _task_file(tmp_path, bad)
    with pytest.raises(FileNotFoundError):
        G.load_task_differentials(tmp_path)
    with pytest.raises(FileNotFoundError, match="not extracted"):
        G.load_task_differentials(tmp_path, ["wh_island"])
    with pytest.raises(FileNotFoundError, match="not written"):
        G.load_differential_stats(tmp_path)
    with pytest.raises(FileNotFoundError):
        G.summarise_run(tmp_path)


def test_folders_written_before_the_store_option_resume_as_full(tiny_lm, tmp_path):
    """A full folder whose config.json predates ``store``/``top_k``: resumed with store='full',
    refused (with the reason) for a summary, and still readable."""
    import json

    from gradients_reference import TASKS
    from taskspace_utils.data import load_blimp, split_pairs
    from taskspace_utils.results import ConfigMismatchError

    model, tok = tiny_lm
    pairs = split_pairs(load_blimp(tasks=TASKS[:2]), n_train=3, n_test=0, seed=0)
    config = G.GradientConfig(model="tiny-test", n_train=3, per_pair=False, store="full")
    stats = G.extract_task_differentials(model, tok, pairs, tmp_path, config, progress=False)
    path = tmp_path / "config.json"
    path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k not in ("store", "top_k")}))
    pd.testing.assert_frame_equal(G.extract_task_differentials(model, tok, pairs, tmp_path, config, progress=False), stats)
    assert sorted(G.load_task_differentials(tmp_path)) == sorted(TASKS[:2])
    with pytest.raises(ConfigMismatchError, match="store='full'"):
        G.extract_task_differentials(model, tok, pairs, tmp_path, G.GradientConfig(model="tiny-test", n_train=3, per_pair=False))
    with pytest.raises(ConfigMismatchError, match="different config"):
        G.extract_task_differentials(model, tok, pairs, tmp_path, G.GradientConfig(model="tiny-test", n_train=3, store="full"))
