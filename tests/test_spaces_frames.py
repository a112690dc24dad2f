"""Tests for taskspace_utils.spaces.frames: alignment, complete tasks, compared entries, constant checks."""

from __future__ import annotations

import numpy as np

from taskspace_utils import spaces as sp
from spaces_reference import meta, offdiag, planted  # noqa: F401 (meta, planted: fixtures)


def test_drop_incomplete_tasks(planted):
    space, _ = planted
    with_nan = space.copy()
    with_nan.iloc[2, :] = np.nan  # a normalised row with non-positive self-transfer
    with_nan.iloc[5, 7] = np.nan
    kept = sp.drop_incomplete_tasks(with_nan)
    assert space.index[2] not in kept.index and len(kept) == 10
    assert not np.isnan(offdiag(kept)).any()


def test_space_entries(planted):
    space, hyp = planted
    entries = sp.space_entries({"s": space, "h": hyp})
    assert len(entries) == 132
    row = entries.iloc[5]
    assert row["s"] == space.at[row["tuned"], row["evaluated"]] and row["tuned"] != row["evaluated"]


def test_varies_off_diagonal(meta):
    hyps = sp.hypothesis_spaces(meta)
    assert not sp.varies_off_diagonal(hyps["paradigm"])  # the identity: all 0 off the diagonal
    assert sp.varies_off_diagonal(hyps["phenomenon"]) and sp.varies_off_diagonal(hyps["field"].to_numpy())
    distinct = meta.groupby("phenomenon").head(1).index  # one task per phenomenon: all 0 off the diagonal
    assert not sp.varies_off_diagonal(hyps["phenomenon"].loc[distinct, distinct])
    values = hyps["phenomenon"].to_numpy().copy()
    values[0, 5] = np.nan
    assert sp.varies_off_diagonal(values) and not sp.varies_off_diagonal(values, complete=True)
    assert not sp.varies_off_diagonal(np.full((3, 3), np.nan)) and not sp.varies_off_diagonal(np.ones((1, 1)))


def test_drop_constant_spaces(meta, capsys):
    hyps = sp.hypothesis_spaces(meta)
    incomplete = hyps["field"].copy()
    incomplete.iloc[0, 1] = np.nan
    kept = sp.drop_constant_spaces({**hyps, "incomplete": incomplete})
    assert list(kept) == ["phenomenon", "field"]
    assert "left out: paradigm, incomplete" in capsys.readouterr().out
    distinct = list(meta.groupby("phenomenon").head(1).index)  # one task per phenomenon
    kept = sp.drop_constant_spaces(hyps, distinct, quiet=True)
    assert list(kept) == ["field"] and list(kept["field"].index) == distinct
    assert capsys.readouterr().out == ""
