"""A second probing seed and its agreement with the first: :func:`resplit_pairs`, :func:`compare_seeds`.

Agreement per metric: Spearman of the off-diagonal entries of the two spaces (both ordered pairs)
with a label-permutation p-value (:func:`taskspace_utils.spaces.compare_spaces`, one-sided), and
Pearson of the two self-transfer vectors (the diagonals).
"""

from __future__ import annotations


import numpy as np
import pandas as pd

from ..data import split_pairs
from ..spaces import compare_spaces, varies_off_diagonal
from .probe import METRICS, TransferResult

__all__ = ["resplit_pairs", "compare_seeds"]


def resplit_pairs(pairs: pd.DataFrame, seed: int) -> pd.DataFrame:
    """The same pairs, re-split into train/test with another seed (for a second probing seed).

    Every task keeps its numbers of train and test pairs; which pairs go where is redrawn with
    :func:`taskspace_utils.data.split_pairs` (per task, seeded by ``sha256(seed, task)``). Works on
    any pairs frame with a ``split`` column, e.g. the one notebook 01 saved, or a user's pair set.
    """
    if "split" not in pairs.columns:
        raise ValueError("resplit_pairs: pairs need a 'split' column (train/test)")
    parts = []
    for task, group in pairs.groupby("task", sort=True):
        n_train, n_test = int((group["split"] == "train").sum()), int((group["split"] == "test").sum())
        frame = group[group["split"].isin(["train", "test"])].drop(columns="split")
        if "pair_id" not in frame.columns:
            frame = frame.assign(pair_id=np.arange(len(frame)))
        parts.append(split_pairs(frame, n_train, n_test, seed=int(seed)))
    return pd.concat(parts, ignore_index=True)



def compare_seeds(first: TransferResult, second: TransferResult, n_permutations: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Agreement of two probes of the same model (e.g. two probing seeds), per metric.

    One row per metric (``accuracy``, ``margin``): ``spearman`` of the off-diagonal entries (both
    ordered pairs) with its label-permutation ``p_value``
    (:func:`taskspace_utils.spaces.compare_spaces`, one-sided), ``self_pearson``: Pearson of the
    two self-transfer vectors, and ``n_tasks``. A metric whose off-diagonal entries are constant in
    either probe (few test pairs: accuracy changes are multiples of ``1 / n_test``) gets NaN."""
    rows = []
    for metric in METRICS:
        a, b = first.space(metric), second.space(metric)
        tasks = [t for t in a.index if t in set(b.index) and t in set(a.columns) and t in set(b.columns)]
        a, b = a.loc[tasks, tasks], b.loc[tasks, tasks]
        row = {"metric": metric, "spearman": np.nan, "p_value": np.nan, "self_pearson": np.nan, "n_tasks": len(tasks)}
        if varies_off_diagonal(a, complete=True) and varies_off_diagonal(b, complete=True) and len(tasks) >= 3:
            result = compare_spaces(a, b, n_permutations=n_permutations, seed=seed)
            row |= {"spearman": result.statistic, "p_value": result.p_value}
        da, db = np.diag(a.to_numpy()), np.diag(b.to_numpy())
        if len(tasks) >= 2 and np.ptp(da) > 0 and np.ptp(db) > 0:
            row["self_pearson"] = float(np.corrcoef(da, db)[0, 1])
        rows.append(row)
    return pd.DataFrame(rows).set_index("metric")
