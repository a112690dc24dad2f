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
