"""One batching plan for every forward pass over token rows: scoring, task differentials and the
probing evaluation cut their rows into batches here, in one of two packings.

A *row* is a token sequence ``ids[r]`` without the BOS prefix (:mod:`taskspace_utils.padded`'s
convention: position 0 holds the prefix and is never scored). Its scored tokens are, by default,
all of them; ``ranges = (starts, ends)`` restricts them to tokens ``starts[r] .. ends[r] - 1``
(0-based; e.g. the tokens after a pair's common prefix, whose log-probabilities cancel in a margin).
``weights`` give every scored token of row ``r`` the weight ``weights[r]`` (e.g. ``+1/N`` for a good
and ``-1/N`` for a bad sentence of a task differential).

- ``tree=True``: prefix trees (:func:`~taskspace_utils.prefix_tree.build_prefix_tree_rows`, rows
  of ``row_tokens`` positions, batches of at most ``batch_tokens`` positions): rows that share a
  beginning share its positions. Batches are :func:`~taskspace_utils.prefix_tree.collate_prefix_tree`
  dicts (``node_weight`` with ``weights``), for :func:`~taskspace_utils.prefix_tree.prefix_tree_sums`
  / :func:`~taskspace_utils.prefix_tree.prefix_tree_logprobs`.
- ``tree=False``: rows sorted longest first and right padded
  (:func:`~taskspace_utils.padded.batches_by_tokens`, :func:`~taskspace_utils.padded.collate_token_ids`),
  ``batch_size`` rows or at most ``batch_tokens`` padded positions per batch; ``score_mask`` is
  True on the scored tokens and, with ``weights``, ``token_weights`` (``weight_dtype``) holds their
  weights, for :func:`~taskspace_utils.padded.token_logprob_sums`.

The plan is made at once (which rows go together, cheap) and collated lazily while it is iterated,
so scoring a large set never holds all its batches; :meth:`BatchPlan.collated` keeps them for an
evaluation that runs many times.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from .cpu_threads import for_each_batch
from .padded import DEFAULT_BATCH_TOKENS, batches_by_tokens, collate_token_ids, mask_weights, span_mask, token_logprob_sums
from .prefix_tree import (
    DEFAULT_TREE_ROW_TOKENS,
    build_prefix_tree_rows,
    collate_prefix_tree,
    iter_prefix_tree_batches,
    prefix_tree_sums,
)

__all__ = ["BatchPlan", "plan_batches", "fill_logprob_sums"]


class BatchPlan:
    """The batches of :func:`plan_batches`: iterate for ``(row indices, collated batch)``.

    Attributes:
        tree: whether the batches are prefix trees.
        groups: per batch, the row indices (and, for trees, the tree rows) it holds.
        n_positions: positions fed to the model in all batches, padding excluded (the BOS prefix
            of every padded or tree row included).
    """

    def __init__(self, ids, prefix_id, pad_id, tree, groups, n_positions, tree_rows, starts, ends, weights,
                 weight_dtype, device):
        self.tree, self.groups, self.n_positions = tree, groups, n_positions
        self._ids, self._prefix, self._pad, self._tree_rows = ids, prefix_id, pad_id, tree_rows
        self._starts, self._ends, self._weights = starts, ends, weights
        self._weight_dtype, self._device = weight_dtype, device

    def __len__(self) -> int:
        return len(self.groups)

    def __iter__(self) -> Iterator[tuple[np.ndarray, dict]]:
        for group in self.groups:
            yield group[-1], self._collate(group)

    def collated(self) -> list[tuple[np.ndarray, dict]]:
        """Every ``(row indices, batch)``, collated now (for batches scored many times)."""
        return list(self)

    def _collate(self, group) -> dict:
        ranged = self._starts is not None
        if self.tree:
            tree_rows, index = group
            return collate_prefix_tree(
                self._tree_rows, tree_rows, self._prefix, self._pad, sentences=index,
                sentence_weights=None if self._weights is None else self._weights[index],
                sentence_ranges=(self._starts[index], self._ends[index]) if ranged else None, device=self._device)
        (index,) = group
        batch = collate_token_ids([self._ids[i] for i in index], self._prefix, self._pad)
        if ranged:  # score only the collated positions 1 + start .. end (position 0 is the prefix)
            batch["score_mask"] &= span_mask(self._starts[index], self._ends[index], batch["input_ids"].shape[1])
        if self._weights is not None:  # the scored positions carry their sentence's weight
            batch["token_weights"] = mask_weights(batch["score_mask"], self._weights[index], self._weight_dtype)
        return {k: v.to(self._device) for k, v in batch.items()} if self._device is not None else batch


def plan_batches(ids: Sequence[Sequence[int]], prefix_id: int, pad_id: int, *, tree: bool,
                 batch_tokens: int = DEFAULT_BATCH_TOKENS, batch_size: int | None = None,
                 row_tokens: int = DEFAULT_TREE_ROW_TOKENS, ranges: tuple | None = None,
                 weights: Sequence[float] | None = None, weight_dtype: torch.dtype = torch.float32,
                 device=None) -> BatchPlan:
    """Cut ``ids`` into batches (module docstring); ``batch_size`` applies to padded batches only."""
    if tree and batch_size is not None:
        raise ValueError("plan_batches: batch_size fixes padded batches; prefix trees take batch_tokens")
    lengths = np.array([len(x) for x in ids], dtype=np.int64)
    starts = ends = None
    if ranges is not None:
        starts, ends = (np.asarray(x, dtype=np.int64) for x in ranges)
    values = None if weights is None else np.asarray(weights, dtype=np.float64)
    if tree:
        tree_rows = build_prefix_tree_rows(ids, row_tokens)
        groups = [(rows, index) for rows, index in iter_prefix_tree_batches(tree_rows, batch_tokens)]
        n_positions = int(sum(1 + len(t) for t in tree_rows["tokens"]))
    else:
        tree_rows = None
        groups = [(index,) for index in batches_by_tokens(lengths, batch_size, int(batch_tokens))]
        n_positions = int(lengths.sum() + len(ids))
    return BatchPlan(ids, prefix_id, pad_id, tree, groups, n_positions, tree_rows, starts, ends, values,
                     weight_dtype, device)


def fill_logprob_sums(model, batches, out: np.ndarray, *, tree: bool, device, bar=None) -> None:
    """``out[rows] = `` each row's summed log-probability (float64) for every ``(rows, batch)`` of
    ``batches`` (a :class:`BatchPlan` or its :meth:`~BatchPlan.collated` list): prefix-tree batches
    through :func:`~taskspace_utils.prefix_tree.prefix_tree_sums`, padded ones through
    :func:`~taskspace_utils.padded.token_logprob_sums`. Run under the caller's no-grad or inference
    mode; on the CPU the batches are spread over torch's threads
    (:func:`~taskspace_utils.cpu_threads.for_each_batch`). ``bar`` (tqdm) advances once per batch."""

    def score(item) -> None:
        rows, batch = item
        sums = prefix_tree_sums(model, batch, len(rows)) if tree else token_logprob_sums(model, batch)
        out[rows] = sums.double().cpu().numpy()
        if bar is not None:
            bar.update()

    for_each_batch(score, batches, device)
