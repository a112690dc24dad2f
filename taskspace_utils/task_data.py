"""The data stage (notebook 01): seeded splits, task metadata, token alignment and the saved task data.

Notebook 01 builds the pairs frame of a unit (:mod:`taskspace_utils.data`: BLiMP or a user's
pairs), splits it per task with a seed (:func:`split_pairs`) and saves it in the unit's ``data/``
folder (:func:`save_task_data`, beside its ``config.json``). Every later stage reads the pairs
through :func:`stage_pairs`: the saved task data when notebook 01 ran, else a split made the same
way from the stated source, so a stage run on its own sees the same rule.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .encoding import encode
from .layout import unit_layout
from .results import atomic_write_parquet, ensure_run_config

__all__ = [
    "PairsError",
    "DataConfig",
    "split_pairs",
    "task_metadata",
    "token_alignment",
    "save_task_data",
    "load_task_data",
    "stage_pairs",
    "SMOKE_TASKS",
]


class PairsError(ValueError):
    """A minimal-pair file or frame is malformed; the message names the file and line."""


@dataclass
class DataConfig:
    """Settings of the data-building stage (notebook ``01_build_data``).

    Attributes:
        source: ``"blimp"`` for the bundled BLiMP, or a path to a user CSV/JSONL file or folder.
        tasks: restrict to these task names (``None``: all tasks).
        n_train: training pairs per task (drawn first from the seeded permutation).
        n_test: test pairs per task (drawn next; disjoint from the training pairs).
        seed: seed of the per-task permutation (same seed -> same split on any machine).
        strict: raise on invalid pairs (``True``) or drop them with a logged count (``False``).
    """

    source: str = "blimp"
    tasks: list[str] | None = None
    n_train: int = 100
    n_test: int = 100
    seed: int = 0
    strict: bool = True


def _task_seed(seed: int, task: str) -> int:
    """A per-task seed that does not depend on Python's salted ``hash``: sha256(seed, task)."""
    digest = hashlib.sha256(f"{int(seed)}:{task}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little")


def split_pairs(pairs: pd.DataFrame, n_train: int, n_test: int, seed: int = 0) -> pd.DataFrame:
    """Seeded per-task train/test split; returns the selected pairs with a ``split`` column.

    For each task, the pairs are ordered by ``pair_id`` and permuted with numpy's PCG64 generator
    seeded by ``sha256(f"{seed}:{task}")`` (platform independent); the first ``n_train`` go to
    ``"train"``, the next ``n_test`` to ``"test"``, the rest are left out. A task with fewer than
    ``n_train + n_test`` pairs raises a ``ValueError`` naming it. Rows come out ordered by task,
    split (train first) and permutation order.
    """
    if n_train < 0 or n_test < 0:
        raise ValueError(f"n_train and n_test must be >= 0, got {n_train}, {n_test}")
    parts = []
    for task, group in pairs.groupby("task", sort=True):
        if len(group) < n_train + n_test:
            raise ValueError(f"task {task!r} has {len(group)} pairs, fewer than n_train + n_test = {n_train + n_test}")
        group = group.sort_values("pair_id", kind="stable")
        order = np.random.Generator(np.random.PCG64(_task_seed(seed, str(task)))).permutation(len(group))
        chosen = group.iloc[order[: n_train + n_test]].copy()
        chosen["split"] = ["train"] * n_train + ["test"] * n_test
        parts.append(chosen)
    if not parts:
        raise ValueError("no pairs to split")
    return pd.concat(parts, ignore_index=True)


def task_metadata(pairs: pd.DataFrame) -> pd.DataFrame:
    """One row per task (index ``task``, sorted by field, phenomenon, task): ``phenomenon``,
    ``field`` and ``n_pairs``. A task whose pairs disagree on phenomenon or field raises."""
    grouped = pairs.groupby("task", sort=True)
    n_values = grouped[["phenomenon", "field"]].nunique(dropna=False)
    inconsistent = n_values[(n_values > 1).any(axis=1)]
    if len(inconsistent):
        raise PairsError(f"tasks with more than one phenomenon/field: {list(inconsistent.index)}")
    meta = grouped[["phenomenon", "field"]].first()
    meta["n_pairs"] = grouped.size()
    meta = meta.reset_index().sort_values(["field", "phenomenon", "task"]).set_index("task")
    return meta


