"""Gradient differentials, the gradient-based task space and task subnetworks (paper Section 4).

What a gradient differential is
-------------------------------
For a minimal pair (good, bad) and a causal LM with parameters theta, the *gradient differential*
is

    d = grad_theta [ log p(good) - log p(bad) ]

with the scoring convention of :mod:`taskspace_utils.scoring` (BOS prefix, *sum* of token
log-probabilities). It is the direction in parameter space that most increases the model's
preference for the grammatical sentence; what the two sentences share (topic, length, most words)
largely cancels, so ``d`` isolates the parameters that carry the contrast. Two variants
(``variant=``):

* ``"sentence"`` (default): all tokens of both sentences are scored. (The tokens of the common
  token prefix have the same context in both sentences, so their terms cancel exactly; they are
  skipped in the computation, which changes nothing but rounding.)
* ``"critical"``: only the *critical tokens* are scored: in each sentence, the tokens where the
  pair differs - from the end of the longest common token prefix (``prefix_len`` of
  :func:`taskspace_utils.data.token_alignment`) up to the start of the common token suffix
  (``suffix_len``), the suffix shortened for a sentence whose differing span would otherwise be
  empty, so that every sentence keeps at least its first differing token (``this dog .`` vs.
  ``this dog s .``: ``.`` vs. ``s``; subword splits make such empty spans common, e.g. 80% of
  ``determiner_noun_agreement_1`` under a small BPE). Why not "every token after the first
  difference": the shared prefix cancels *exactly* in the margin (same context, same
  log-probabilities), so that choice would equal the sentence variant; the difference between the
  two variants is the shared suffix, whose probabilities shift because the context differs (a
  downstream effect). A pair where a sentence has *no* token after the common prefix - identical
  token sequences, or one sentence a pure prefix of the other - has no critical tokens; it is
  *excluded* and reported (:func:`critical_exclusions`, a warning, ``n_excluded`` in the
  statistics), never silently dropped.

The *task differential* of task t is the mean over its N training pairs,
``D_t = (1/N) sum_i d_i``; because the gradient is linear this is the gradient of the mean margin,
computed with one batched backward pass per token batch (:func:`task_differential`). Its
*spread* says how much the pairs agree: ``||D_t|| / mean_i ||d_i||`` (1 when all pairs pull the
same way, about ``1/sqrt(N)`` for unrelated directions) and the cosine between the differentials
of two random halves of the pairs (split-half agreement).

The *task subnetwork* ``M_t(k)`` is the set of the ``round(k * P)`` parameters with the largest
``|D_t|`` (:func:`subnetwork_masks`; globally or per parameter tensor). FTGD tunes these, and the
mask-overlap space (Jaccard, :func:`mask_overlap_space`) compares them between tasks. The
*gradient space* (:func:`gradient_space`) is the task x task cosine similarity of the ``D_t``,
for the whole model or per module (embeddings, each layer's attention and MLP, final norm, head:
:func:`module_groups`).

Public functions
----------------
- :class:`GradientConfig` - the stage's settings (notebook ``02_gradient_extraction``).
- :func:`encode_pairs`, :func:`pair_margins`, :func:`batch_margins` - differentiable per-pair
  margins ``log p(good) - log p(bad)`` (reused by FTGD); :func:`critical_exclusions`.
- :func:`task_differential` - ``D_t`` by batched backward passes of the summed margins.
- :func:`pair_differential_norms` - every pair's ``||d_i||`` from the same batched backward pass
  (per-example "ghost" norms from module activations and output gradients).
- :func:`iter_pair_differentials`, :func:`pair_differential_stats`, :class:`ParameterSketch` -
  per-pair differentials themselves, streamed in chunks (``torch.func`` vmap or a loop), streamed
  reductions and a seeded CountSketch (sparse Johnson-Lindenstrauss) projection to a fixed
  dimension.
- :func:`subnetwork_masks`, :func:`mask_overlap_space` - top-k subnetworks and their Jaccard space.
- :func:`module_groups`, :func:`gradient_space` - the gradient task space, whole model or per module.
- :func:`extract_task_differentials`, :func:`load_task_differentials`,
  :func:`summarise_run`, :func:`load_gradient_spaces`, :func:`load_differential_stats` - all tasks
  of one model to disk (resumable) and back; :func:`summarise_module_spaces` - where tasks share
  signal (within / across phenomena and fields, per module).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .data import common_prefix_len, split_pairs, token_alignment
from .results import (
    ConfigMismatchError,
    atomic_save_safetensors,
    atomic_write_csv,
    atomic_write_parquet,
    ensure_run_config,
)
from .scoring import (
    DEFAULT_BATCH_TOKENS,
    DEFAULT_TREE_ROW_TOKENS,
    _batches_by_tokens,
    build_prefix_tree_rows,
    collate_prefix_tree,
    collate_token_ids,
    iter_prefix_tree_batches,
    prefix_tree_logprobs,
    supports_prefix_tree,
    prefix_token_id,
    token_logprob_sums,
    tokenize_sentences,
)

__all__ = [
    "VARIANTS",
    "GradientConfig",
    "critical_exclusions",
    "encode_pairs",
    "pair_margins",
    "batch_margins",
    "task_differential",
    "iter_pair_differentials",
    "pair_differential_stats",
    "pair_differential_norms",
    "ParameterSketch",
    "subnetwork_masks",
    "mask_overlap_space",
    "pack_masks",
    "packed_jaccard_space",
    "module_groups",
    "gradient_space",
    "extract_task_differentials",
    "load_task_differentials",
    "summarise_run",
    "summarise_module_spaces",
    "load_gradient_spaces",
    "load_differential_stats",
]

log = logging.getLogger(__name__)

VARIANTS = ("sentence", "critical")
METRICS = ("cosine", "pearson", "dot")


@dataclass
class GradientConfig:
    """Settings of the gradient stage (notebook ``02_gradient_extraction``).

    Attributes:
        model: model spec the differentials are taken from (recorded with the results; see
            :func:`taskspace_utils.models.load_model`).
        variant: ``"sentence"`` (score all tokens) or ``"critical"`` (score only the tokens where
            good and bad differ; see the module docstring).
        n_train: training pairs per task the task differential averages over (the first
            ``n_train`` of the task's ``split == "train"`` rows; without a ``split`` column the
            pairs are split with :func:`taskspace_utils.data.split_pairs` and ``seed``).
        seed: seed of the train split (when needed), of the split-half assignment and of the
            projection sketch.
        batch_tokens: padded tokens per forward/backward batch (bounds memory: for tiny-l, 4,096
            tokens x (8,192 logits + 5 layers x ~20 x 256 activations) x 4 B = ~0.25 GB, about
            twice that with the backward's buffers).
        k: fraction of parameters in a task subnetwork ``M_t(k)`` (``round(k * P)`` parameters).
        per_module: choose the top-k fraction within every parameter tensor (each tensor keeps
            ``round(k * numel)``) instead of globally, so every layer is represented.
        metric: similarity of two task differentials in the gradient space: ``"cosine"``,
            ``"pearson"`` (cosine of the mean-centred vectors) or ``"dot"``.
        per_pair: also compute every pair's own differential (streamed, never all held) for the
            spread statistic ``mean_i ||d_i||`` (and the sketches). With ghost norms this costs
            little beyond the batched mean; the full per-pair vectors (vmap / loop) cost ~10x more.
        per_pair_method: how the per-pair differentials are had: ``"ghost"`` (only their norms,
            from the batched pass: :func:`pair_differential_norms`), ``"loop"`` (one backward per
            pair), ``"vmap"`` (``torch.func``) or ``"auto"``: ghost norms when the model supports
            them and no sketch is asked for, else vmap up to 10M parameters and the loop above
            (``benchmarks/bench_gradients.py``).
        projection_dim: with ``per_pair``, also save a ``[N, projection_dim]`` CountSketch of the
            per-pair differentials per task (``0``: none).
    """

    model: str = "tiny-m"
    variant: str = "sentence"
    n_train: int = 100
    seed: int = 0
    batch_tokens: int = DEFAULT_BATCH_TOKENS
    k: float = 0.01
    per_module: bool = False
    metric: str = "cosine"
    per_pair: bool = True
    per_pair_method: str = "auto"
    projection_dim: int = 0

    def __post_init__(self):
        _check_variant(self.variant)
        if self.metric not in METRICS:
            raise ValueError(f"metric={self.metric!r}: use one of {METRICS}")
        if not 0.0 <= float(self.k) <= 1.0:
            raise ValueError(f"k={self.k!r}: a fraction of parameters in [0, 1]")
        if self.per_pair_method not in ("auto", "ghost", "loop", "vmap"):
            raise ValueError(f"per_pair_method={self.per_pair_method!r}: use 'auto', 'ghost', 'loop' or 'vmap'")
        if self.per_pair_method == "ghost" and self.projection_dim:
            raise ValueError("per_pair_method='ghost' gives per-pair norms only; a projection needs 'vmap' or 'loop'")
        if int(self.n_train) < 1:
            raise ValueError(f"n_train={self.n_train!r}: need at least one training pair per task")


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r}: use one of {VARIANTS}")


def _trainable(model) -> list[tuple[str, torch.nn.Parameter]]:
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters (requires_grad is False everywhere)")
    return params


# ---------------------------------------------------------------------------------------------
# pairs -> scored token spans


def _as_lists(pairs) -> tuple[list[str], list[str]]:
    if isinstance(pairs, pd.DataFrame):
        missing = [c for c in ("good", "bad") if c not in pairs.columns]
        if missing:
            raise ValueError(f"pairs: missing column(s) {missing}")
        return list(pairs["good"].astype(str)), list(pairs["bad"].astype(str))
    goods, bads = pairs
    goods, bads = [str(s) for s in goods], [str(s) for s in bads]
    if len(goods) != len(bads):
        raise ValueError(f"pairs: {len(goods)} good but {len(bads)} bad sentences")
    return goods, bads


def critical_exclusions(pairs, tokenizer) -> pd.Series:
    """Why a pair has no critical-token differential: a string per pair, ``None`` when it has one.

    With ``p`` = the common token-prefix length (:func:`taskspace_utils.data.token_alignment`),
    the critical span of a sentence starts at its token ``p`` (see the module docstring). Reasons: ``"identical
    tokens"`` (good and bad tokenise identically), ``"good is a prefix of bad"`` and ``"bad is a
    prefix of good"`` (one sentence has no token after ``p``). Index: ``pairs``' index (a range for
    lists).
    """
    goods, bads = _as_lists(pairs)
    index = pairs.index if isinstance(pairs, pd.DataFrame) else pd.RangeIndex(len(goods))
    align = token_alignment(pd.DataFrame({"good": goods, "bad": bads}, index=index), tokenizer)
    reasons = []
    for p, ng, nb in zip(align["prefix_len"], align["n_good_tokens"], align["n_bad_tokens"]):
        if p == ng and p == nb:
            reasons.append("identical tokens")
        elif p == ng:
            reasons.append("good is a prefix of bad")
        elif p == nb:
            reasons.append("bad is a prefix of good")
        else:
            reasons.append(None)
    return pd.Series(reasons, index=index, name="excluded", dtype=object)


def _pair_spans(tokenizer, pairs, variant: str):
    """Token ids of good and bad and the scored token span ``[start, end)`` of each sentence.

    Returns ``(good_ids, bad_ids, start, end_good, end_bad, excluded)``: for ``"sentence"`` the span
    is the whole sentence less the common token prefix (whose terms cancel exactly); for ``"critical"`` ``start = prefix_len`` and ``end = n - s`` with the
    common suffix ``s`` of :func:`taskspace_utils.data.token_alignment` shortened, per sentence, so
    that each sentence keeps at least its first differing token. ``excluded`` holds the reasons of
    :func:`critical_exclusions` (all ``None`` for ``"sentence"``).
    """
    _check_variant(variant)
    goods, bads = _as_lists(pairs)
    good_ids, bad_ids = tokenize_sentences(tokenizer, goods), tokenize_sentences(tokenizer, bads)
    empty = [i for i, (g, b) in enumerate(zip(good_ids, bad_ids)) if not g or not b]
    if empty:
        raise ValueError(f"pairs at positions {empty[:5]} have a sentence with no tokens")
    n_good = np.array([len(g) for g in good_ids], dtype=np.int64)
    n_bad = np.array([len(b) for b in bad_ids], dtype=np.int64)
    if variant == "sentence":
        # the tokens of the common prefix have the same context in good and bad, hence the same
        # log-probability: their terms cancel exactly in the margin and are not scored (saves the
        # LM head and its backward at those positions; the tokens still feed the later ones)
        start = np.array([common_prefix_len(g, b) for g, b in zip(good_ids, bad_ids)], dtype=np.int64)
        return good_ids, bad_ids, start, n_good, n_bad, [None] * len(goods)
    excluded = list(critical_exclusions((goods, bads), tokenizer))
    align = token_alignment(pd.DataFrame({"good": goods, "bad": bads}), tokenizer)
    if not (np.array_equal(align["n_good_tokens"], n_good) and np.array_equal(align["n_bad_tokens"], n_bad)):
        raise RuntimeError("token_alignment and tokenize_sentences disagree on token counts (tokenizer wrapper?)")
    start = align["prefix_len"].to_numpy(dtype=np.int64)
    suffix = align["suffix_len"].to_numpy(dtype=np.int64)
    end_good = n_good - np.minimum(suffix, n_good - start - 1).clip(min=0)
    end_bad = n_bad - np.minimum(suffix, n_bad - start - 1).clip(min=0)
    return good_ids, bad_ids, start, end_good, end_bad, excluded


def _row_weights(starts: Sequence[int], ends: Sequence[int], values: Sequence[float], width: int, dtype) -> torch.Tensor:
    """``[B, width]`` token weights: ``values[r]`` at the collated positions ``1 + starts[r] ..
    ends[r]`` (the tokens ``starts[r] .. ends[r] - 1`` of row r; position 0 is the BOS prefix),
    0 elsewhere."""
    weights = torch.zeros(len(starts), width, dtype=dtype)
    for row, (s, e, v) in enumerate(zip(starts, ends, values)):
        weights[row, 1 + int(s) : 1 + int(e)] = float(v)
    return weights


def encode_pairs(tokenizer, pairs, variant: str = "sentence", device=None, dtype=torch.float32) -> dict:
    """Collate B pairs into one batch of 2B rows (goods, then bads) for :func:`pair_margins`.

    Args:
        pairs: a frame with ``good`` / ``bad`` columns, or a ``(goods, bads)`` tuple of lists.
        variant: ``"sentence"`` or ``"critical"``; for ``"critical"`` a pair without critical
            tokens (see :func:`critical_exclusions`) raises ``ValueError`` naming it - filter first.

    Returns:
        the :func:`taskspace_utils.scoring.collate_token_ids` batch (``input_ids``,
        ``attention_mask``, ``score_mask``: ``[2B, L]``) plus ``token_weights`` (``[2B, L]``, 1 on
        the scored tokens) and ``n_pairs``. Encoding once and reusing the batch saves the
        tokenisation in training loops.
    """
    good_ids, bad_ids, start, end_good, end_bad, excluded = _pair_spans(tokenizer, pairs, variant)
    bad_rows = [(i, r) for i, r in enumerate(excluded) if r is not None]
    if bad_rows:
        raise ValueError(
            f"{len(bad_rows)} pair(s) have no critical tokens (variant='critical'), e.g. "
            f"{bad_rows[:3]} (position, reason); drop them using critical_exclusions(pairs, tokenizer)"
        )
    ids = good_ids + bad_ids
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else prefix_token_id(tokenizer)
    batch = collate_token_ids(ids, prefix_token_id(tokenizer), pad)
    starts, ends = np.concatenate([start, start]), np.concatenate([end_good, end_bad])
    batch["token_weights"] = _row_weights(starts, ends, [1.0] * len(ids), batch["input_ids"].shape[1], dtype)
    batch["n_pairs"] = len(good_ids)
    if device is not None:
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    return batch


def pair_margins(model, encoded: dict) -> torch.Tensor:
    """Differentiable margins ``m_i = log p(good_i) - log p(bad_i)`` (``[B]``) of an
    :func:`encode_pairs` batch, each log-probability the sum over the scored tokens (for the
    sentence variant the common token prefix is left out: its terms cancel exactly, so the margin
    equals that of :func:`taskspace_utils.scoring.score_pairs` up to rounding).

    The gradient of ``m_i`` is the pair's gradient differential ``d_i``; FTGD maximises
    ``pair_margins(...).mean()``. The model's train/eval mode is left as it is (call
    ``model.eval()`` for the dropout-free differential).
    """
    dtype = next(model.parameters()).dtype
    weights = encoded["token_weights"].to(encoded["input_ids"].device, dtype if dtype.is_floating_point else torch.float32)
    sums = token_logprob_sums(model, encoded, token_weights=weights)
    n = int(encoded["n_pairs"])
    return sums[:n] - sums[n:]


def batch_margins(model, tokenizer, pairs, variant: str = "sentence") -> torch.Tensor:
    """Differentiable per-pair margins ``[B]``: :func:`pair_margins` of :func:`encode_pairs`.

    ``pairs`` is a frame with ``good`` / ``bad`` or a ``(goods, bads)`` tuple; for
    ``variant="critical"`` only the critical tokens count (pairs without any raise). Equal (up to
    float rounding) to ``score_pairs(...)["margin"]`` for ``"sentence"``.
    """
    device = next(model.parameters()).device
    return pair_margins(model, encode_pairs(tokenizer, pairs, variant, device=device))


# ---------------------------------------------------------------------------------------------
# the task differential: one batched backward of the summed margins


def _signed_rows(good_ids, bad_ids, start, end_good, end_bad, weight: float):
    """Unique scored rows ``(ids, start, end) -> weight``: ``+weight`` for a good, ``-weight`` for a
    bad sentence. Identical rows merge, so a pair with identical sentences contributes exactly 0."""
    rows: dict[tuple[tuple[int, ...], int, int], float] = {}
    for g, b, s, eg, eb in zip(good_ids, bad_ids, start, end_good, end_bad):
        for ids, e, sign in ((g, eg, 1.0), (b, eb, -1.0)):
            key = (tuple(ids), int(s), int(e))
            rows[key] = rows.get(key, 0.0) + sign * weight
    return [(list(k[0]), k[1], k[2], w) for k, w in rows.items() if w != 0.0]


def _weighted_gradient(model, tokenizer, rows, batch_size, batch_tokens, progress, desc="gradient"):
    """``sum_r w_r grad log p(row_r)`` over ``rows = [(ids, start, end, w)]``, by token batches.

    Returns ``{name: tensor}`` for all trainable parameters (zeros where a parameter gets no
    gradient). Mode, ``.grad`` and parameters are left unchanged.
    """
    params = _trainable(model)
    device = params[0][1].device
    acc_dtype = {torch.float16: torch.float32, torch.bfloat16: torch.float32}
    total: dict[str, torch.Tensor] = {}  # filled by the first batch's gradients (no zero-filled start)
    prefix = prefix_token_id(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else prefix
    weight_dtype = params[0][1].dtype if params[0][1].dtype.is_floating_point else torch.float32
    use_tree = batch_size is None and supports_prefix_tree(model)
    if use_tree:
        # prefix trees: a good and a bad sentence share the positions of their common beginning,
        # whose +w and -w token weights cancel, so the LM head skips those positions entirely
        tree = build_prefix_tree_rows([r[0] for r in rows], DEFAULT_TREE_ROW_TOKENS)
        batches = list(iter_prefix_tree_batches(tree, batch_tokens))
    else:
        lengths = np.array([len(r[0]) for r in rows])
        batches = _batches_by_tokens(lengths, batch_size, batch_tokens)
    starts, ends, values = (np.array([r[k] for r in rows]) for k in (1, 2, 3))
    show = len(batches) > 20 if progress is None else bool(progress)
    was_training = model.training
    model.eval()
    try:
        for item in tqdm(batches, desc=desc, unit="batch", disable=not show, leave=False):
            if use_tree:
                tree_rows, index = item
                batch = collate_prefix_tree(tree, tree_rows, prefix, pad, sentences=index, sentence_weights=values[index],
                                            sentence_ranges=(starts[index], ends[index]), device=device)
                if not len(batch["node_weight"]):
                    continue
                lp = prefix_tree_logprobs(model, batch)
                objective = (lp * batch["node_weight"].to(lp.dtype)).sum()
            else:
                index = item
                batch = collate_token_ids([rows[i][0] for i in index], prefix, pad, device)
                weights = _row_weights(starts[index], ends[index], values[index], batch["input_ids"].shape[1], weight_dtype).to(device)
                objective = token_logprob_sums(model, batch, token_weights=weights).sum()
            grads = torch.autograd.grad(objective, [p for _, p in params], allow_unused=True)
            for (name, p), g in zip(params, grads):
                if g is None:
                    continue
                if name in total:
                    total[name] += g.to(total[name].dtype)
                else:
                    total[name] = g.to(acc_dtype.get(p.dtype, p.dtype))
    finally:
        model.train(was_training)
    return {n: total[n].to(p.dtype) if n in total else torch.zeros_like(p) for n, p in params}


def task_differential(
    model,
    tokenizer,
    pairs,
    variant: str = "sentence",
    batch_size: int | None = None,
    progress: bool | None = None,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
) -> dict[str, torch.Tensor]:
    """The task differential ``D = (1/N) sum_i grad[log p(good_i) - log p(bad_i)]``.

    Computed as the gradient of the *summed* margins with ``torch.autograd.grad``, one backward
    pass per token batch: good and bad sentences become rows with token weights ``+1/N`` and
    ``-1/N`` (on the critical tokens only for ``variant="critical"``). With ``batch_size=None`` and a
    model that :func:`~taskspace_utils.scoring.supports_prefix_tree`, rows are packed as prefix
    trees of at most ``batch_tokens`` positions per batch: a pair's good and bad sentence share the
    positions of their common beginning, whose ``+1/N`` and ``-1/N`` weights cancel, so the LM head
    and its backward skip them (the context they give the later tokens is still computed once).
    Otherwise rows are sorted by length and cut into batches of ``batch_size`` sentences or at most
    ``batch_tokens`` padded tokens.
    Batching and padding change the result only by floating-point summation order (tested in
    float64 to 1e-12 against a per-pair loop and a central finite difference).

    Args:
        pairs: frame with ``good`` / ``bad`` (every row is used; select the training split first)
            or a ``(goods, bads)`` tuple.
        variant: ``"sentence"`` or ``"critical"``; for ``"critical"`` pairs without critical tokens
            are excluded with a ``UserWarning`` naming how many and why (see
            :func:`critical_exclusions`) and the mean is over the remaining pairs.

    Returns:
        ``{name: tensor}`` for every trainable parameter (``model.named_parameters()`` order, tied
        parameters once), same shape and dtype as the parameter. The model's parameters,
        ``.grad`` fields and train/eval mode are unchanged (computed in eval mode: no dropout).
    """
    good_ids, bad_ids, start, end_good, end_bad, excluded = _pair_spans(tokenizer, pairs, variant)
    keep = [i for i, r in enumerate(excluded) if r is None]
    if len(keep) < len(excluded):
        reasons = pd.Series([r for r in excluded if r is not None]).value_counts().to_dict()
        warnings.warn(
            f"task_differential(variant='critical'): {len(excluded) - len(keep)} of {len(excluded)} "
            f"pair(s) have no critical tokens and are excluded: {reasons}",
            stacklevel=2,
        )
    if not keep:
        raise ValueError(f"task_differential: no pairs to average over ({len(excluded)} given, all excluded)")
    rows = _signed_rows(
        [good_ids[i] for i in keep], [bad_ids[i] for i in keep], start[keep], end_good[keep], end_bad[keep], 1.0 / len(keep)
    )
    return _weighted_gradient(model, tokenizer, rows, batch_size, batch_tokens, progress, desc="task differential")


# ---------------------------------------------------------------------------------------------
# per-pair differentials, streamed


def _default_chunk(n_params: int) -> int:
    # a chunk holds chunk x P gradient entries: 2**26 entries = 256 MB in float32
    return int(max(1, min(32, 2**26 // max(n_params, 1))))


def _resolve_method(method: str, n_params: int) -> str:
    if method == "auto":
        # benchmarks/bench_gradients.py, 32 pairs, 1 thread on a loaded 2-core machine, two runs:
        # vmap/loop time 0.64 and 0.56 at 2.9M parameters, 1.07 and 0.68 at 8.1M, 0.72 and 1.22 at
        # 17M. vmap wins up to ~10M parameters; above, it is a toss-up and holds [chunk, P]
        # gradients plus per-sample activations, so the loop is used. (The CPU SDPA kernel has no
        # batching rule: vmap falls back to a per-sample loop inside attention.)
        return "vmap" if n_params <= 10_000_000 else "loop"
    if method not in ("loop", "vmap"):
        raise ValueError(f"method={method!r}: use 'auto', 'loop' or 'vmap'")
    return method


def iter_pair_differentials(
    model,
    tokenizer,
    pairs,
    variant: str = "sentence",
    method: str = "auto",
    chunk_pairs: int | None = None,
    progress: bool | None = None,
) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
    """Yield the pairs' own differentials ``d_i`` in chunks: ``(positions, {name: [C, *shape]})``.

    ``positions`` are 0-based positions in ``pairs`` (excluded pairs of the critical variant are
    skipped). Only one chunk is held at a time (``chunk_pairs``, default ``2**26 / P`` capped to
    32), so reductions over any number of pairs stream (:func:`pair_differential_stats`).

    ``method="loop"``: one ``autograd.grad`` per pair (a 2-row batch); ``"vmap"``:
    ``torch.func.vmap(torch.func.grad(...))`` over the pairs of a chunk with the model called
    through ``functional_call``; right padding without attention mask is exact there because
    attention is causal and only real tokens are scored. ``"auto"``: vmap up to 10M parameters,
    the loop above (measured in ``benchmarks/bench_gradients.py``). Parameters, ``.grad`` and mode are left unchanged.
    """
    good_ids, bad_ids, start, end_good, end_bad, excluded = _pair_spans(tokenizer, pairs, variant)
    keep = np.array([i for i, r in enumerate(excluded) if r is None], dtype=np.int64)
    params = _trainable(model)
    n_params = sum(p.numel() for _, p in params)
    method = _resolve_method(method, n_params)
    chunk = int(chunk_pairs) if chunk_pairs else _default_chunk(n_params)
    prefix = prefix_token_id(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else prefix
    device = params[0][1].device
    dtype = params[0][1].dtype
    chunks = [keep[i : i + chunk] for i in range(0, len(keep), chunk)]
    show = len(keep) > 200 if progress is None else bool(progress)
    was_training = model.training
    model.eval()
    try:
        bar = tqdm(total=len(keep), desc=f"per-pair differentials ({method})", unit="pair", disable=not show, leave=False)
        for positions in chunks:
            ids = [good_ids[i] for i in positions] + [bad_ids[i] for i in positions]
            batch = collate_token_ids(ids, prefix, pad, device)
            starts = np.concatenate([start[positions], start[positions]])
            ends = np.concatenate([end_good[positions], end_bad[positions]])
            c = len(positions)
            signs = [1.0] * c + [-1.0] * c
            weights = _row_weights(starts, ends, signs, batch["input_ids"].shape[1], dtype).to(device)
            if method == "loop":
                out = _loop_chunk(model, params, batch, weights, c)
            else:
                out = _vmap_chunk(model, params, batch, weights, c)
            bar.update(c)
            yield positions, out
        bar.close()
    finally:
        model.train(was_training)


def _loop_chunk(model, params, batch, weights, c):
    out = {n: torch.empty((c, *p.shape), dtype=p.dtype, device=p.device) for n, p in params}
    for j in range(c):
        rows = [j, c + j]
        width = int(batch["attention_mask"][rows].sum(dim=1).max())
        sub = {k: v[rows, :width] for k, v in batch.items()}
        objective = token_logprob_sums(model, sub, token_weights=weights[rows, :width]).sum()
        grads = torch.autograd.grad(objective, [p for _, p in params], allow_unused=True)
        for (name, _), g in zip(params, grads):
            if g is None:
                out[name][j].zero_()
            else:
                out[name][j].copy_(g)
    return out


def _vmap_chunk(model, params, batch, weights, c):
    from torch.func import functional_call, grad, vmap

    width = batch["input_ids"].shape[1]
    ids = torch.stack([batch["input_ids"][:c], batch["input_ids"][c:]], dim=1)  # [C, 2, L]
    w = torch.stack([weights[:c], weights[c:]], dim=1)  # [C, 2, L]
    detached = {n: p.detach() for n, p in params}

    def margin(theta, pair_ids, pair_w):
        logits = functional_call(model, theta, (pair_ids,)).logits[:, :-1]  # [2, L-1, V]
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        lp = torch.log_softmax(logits, dim=-1).gather(-1, pair_ids[:, 1:, None]).squeeze(-1)
        return (lp * pair_w[:, 1:width].to(lp.dtype)).sum()

    with warnings.catch_warnings():  # "no batching rule for SDPA on CPU": measured, see _resolve_method
        warnings.filterwarnings("ignore", message=".*performance drop.*batching rule.*")
        return vmap(grad(margin), in_dims=(None, 0, 0))(detached, ids, w)


def _by_pair(x: torch.Tensor, pair: torch.Tensor, n_pairs: int) -> torch.Tensor:
    """Rows of ``x`` (``[N, d]``) grouped by ``pair`` (``[N]``) into a zero-padded ``[P, T, d]``."""
    order = torch.argsort(pair, stable=True)
    sorted_pair = pair[order]
    counts = torch.bincount(pair, minlength=n_pairs)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(len(pair), device=pair.device) - starts[sorted_pair]
    out = x.new_zeros((n_pairs, int(counts.max()) if len(pair) else 0, *x.shape[1:]))
    out[sorted_pair, slot] = x[order]
    return out


class _GhostNorms:
    """Per-pair squared gradient norms from one batched backward pass ("ghost norms").

    For a linear map ``y = W a + b`` applied at the tokens t of a pair, the pair's gradient is
    ``G_W = sum_t g_t a_t^T`` and ``G_b = sum_t g_t`` (``g_t = d margin / d y_t``), so
    ``||G_W||^2 = sum_{t,t'} (a_t . a_t') (g_t . g_t')`` needs only the pair's ``[T, T]`` Gram
    matrices (Goodfellow, 2015; Li et al., 2022 "ghost clipping"); an embedding row gathers
    ``g_t`` over the tokens with that id (``sum_{t,t'} [id_t = id_t'] (g_t . g_t')``), a layer
    norm's weight gets ``sum_t g_t * xhat_t``. Forward hooks keep each module's input and put a
    tensor hook on its output that receives ``g``. Covers models whose trainable parameters all
    sit in ``nn.Linear`` / ``nn.Embedding`` / ``nn.LayerNorm`` modules, each owned once (no tied
    weights); :meth:`supports` says whether a model qualifies.
    """

    TYPES = (torch.nn.Linear, torch.nn.Embedding, torch.nn.LayerNorm)

    @classmethod
    def supports(cls, model) -> bool:
        owners: dict[int, int] = {}
        for module in model.modules():
            if isinstance(module, cls.TYPES):
                for p in module.parameters(recurse=False):
                    owners[id(p)] = owners.get(id(p), 0) + 1
        return all(owners.get(id(p), 0) == 1 for _, p in _trainable(model))

    def __init__(self, model):
        self.model = model
        self.handles = []
        self.sq = None
        self.row_pair = None  # [B] pair index of each batch row
        self.selected_rows = None  # batch row of each position fed to a 2-D (scored positions) head

    def __enter__(self):
        for module in self.model.modules():
            if isinstance(module, self.TYPES) and any(p.requires_grad for p in module.parameters(recurse=False)):
                self.handles.append(module.register_forward_hook(self._forward))
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def _pairs_of(self, x: torch.Tensor) -> torch.Tensor:
        """Pair index per position of a module input: ``[B, L, d]`` activations or ``[B, L]`` ids
        (row-wise), or ``[N, d]``, the LM head applied to the scored positions only."""
        if x.dim() == 3 or (x.dim() == 2 and not x.is_floating_point()):
            if x.shape[0] != len(self.row_pair):
                raise NotImplementedError(f"ghost norms: module input of shape {tuple(x.shape)} is not [batch, length, ...]")
            return self.row_pair.repeat_interleave(x.shape[1])
        if x.dim() == 2 and x.shape[0] == len(self.selected_rows):
            return self.row_pair[self.selected_rows]
        raise NotImplementedError(f"ghost norms: unexpected module input of shape {tuple(x.shape)}")

    def _forward(self, module, inputs, output):
        x = inputs[0].detach()
        pair = self._pairs_of(x)
        if not output.requires_grad:
            return
        output.register_hook(lambda g, module=module, x=x, pair=pair: self._accumulate(module, x, g, pair))

    def _accumulate(self, module, x, g, pair):
        # Gram matrices in the model's dtype (float32 for usual models), sums in float64
        n = self.sq.shape[0]
        g = _by_pair(g.detach().reshape(-1, g.shape[-1]), pair, n)  # [P, T, d_out]
        gram_g = g @ g.transpose(1, 2)
        if isinstance(module, torch.nn.Embedding):
            ids = _by_pair(x.reshape(-1, 1), pair, n)[..., 0]  # [P, T] (padding slots: grad 0)
            same = ids[:, :, None] == ids[:, None, :]
            if module.padding_idx is not None:
                same &= (ids != module.padding_idx)[:, :, None]
            if module.weight.requires_grad:
                self.sq += (gram_g * same).double().sum((1, 2))
            return
        if isinstance(module, torch.nn.LayerNorm):
            xf = x.reshape(-1, x.shape[-1])
            xhat = (xf - xf.mean(-1, keepdim=True)) / torch.sqrt(xf.var(-1, unbiased=False, keepdim=True) + module.eps)
            xhat = _by_pair(xhat, pair, n)
            if module.weight is not None and module.weight.requires_grad:
                self.sq += (g * xhat).sum(1).double().pow(2).sum(1)
        else:  # Linear
            a = _by_pair(x.reshape(-1, x.shape[-1]), pair, n)
            if module.weight.requires_grad:
                self.sq += ((a @ a.transpose(1, 2)) * gram_g).double().sum((1, 2))
        if module.bias is not None and module.bias.requires_grad:
            self.sq += g.sum(1).double().pow(2).sum(1)


def pair_differential_norms(
    model,
    tokenizer,
    pairs,
    variant: str = "sentence",
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    progress: bool | None = None,
) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    """The summed differential ``sum_i d_i`` and every pair's ``||d_i||`` from batched passes.

    Good and bad of each pair are adjacent rows of a batch (pairs sorted by length, batches of at
    most ``batch_tokens`` padded tokens, rows *not* merged across pairs); one ``autograd.grad`` per
    batch gives the sum, and the ghost-norm hooks of :class:`_GhostNorms` give each pair's squared
    norm from the same backward pass, exactly (tested against the per-pair loop). Excluded pairs of
    the critical variant are skipped (norm NaN). Only for models :meth:`_GhostNorms.supports`
    (Linear / Embedding / LayerNorm parameters, untied); raises ``NotImplementedError`` otherwise
    (use :func:`pair_differential_stats`). Mode, ``.grad`` and parameters are left unchanged.

    Returns:
        ``({name: tensor}, norms)`` - the *sum* over kept pairs (divide by their number for ``D``)
        and a float64 array ``[len(pairs)]``.
    """
    if not _GhostNorms.supports(model):
        raise NotImplementedError("pair_differential_norms: model has parameters outside Linear/Embedding/LayerNorm "
                                  "modules or tied weights; use pair_differential_stats")
    good_ids, bad_ids, start, end_good, end_bad, excluded = _pair_spans(tokenizer, pairs, variant)
    keep = np.array([i for i, r in enumerate(excluded) if r is None], dtype=np.int64)
    if len(keep) < len(excluded):
        warnings.warn(f"pair_differential_norms(variant='critical'): {len(excluded) - len(keep)} of {len(excluded)} "
                      "pair(s) have no critical tokens and are skipped (norm NaN)", stacklevel=2)
    params = _trainable(model)
    device = params[0][1].device
    dtype = params[0][1].dtype
    prefix = prefix_token_id(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else prefix
    total = {n: torch.zeros_like(p) for n, p in params}
    norms = np.full(len(excluded), np.nan)
    lengths = np.array([max(len(good_ids[i]), len(bad_ids[i])) for i in keep])
    batches = [keep[b] for b in _batches_by_tokens(lengths, None, max(1, batch_tokens // 2))]
    show = len(batches) > 20 if progress is None else bool(progress)
    was_training = model.training
    model.eval()
    try:
        with _GhostNorms(model) as ghost:
            for index in tqdm(batches, desc="per-pair norms", unit="batch", disable=not show, leave=False):
                ids = [x for i in index for x in (good_ids[i], bad_ids[i])]
                starts = [s for i in index for s in (start[i], start[i])]
                ends = [e for i in index for e in (end_good[i], end_bad[i])]
                batch = collate_token_ids(ids, prefix, pad, device)
                weights = _row_weights(starts, ends, [1.0, -1.0] * len(index), batch["input_ids"].shape[1], dtype).to(device)
                ghost.sq = torch.zeros(len(index), dtype=torch.float64, device=device)
                ghost.row_pair = torch.arange(len(ids), device=device) // 2
                ghost.selected_rows = torch.nonzero(weights[:, 1:] != 0, as_tuple=True)[0]
                # one call of the LM head: its per-example norm needs all of a pair's positions at once
                objective = token_logprob_sums(model, batch, token_weights=weights, head_chunk_rows=0).sum()
                grads = torch.autograd.grad(objective, [p for _, p in params], allow_unused=True)
                for (name, _), g in zip(params, grads):
                    if g is not None:
                        total[name] += g
                norms[index] = ghost.sq.clamp_min(0).sqrt().cpu().numpy()
    finally:
        model.train(was_training)
    return total, norms


class ParameterSketch:
    """A seeded CountSketch ``S: R^P -> R^dim`` of parameter-shaped vectors (sparse JL projection).

    Every parameter coordinate ``j`` gets a bucket ``h(j)`` in ``[0, dim)`` and a sign ``s(j) = +-1``
    (drawn from ``torch.Generator().manual_seed(seed)``, parameter by parameter in the given
    order), and ``(S x)_b = sum_{j: h(j) = b} s(j) x_j``. Inner products are preserved in
    expectation (``E <Sx, Sy> = <x, y>``, variance ``O(||x||^2 ||y||^2 / dim)``; Charikar et al.,
    2002; the sparse JL transform of Kane & Nelson, 2014). TRAK and LESS project with dense
    Rademacher/Gaussian matrices, which on a CPU would mean ``P x dim`` entries (8M x 8,192 = 65G);
    the CountSketch needs ``5 P`` bytes and ``O(P)`` work per vector.
    """

    def __init__(self, shapes: Mapping[str, Sequence[int]], dim: int, seed: int = 0):
        if int(dim) < 1:
            raise ValueError(f"dim={dim!r}: the sketch dimension must be >= 1")
        self.dim, self.seed = int(dim), int(seed)
        generator = torch.Generator().manual_seed(self.seed)
        self.names = list(shapes)
        self.buckets, self.signs = {}, {}
        for name in self.names:
            n = int(math.prod(shapes[name]))
            self.buckets[name] = torch.randint(0, self.dim, (n,), generator=generator)
            self.signs[name] = torch.randint(0, 2, (n,), generator=generator, dtype=torch.int8) * 2 - 1

    def project(self, vectors: Mapping[str, torch.Tensor], batched: bool = True) -> torch.Tensor:
        """``[C, dim]`` sketches of a batch of vectors ``{name: [C, *shape]}`` (``batched=False``:
        one vector ``{name: shape}`` -> ``[dim]``), in float64."""
        if not batched:
            return self.project({n: v[None] for n, v in vectors.items()})[0]
        missing = [n for n in self.names if n not in vectors]
        if missing:
            raise KeyError(f"ParameterSketch.project: vectors lack parameter(s) {missing[:3]}")
        c = next(iter(vectors.values())).shape[0]
        out = torch.zeros(c, self.dim, dtype=torch.float64)
        for name in self.names:
            flat = vectors[name].detach().reshape(c, -1).cpu().double()
            out.index_add_(1, self.buckets[name], flat * self.signs[name].double())
        return out


def pair_differential_stats(
    model,
    tokenizer,
    pairs,
    variant: str = "sentence",
    method: str = "auto",
    groups: Sequence[int] | None = None,
    sketch: ParameterSketch | None = None,
    chunk_pairs: int | None = None,
    progress: bool | None = None,
) -> dict:
    """Streamed reductions over the pairs' own differentials ``d_i`` (never all in memory).

    Args:
        groups: optional group label (int) per pair (e.g. split halves); group means are returned.
        sketch: optional :class:`ParameterSketch`; returns every pair's sketch ``[N, dim]``.

    Returns:
        dict with ``positions`` (kept pair positions), ``n_pairs``, ``mean`` (``{name: tensor}``:
        equals :func:`task_differential` up to rounding), ``norms`` (``[N]`` float64,
        ``||d_i||``), ``mean_norm``, ``norm_of_mean``, ``group_means`` (``{label: {name: tensor}}``)
        and ``sketches`` (``[N, dim]`` or ``None``).
    """
    params = _trainable(model)
    acc = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in params}
    group_arr = None if groups is None else np.asarray(groups)
    group_acc: dict = {}
    group_n: dict = {}
    if group_arr is not None:
        for label in np.unique(group_arr):
            group_acc[int(label)] = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in params}
            group_n[int(label)] = 0
    norms, positions_all, sketches = [], [], []
    for positions, chunk in iter_pair_differentials(model, tokenizer, pairs, variant, method, chunk_pairs, progress):
        sq = torch.zeros(len(positions), dtype=torch.float64)
        for name, g in chunk.items():
            flat = g.reshape(len(positions), -1).double()
            sq += (flat * flat).sum(dim=1).cpu()
            acc[name] += flat.sum(dim=0).reshape(acc[name].shape)
            if group_arr is not None:
                labels = group_arr[positions]
                for label in np.unique(labels):
                    sel = torch.as_tensor(np.flatnonzero(labels == label))
                    group_acc[int(label)][name] += flat[sel].sum(dim=0).reshape(acc[name].shape)
        if group_arr is not None:
            for label in group_arr[positions]:
                group_n[int(label)] += 1
        if sketch is not None:
            sketches.append(sketch.project(chunk))
        norms.append(sq.sqrt().numpy())
        positions_all.append(positions)
    n = int(sum(len(p) for p in positions_all))
    if n == 0:
        raise ValueError("pair_differential_stats: no pairs (all excluded or none given)")
    dtypes = {name: p.dtype for name, p in params}
    mean = {name: (t / n).to(dtypes[name]) for name, t in acc.items()}
    norm_of_mean = math.sqrt(sum(float((t / n).pow(2).sum()) for t in acc.values()))
    norms_arr = np.concatenate(norms)
    return {
        "positions": np.concatenate(positions_all),
        "n_pairs": n,
        "mean": mean,
        "norms": norms_arr,
        "mean_norm": float(norms_arr.mean()),
        "norm_of_mean": norm_of_mean,
        "group_means": {
            label: {name: (t / max(group_n[label], 1)).to(dtypes[name]) for name, t in d.items()}
            for label, d in group_acc.items()
        },
        "group_sizes": group_n,
        "sketches": torch.cat(sketches) if sketches else None,
    }


# ---------------------------------------------------------------------------------------------
# subnetworks and spaces


def _flat_abs(differentials: Mapping[str, torch.Tensor]) -> torch.Tensor:
    parts = []
    for name, t in differentials.items():
        if not torch.is_floating_point(t):
            raise TypeError(f"differential {name!r}: expected a floating tensor, got {t.dtype}")
        if not torch.isfinite(t).all():
            raise ValueError(f"differential {name!r} has NaN or infinite entries")
        parts.append(t.detach().reshape(-1).abs().cpu())
    return torch.cat(parts) if parts else torch.zeros(0)


def _top_count(values: torch.Tensor, count: int) -> torch.Tensor:
    """Bool mask of the ``count`` largest values; ties go to the lower flat index.

    Same result as taking the first ``count`` of a stable descending sort, in ``O(n)``:
    every value above the ``count``-th largest ``v``, then the values equal to ``v`` in index order
    until ``count`` are chosen.
    """
    n = values.numel()
    count = int(count)
    if count <= 0:
        return torch.zeros(n, dtype=torch.bool)
    if count >= n:
        return torch.ones(n, dtype=torch.bool)
    threshold = values.new_tensor(np.partition(values.numpy(), n - count)[n - count])  # O(n) selection
    mask = values > threshold
    need = count - int(mask.sum())
    ties = torch.nonzero(values == threshold).reshape(-1)[:need]
    mask[ties] = True
    return mask


def subnetwork_masks(differentials: Mapping[str, torch.Tensor], k: float, per_module: bool = False) -> dict[str, torch.Tensor]:
    """Task subnetwork ``M_t(k)``: the top-``k`` fraction of parameters by ``|D_t|``.

    Global (default): ``round(k * P)`` True entries over all ``P`` entries of ``differentials``
    (Python's ``round``, half to even), chosen from the concatenation of the flattened tensors in
    dict order; ties are broken by a stable descending sort, i.e. towards the earlier parameter /
    lower flat index, so the mask is deterministic (computed with a selection of the threshold, not a
    full sort). ``per_module=True``: ``round(k * numel)`` within
    every parameter tensor, so every tensor (embedding, each layer's attention and MLP weights,
    norms) is represented. Returns ``{name: BoolTensor}`` with the parameters' shapes (on CPU).
    """
    k = float(k)
    if not 0.0 <= k <= 1.0:
        raise ValueError(f"k={k!r}: a fraction of parameters in [0, 1]")
    if per_module:
        return {
            name: _top_count(_flat_abs({name: t}), round(k * t.numel())).reshape(t.shape)
            for name, t in differentials.items()
        }
    flat = _flat_abs(differentials)
    mask = _top_count(flat, round(k * flat.numel()))
    out, offset = {}, 0
    for name, t in differentials.items():
        out[name] = mask[offset : offset + t.numel()].reshape(t.shape)
        offset += t.numel()
    return out


def pack_masks(masks: Mapping[str, torch.Tensor], names: Sequence[str]) -> np.ndarray:
    """The masks of ``names`` (in that order), flattened, concatenated and bit-packed
    (``numpy.packbits``: P/8 bytes), for Jaccard overlaps of many tasks' subnetworks."""
    flat = np.concatenate([masks[n].detach().reshape(-1).cpu().numpy().astype(bool) for n in names])
    return np.packbits(flat)


def packed_jaccard_space(packed: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """Tasks x tasks Jaccard ``|a & b| / |a | b|`` of bit-packed masks (:func:`pack_masks`); NaN
    where both masks are empty."""
    tasks = list(packed)
    counts = {t: int(np.bitwise_count(packed[t]).sum()) for t in tasks}
    out = np.full((len(tasks), len(tasks)), np.nan)
    for i, a in enumerate(tasks):
        for j in range(i, len(tasks)):
            b = tasks[j]
            inter = int(np.bitwise_count(packed[a] & packed[b]).sum())
            union = counts[a] + counts[b] - inter
            out[i, j] = out[j, i] = inter / union if union else np.nan
    frame = pd.DataFrame(out, index=pd.Index(tasks, name="task"), columns=pd.Index(tasks, name="task"))
    return frame


def _task_names(by_task: Mapping[str, Mapping[str, torch.Tensor]], caller: str) -> tuple[list[str], list[str]]:
    """``(tasks, parameter names)`` of a ``{task: {name: tensor}}`` mapping; raises ``ValueError``
    naming ``caller`` when it is empty or a task holds other parameter names than the first."""
    tasks = list(by_task)
    if not tasks:
        raise ValueError(f"{caller}: no tasks")
    names = list(by_task[tasks[0]])
    for t in tasks[1:]:
        if list(by_task[t]) != names:
            raise ValueError(f"{caller}: task {t!r} has other parameters than task {tasks[0]!r}")
    return tasks, names


def mask_overlap_space(masks_by_task: Mapping[str, Mapping[str, torch.Tensor]]) -> pd.DataFrame:
    """Jaccard overlap ``|M_t & M_u| / |M_t | M_u|`` of task subnetworks (tasks x tasks).

    All tasks must mask the same parameters (same names and shapes). The diagonal is 1; two empty
    masks give NaN. Masks are bit-packed (``P / 8`` bytes per task) and compared with popcounts.
    """
    tasks, names = _task_names(masks_by_task, "mask_overlap_space")
    return packed_jaccard_space({t: pack_masks(masks_by_task[t], names) for t in tasks})


_LAYER = re.compile(r"\.(?:layers|h|blocks|layer)\.(\d+)\.")
_ATTN_KEYS = ("attention", "attn", "input_layernorm", "ln_1", "self_attn")
_MLP_KEYS = ("mlp", "post_attention_layernorm", "ln_2", "feed_forward", "ffn")


def module_groups(model_or_param_names) -> dict[str, str]:
    """Map parameter names to modules: ``embed``, ``layer{i}.attention``, ``layer{i}.mlp``,
    ``final_norm``, ``head`` (and ``layer{i}.other`` / ``other`` for anything else).

    A layer's pre-attention norm belongs to its attention, its pre-MLP norm to its MLP. Names of
    GPT-NeoX (``gpt_neox.layers.3.attention.dense.weight``), GPT-2 (``transformer.h.3.attn``) and
    Llama-style models (``model.layers.3.self_attn``) are recognised. Accepts a model (its trainable
    parameters) or an iterable of names; returns ``{name: module}`` in the given order.
    """
    names = [n for n, _ in _trainable(model_or_param_names)] if hasattr(model_or_param_names, "named_parameters") else list(model_or_param_names)
    out = {}
    for name in names:
        m = _LAYER.search("." + name)
        if m:
            rest = ("." + name)[m.end() :]
            if any(rest.startswith(key) or f".{key}" in "." + rest for key in _ATTN_KEYS):
                out[name] = f"layer{m.group(1)}.attention"
            elif any(rest.startswith(key) or f".{key}" in "." + rest for key in _MLP_KEYS):
                out[name] = f"layer{m.group(1)}.mlp"
            else:
                out[name] = f"layer{m.group(1)}.other"
        elif any(key in name for key in ("embed_in", "wte", "wpe", "embed_tokens", "embed_positions")):
            out[name] = "embed"
        elif any(key in name for key in ("embed_out", "lm_head")):
            out[name] = "head"
        elif any(key in name for key in ("final_layer_norm", "ln_f", "norm")):
            out[name] = "final_norm"
        else:
            out[name] = "other"
    return out


def _module_order(labels) -> list[str]:
    def key(label: str):
        m = re.match(r"layer(\d+)\.(\w+)", label)
        if label == "embed":
            return (0, 0, 0)
        if m:
            return (1, int(m.group(1)), {"attention": 0, "mlp": 1}.get(m.group(2), 2))
        return (2, {"final_norm": 0, "head": 1}.get(label, 2), 0)

    return sorted(set(labels), key=key)


def _grams(get_stack: Callable[[str], torch.Tensor], names: Sequence[str], metric: str, desc: str = "gram",
           progress: bool | None = None):
    """Per-parameter Gram matrices ``X_p X_p^T`` (``[T, T]`` float64) and row sums ``X_p 1``,
    accumulated in float64 over column blocks of 2**18 entries (67 tasks: 140 MB per block)."""
    grams, sums, counts = {}, {}, {}
    show = len(names) >= 50 if progress is None else bool(progress)
    for name in tqdm(names, desc=desc, unit="tensor", disable=not show, leave=False):
        x = get_stack(name)  # [T, n]
        gram = torch.zeros(x.shape[0], x.shape[0], dtype=torch.float64)
        total = torch.zeros(x.shape[0], dtype=torch.float64)
        for start in range(0, x.shape[1], 2**18):
            block = x[:, start : start + 2**18].double()
            gram += block @ block.T
            total += block.sum(dim=1)
        grams[name], sums[name], counts[name] = gram, total, x.shape[1]
    return grams, sums, counts


def _space_from(grams, sums, counts, names, tasks, metric) -> pd.DataFrame:
    g = sum(grams[n] for n in names)
    if metric == "pearson":
        s = sum(sums[n] for n in names)
        g = g - torch.outer(s, s) / sum(counts[n] for n in names)
    if metric in ("cosine", "pearson"):
        norm = g.diagonal().clamp_min(0).sqrt()
        g = g / torch.outer(norm, norm)
        g = torch.where(torch.outer(norm, norm) > 0, g, torch.full_like(g, float("nan")))
    return pd.DataFrame(g.numpy(), index=pd.Index(tasks, name="task"), columns=pd.Index(tasks, name="task"))


def gradient_space(
    differentials_by_task: Mapping[str, Mapping[str, torch.Tensor]],
    metric: str = "cosine",
    by: str = "model",
) -> pd.DataFrame | dict[str, pd.DataFrame]:
    """The gradient task space: similarity of task differentials, tasks x tasks.

    ``metric``: ``"cosine"`` ``<D_t, D_u> / (||D_t|| ||D_u||)`` over all parameters (or a module's);
    ``"pearson"``: the cosine of the vectors centred by their mean entry; ``"dot"``: ``<D_t, D_u>``.
    A zero differential gives NaN cosines. ``by="model"``: one ``DataFrame`` (index and columns
    the tasks, in the given order); ``by="module"``: ``{module: DataFrame}`` for every module of
    :func:`module_groups` (embed, layer{i}.attention, layer{i}.mlp, final_norm, head), in network
    order. Accumulated in float64 from per-tensor Gram matrices.
    """
    if metric not in METRICS:
        raise ValueError(f"metric={metric!r}: use one of {METRICS}")
    if by not in ("model", "module"):
        raise ValueError(f"by={by!r}: use 'model' or 'module'")
    tasks, names = _task_names(differentials_by_task, "gradient_space")

    def stack(name):
        return torch.stack([differentials_by_task[t][name].detach().reshape(-1).cpu() for t in tasks])

    grams, sums, counts = _grams(stack, names, metric)
    return _spaces_from_grams(grams, sums, counts, names, tasks, metric, by)


def _spaces_from_grams(grams, sums, counts, names, tasks, metric, by):
    if by == "model":
        return _space_from(grams, sums, counts, names, tasks, metric)
    groups = module_groups(names)
    return {
        module: _space_from(grams, sums, counts, [n for n in names if groups[n] == module], tasks, metric)
        for module in _module_order(groups.values())
    }


# ---------------------------------------------------------------------------------------------
# all tasks of one model, on disk


def _train_pairs(pairs: pd.DataFrame, config: GradientConfig) -> pd.DataFrame:
    if "task" not in pairs.columns:
        raise ValueError("pairs: missing column 'task'")
    if "split" in pairs.columns:
        train = pairs[pairs["split"] == "train"]
        if train.empty:
            raise ValueError("pairs: the 'split' column has no 'train' rows")
    else:
        sizes = pairs.groupby("task").size()
        train = split_pairs(pairs, min(int(config.n_train), int(sizes.min())), 0, seed=config.seed)
    return train.groupby("task", sort=True, group_keys=False).head(int(config.n_train))


def _pairs_sha(frame: pd.DataFrame) -> str:
    text = "\n".join(f"{g}\t{b}" for g, b in zip(frame["good"].astype(str), frame["bad"].astype(str)))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _halves(task: str, n: int, seed: int) -> np.ndarray:
    """Seeded split-half labels (0/1, sizes differing by at most one) for ``n`` pairs of ``task``."""
    digest = hashlib.sha256(f"{int(seed)}:{task}:halves".encode("utf-8")).digest()
    order = np.random.Generator(np.random.PCG64(int.from_bytes(digest[:8], "little"))).permutation(n)
    labels = np.zeros(n, dtype=np.int64)
    labels[order[n // 2 :]] = 1
    return labels


def _cosine(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    dot = sum(float((a[n].double() * b[n].double()).sum()) for n in a)
    na = math.sqrt(sum(float(a[n].double().pow(2).sum()) for n in a))
    nb = math.sqrt(sum(float(b[n].double().pow(2).sum()) for n in b))
    return dot / (na * nb) if na > 0 and nb > 0 else float("nan")


def _norm(a: Mapping[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in a.values()))


def _task_file(out_dir: Path, task: str) -> Path:
    if not task or "/" in task or task.startswith("."):
        raise ValueError(f"task name {task!r} cannot be a file name")
    return out_dir / "differentials" / f"{task}.safetensors"


def _task_metadata(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata() or {}
    return {k: json.loads(v) for k, v in meta.items()}


def _pooled_mean(means: Sequence[Mapping[str, torch.Tensor] | None], sizes: Sequence[int]) -> dict[str, torch.Tensor]:
    """``sum_g n_g mean_g / sum_g n_g`` over the groups present, in float64, cast back."""
    present = [(m, n) for m, n in zip(means, sizes) if m is not None]
    return {
        name: (sum(m[name].double() * n for m, n in present) / sum(n for _, n in present)).to(t.dtype)
        for name, t in present[0][0].items()
    }


def _compute_task(model, tokenizer, task: str, frame: pd.DataFrame, config: GradientConfig, sketch, progress):
    """Differential and statistics of one task (see :func:`extract_task_differentials`)."""
    n_given = len(frame)
    if config.variant == "critical":
        reasons = critical_exclusions(frame, tokenizer)
        excluded = frame.loc[reasons.notna(), "pair_id"].tolist() if "pair_id" in frame.columns else list(np.flatnonzero(reasons.notna()))
        frame = frame[reasons.isna().to_numpy()]
        if excluded:
            log.warning("task %s: %d pair(s) without critical tokens excluded: %s", task, len(excluded), dict(reasons.value_counts()))
    else:
        excluded = []
    if frame.empty:
        raise ValueError(f"task {task!r}: no pairs left ({n_given} given, {len(excluded)} without critical tokens)")
    halves = _halves(task, len(frame), config.seed)
    stats = {"task": task, "n_pairs": len(frame), "n_excluded": len(excluded)}
    sketches = None
    method = config.per_pair_method
    if method == "auto" and not config.projection_dim and _GhostNorms.supports(model):
        method = "ghost"  # else pair_differential_stats resolves "auto" to vmap or loop
    sizes = [int((halves == label).sum()) for label in (0, 1)]
    if config.per_pair and method == "ghost":
        half, norms = [None, None], np.full(len(frame), np.nan)
        for label in (0, 1):
            chosen = halves == label
            if chosen.any():
                total, norms[chosen] = pair_differential_norms(model, tokenizer, frame[chosen], config.variant, config.batch_tokens)
                half[label] = {name: t / sizes[label] for name, t in total.items()}
        mean = _pooled_mean(half, sizes)
        stats["mean_norm"] = float(np.mean(norms))
    elif config.per_pair:
        result = pair_differential_stats(
            model, tokenizer, frame, config.variant, method=method, groups=halves,
            sketch=sketch, progress=progress,
        )
        mean = result["mean"]
        half = [result["group_means"].get(label) for label in (0, 1)]
        stats["mean_norm"] = result["mean_norm"]
        sketches = result["sketches"]
    else:
        half = [
            task_differential(model, tokenizer, frame[halves == label], config.variant, batch_tokens=config.batch_tokens)
            if sizes[label] else None
            for label in (0, 1)
        ]
        mean = _pooled_mean(half, sizes)
        stats["mean_norm"] = float("nan")
    stats["norm_of_mean"] = _norm(mean)
    stats["consistency"] = stats["norm_of_mean"] / stats["mean_norm"] if stats["mean_norm"] > 0 else float("nan")
    stats["split_half_cosine"] = _cosine(half[0], half[1]) if half[0] is not None and half[1] is not None else float("nan")
    return mean, stats, excluded, sketches


def extract_task_differentials(
    model,
    tokenizer,
    pairs: pd.DataFrame,
    out_dir,
    config: GradientConfig | None = None,
    tasks: Sequence[str] | None = None,
    progress: bool | None = None,
) -> pd.DataFrame:
    """Task differentials of every task to ``out_dir``, resumable; returns the statistics frame.

    For each task (its first ``config.n_train`` training pairs, see :class:`GradientConfig`):
    ``D_t`` (and, with ``per_pair``, the per-pair norms and optional sketches) is computed and
    written atomically to ``differentials/<task>.safetensors`` with the config, the pairs' hash,
    the excluded pair ids and the statistics in the file's metadata (``sketches/<task>.safetensors``
    first when ``projection_dim``). A task whose file exists is skipped (a file from other pairs
    raises :class:`~taskspace_utils.results.ConfigMismatchError`); ``config.json`` is checked by
    :func:`~taskspace_utils.results.ensure_run_config`, so one folder never mixes configs.

    After the tasks, over all files in the folder: ``differential_stats.parquet`` (one row per
    task: ``n_pairs``, ``n_excluded``, ``norm_of_mean`` ``||D_t||``, ``mean_norm``
    ``mean_i ||d_i||``, ``consistency`` = their ratio, ``split_half_cosine``),
    ``task_space_gradient.csv`` (the ``config.metric`` space), ``task_space_gradient_modules.parquet``
    (long format: module, task, other, value) and ``mask_overlap.csv`` (Jaccard of
    ``M_t(config.k)``).
    """
    config = config if config is not None else GradientConfig()
    out_dir = Path(out_dir)
    ensure_run_config(out_dir, config)
    train = _train_pairs(pairs, config)
    all_tasks = sorted(train["task"].unique())
    if tasks is not None:
        unknown = [t for t in tasks if t not in set(all_tasks)]
        if unknown:
            raise KeyError(f"tasks {unknown} have no training pairs in `pairs`")
        all_tasks = [t for t in all_tasks if t in set(tasks)]
    params = _trainable(model)
    sketch = None
    if config.per_pair and config.projection_dim:
        sketch = ParameterSketch({n: p.shape for n, p in params}, config.projection_dim, config.seed)
    by_task = {t: g for t, g in train.groupby("task", sort=True)}
    for task in tqdm(all_tasks, desc="task differentials", unit="task", disable=progress is False):
        frame = by_task[task]
        path = _task_file(out_dir, task)
        sha = _pairs_sha(frame)
        if path.exists():
            found = _task_metadata(path).get("pairs_sha")
            if found != sha:
                raise ConfigMismatchError(f"{path}: computed from other pairs of task {task!r}; use another out_dir")
            continue
        mean, stats, excluded, sketches = _compute_task(model, tokenizer, task, frame, config, sketch, False)
        if sketches is not None:
            atomic_save_safetensors(out_dir / "sketches" / f"{task}.safetensors", {"sketch": sketches},
                                    metadata={"task": task, "pairs_sha": sha, "config": config})
        atomic_save_safetensors(path, mean, metadata={
            "task": task, "config": config, "pairs_sha": sha, "stats": stats, "excluded_pair_ids": excluded,
        })  # fmt: skip
    return summarise_run(out_dir, config, progress)


def summarise_run(out_dir, config: GradientConfig | None = None, progress: bool | None = None) -> pd.DataFrame:
    """(Re)write the run's tables from its ``differentials/*.safetensors``: statistics, the gradient
    space (whole model and per module) and the mask-overlap space. Streams one parameter tensor of
    all tasks at a time, so the folder may hold more than fits in memory."""
    from safetensors import safe_open

    out_dir = Path(out_dir)
    files = sorted((out_dir / "differentials").glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{out_dir}: no differentials/*.safetensors (run extract_task_differentials first)")
    metas = [_task_metadata(f) for f in files]
    if config is None:
        config = GradientConfig(**metas[0]["config"])
    tasks = [m["task"] for m in metas]
    stats = pd.DataFrame([m["stats"] for m in metas]).set_index("task")
    atomic_write_parquet(out_dir / "differential_stats.parquet", stats)
    handles = [safe_open(str(f), framework="pt") for f in files]
    names = list(handles[0].keys())

    grams, sums, counts = _grams(lambda n: torch.stack([h.get_tensor(n).reshape(-1) for h in handles]), names,
                                 config.metric, "gradient space", progress)
    space = _spaces_from_grams(grams, sums, counts, names, tasks, config.metric, "model")
    atomic_write_csv(out_dir / "task_space_gradient.csv", space)
    modules = _spaces_from_grams(grams, sums, counts, names, tasks, config.metric, "module")
    long = pd.concat(
        [s.rename_axis(index="task", columns="other").stack().rename("value").reset_index().assign(module=m) for m, s in modules.items()],
        ignore_index=True,
    )[["module", "task", "other", "value"]]
    atomic_write_parquet(out_dir / "task_space_gradient_modules.parquet", long, index=False)

    packed = {}
    show = len(tasks) >= 20 if progress is None else bool(progress)
    for task, handle in zip(tqdm(tasks, desc="masks", unit="task", disable=not show, leave=False), handles):
        diff = {n: handle.get_tensor(n) for n in names}
        packed[task] = pack_masks(subnetwork_masks(diff, config.k, config.per_module), names)
    atomic_write_csv(out_dir / "mask_overlap.csv", packed_jaccard_space(packed))
    return stats


def load_task_differentials(out_dir, tasks: Sequence[str] | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """``{task: {name: tensor}}`` from a run folder (all tasks, or ``tasks`` in the given order).

    Memory: ``n_tasks x P`` entries (67 tasks of an 8M-parameter model: 2.2 GB in float32); for
    the spaces prefer the tables :func:`extract_task_differentials` wrote."""
    from safetensors.torch import load_file

    out_dir = Path(out_dir)
    if tasks is None:
        files = sorted((out_dir / "differentials").glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"{out_dir}: no differentials/*.safetensors")
        return {f.stem: load_file(str(f)) for f in files}
    out = {}
    for task in tasks:
        path = _task_file(out_dir, task)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no differential for task {task!r} (not extracted yet?)")
        out[task] = load_file(str(path))
    return out


def load_gradient_spaces(out_dir, by: str = "model", name: str = "gradient") -> pd.DataFrame | dict[str, pd.DataFrame]:
    """Read back a run's spaces: ``by="model"`` the ``task_space_gradient.csv`` frame, ``"module"``
    ``{module: frame}`` from ``task_space_gradient_modules.parquet`` (network order);
    ``name="mask_overlap"`` the Jaccard space of ``mask_overlap.csv``."""
    out_dir = Path(out_dir)
    if name == "mask_overlap":
        return pd.read_csv(out_dir / "mask_overlap.csv", index_col=0)
    if name != "gradient":
        raise ValueError(f"name={name!r}: use 'gradient' or 'mask_overlap'")
    if by == "model":
        return pd.read_csv(out_dir / "task_space_gradient.csv", index_col=0)
    if by != "module":
        raise ValueError(f"by={by!r}: use 'model' or 'module'")
    long = pd.read_parquet(out_dir / "task_space_gradient_modules.parquet")
    tasks = list(dict.fromkeys(long["task"]))
    out = {}
    for module in _module_order(long["module"].unique()):
        part = long[long["module"] == module].pivot(index="task", columns="other", values="value")
        out[module] = part.loc[tasks, tasks].rename_axis(index="task", columns="task")
    return out


def summarise_module_spaces(spaces: Mapping[str, pd.DataFrame], metadata: pd.DataFrame) -> pd.DataFrame:
    """Where in the network tasks share signal: per space (e.g. per module), the mean off-diagonal
    similarity over all task pairs, over pairs of the same phenomenon, of different phenomena
    within a field and of different fields (``metadata``: index task, columns ``phenomenon`` and
    ``field``, e.g. :func:`taskspace_utils.data.task_metadata`). Each unordered pair counts once;
    NaN entries are skipped. Rows in the order of ``spaces``."""
    rows = []
    for key, space in spaces.items():
        tasks = list(space.index)
        meta = metadata.loc[tasks]
        values = space.loc[tasks, tasks].to_numpy(dtype=float)
        upper = np.triu(np.ones_like(values, dtype=bool), k=1) & ~np.isnan(values)
        phen = meta["phenomenon"].to_numpy(dtype=object)
        field = meta["field"].to_numpy(dtype=object)
        same_p = phen[:, None] == phen[None, :]
        same_f = field[:, None] == field[None, :]
        pick = lambda m: float(values[upper & m].mean()) if (upper & m).any() else float("nan")  # noqa: E731
        rows.append({
            "space": key, "all_pairs": pick(np.ones_like(upper)), "same_phenomenon": pick(same_p),
            "same_field_other_phenomenon": pick(same_f & ~same_p), "other_field": pick(~same_f),
        })  # fmt: skip
    return pd.DataFrame(rows).set_index("space")


def load_differential_stats(out_dir) -> pd.DataFrame:
    """The per-task statistics table of a run folder (``differential_stats.parquet``)."""
    path = Path(out_dir) / "differential_stats.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{path}: not written yet (run extract_task_differentials)")
    return pd.read_parquet(path)
