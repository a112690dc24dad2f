"""Task x task frames: validation, alignment on common tasks and the compared entries.

A task space is a ``pandas.DataFrame`` of shape ``(n_tasks, n_tasks)``, index named ``"tuned"``
(source task t), columns named ``"evaluated"`` (target task u), float values. This module checks
that shape, restricts several spaces to the tasks they share, and picks the entries that every
statistic of :mod:`taskspace_utils.spaces` compares.

Entry convention used throughout: for a non-symmetric space both ordered entries ``(t, u)`` and
``(u, t)``, t != u, enter the comparison (``n (n - 1)`` values, row-major); when every matrix
involved is symmetric (``numpy.allclose``, rtol 1e-10, atol 1e-12, NaN equal) only the upper
triangle is used (``n (n - 1) / 2`` values). ``include_diagonal`` adds the ``n`` self entries.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

__all__ = [
    "check_space", "align_spaces", "drop_incomplete_tasks", "space_entries", "varies_off_diagonal", "drop_constant_spaces",
]


def _name_frame(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.astype(float)
    frame.index.name, frame.columns.name = "tuned", "evaluated"
    return frame


def check_space(space: pd.DataFrame, name: str = "space") -> pd.DataFrame:
    """Check that ``space`` is a square, numeric task x task frame; return it as float, columns
    in the order of the index. Raises ``ValueError`` naming ``name`` and the offending tasks."""
    if not isinstance(space, pd.DataFrame):
        raise TypeError(f"{name}: expected a pandas DataFrame (tasks x tasks), got {type(space).__name__}")
    if space.index.has_duplicates or space.columns.has_duplicates:
        dup = sorted(set(space.index[space.index.duplicated()]) | set(space.columns[space.columns.duplicated()]))
        raise ValueError(f"{name}: duplicated task labels {dup}")
    rows, cols = set(space.index), set(space.columns)
    if rows != cols:
        raise ValueError(
            f"{name}: not square over the same tasks; only as rows: {sorted(rows - cols)}, "
            f"only as columns: {sorted(cols - rows)}"
        )
    bad = [c for c in space.columns if not pd.api.types.is_numeric_dtype(space[c])]
    if bad:
        raise ValueError(f"{name}: non-numeric values in column(s) {bad}")
    return _name_frame(space.loc[:, list(space.index)])


def align_spaces(*spaces: pd.DataFrame, names: Sequence[str] | None = None) -> list[pd.DataFrame]:
    """Restrict every space to the tasks they all share, in the order of the first space.

    Raises ``ValueError`` if fewer than 3 tasks are shared (a rank correlation over the entries of
    a 2 x 2 matrix is meaningless), naming the shared tasks."""
    names = list(names) if names is not None else [f"space {i}" for i in range(len(spaces))]
    checked = [check_space(s, n) for s, n in zip(spaces, names)]
    common = set(checked[0].index)
    for s in checked[1:]:
        common &= set(s.index)
    tasks = [t for t in checked[0].index if t in common]
    if len(tasks) < 3:
        raise ValueError(f"{', '.join(names)} share only {len(tasks)} task(s) {tasks}; need at least 3")
    return [s.loc[tasks, tasks] for s in checked]


def drop_incomplete_tasks(space: pd.DataFrame) -> pd.DataFrame:
    """Drop, repeatedly, the task with the most NaN off-diagonal entries (row + column) until none
    is left; e.g. after :func:`~taskspace_utils.spaces.normalise_rows` turned rows with
    non-positive self-transfer to NaN."""
    space = check_space(space)
    while True:
        values = space.to_numpy().copy()
        np.fill_diagonal(values, 0.0)
        missing = np.isnan(values).sum(0) + np.isnan(values).sum(1)
        if missing.max(initial=0) == 0:
            return space
        drop = space.index[int(np.argmax(missing))]
        space = space.drop(index=drop, columns=drop)


def varies_off_diagonal(space: pd.DataFrame | np.ndarray, complete: bool = False) -> bool:
    """True if the off-diagonal entries of a square matrix take at least two distinct values.

    NaN entries are skipped (all NaN, or fewer than 2 tasks: False); with ``complete=True`` a
    single NaN off the diagonal also gives False. False means no correlation is defined over the
    compared entries, e.g. the paradigm hypothesis (the identity: all 0 off the diagonal) or the
    phenomenon hypothesis over tasks of distinct phenomena."""
    values = np.asarray(space, dtype=float)
    off = values[~np.eye(len(values), dtype=bool)]
    if complete and np.isnan(off).any():
        return False
    off = off[~np.isnan(off)]
    return bool(off.size and off.max() > off.min())


def drop_constant_spaces(spaces: Mapping[str, pd.DataFrame], tasks: Sequence[str] | None = None,
                         quiet: bool = False) -> dict[str, pd.DataFrame]:
    """The spaces (restricted to ``tasks``) whose off-diagonal entries are not all equal and have
    no NaN (:func:`varies_off_diagonal` with ``complete=True``): the ones a rank correlation can use
    as hypothesis or control (e.g. the phenomenon hypothesis over tasks of distinct phenomena is
    all 0 off the diagonal, and would make :func:`~taskspace_utils.spaces.compare_spaces` raise).
    Dropped names are printed unless ``quiet``."""
    kept, dropped = {}, []
    for name, space in spaces.items():
        frame = space.loc[list(tasks), list(tasks)] if tasks is not None else space
        if varies_off_diagonal(frame, complete=True):
            kept[name] = frame
        else:
            dropped.append(name)
    if dropped and not quiet:
        print(f"constant or incomplete off the diagonal over these tasks, left out: {', '.join(dropped)}")
    return kept


def _is_symmetric(values: np.ndarray) -> bool:
    return bool(np.allclose(values, values.T, equal_nan=True, rtol=1e-10, atol=1e-12))


def _entry_index(n: int, symmetric: bool, include_diagonal: bool) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of the compared entries (see the module docstring)."""
    if symmetric:
        return np.triu_indices(n, k=0 if include_diagonal else 1)
    keep = np.ones((n, n), bool) if include_diagonal else ~np.eye(n, dtype=bool)
    return np.nonzero(keep)


