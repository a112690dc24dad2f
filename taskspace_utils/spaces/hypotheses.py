"""Hypothesis spaces: which tasks *should* be close, from task metadata or a user's matrix.

A hypothesis space has the shape of a task space (:mod:`taskspace_utils.spaces.frames`) and says
which tasks should be close: ``H[t, u] = 1`` if t and u share a label (paradigm, phenomenon or
field), 0 otherwise, or any graded similarity read from a file. Metadata is a frame indexed by
task with columns ``phenomenon`` and ``field`` (e.g. :func:`taskspace_utils.data.task_metadata`).

:func:`relation_labels` is the one place that names how two tasks relate (``self``, ``same
phenomenon``, ``same field`` = same field but another phenomenon, ``other`` = another field); the
generalisation index, the widgets and the plots group entries by it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .frames import _name_frame

__all__ = ["LEVELS", "RELATIONS", "relation_labels", "hypothesis_space", "hypothesis_spaces", "load_hypothesis_space"]

LEVELS = ("paradigm", "phenomenon", "field")
#: How a tuned task relates to an evaluated one, closest first (see :func:`relation_labels`).
RELATIONS = ("self", "same phenomenon", "same field", "other")


def _metadata_for(tasks: Sequence[str], metadata: pd.DataFrame) -> pd.DataFrame:
    needed = {"phenomenon", "field"}
    if not needed <= set(metadata.columns):
        raise ValueError(f"metadata: needs columns {sorted(needed)}, has {list(metadata.columns)}")
    missing = [t for t in tasks if t not in metadata.index]
    if missing:
        raise ValueError(f"metadata has no row for task(s) {missing}")
    return metadata.loc[list(tasks), ["phenomenon", "field"]]


def relation_labels(tuned, evaluated, metadata: pd.DataFrame) -> np.ndarray:
    """How each tuned task relates to its evaluated task: one of :data:`RELATIONS`.

    ``tuned`` and ``evaluated`` are task names (scalars or arrays, broadcast against each other
    as numpy does: ``relation_labels(tasks[:, None], tasks[None, :], meta)`` labels a whole
    task x task matrix). The first that holds: ``"self"`` (t == u), ``"same phenomenon"``,
    ``"same field"`` (same field, another phenomenon), ``"other"`` (another field). Raises
    ``ValueError`` if ``metadata`` lacks a task or the ``phenomenon``/``field`` columns."""
    tuned, evaluated = np.broadcast_arrays(np.asarray(tuned, dtype=object), np.asarray(evaluated, dtype=object))
    tasks = list(dict.fromkeys([*tuned.ravel(), *evaluated.ravel()]))
    meta = _metadata_for(tasks, metadata)
    position = {t: i for i, t in enumerate(tasks)}

    def label(column: str, names: np.ndarray) -> np.ndarray:
        values = meta[column].to_numpy(dtype=object)
        return values[[position[t] for t in names.ravel()]].reshape(names.shape)

    same_p = label("phenomenon", tuned) == label("phenomenon", evaluated)
    same_f = label("field", tuned) == label("field", evaluated)
    return np.where(
        tuned == evaluated, RELATIONS[0], np.where(same_p, RELATIONS[1], np.where(same_f, RELATIONS[2], RELATIONS[3]))
    )


def hypothesis_space(metadata: pd.DataFrame, level: str = "phenomenon") -> pd.DataFrame:
    """Binary hypothesis space ``H[t, u] = 1 if label(t) == label(u) else 0``.

    ``level`` is ``"paradigm"`` (each task its own group: the identity matrix), ``"phenomenon"`` or
    ``"field"`` (the metadata column). Tasks in the order of ``metadata.index``."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    tasks = list(metadata.index)
    labels = np.asarray(tasks if level == "paradigm" else _metadata_for(tasks, metadata)[level], dtype=object)
    values = (labels[:, None] == labels[None, :]).astype(float)
    return _name_frame(pd.DataFrame(values, index=tasks, columns=tasks))


def hypothesis_spaces(metadata: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """All metadata hypotheses: ``{"paradigm": ..., "phenomenon": ..., "field": ...}``."""
    return {level: hypothesis_space(metadata, level) for level in LEVELS}


def load_hypothesis_space(
    path_or_frame: str | Path | pd.DataFrame, tasks: Sequence[str] | None = None
) -> pd.DataFrame:
    """Read a user-supplied task x task hypothesis (CSV: first column and header row are task
    names), validate it and return it restricted to ``tasks`` (in that order) if given.

    Errors (``ValueError``, naming the file and the task): not square over the same tasks,
    a non-numeric or missing value (with its row and column), a task of ``tasks`` absent."""
    if isinstance(path_or_frame, pd.DataFrame):
        source, frame = "hypothesis frame", path_or_frame.copy()
    else:
        source = str(path_or_frame)
        frame = pd.read_csv(path_or_frame, index_col=0)
    frame.index = frame.index.map(str)
    frame.columns = frame.columns.map(str)
    rows, cols = set(frame.index), set(frame.columns)
    if rows != cols or frame.index.has_duplicates or frame.columns.has_duplicates:
        raise ValueError(
            f"{source}: hypothesis must be a square matrix over the same tasks; only as rows: "
            f"{sorted(rows - cols)}, only as columns: {sorted(cols - rows)}, "
            f"duplicated: {sorted(set(frame.index[frame.index.duplicated()]))}"
        )
    numeric = frame.apply(pd.to_numeric, errors="coerce")
    bad = numeric.isna().to_numpy()
    if bad.any():
        i, j = map(int, np.argwhere(bad)[0])
        raise ValueError(
            f"{source}: non-numeric or missing value {frame.iat[i, j]!r} at row (task) "
            f"{frame.index[i]!r}, column (task) {frame.columns[j]!r} ({int(bad.sum())} such value(s))"
        )
    numeric = numeric.loc[:, list(numeric.index)]
    if tasks is not None:
        missing = [t for t in tasks if t not in rows]
        if missing:
            raise ValueError(f"{source}: hypothesis has no row/column for task(s) {missing}")
        numeric = numeric.loc[list(tasks), list(tasks)]
    return _name_frame(numeric)
