"""Tests for taskspace_utils.spaces.hypotheses: metadata and user hypotheses, relation labels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from taskspace_utils import spaces as sp
from spaces_reference import frame


def test_hypothesis_spaces_on_hand_made_metadata():
    meta = pd.DataFrame(
        {"phenomenon": ["A", "A", "B", "C"], "field": ["F", "F", "F", "G"]}, index=["a1", "a2", "b1", "c1"]
    )
    hyps = sp.hypothesis_spaces(meta)
    assert list(hyps) == ["paradigm", "phenomenon", "field"]
    np.testing.assert_array_equal(hyps["paradigm"].to_numpy(), np.eye(4))
    np.testing.assert_array_equal(
        hyps["phenomenon"].to_numpy(), [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    )
    np.testing.assert_array_equal(hyps["field"].to_numpy(), [[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 0], [0, 0, 0, 1]])
    assert hyps["field"].index.name == "tuned" and hyps["field"].columns.name == "evaluated"
    assert list(hyps["field"].index) == ["a1", "a2", "b1", "c1"]
    with pytest.raises(ValueError, match="level"):
        sp.hypothesis_space(meta, "family")


def test_load_hypothesis_space_round_trip_and_subset(tmp_path):
    tasks = ["x", "y", "z", "w"]
    matrix = frame(np.arange(16).reshape(4, 4), tasks)
    path = tmp_path / "linguist.csv"
    matrix.to_csv(path)
    loaded = sp.load_hypothesis_space(path, tasks=["z", "x", "y"])
    np.testing.assert_array_equal(loaded.to_numpy(), matrix.loc[["z", "x", "y"], ["z", "x", "y"]].to_numpy())
    np.testing.assert_array_equal(sp.load_hypothesis_space(matrix).to_numpy(), matrix.to_numpy())


def test_load_hypothesis_space_errors_name_file_and_task(tmp_path):
    tasks = ["x", "y", "z"]
    path = tmp_path / "groups.csv"
    frame(np.eye(3), tasks).to_csv(path)
    with pytest.raises(ValueError, match=r"groups\.csv.*'missing_task'"):
        sp.load_hypothesis_space(path, tasks=["x", "y", "missing_task"])
    wide = tmp_path / "wide.csv"
    pd.DataFrame(np.eye(3)[:2], index=["x", "y"], columns=tasks).to_csv(wide)
    with pytest.raises(ValueError, match=r"wide\.csv.*square.*'z'"):
        sp.load_hypothesis_space(wide)
    text = tmp_path / "text.csv"
    bad = frame(np.eye(3), tasks).astype(object)
    bad.loc["y", "z"] = "high"
    bad.to_csv(text)
    with pytest.raises(ValueError, match=r"text\.csv.*'high'.*'y'.*'z'"):
        sp.load_hypothesis_space(text)


def test_relation_labels_elementwise_and_as_matrix():
    meta = pd.DataFrame(
        {"phenomenon": ["A", "A", "B", "C"], "field": ["F", "F", "F", "G"]}, index=["a1", "a2", "b1", "c1"]
    )
    got = sp.relation_labels(["a1", "a1", "a1", "a1"], ["a1", "a2", "b1", "c1"], meta)
    assert list(got) == ["self", "same phenomenon", "same field", "other"]
    tasks = meta.index.to_numpy(dtype=object)
    matrix = sp.relation_labels(tasks[:, None], tasks[None, :], meta)
    assert matrix.shape == (4, 4) and (np.diag(matrix) == "self").all()
    same_p = (matrix == "self") | (matrix == "same phenomenon")
    np.testing.assert_array_equal(same_p, sp.hypothesis_space(meta, "phenomenon").to_numpy() == 1)
    assert matrix[2, 3] == "other" and matrix[1, 2] == "same field"
    assert set(sp.RELATIONS) >= set(matrix.ravel())
    with pytest.raises(ValueError, match="'zz'"):
        sp.relation_labels("a1", "zz", meta)