def space_entries(spaces: Mapping[str, pd.DataFrame], include_diagonal: bool = False) -> pd.DataFrame:
    """The compared entries of several spaces side by side (module-docstring convention, spaces
    aligned on common tasks): columns ``tuned``, ``evaluated`` and one column per named space."""
    aligned = align_spaces(*spaces.values(), names=list(spaces))
    values = [a.to_numpy() for a in aligned]
    rows, cols = _entry_index(len(values[0]), all(_is_symmetric(v) for v in values), include_diagonal)
    tasks = aligned[0].index.to_numpy()
    frame = pd.DataFrame({"tuned": tasks[rows], "evaluated": tasks[cols]})
    for name, v in zip(spaces, values):
        frame[name] = v[rows, cols]
    return frame


def _as_named(controls, prefix: str) -> dict[str, pd.DataFrame]:
    """``None``, one frame, a sequence or a mapping of frames as ``{name: frame}``
    (unnamed ones become ``f"{prefix}_{i}"``)."""
    if controls is None:
        return {}
    if isinstance(controls, pd.DataFrame):
        return {f"{prefix}_0": controls}
    if isinstance(controls, Mapping):
        return dict(controls)
    return {f"{prefix}_{i}": c for i, c in enumerate(controls)}


def _prepare(spaces: list[pd.DataFrame], include_diagonal: bool, names: list[str]):
    """Align ``spaces`` and take their compared entries.

    Returns ``(aligned frames, their arrays, symmetric, rows, cols, entry vectors)``. Raises
    ``ValueError`` naming the space if a vector holds NaN (with the tasks involved) or is constant
    (no correlation is defined)."""
    aligned = align_spaces(*spaces, names=names)
    values = [s.to_numpy() for s in aligned]
    symmetric = all(_is_symmetric(v) for v in values)
    rows, cols = _entry_index(len(aligned[0]), symmetric, include_diagonal)
    vectors = [v[rows, cols] for v in values]
    for name, vec in zip(names, vectors):
        if np.isnan(vec).any():
            bad = sorted({aligned[0].index[i] for i in np.concatenate([rows, cols])[np.tile(np.isnan(vec), 2)]})
            raise ValueError(
                f"{name}: {int(np.isnan(vec).sum())} NaN entries (tasks involved: {bad[:10]}"
                f"{' ...' if len(bad) > 10 else ''}); drop them first, e.g. with drop_incomplete_tasks"
            )
        if np.ptp(vec) == 0:
            raise ValueError(
                f"{name}: all compared entries are equal ({vec[0]}), so no correlation is defined "
                "(the paradigm hypothesis is the identity: its off-diagonal is all 0; use include_diagonal=True)"
            )
    return aligned, values, symmetric, rows, cols, vectors
