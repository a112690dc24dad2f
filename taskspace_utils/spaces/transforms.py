"""Transforming and summarising task spaces: normalisation, symmetry, reach of transfer, geometry.

- :func:`normalise_rows`: ``S'[t, u] = S[t, u] / S[t, t]`` (transfer relative to self-transfer).
- :func:`symmetrise`: ``(S + S^T) / 2``.
- :func:`generalisation_index`: how far transfer from a tuned paradigm reaches its phenomenon, its
  field and beyond, relative to self-transfer.
- :func:`task_distances`, :func:`embed_mds`: distances between tasks and their classical MDS.

Rows with a non-positive or NaN self-transfer ``S[t, t]`` become NaN wherever a ratio to it is
taken (with a warning counting them).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from .frames import _name_frame, check_space
from .hypotheses import RELATIONS, _metadata_for, relation_labels

__all__ = ["normalise_rows", "symmetrise", "generalisation_index", "task_distances", "embed_mds"]


def _nonpositive_diagonal(space: pd.DataFrame, what: str) -> np.ndarray:
    diag = np.diag(space.to_numpy())
    bad = ~(diag > 0)
    if bad.any():
        warnings.warn(
            f"{what}: {int(bad.sum())} task(s) with non-positive or NaN self-transfer set to NaN: "
            f"{list(space.index[bad])[:10]}",
            stacklevel=3,
        )
    return bad


def normalise_rows(space: pd.DataFrame) -> pd.DataFrame:
    """``S'[t, u] = S[t, u] / S[t, t]``: transfer relative to self-transfer (diagonal becomes 1).

    Rows whose self-transfer is <= 0 or NaN become NaN (warning with their count)."""
    space = check_space(space)
    bad = _nonpositive_diagonal(space, "normalise_rows")
    diag = np.diag(space.to_numpy()).copy()
    diag[bad] = np.nan
    return space.div(diag, axis=0)


def symmetrise(space: pd.DataFrame) -> pd.DataFrame:
    """``(S + S^T) / 2``: e.g. to compare a transfer space with a symmetric gradient space."""
    space = check_space(space)
    return _name_frame((space + space.T) / 2)


def generalisation_index(space: pd.DataFrame, metadata: pd.DataFrame) -> pd.DataFrame:
    """How far transfer from each tuned task reaches, relative to its self-transfer.

    For tuned task t with self-transfer ``d_t = S[t, t]``:

    - ``same_phenomenon = mean_{u != t, phen(u) = phen(t)} S[t, u] / d_t``
    - ``same_field = mean_{phen(u) != phen(t), field(u) = field(t)} S[t, u] / d_t``
    - ``other_field = mean_{field(u) != field(t)} S[t, u] / d_t``

    (the groups of :func:`~taskspace_utils.spaces.relation_labels`: ``same phenomenon``,
    ``same field``, ``other``).

    A group with no task (e.g. a phenomenon with one paradigm) gives NaN; if ``d_t <= 0`` (or NaN)
    the whole row is NaN (tuning did not help the task itself, so the ratio is meaningless) and a
    warning counts them. Returns a frame indexed by tuned task with columns ``phenomenon``,
    ``field``, ``self``, ``same_phenomenon``, ``same_field``, ``other_field``; ``.attrs["overall"]``
    holds the NaN-skipping means of the three ratios over tasks and ``.attrs["n_undefined"]`` the
    number of tasks with ``d_t <= 0``."""
    space = check_space(space)
    tasks = list(space.index)
    meta = _metadata_for(tasks, metadata)
    s = space.to_numpy()
    phen, field = meta["phenomenon"].to_numpy(dtype=object), meta["field"].to_numpy(dtype=object)
    bad = _nonpositive_diagonal(space, "generalisation_index")
    names = np.asarray(tasks, dtype=object)
    relation = relation_labels(names[:, None], names[None, :], meta)
    same_p, same_f, other_f = (relation == r for r in RELATIONS[1:])
    diag = np.diag(s).copy()
    diag[bad] = np.nan

    def group_mean(mask: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # empty groups -> NaN
            return np.nanmean(np.where(mask, s, np.nan), axis=1) / diag

    frame = pd.DataFrame(
        {
            "phenomenon": phen,
            "field": field,
            "self": np.diag(s),
            "same_phenomenon": group_mean(same_p),
            "same_field": group_mean(same_f),
            "other_field": group_mean(other_f),
        },
        index=pd.Index(tasks, name="tuned"),
    )
    frame.attrs["overall"] = frame[["same_phenomenon", "same_field", "other_field"]].mean().to_dict()
    frame.attrs["n_undefined"] = int(bad.sum())
    return frame


def task_distances(space: pd.DataFrame, kind: str = "correlation") -> pd.DataFrame:
    """Distances between tasks, from the symmetrised space ``A = (S + S^T) / 2``.

    ``kind="correlation"``: ``d(t, u) = 1 - corr(A[t, :], A[u, :])`` (Pearson of the two tasks'
    profiles, pairwise-complete for NaN); ``kind="similarity"``: ``d(t, u) = max_{v != w} A[v, w]
    - A[t, u]`` off the diagonal, 0 on it (high transfer = close). Symmetric, zero diagonal."""
    sym = symmetrise(space)
    if kind == "correlation":
        dist = 1.0 - sym.T.corr().to_numpy()
    elif kind == "similarity":
        a = sym.to_numpy()
        off = ~np.eye(len(a), dtype=bool)
        dist = np.nanmax(a[off]) - a
    else:
        raise ValueError(f"kind must be 'correlation' or 'similarity', got {kind!r}")
    dist = np.nan_to_num(np.clip(dist, 0.0, None), nan=np.nanmax(dist) if np.isfinite(dist).any() else 1.0)
    np.fill_diagonal(dist, 0.0)
    return _name_frame(pd.DataFrame((dist + dist.T) / 2, index=sym.index, columns=sym.columns))


def embed_mds(distances: pd.DataFrame, n_components: int = 2) -> pd.DataFrame:
    """Classical (Torgerson) MDS in numpy: ``B = -1/2 J D^2 J`` with ``J = I - 11^T / n``; the
    coordinates are the top eigenvectors of B scaled by ``sqrt(eigenvalue)`` (negative eigenvalues,
    from non-Euclidean distances, clipped to 0). Each axis's sign is fixed so that its
    largest-magnitude coordinate is positive. Returns tasks x ``mds1 .. mds{n_components}``;
    ``.attrs["eigenvalues"]`` holds all eigenvalues, largest first."""
    d = check_space(distances, "distances").to_numpy()
    n = len(d)
    centre = np.eye(n) - np.ones((n, n)) / n
    b = -0.5 * centre @ (d**2) @ centre
    eigval, eigvec = np.linalg.eigh((b + b.T) / 2)
    order = np.argsort(eigval)[::-1]
    eigval, eigvec = eigval[order], eigvec[:, order]
    coords = eigvec[:, :n_components] * np.sqrt(np.clip(eigval[:n_components], 0.0, None))
    signs = np.sign(coords[np.argmax(np.abs(coords), axis=0), np.arange(coords.shape[1])])
    coords = coords * np.where(signs == 0, 1.0, signs)
    out = pd.DataFrame(coords, index=distances.index, columns=[f"mds{k + 1}" for k in range(n_components)])
    out.attrs["eigenvalues"] = eigval.tolist()
    return out