def token_alignment(pairs: pd.DataFrame, tokenizer) -> pd.DataFrame:
    """Where the token sequences of ``good`` and ``bad`` differ, under ``tokenizer``.

    Sentences are tokenised as in :mod:`taskspace_utils.scoring` (as given, no special tokens, no
    added space; the BOS prefix is not counted). For token sequences ``g`` and ``b``:

    * ``prefix_len`` — length of the longest common prefix;
    * ``suffix_len`` — length of the longest common suffix of the remainders (so prefix and
      suffix never overlap);
    * ``n_good_tokens``, ``n_bad_tokens``;
    * ``good_diff``, ``bad_diff`` — number of tokens in the differing middle of each;
    * ``single_substitution`` — both middles are exactly one token (one aligned token swapped);
    * ``same_length`` — ``len(g) == len(b)``.

    The "critical tokens" of a sentence are those from ``prefix_len`` on (everything after the
    shared prefix). Returns a frame aligned with ``pairs`` (same index). The same columns as
    :meth:`taskspace_utils.encoding.EncodedPairs.alignment`, which it calls (one tokenisation).
    """
    return encode(tokenizer, pairs).alignment()


def save_task_data(pairs: pd.DataFrame, folder: str | os.PathLike, config: DataConfig | dict) -> Path:
    """Write ``pairs`` to ``folder/pairs.parquet`` beside ``folder/config.json`` (the config).

    The config is written first, or checked against the one already there
    (:func:`~taskspace_utils.results.ensure_run_config`: a different config raises, so two configs'
    data never mix); the pairs are written atomically.
    """
    folder = Path(folder)
    ensure_run_config(folder, config)
    return atomic_write_parquet(folder / "pairs.parquet", pairs, index=False)


def load_task_data(folder: str | os.PathLike) -> pd.DataFrame:
    """Read a pairs frame written by :func:`save_task_data`."""
    path = Path(folder) / "pairs.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no task data here (run notebooks/01_build_data.ipynb first)")
    return pd.read_parquet(path)


def stage_pairs(out_dir: str | os.PathLike, tasks: Sequence[str] | None = None, *, data_source: str = "blimp",
                n_train: int = 100, n_test: int = 100, seed: int = 0) -> tuple[pd.DataFrame, bool]:
    """The pairs a later stage of the unit in ``out_dir`` works on, and whether they are saved ones.

    When notebook 01 saved the unit's task data (``data/pairs.parquet``), those pairs (only the
    ``tasks`` given; all when ``None``), and ``True``. Otherwise the pairs of ``data_source``
    (``"blimp"`` or a path for :func:`taskspace_utils.data.load_pairs`) split here with
    :func:`split_pairs` (``n_train``, ``n_test``, ``seed``), and ``False``. Unknown ``tasks``
    raise a ``KeyError`` naming them.
    """
    from .data import load_source  # data imports this module at its top

    layout = unit_layout(out_dir)
    saved = layout.pairs.exists()
    if not saved:
        pairs = split_pairs(load_source(data_source, tasks), n_train=n_train, n_test=n_test, seed=seed)
        return pairs, saved
    pairs = load_task_data(layout.data)
    if tasks is not None:
        missing = sorted(set(tasks) - set(pairs["task"]))
        if missing:
            raise KeyError(f"task(s) {missing} are not in {layout.pairs}")
        pairs = pairs[pairs["task"].isin(list(tasks))]
    return pairs, saved


#: The tasks every notebook's ``smoke=True`` setting uses when none are given (two paradigms of
#: one phenomenon and one of another, so within- and across-phenomenon transfer both exist); the
#: smoke profile of ``profiles.yaml`` names the same three.
SMOKE_TASKS = ("anaphor_gender_agreement", "anaphor_number_agreement", "npi_present_1")
