"""The probing evaluation: test pairs tokenised, de-duplicated and collated once, scored after
every tuned task (:func:`prepare_evaluation` -> :class:`PreparedEvaluation`).

Per evaluated task u, from the margins ``m_i = log p(good_i) - log p(bad_i)`` of its test pairs
(convention of :mod:`taskspace_utils.scoring`: BOS prefix, sum of token log-probabilities):

    acc(u) = mean_i [m_i > 0]   (ties count as wrong)       mbar(u) = mean_i m_i   (nats)

Speed: the evaluation dominates a probe (a 67-task space scores 67 x 13,400 sentences). The tokens
of the common prefix of a pair are not sent through the LM head (their log-probabilities are
identical in good and bad, so they cancel exactly in the margin), and sentences that begin alike
are packed as prefix trees for models that support them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ..batching import fill_logprob_sums, plan_batches
from ..encoding import EncodedPairs, encode
from ..models import eval_mode
from ..padded import DEFAULT_BATCH_TOKENS
from ..prefix_tree import supports_prefix_tree

__all__ = ["PreparedEvaluation", "prepare_evaluation"]


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
        (eval mode, no gradient; the model's mode is restored). On the CPU the batches are spread
        over torch's threads (:func:`~taskspace_utils.batching.fill_logprob_sums`)."""
        device = next(model.parameters()).device
        lp = np.zeros(self.n_rows, dtype=np.float64)
        with eval_mode(model):
            self._on(device)
            tree = self.uses_tree(model)
            with torch.inference_mode():
                fill_logprob_sums(model, self.tree_batches if tree else self.batches, lp, tree=tree, device=device)
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


def prepare_evaluation(tokenizer, test_pairs: pd.DataFrame | EncodedPairs, tasks: Sequence[str] | None = None,
                       batch_tokens: int = DEFAULT_BATCH_TOKENS, packing: str = "auto") -> PreparedEvaluation:
    """Tokenise, de-duplicate and collate the test pairs once (see :class:`PreparedEvaluation`).

    Args:
        test_pairs: frame with ``task``, ``good``, ``bad`` (every row of ``tasks`` is evaluated),
            or its :class:`~taskspace_utils.encoding.EncodedPairs` (token ids and common prefix
            lengths are taken from it).
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
    frame = test_pairs.pairs if isinstance(test_pairs, EncodedPairs) else test_pairs
    missing = {"task", "good", "bad"} - set(frame.columns)
    if missing:
        raise ValueError(f"prepare_evaluation: test pairs lack column(s) {sorted(missing)}")
    present = sorted(frame["task"].astype(str).unique())
    tasks = list(tasks) if tasks is not None else present
    absent = [t for t in tasks if t not in set(present)]
    if absent:
        raise KeyError(f"prepare_evaluation: no test pairs for task(s) {absent}")
    keep = frame["task"].astype(str).isin(tasks).to_numpy()
    if isinstance(test_pairs, EncodedPairs):
        encoded = test_pairs if keep.all() else test_pairs.select(keep)
    else:
        encoded = encode(tokenizer, frame[keep])
    position = {t: i for i, t in enumerate(tasks)}
    pair_task = encoded.pairs["task"].astype(str).map(position).to_numpy(dtype=np.int64)
    goods, bads = encoded.good_ids, encoded.bad_ids
    empty = np.flatnonzero((encoded.n_good == 0) | (encoded.n_bad == 0)).tolist()
    if empty:
        raise ValueError(f"prepare_evaluation: pairs at positions {empty[:5]} have a sentence with no tokens")
    keys: dict[tuple[tuple[int, ...], int], int] = {}
    good_row = np.full(len(goods), -1, dtype=np.int64)
    bad_row = np.full(len(goods), -1, dtype=np.int64)
    for i, (g, b, start) in enumerate(zip(goods, bads, encoded.prefix_len.tolist())):
        for ids, out in ((g, good_row), (b, bad_row)):
            if len(ids) > start:
                out[i] = keys.setdefault((tuple(ids), start), len(keys))
    if packing not in ("auto", "padded"):
        raise ValueError(f"packing={packing!r}: use 'auto' or 'padded'")
    rows = list(keys)
    ids = [list(ids) for ids, _ in rows]
    # score tokens start..n-1 only: the common-prefix tokens of a pair get no LM head
    ranges = ([start for _, start in rows], [len(x) for x in ids])
    plans = {tree: plan_batches(ids, encoded.prefix_id, encoded.pad_id, tree=tree, batch_tokens=int(batch_tokens),
                                ranges=ranges)
             for tree in ([False, True] if packing == "auto" and rows else [False])}
    batches = plans[False].collated()
    n_scored = int(sum(len(x) - s for x, s in zip(ids, ranges[0])))
    tree_batches, n_tree_tokens, n_tree_scored = None, 0, 0
    if True in plans:
        tree_batches = plans[True].collated()
        n_tree_tokens = plans[True].n_positions
        n_tree_scored = int(sum(len(batch["node_row"]) for _, batch in tree_batches))
    return PreparedEvaluation(tasks, pair_task, good_row, bad_row, batches, len(rows),
                              plans[False].n_positions, n_scored, tree_batches, n_tree_tokens, n_tree_scored)

