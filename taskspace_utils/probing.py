"""Similarity probing: the transfer task space (Weber et al. 2024, the paper's similarity probing).

What it computes
----------------
For a set of tasks with train/test minimal pairs (Weber, Jumelet, Bruni & Hupkes, ACL 2024):

1. ``eval1``: score every evaluated task's test pairs with the untuned model;
2. for each tuned task t: FTGD-tune on t's training pairs (:func:`taskspace_utils.ftgd.tune_task`,
   the model is restored bitwise afterwards), ``eval2``: score every evaluated task's test pairs
   with the tuned model (the sparse delta applied, then reverted);
3. the transfer ``T[t, u] = eval2_t(u) - eval1(u)``, kept in two metrics:

       accuracy:  T_acc[t, u]    = acc_t(u) - acc(u)         acc = mean_i [m_i > 0]  (ties wrong)
       margin:    T_margin[t, u] = mbar_t(u) - mbar(u)       mbar = mean_i m_i, in nats

   with ``m_i = log p(good_i) - log p(bad_i)`` in the convention of :mod:`.scoring` (BOS prefix,
   sum of token log-probabilities). The diagonal is the self-transfer; the normalised variant
   ``T[t, u] / T[t, t]`` (:meth:`TransferResult.space`, via
   :func:`taskspace_utils.spaces.normalise_rows`) keeps tasks that are easy to tune from
   dominating.

Beyond the paper: the **first-order prediction** of transfer. Tuning t moves the parameters by
``delta_t`` (the masked FTGD update); to first order the mean margin of task u moves by

       P[t, u] = < D_u , delta_t >        (D_u: task u's differential, grad of its mean margin)

(:func:`first_order_prediction`); comparing ``P`` with ``T_margin``
(:func:`taskspace_utils.spaces.compare_prediction`) says how much of the measured transfer is the
linear overlap of the two tasks' gradients and how much comes from curvature / the optimiser.

Speed: the evaluation dominates (a 67-task space scores 67 x 13,400 sentences). The test pairs are
tokenised, de-duplicated and collated once (:func:`prepare_evaluation`) and the batches reused
for every evaluation; the tokens of the common prefix of a pair are not sent through the LM head
(their log-probabilities are identical in good and bad, so they cancel exactly in the margin).

Files (``out_dir``; every file written atomically, the run resumes at the next unfinished task):

==================================  =========================================================
``transfer_config.json``            the :class:`ProbingConfig`, tasks, pair counts and hash,
                                    ``run_info`` (e.g. the model); another config refuses
``eval_baseline.json``              ``eval1`` per evaluated task (exact floats, reused on resume)
``transfer_rows/<task>.json``       one finished tuned task: ``eval2``, both transfer rows, timings
``transfer_deltas/<task>.safetensors``  its :class:`~taskspace_utils.ftgd.SparseDelta` (``save_deltas``)
``task_space_transfer.csv``         ``T_acc`` (rows: tuned task, columns: evaluated task)
``task_space_transfer_margin.csv``  ``T_margin``
``eval_baseline.csv``               ``eval1``: accuracy, mean margin, ties, pairs per task
``transfer_timings.csv``            per tuned task: seconds tuning / evaluating, entries changed
==================================  =========================================================

Public functions
----------------
- :class:`ProbingConfig`: every setting (with an embedded :class:`~taskspace_utils.ftgd.FTGDConfig`).
- :func:`probe_transfer` -> :class:`TransferResult`; :func:`load_transfer`: read a run folder back.
- :func:`prepare_evaluation` (:class:`PreparedEvaluation`): the reusable, pre-collated test set.
- :func:`first_order_prediction`, :func:`differential_store`, :func:`load_transfer_deltas`.
- :func:`resplit_pairs`, :func:`compare_seeds`: a second probing seed and its agreement with the first.
- :func:`drop_constant_spaces`: keep the spaces a rank correlation can use (before statistics).
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .data import common_prefix_len, split_pairs
from .ftgd import FTGDConfig, SparseDelta, applied, tune_task
from .results import atomic_write_csv, atomic_write_json, ensure_run_config, read_json
from .scoring import (
    DEFAULT_BATCH_TOKENS,
    DEFAULT_TREE_ROW_TOKENS,
    build_prefix_tree_rows,
    collate_prefix_tree,
    collate_token_ids,
    iter_prefix_tree_batches,
    prefix_token_id,
    prefix_tree_sums,
    supports_prefix_tree,
    token_logprob_sums,
    tokenize_sentences,
)
from .spaces import normalise_rows

__all__ = [
    "METRICS",
    "ProbingConfig",
    "PreparedEvaluation",
    "TransferResult",
    "prepare_evaluation",
    "select_pairs",
    "probe_transfer",
    "load_transfer",
    "load_transfer_deltas",
    "differential_store",
    "first_order_prediction",
    "resplit_pairs",
    "compare_seeds",
    "drop_constant_spaces",
]

#: The two transfer metrics kept for every entry.
METRICS = ("accuracy", "margin")
CONFIG_FILE = "transfer_config.json"
BASELINE_FILE = "eval_baseline.json"
ROWS_DIR = "transfer_rows"
BASELINE_COLUMNS = ["accuracy", "mean_margin", "ties", "n_pairs"]
DELTAS_DIR = "transfer_deltas"
#: FTGD defaults of the probing stage (see :class:`ProbingConfig`): the FTGD stage's k and lr,
#: fewer and larger steps than its 50 x 16 (20 steps x 20 pairs = 400 pair presentations = 4
#: epochs of 100 training pairs), as in the issue's feasibility probe.
PROBING_FTGD = FTGDConfig(steps=20, batch_size=20, lr=1e-3, k=0.01)


@dataclass(frozen=True)
class ProbingConfig:
    """Settings of one transfer probe (notebook ``04_similarity_probing``).

    Attributes:
        tasks: tuned tasks, in order (``None``: every task of the pairs, sorted).
        eval_tasks: evaluated tasks, the columns of the space (``None``: the same as ``tasks``,
            giving a square space that :mod:`.spaces` can compare with hypotheses).
        n_train: at most this many training pairs per tuned task (the first ``n_train`` rows of
            its ``split == "train"`` pairs; all of them when it has fewer). Pairs without a
            ``split`` column are split here with :func:`taskspace_utils.data.split_pairs` and
            ``seed``.
        n_test: at most this many test pairs per evaluated task (same rule).
        seed: the probing seed: the FTGD seed (batch order; ``ftgd.seed`` is replaced by it) and,
            for pairs without a ``split`` column, the split seed. A second seed
            (:func:`resplit_pairs` + another ``seed``) tells how stable the space is.
        ftgd: the FTGD settings of every tuned task (:class:`~taskspace_utils.ftgd.FTGDConfig`).
            Default :data:`PROBING_FTGD`: ``k=0.01`` (top 1 % of ``|D_t|``), Adam at ``lr=1e-3``
            on the margin, ``steps=20`` of ``batch_size=20`` pairs (400 pair presentations, half
            the FTGD stage's 50 x 16). Measured (``benchmarks/bench_probing.py --sweep``: trained
            ``tiny-s``, 6 tasks from 3 phenomena, 100 train / 100 test pairs; mean self-transfer in
            accuracy / margin, mean accuracy change on the other phenomena): 50 x 16: +0.20 /
            +32.6 nats / -0.040; 20 x 20: +0.17 / +10.9 / -0.022; 10 x 20: +0.14 / +5.2 / -0.014;
            20 x 20 at lr 3e-3: +0.21 / +33.9 / -0.044. 20 x 20 keeps 83 % of the accuracy gain of
            50 x 16 with half its collateral change on unrelated tasks, and transfer within the
            phenomenon stays clearly positive (+0.58 nats vs. -0.05 to other phenomena). Tuning
            is a small part of the cost (the evaluation of every test pair after each tuned task
            dominates: on ``tiny-m`` about 2.5 vs. 17 CPU s per tuned task).
        batch_tokens: padded tokens per evaluation batch (:data:`~taskspace_utils.scoring.DEFAULT_BATCH_TOKENS`).
        save_deltas: keep every tuned task's sparse delta in ``transfer_deltas/`` (needed by
            :func:`first_order_prediction`; ``tiny-m``: 1 % of 4.9M entries, about 0.8 MB a task).
    """

    tasks: tuple[str, ...] | None = None
    eval_tasks: tuple[str, ...] | None = None
    n_train: int = 100
    n_test: int = 100
    seed: int = 0
    ftgd: FTGDConfig = PROBING_FTGD
    batch_tokens: int = DEFAULT_BATCH_TOKENS
    save_deltas: bool = True

    def __post_init__(self):
        for name in ("tasks", "eval_tasks"):
            value = getattr(self, name)
            if value is not None:
                if isinstance(value, str):
                    raise TypeError(f"ProbingConfig.{name}={value!r}: a list of task names, not one string")
                value = tuple(str(t) for t in value)
                if len(set(value)) != len(value):
                    raise ValueError(f"ProbingConfig.{name}: duplicated tasks {sorted({t for t in value if value.count(t) > 1})}")
                if not value:
                    raise ValueError(f"ProbingConfig.{name}: empty (use None for all tasks)")
                object.__setattr__(self, name, value)
        if isinstance(self.ftgd, Mapping):
            object.__setattr__(self, "ftgd", FTGDConfig(**self.ftgd))
        if int(self.n_train) < 1 or int(self.n_test) < 1:
            raise ValueError(f"ProbingConfig: n_train={self.n_train}, n_test={self.n_test} must be >= 1")
        if int(self.batch_tokens) < 1:
            raise ValueError(f"ProbingConfig.batch_tokens={self.batch_tokens} must be >= 1")

    def replace(self, **changes) -> "ProbingConfig":
        """A copy with some fields changed (``config.replace(seed=1)``)."""
        return dataclasses.replace(self, **changes)

    @property
    def tuning(self) -> FTGDConfig:
        """The FTGD config actually used: ``ftgd`` with ``seed`` set to the probing seed."""
        return self.ftgd.replace(seed=int(self.seed))


# ------------------------------------------------------------------------------ the test set, once
@dataclass
class PreparedEvaluation:
    """Test pairs tokenised, de-duplicated and collated once, scored many times.

    A *row* is a unique ``(token ids, start)``: a sentence scored from its token ``start`` on, where
    ``start`` is the length of the common token prefix of its pair (those tokens have the same
    context in good and bad, so their log-probabilities cancel exactly in the margin and need no LM
    head). A sentence with nothing after the prefix (identical pairs, or one sentence a prefix of
    the other) gets no row and contributes 0, so identical pairs tie exactly, as in
    :func:`taskspace_utils.scoring.score_pairs`.

    Attributes:
        tasks: evaluated tasks in output order.
        pair_task: ``[N]`` task index of every pair (into ``tasks``).
        good_row, bad_row: ``[N]`` row of each pair's good / bad sentence (``-1``: none).
        batches: ``(row indices, collated batch)`` with ``score_mask`` True on the scored tokens
            (padded rows, for models without prefix-tree support).
        tree_batches: the same rows packed as prefix trees
            (:func:`taskspace_utils.scoring.collate_prefix_tree`, membership restricted to each
            row's scored tokens), used by :meth:`margins` whenever
            :func:`~taskspace_utils.scoring.supports_prefix_tree` holds for the model: rows that
            share a beginning (a pair's two sentences, paradigms built from one template) go
            through the model once for it. ``None`` with ``packing="padded"``.
        n_rows: unique scored rows; ``n_tokens``: tokens fed per evaluation (prefix included, no
            padding); ``n_scored``: tokens through the LM head per evaluation (padded packing);
            ``n_tree_tokens`` / ``n_tree_scored``: the same with prefix-tree packing (positions
            fed, padding excluded; distinct nodes through the head).
    """

    tasks: list[str]
    pair_task: np.ndarray
    good_row: np.ndarray
    bad_row: np.ndarray
    batches: list[tuple[np.ndarray, dict]]
    n_rows: int
    n_tokens: int
    n_scored: int
    tree_batches: list[tuple[np.ndarray, dict]] | None = None
    n_tree_tokens: int = 0
    n_tree_scored: int = 0
    _device: torch.device | None = field(default=None, repr=False)

    @property
    def n_pairs(self) -> int:
        return len(self.pair_task)

    def uses_tree(self, model) -> bool:
        """Whether :meth:`margins` packs ``model``'s inputs as prefix trees."""
        return self.tree_batches is not None and supports_prefix_tree(model)

    def _on(self, device: torch.device) -> None:
        if self._device != device:
            self.batches = [(idx, {k: v.to(device) for k, v in b.items()}) for idx, b in self.batches]
            if self.tree_batches is not None:
                self.tree_batches = [(idx, {k: v.to(device) for k, v in b.items()}) for idx, b in self.tree_batches]
            self._device = device

    def margins(self, model) -> np.ndarray:
        """``[N]`` float64 margins ``log p(good) - log p(bad)`` of every pair under ``model``
        (eval mode, no gradient; the model's mode is restored)."""
        device = next(model.parameters()).device
        lp = np.zeros(self.n_rows, dtype=np.float64)
        was_training = model.training
        model.eval()
        try:
            self._on(device)
            with torch.inference_mode():
                if self.uses_tree(model):
                    for idx, batch in self.tree_batches:
                        lp[idx] = prefix_tree_sums(model, batch, len(idx)).double().cpu().numpy()
                else:
                    for idx, batch in self.batches:
                        lp[idx] = token_logprob_sums(model, batch).double().cpu().numpy()
        finally:
            model.train(was_training)
        good = np.where(self.good_row >= 0, lp[np.maximum(self.good_row, 0)], 0.0)
        bad = np.where(self.bad_row >= 0, lp[np.maximum(self.bad_row, 0)], 0.0)
        return good - bad

    def summarise(self, margins: np.ndarray) -> pd.DataFrame:
        """Per task: ``accuracy`` (mean of ``margin > 0``; ties count as wrong), ``mean_margin``,
        ``ties`` (``margin == 0``) and ``n_pairs``; index ``task`` in the order of ``tasks``."""
        k = len(self.tasks)
        n = np.bincount(self.pair_task, minlength=k).astype(float)
        correct = np.bincount(self.pair_task, weights=(margins > 0).astype(float), minlength=k)
        total = np.bincount(self.pair_task, weights=margins, minlength=k)
        ties = np.bincount(self.pair_task, weights=(margins == 0).astype(float), minlength=k)
        return pd.DataFrame({"accuracy": correct / n, "mean_margin": total / n, "ties": ties.astype(int),
                             "n_pairs": n.astype(int)}, index=pd.Index(self.tasks, name="task"))

    def evaluate(self, model) -> pd.DataFrame:
        """:meth:`summarise` of :meth:`margins`: the per-task scores of ``model``."""
        return self.summarise(self.margins(model))


def prepare_evaluation(tokenizer, test_pairs: pd.DataFrame, tasks: Sequence[str] | None = None,
                       batch_tokens: int = DEFAULT_BATCH_TOKENS, packing: str = "auto") -> PreparedEvaluation:
    """Tokenise, de-duplicate and collate the test pairs once (see :class:`PreparedEvaluation`).

    Args:
        test_pairs: frame with ``task``, ``good``, ``bad`` (every row is evaluated).
        tasks: output order of the tasks (default: sorted); every task must have pairs.
        batch_tokens: rows sorted by length (longest first) fill batches of at most this many
            padded tokens (``[B, L]`` with ``B * L <= batch_tokens``, at least one row); the
            prefix-tree batches hold at most this many positions too.
        packing: ``"auto"`` (default) also packs the rows as prefix trees, used for models that
            support them (measured on ``tiny-m``, 67 tasks x 100 test pairs: see
            ``benchmarks/bench_probing.py``); ``"padded"`` never does.

    Scores equal :func:`taskspace_utils.scoring.score_pairs` margins up to float rounding
    (tested); building takes well under a second for 13,400 sentences.
    """
    missing = {"task", "good", "bad"} - set(test_pairs.columns)
    if missing:
        raise ValueError(f"prepare_evaluation: test pairs lack column(s) {sorted(missing)}")
    present = sorted(test_pairs["task"].astype(str).unique())
    tasks = list(tasks) if tasks is not None else present
    absent = [t for t in tasks if t not in set(present)]
    if absent:
        raise KeyError(f"prepare_evaluation: no test pairs for task(s) {absent}")
    test_pairs = test_pairs[test_pairs["task"].astype(str).isin(tasks)]
    position = {t: i for i, t in enumerate(tasks)}
    pair_task = test_pairs["task"].astype(str).map(position).to_numpy(dtype=np.int64)
    goods = tokenize_sentences(tokenizer, list(test_pairs["good"].astype(str)))
    bads = tokenize_sentences(tokenizer, list(test_pairs["bad"].astype(str)))
    empty = [i for i, (g, b) in enumerate(zip(goods, bads)) if not g or not b]
    if empty:
        raise ValueError(f"prepare_evaluation: pairs at positions {empty[:5]} have a sentence with no tokens")
    keys: dict[tuple[tuple[int, ...], int], int] = {}
    good_row = np.full(len(goods), -1, dtype=np.int64)
    bad_row = np.full(len(goods), -1, dtype=np.int64)
    for i, (g, b) in enumerate(zip(goods, bads)):
        start = common_prefix_len(g, b)
        for ids, out in ((g, good_row), (b, bad_row)):
            if len(ids) > start:
                out[i] = keys.setdefault((tuple(ids), start), len(keys))
    rows = list(keys)
    prefix = prefix_token_id(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else prefix
    lengths = np.array([len(ids) for ids, _ in rows], dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    batches, begin = [], 0
    while begin < len(order):
        stop = begin + max(1, int(batch_tokens) // (int(lengths[order[begin]]) + 1))
        index = order[begin:stop]
        batch = collate_token_ids([list(rows[r][0]) for r in index], prefix, pad)
        for j, r in enumerate(index):  # score tokens start..n-1 only: collated positions 1+start..n
            batch["score_mask"][j, : 1 + rows[r][1]] = False
        batches.append((index, batch))
        begin = stop
    n_scored = int(sum(len(ids) - s for ids, s in rows))
    if packing not in ("auto", "padded"):
        raise ValueError(f"packing={packing!r}: use 'auto' or 'padded'")
    tree_batches, n_tree_tokens, n_tree_scored = None, 0, 0
    if packing == "auto" and rows:
        tree = build_prefix_tree_rows([ids for ids, _ in rows], DEFAULT_TREE_ROW_TOKENS)
        starts = np.array([start for _, start in rows], dtype=np.int64)
        tree_batches = []
        for tree_rows, index in iter_prefix_tree_batches(tree, batch_tokens):
            # membership from each row's `start`: the common-prefix nodes of a pair get no LM head
            batch = collate_prefix_tree(tree, tree_rows, prefix, pad, sentences=index,
                                        sentence_ranges=(starts[index], lengths[index]))
            tree_batches.append((index, batch))
            n_tree_tokens += sum(1 + len(tree["tokens"][r]) for r in tree_rows)
            n_tree_scored += len(batch["node_row"])
    return PreparedEvaluation(tasks, pair_task, good_row, bad_row, batches, len(rows),
                              int(lengths.sum() + len(rows)), n_scored, tree_batches, n_tree_tokens, n_tree_scored)


# --------------------------------------------------------------------------------- the pairs used
def select_pairs(pairs: pd.DataFrame, config: ProbingConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(train, test)`` pairs of a probe: the first ``n_train`` training rows of every tuned task
    and the first ``n_test`` test rows of every evaluated task (fewer when a task has fewer).

    Pairs without a ``split`` column are split here (``split_pairs`` with ``config.seed``, as many
    pairs as each task allows up to ``n_train + n_test``). Raises ``KeyError`` naming a task with
    no training (tuned) or no test (evaluated) pairs."""
    missing = {"task", "good", "bad"} - set(pairs.columns)
    if missing:
        raise ValueError(f"pairs lack column(s) {sorted(missing)}")
    pairs = pairs.assign(task=pairs["task"].astype(str))
    tasks, eval_tasks = _task_lists(pairs, config)
    wanted = set(tasks) | set(eval_tasks)
    pairs = pairs[pairs["task"].isin(wanted)]
    if "split" not in pairs.columns:
        if "pair_id" not in pairs.columns:
            pairs = pairs.assign(pair_id=pairs.groupby("task").cumcount())
        smallest = int(pairs.groupby("task").size().min())
        n_train = min(int(config.n_train), max(1, smallest // 2))
        n_test = min(int(config.n_test), smallest - n_train)
        pairs = split_pairs(pairs, n_train, n_test, seed=int(config.seed))
    train = pairs[(pairs["split"] == "train") & pairs["task"].isin(tasks)]
    test = pairs[(pairs["split"] == "test") & pairs["task"].isin(eval_tasks)]
    train = train.groupby("task", sort=True, group_keys=False).head(int(config.n_train))
    test = test.groupby("task", sort=True, group_keys=False).head(int(config.n_test))
    no_train = [t for t in tasks if t not in set(train["task"])]
    no_test = [t for t in eval_tasks if t not in set(test["task"])]
    if no_train or no_test:
        raise KeyError(f"probe_transfer: tuned task(s) without training pairs {no_train}, "
                       f"evaluated task(s) without test pairs {no_test}")
    return train, test


def _task_lists(pairs: pd.DataFrame, config: ProbingConfig) -> tuple[list[str], list[str]]:
    available = sorted(pairs["task"].astype(str).unique())
    tasks = list(config.tasks) if config.tasks is not None else available
    eval_tasks = list(config.eval_tasks) if config.eval_tasks is not None else tasks
    unknown = sorted(set(tasks + eval_tasks) - set(available))
    if unknown:
        raise KeyError(f"probe_transfer: task(s) {unknown} not in the pairs")
    return tasks, eval_tasks


def _pairs_hash(frame: pd.DataFrame) -> str:
    text = "\n".join(f"{t}\t{g}\t{b}" for t, g, b in zip(frame["task"], frame["good"].astype(str), frame["bad"].astype(str)))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


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


# --------------------------------------------------------------------------------------- results
@dataclass
class TransferResult:
    """A transfer space and what it was made from.

    Attributes:
        accuracy: ``T_acc`` (index ``tuned``, columns ``evaluated``; accuracy points as fractions).
        margin: ``T_margin`` (nats of mean margin).
        baseline: ``eval1`` per evaluated task (``accuracy``, ``mean_margin``, ``ties``, ``n_pairs``).
        timings: per tuned task ``tune_seconds``, ``eval_seconds``, ``n_changed``, ``n_masked``,
            ``final_loss``, ``resumed`` (read from a finished row rather than computed now).
        config: the ``transfer_config.json`` content.
        out_dir: the run folder (``None`` for results not on disk).
    """

    accuracy: pd.DataFrame
    margin: pd.DataFrame
    baseline: pd.DataFrame
    timings: pd.DataFrame
    config: dict
    out_dir: Path | None = None

    def space(self, metric: str = "margin", normalised: bool = False) -> pd.DataFrame:
        """``T_acc`` or ``T_margin``; ``normalised=True`` divides each row by its self-transfer
        (:func:`~taskspace_utils.spaces.normalise_rows`; rows with ``T[t, t] <= 0`` become NaN,
        with a warning). Only for square spaces."""
        if metric not in METRICS:
            raise ValueError(f"metric={metric!r}: use one of {METRICS}")
        space = self.accuracy if metric == "accuracy" else self.margin
        return normalise_rows(space) if normalised else space

    @property
    def self_transfer(self) -> pd.DataFrame:
        """The diagonal (tuned tasks that are also evaluated): accuracy and margin."""
        tasks = [t for t in self.accuracy.index if t in self.accuracy.columns]
        return pd.DataFrame({m: [self.space(m).loc[t, t] for t in tasks] for m in METRICS},
                            index=pd.Index(tasks, name="task"))


def _space_frame(rows: Sequence[dict], key: str, tasks: list[str], eval_tasks: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame([[row[key][u] for u in eval_tasks] for row in rows], index=tasks, columns=eval_tasks, dtype=float)
    frame.index.name, frame.columns.name = "tuned", "evaluated"
    return frame


def _write_tables(folder: Path, result: TransferResult) -> None:
    atomic_write_csv(folder / "task_space_transfer.csv", result.accuracy)
    atomic_write_csv(folder / "task_space_transfer_margin.csv", result.margin)
    atomic_write_csv(folder / "eval_baseline.csv", result.baseline)
    atomic_write_csv(folder / "transfer_timings.csv", result.timings)


def probe_transfer(
    model,
    tokenizer,
    pairs: pd.DataFrame,
    out_dir,
    config: ProbingConfig = ProbingConfig(),
    differentials: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
    run_info: Mapping | None = None,
    progress: bool = True,
) -> TransferResult:
    """The transfer task space of ``model`` over ``config.tasks`` (module docstring), resumable.

    Args:
        model, tokenizer: a causal LM (left exactly as it was: every tuned delta is reverted
            bitwise) and its tokenizer.
        pairs: minimal pairs with ``task``, ``good``, ``bad`` and usually ``split`` (e.g.
            :func:`taskspace_utils.data.load_task_data`; any user pair set works the same way);
            see :func:`select_pairs`.
        out_dir: run folder (files in the module docstring). A rerun reads the finished rows and
            tunes only the remaining tasks; another config in the folder raises
            :class:`~taskspace_utils.results.ConfigMismatchError`.
        config: :class:`ProbingConfig`.
        differentials: optional ``{task: {param name: D_t}}`` of the *same* training pairs and
            FTGD variant (e.g. :func:`differential_store` over the gradient stage's folder); a
            task found there skips recomputing its differential for the mask.
        run_info: extra identity written into the config (e.g. ``{"model": "tiny-m"}``), so runs
            of different models never mix in one folder.
        progress: tqdm bar over tuned tasks.

    Returns:
        :class:`TransferResult`. Cost: ``eval1`` + per tuned task one FTGD run (``steps``
        forward/backward passes of ``2 * batch_size`` sentences, plus the differential of its
        training pairs unless given) and one evaluation of every test sentence.
    """
    folder = Path(out_dir)
    train, test = select_pairs(pairs, config)
    tasks, eval_tasks = _task_lists(pairs.assign(task=pairs["task"].astype(str)), config)
    identity = {
        "probing": dataclasses.asdict(config) | {"tasks": tasks, "eval_tasks": eval_tasks},
        "n_train": train.groupby("task").size().to_dict(),
        "n_test": test.groupby("task").size().to_dict(),
        "pairs_sha": _pairs_hash(pd.concat([train, test])),
        **dict(run_info or {}),
    }
    ensure_run_config(folder, identity, name=CONFIG_FILE)
    prepared = prepare_evaluation(tokenizer, test, eval_tasks, config.batch_tokens)
    baseline_path = folder / BASELINE_FILE
    if baseline_path.exists():
        baseline = _read_baseline(baseline_path, eval_tasks)
    else:
        baseline = prepared.evaluate(model)
        atomic_write_json(baseline_path, baseline.reset_index().to_dict(orient="list"))
    atomic_write_csv(folder / "eval_baseline.csv", baseline)
    train_by_task = {t: g for t, g in train.groupby("task", sort=True)}
    tuning = config.tuning
    rows = []
    bar = tqdm(tasks, desc="transfer (tuned tasks)", unit="task", disable=not progress)
    for task in bar:
        row_path = folder / ROWS_DIR / f"{_file_name(task)}.json"
        if row_path.exists():
            rows.append(read_json(row_path) | {"resumed": True})
            continue
        started = time.perf_counter()
        differential = None
        if differentials is not None and task in differentials:
            differential = differentials[task]
        delta = tune_task(model, tokenizer, train_by_task[task], tuning, differential=differential, task=task)
        tuned_at = time.perf_counter()
        with applied(model, delta):
            after = prepared.evaluate(model)
        finished = time.perf_counter()
        change = after[["accuracy", "mean_margin"]] - baseline[["accuracy", "mean_margin"]]
        row = {
            "task": task,
            "accuracy": change["accuracy"].to_dict(),
            "margin": change["mean_margin"].to_dict(),
            "accuracy_after": after["accuracy"].to_dict(),
            "margin_after": after["mean_margin"].to_dict(),
            "tune_seconds": tuned_at - started,
            "eval_seconds": finished - tuned_at,
            "n_changed": int(delta.meta["n_changed"]),
            "n_masked": delta.meta.get("n_masked"),
            "final_loss": float(delta.meta["losses"][-1]),
            "losses": [float(v) for v in delta.meta["losses"]],
        }
        if config.save_deltas:  # before the row: a finished row always has its delta
            delta.save(folder / DELTAS_DIR / f"{_file_name(task)}.safetensors")
        atomic_write_json(row_path, row)
        rows.append(row | {"resumed": False})
        if task in eval_tasks:
            bar.set_postfix(self_acc=f"{row['accuracy'][task]:+.2f}", self_margin=f"{row['margin'][task]:+.2f}")
    bar.close()
    result = _result_from_rows(rows, tasks, eval_tasks, baseline, read_json(folder / CONFIG_FILE), folder)
    _write_tables(folder, result)
    return result


def _read_baseline(path: Path, eval_tasks: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame(read_json(path)).set_index("task")
    return frame.loc[eval_tasks, BASELINE_COLUMNS]


def _file_name(task: str) -> str:
    if not task or "/" in task or "\\" in task or task.startswith("."):
        raise ValueError(f"task name {task!r} cannot be a file name")
    return task


def _result_from_rows(rows, tasks, eval_tasks, baseline, config, folder) -> TransferResult:
    timing_cols = ["tune_seconds", "eval_seconds", "n_changed", "n_masked", "final_loss", "resumed"]
    timings = pd.DataFrame([{c: row.get(c) for c in timing_cols} for row in rows], index=pd.Index(tasks, name="tuned"))
    return TransferResult(
        accuracy=_space_frame(rows, "accuracy", tasks, eval_tasks),
        margin=_space_frame(rows, "margin", tasks, eval_tasks),
        baseline=baseline,
        timings=timings,
        config=config,
        out_dir=folder,
    )


def load_transfer(out_dir) -> TransferResult:
    """Read a run folder written by :func:`probe_transfer` (its tuned tasks in config order; an
    unfinished run gives the finished rows only, with a note in ``config["complete"]``)."""
    folder = Path(out_dir)
    path = folder / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: no transfer run here (run probe_transfer first)")
    config = read_json(path)
    tasks, eval_tasks = config["probing"]["tasks"], config["probing"]["eval_tasks"]
    done = [t for t in tasks if (folder / ROWS_DIR / f"{t}.json").exists()]
    if not done:
        raise FileNotFoundError(f"{folder / ROWS_DIR}: no finished tuned task yet")
    rows = [read_json(folder / ROWS_DIR / f"{t}.json") | {"resumed": True} for t in done]
    baseline = _read_baseline(folder / BASELINE_FILE, eval_tasks)
    config = config | {"complete": len(done) == len(tasks)}
    return _result_from_rows(rows, done, eval_tasks, baseline, config, folder)


def load_transfer_deltas(out_dir, tasks: Sequence[str] | None = None) -> dict[str, SparseDelta]:
    """``{task: SparseDelta}`` saved by :func:`probe_transfer` (``save_deltas``), on the CPU."""
    folder = Path(out_dir) / DELTAS_DIR
    if tasks is None:
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"{folder}: no saved deltas (probe with save_deltas=True)")
        return {f.stem: SparseDelta.load(f) for f in files}
    return {t: SparseDelta.load(folder / f"{_file_name(t)}.safetensors") for t in tasks}


# ---------------------------------------------------------------------- first-order prediction
class _DifferentialStore(Mapping):
    """Lazily loaded task differentials of a gradient-stage folder (see :func:`differential_store`)."""

    def __init__(self, folder: Path, hashes: Mapping[str, str] | None, variant: str | None):
        self.folder = folder
        self.hashes = dict(hashes) if hashes is not None else None
        self.variant = variant
        self._usable = [t for t in sorted(f.stem for f in (folder / "differentials").glob("*.safetensors"))
                        if self._matches(t)]

    def _matches(self, task: str) -> bool:
        from .gradients import _task_metadata

        if self.hashes is not None and task not in self.hashes:
            return False
        meta = _task_metadata(self.folder / "differentials" / f"{task}.safetensors")
        if self.variant is not None and meta.get("config", {}).get("variant") != self.variant:
            return False
        return self.hashes is None or meta.get("pairs_sha") == self.hashes[task]

    def __getitem__(self, task: str) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        if task not in self._usable:
            raise KeyError(task)
        return load_file(str(self.folder / "differentials" / f"{task}.safetensors"))

    def __iter__(self) -> Iterator[str]:
        return iter(self._usable)

    def __len__(self) -> int:
        return len(self._usable)

    def __contains__(self, task) -> bool:
        return task in self._usable

    def __repr__(self) -> str:
        return f"differential_store({str(self.folder)!r}: {len(self)} task(s))"


def differential_store(folder, pairs: pd.DataFrame | None = None, variant: str | None = None) -> Mapping:
    """The task differentials of a gradient-stage folder (``<folder>/differentials/<task>.safetensors``,
    :func:`taskspace_utils.gradients.extract_task_differentials`) as a lazily loading mapping
    ``{task: {param name: D_t}}`` (one task in memory at a time: 67 tasks of ``tiny-m`` would be
    1.3 GB at once).

    With ``pairs`` (e.g. the probe's training pairs) only tasks whose file was computed from
    exactly those pairs, in that order, are offered; with ``variant`` only those of that variant.
    An empty folder gives an empty mapping."""
    from .gradients import _pairs_sha

    folder = Path(folder)
    hashes = None
    if pairs is not None:
        hashes = {str(t): _pairs_sha(g) for t, g in pairs.groupby("task", sort=True)}
    return _DifferentialStore(folder, hashes, variant)


def _flat_delta(delta: SparseDelta, offsets: Mapping[str, int], shapes: Mapping[str, torch.Size]) -> tuple[torch.Tensor, torch.Tensor]:
    """Global flat indices (in the concatenation of the differential's tensors) and float64 values
    of a delta's update ``tuned - original``."""
    idx, val = [], []
    for name, update in delta.values.items():
        if name not in offsets:
            raise KeyError(f"first_order_prediction: the differentials have no parameter {name!r} (delta of "
                           f"task {delta.meta.get('task')!r})")
        local = delta.indices[name]
        if local is None:
            local = torch.arange(int(np.prod(shapes[name])))
        idx.append(local.cpu().reshape(-1) + offsets[name])
        val.append(update.detach().cpu().reshape(-1).double())
    if not idx:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.float64)
    return torch.cat(idx), torch.cat(val)


def first_order_prediction(
    differentials_by_task: Mapping[str, Mapping[str, torch.Tensor]],
    deltas_by_task: Mapping[str, SparseDelta],
    evaluated: Sequence[str] | None = None,
    progress: bool | None = None,
) -> pd.DataFrame:
    """First-order prediction of the margin transfer: ``P[t, u] = < D_u, delta_t >``.

    ``delta_t = theta_tuned(t) - theta`` is tuned task t's update (a sparse
    :class:`~taskspace_utils.ftgd.SparseDelta`) and ``D_u = grad_theta mean_i m_i(u)`` task u's
    differential, so ``P[t, u]`` is the first-order Taylor term of the change in u's mean margin,
    the quantity :func:`probe_transfer` measures as ``T_margin[t, u]`` (exact as the update goes
    to 0; tested against a finite difference). Computed in float64: every ``D_u`` is flattened
    once (parameters in its own order) and dotted with every delta's entries by a gather.

    Args:
        differentials_by_task: ``{u: {param name: tensor}}``; may load lazily
            (:func:`differential_store`): each task is read once.
        deltas_by_task: ``{t: SparseDelta}`` (:func:`load_transfer_deltas`).
        evaluated: the tasks u (columns), read from ``differentials_by_task`` one at a time
            (default: all of its tasks).

    Returns:
        DataFrame, index ``tuned`` (the deltas' tasks), columns ``evaluated`` (the differentials'
        tasks), in the mappings' orders; units: nats of mean margin.
    """
    tuned = list(deltas_by_task)
    evaluated = list(evaluated) if evaluated is not None else list(differentials_by_task)
    missing = [u for u in evaluated if u not in differentials_by_task]
    if missing:
        raise KeyError(f"first_order_prediction: no differential for task(s) {missing}")
    if not tuned or not evaluated:
        raise ValueError(f"first_order_prediction: {len(tuned)} delta(s) and {len(evaluated)} differential(s); need both")
    out = np.zeros((len(tuned), len(evaluated)))
    flat = None
    show = len(evaluated) > 10 if progress is None else progress
    for j, u in enumerate(tqdm(evaluated, desc="first-order prediction", unit="task", disable=not show, leave=False)):
        diff = differentials_by_task[u]
        if flat is None:  # layout of the first differential; every other must match it
            names = list(diff)
            shapes = {n: diff[n].shape for n in names}
            offsets = dict(zip(names, np.cumsum([0] + [diff[n].numel() for n in names[:-1]]).tolist()))
            flat = [_flat_delta(deltas_by_task[t], offsets, shapes) for t in tuned]
        if list(diff) != names or any(diff[n].shape != shapes[n] for n in names):
            raise ValueError(f"first_order_prediction: differential of task {u!r} has other parameters than {evaluated[0]!r}")
        vector = torch.cat([diff[n].detach().reshape(-1).cpu().double() for n in names])
        for i, (idx, val) in enumerate(flat):
            out[i, j] = float(vector[idx] @ val) if len(idx) else 0.0
    frame = pd.DataFrame(out, index=pd.Index(tuned, name="tuned"), columns=pd.Index(evaluated, name="evaluated"))
    return frame


# ------------------------------------------------------------------------------------ statistics
def drop_constant_spaces(spaces: Mapping[str, pd.DataFrame], tasks: Sequence[str] | None = None,
                         quiet: bool = False) -> dict[str, pd.DataFrame]:
    """The spaces (restricted to ``tasks``) whose off-diagonal entries are not all equal and have
    no NaN: the ones a rank correlation can use as hypothesis or control (e.g. the phenomenon
    hypothesis over tasks of distinct phenomena is all 0 off the diagonal, and would make
    :func:`taskspace_utils.spaces.compare_spaces` raise). Dropped names are printed unless ``quiet``."""
    kept, dropped = {}, []
    for name, space in spaces.items():
        frame = space.loc[list(tasks), list(tasks)] if tasks is not None else space
        values = frame.to_numpy(dtype=float)
        off = values[~np.eye(len(values), dtype=bool)]
        if off.size and not np.isnan(off).any() and np.ptp(off) > 0:
            kept[name] = frame
        else:
            dropped.append(name)
    if dropped and not quiet:
        print(f"constant or incomplete off the diagonal over these tasks, left out: {', '.join(dropped)}")
    return kept


def compare_seeds(first: TransferResult, second: TransferResult, n_permutations: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Agreement of two probes of the same model (e.g. two probing seeds), per metric.

    One row per metric (``accuracy``, ``margin``): ``spearman`` of the off-diagonal entries (both
    ordered pairs) with its label-permutation ``p_value``
    (:func:`taskspace_utils.spaces.compare_spaces`, one-sided), ``self_pearson``: Pearson of the
    two self-transfer vectors, and ``n_tasks``. A metric whose off-diagonal entries are constant in
    either probe (few test pairs: accuracy changes are multiples of ``1 / n_test``) gets NaN."""
    from .spaces import compare_spaces

    rows = []
    for metric in METRICS:
        a, b = first.space(metric), second.space(metric)
        tasks = [t for t in a.index if t in set(b.index) and t in set(a.columns) and t in set(b.columns)]
        a, b = a.loc[tasks, tasks], b.loc[tasks, tasks]
        row = {"metric": metric, "spearman": np.nan, "p_value": np.nan, "self_pearson": np.nan, "n_tasks": len(tasks)}
        if len(drop_constant_spaces({"first": a, "second": b}, quiet=True)) == 2 and len(tasks) >= 3:
            result = compare_spaces(a, b, n_permutations=n_permutations, seed=seed)
            row |= {"spearman": result.statistic, "p_value": result.p_value}
        da, db = np.diag(a.to_numpy()), np.diag(b.to_numpy())
        if len(tasks) >= 2 and np.ptp(da) > 0 and np.ptp(db) > 0:
            row["self_pearson"] = float(np.corrcoef(da, db)[0, 1])
        rows.append(row)
    return pd.DataFrame(rows).set_index("metric")
