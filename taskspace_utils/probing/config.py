"""What one probe runs on: :class:`ProbingConfig` (every setting, with the FTGD settings of the
tuned tasks) and :func:`select_pairs` (the training and test pairs those settings pick).

Convention: tuned tasks are the rows of the transfer space, evaluated tasks its columns; a tuned
task trains on the first ``n_train`` rows of its ``split == "train"`` pairs, an evaluated task is
scored on the first ``n_test`` rows of its ``split == "test"`` pairs (fewer when it has fewer).
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping
from dataclasses import dataclass

import pandas as pd

from ..data import split_pairs
from ..encoding import EncodedPairs
from ..ftgd import FTGDConfig
from ..padded import DEFAULT_BATCH_TOKENS

__all__ = ["PROBING_FTGD", "N_VAL_TEXTS", "ProbingConfig", "select_pairs"]

#: FTGD defaults of the probing stage: the FTGD stage's (one default for notebooks 03 and 04,
#: chosen on target gain vs. validation-perplexity damage vs. time; the measurement and the rule are
#: in :class:`~taskspace_utils.ftgd.FTGDConfig`'s docstring): k = 1 %, Adam at lr 1e-4 on the
#: margin, 50 steps x 16 pairs (800 pair presentations = 8 epochs of 100 training pairs).
PROBING_FTGD = FTGDConfig()

#: Default of :attr:`ProbingConfig.n_val_texts` (its docstring gives the measurement).
N_VAL_TEXTS = 50


@dataclass(frozen=True)
class ProbingConfig:
    """Settings of one transfer probe (notebook ``04_similarity_probing``).

    Attributes:
        tasks: tuned tasks, in order (``None``: every task of the pairs, sorted).
        eval_tasks: evaluated tasks, the columns of the space (``None``: the same as ``tasks``,
            giving a square space that :mod:`taskspace_utils.spaces` can compare with hypotheses).
        n_train: at most this many training pairs per tuned task (the first ``n_train`` rows of
            its ``split == "train"`` pairs; all of them when it has fewer). Pairs without a
            ``split`` column are split here with :func:`taskspace_utils.data.split_pairs` and
            ``seed``.
        n_test: at most this many test pairs per evaluated task (same rule).
        seed: the probing seed: the FTGD seed (batch order; ``ftgd.seed`` is replaced by it) and,
            for pairs without a ``split`` column, the split seed. A second seed
            (:func:`resplit_pairs` + another ``seed``) tells how stable the space is.
        ftgd: the FTGD settings of every tuned task (:class:`~taskspace_utils.ftgd.FTGDConfig`).
            Default :data:`PROBING_FTGD`, the FTGD stage's defaults: ``k=0.01`` (top 1 % of
            ``|D_t|``), Adam at ``lr=1e-4`` on the margin, ``steps=50`` of ``batch_size=16`` pairs.
            Chosen for both stages by ``benchmarks/bench_ftgd_premise.py`` (``tiny-m``, 4 tasks of 4
            phenomena, 100 train / 100 test pairs; table and rule in ``FTGDConfig``): the former
            probing default, lr 1e-3 with 20 x 20, gained the same target accuracy (+0.225) at a
            median validation-perplexity change of +63 % per tuned task (+9 % to +126 %), this one
            at +6.8 % (+0.5 % to +9.2 %), so the transfer space is read from models that changed
            their task, not their language model; its tuning takes twice as long (5.5 vs. 2.7 CPU
            s per task on 1 thread): +70 % per tuned task of a 12-task probe on 100 test pairs
            (7.3 vs. ~4.3 s), about +23 % in a 67-task probe, whose evaluation dominates
            (``benchmarks/bench_probing.py``: tune 1.4 s + evaluate 4.8 s per task on ``tiny-m``). Earlier sweep (``benchmarks/bench_probing.py --sweep``,
            lr 1e-3 on ``tiny-s``, without perplexity) for the steps x batch size at that rate:
            50 x 16: +0.20 / +32.6 nats; 20 x 20: +0.17 / +10.9; 10 x 20: +0.14 / +5.2.
        batch_tokens: padded tokens per evaluation batch (:data:`~taskspace_utils.scoring.DEFAULT_BATCH_TOKENS`).
        save_deltas: keep every tuned task's sparse delta in ``deltas/`` (needed by
            :func:`first_order_prediction`; ``tiny-m``: 1 % of 4.9M entries, about 0.8 MB a task).
        n_val_texts: held-out corpus sentences whose perplexity is measured for the base model
            (once) and every tuned model (:func:`~taskspace_utils.ftgd.validation_texts`; the
            ``val_ppl_*`` columns of :func:`probe_transfer`); ``0`` turns it off (NaN columns).
            Default 50, sized by its cost (``benchmarks/bench_ftgd_premise.py --cost``, ``tiny-m``,
            the quick profile's 12 transfer tasks, 1 thread, load average ~3 on 2 cores): scoring
            50 sentences (~1,300 tokens) takes 0.22 s per tuned task, 3.0 % of a default probe's
            time per task (7.3 s: tuning 50 x 16 on 100 pairs + evaluating 12 x 100 test pairs) and
            8-11 % of a quick-profile probe's (2.0-2.8 s: 32 pairs, 10-18 steps); 100 sentences
            took 0.38 s (5.3 % and 16-22 %). Precision, measured against all 6,822 sentences of
            the split on 12 tuned ``tiny-m`` models (changes +0.1 % to +130 %): the change on 50
            evenly spaced sentences was off by 0.010 on average (max 0.057, at a change of
            +1.30), on 100 by 0.013, on 300 by 0.008: about one point of perplexity change, small
            beside the 10 % of the premise rule; on the 40 tuned models of the trade-off benchmark,
            50 vs. 300 sentences differed by a median 0.002 (Pearson 0.998).
    """

    tasks: tuple[str, ...] | None = None
    eval_tasks: tuple[str, ...] | None = None
    n_train: int = 100
    n_test: int = 100
    seed: int = 0
    ftgd: FTGDConfig = PROBING_FTGD
    batch_tokens: int = DEFAULT_BATCH_TOKENS
    save_deltas: bool = True
    n_val_texts: int = N_VAL_TEXTS

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
        if isinstance(self.n_val_texts, bool) or not isinstance(self.n_val_texts, numbers.Integral) or self.n_val_texts < 0:
            raise ValueError(f"ProbingConfig.n_val_texts={self.n_val_texts!r}: a count of validation sentences >= 0 "
                             "(0: no validation perplexity)")
        object.__setattr__(self, "n_val_texts", int(self.n_val_texts))

    def replace(self, **changes) -> "ProbingConfig":
        """A copy with some fields changed (``config.replace(seed=1)``)."""
        return dataclasses.replace(self, **changes)

    @property
    def tuning(self) -> FTGDConfig:
        """The FTGD config actually used: ``ftgd`` with ``seed`` set to the probing seed."""
        return self.ftgd.replace(seed=int(self.seed))


def select_pairs(pairs: pd.DataFrame | EncodedPairs, config: ProbingConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(train, test)`` pairs of a probe: the first ``n_train`` training rows of every tuned task
    and the first ``n_test`` test rows of every evaluated task (fewer when a task has fewer).

    Pairs without a ``split`` column are split here (``split_pairs`` with ``config.seed``, as many
    pairs as each task allows up to ``n_train + n_test``). Raises ``KeyError`` naming a task with
    no training (tuned) or no test (evaluated) pairs. ``pairs`` may be an
    :class:`~taskspace_utils.encoding.EncodedPairs` (its frame is used)."""
    if isinstance(pairs, EncodedPairs):
        pairs = pairs.pairs
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

