"""Gradient differentials of minimal pairs and the task differential ``D_t`` (batched backward).

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
  :class:`taskspace_utils.encoding.EncodedPairs`) up to the start of the common token suffix
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
computed with one batched backward pass per token batch (:func:`task_differential`).

Here: :func:`critical_exclusions`; :func:`encode_pairs`, :func:`pair_margins`,
:func:`batch_margins` (differentiable per-pair margins, reused by FTGD); :func:`task_differential`.
Every function that takes ``(tokenizer, pairs)`` also takes an :class:`~taskspace_utils.encoding.EncodedPairs`
as ``pairs`` (the pairs are then not tokenised again).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..batching import plan_batches
from ..encoding import check_variant, encode, pad_token_id, prefix_token_id
from ..models import accumulation_dtype, eval_mode, model_dtype
from ..padded import (
    DEFAULT_BATCH_TOKENS,
    collate_token_ids,
    span_weights,
    token_logprob_sums,
)
from ..prefix_tree import (
    prefix_tree_logprobs,
    prefix_tree_sums,
    supports_prefix_tree,
)

__all__ = ["critical_exclusions", "encode_pairs", "pair_margins", "batch_margins", "task_differential",
           "MARGIN_TREE_ROW_TOKENS"]

#: Positions per prefix-tree row in :func:`batch_margins` (an FTGD step). Shorter than scoring's
#: 128: a step's 16 pairs fill about 350 positions, and a row's attention costs its width squared.
#: Measured on tiny-m, 2 cores, one FTGD run (50 steps x 16 pairs) of 4 tasks, seconds: padded
#: 3.9 / 3.7-4.3 / 2.6 / 2.9; rows of 16: 3.4 / 3.6 / 2.0 / 2.1; 24: 3.2 / 3.1 / 1.8 / 2.0;
#: 32: 3.0 / 3.1 / 1.8 / 2.0; 48: 3.0 / 3.0 / 1.8 / 2.0; 64: 3.0 / 2.6 / 1.8 / 2.0; 128: 3.0 / 2.6 / 2.1 / 2.1.
MARGIN_TREE_ROW_TOKENS = 48


def _trainable(model) -> list[tuple[str, torch.nn.Parameter]]:
    """``(name, parameter)`` of the trainable parameters; ``ValueError`` when there are none."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters (requires_grad is False everywhere)")
    return params


# ---------------------------------------------------------------------------------------------
# pairs -> scored token spans


def critical_exclusions(pairs, tokenizer) -> pd.Series:
    """Why a pair has no critical-token differential: a string per pair, ``None`` when it has one.

    With ``p`` = the common token-prefix length (:class:`taskspace_utils.encoding.EncodedPairs`),
    the critical span of a sentence starts at its token ``p`` (see the module docstring). Reasons:
    ``"identical tokens"`` (good and bad tokenise identically), ``"good is a prefix of bad"`` and
    ``"bad is a prefix of good"`` (one sentence has no token after ``p``). Index: ``pairs``' index
    (a range for lists). ``pairs`` may be an ``EncodedPairs``.
    """
    return encode(tokenizer, pairs).excluded


def _pair_spans(tokenizer, pairs, variant: str):
    """Token ids of good and bad and the scored token span ``[start, end)`` of each sentence.

    Returns ``(good_ids, bad_ids, start, end_good, end_bad, excluded)``: the spans of
    :meth:`EncodedPairs.spans <taskspace_utils.encoding.EncodedPairs.spans>` - for ``"sentence"``
    the whole sentence less the common token prefix (whose terms cancel exactly), for
    ``"critical"`` the critical spans. ``excluded`` holds the reasons of
    :func:`critical_exclusions` (all ``None`` for ``"sentence"``).
    """
    check_variant(variant)
    enc = encode(tokenizer, pairs)
    empty = np.flatnonzero((enc.n_good == 0) | (enc.n_bad == 0)).tolist()
    if empty:
        raise ValueError(f"pairs at positions {empty[:5]} have a sentence with no tokens")
    start, end_good, end_bad = enc.spans(variant)
    # sentence variant: the tokens of the common prefix have the same context in good and bad,
    # hence the same log-probability: their terms cancel exactly in the margin and are not scored
    # (saves the LM head and its backward at those positions; the tokens still feed the later ones)
    excluded = list(enc.excluded) if variant == "critical" else [None] * len(enc)
    return enc.good_ids, enc.bad_ids, start, end_good, end_bad, excluded


def _scored_spans(tokenizer, pairs, variant: str):
    """:func:`_pair_spans` without ``excluded``, raising ``ValueError`` (naming them) when some pair
    has no critical tokens (``variant="critical"``): a margin needs tokens on both sides."""
    good_ids, bad_ids, start, end_good, end_bad, excluded = _pair_spans(tokenizer, pairs, variant)
    bad_rows = [(i, r) for i, r in enumerate(excluded) if r is not None]
    if bad_rows:
        raise ValueError(
            f"{len(bad_rows)} pair(s) have no critical tokens (variant='critical'), e.g. "
            f"{bad_rows[:3]} (position, reason); drop them using critical_exclusions(pairs, tokenizer)"
        )
    return good_ids, bad_ids, start, end_good, end_bad


def encode_pairs(tokenizer, pairs, variant: str = "sentence", device=None, dtype=torch.float32) -> dict:
    """Collate B pairs into one batch of 2B rows (goods, then bads) for :func:`pair_margins`.

    Args:
        pairs: a frame with ``good`` / ``bad`` columns, a ``(goods, bads)`` tuple of lists, or an
            :class:`~taskspace_utils.encoding.EncodedPairs`.
        variant: ``"sentence"`` or ``"critical"``; for ``"critical"`` a pair without critical
            tokens (see :func:`critical_exclusions`) raises ``ValueError`` naming it - filter first.

    Returns:
        the :func:`taskspace_utils.padded.collate_token_ids` batch (``input_ids``,
        ``attention_mask``, ``score_mask``: ``[2B, L]``) plus ``token_weights`` (``[2B, L]``, 1 on
        the scored tokens) and ``n_pairs``. Encoding once and reusing the batch saves the
        collation in training loops.
    """
    good_ids, bad_ids, start, end_good, end_bad = _scored_spans(tokenizer, pairs, variant)
    ids = good_ids + bad_ids
    batch = collate_token_ids(ids, prefix_token_id(tokenizer), pad_token_id(tokenizer))
    starts, ends = np.concatenate([start, start]), np.concatenate([end_good, end_bad])
    batch["token_weights"] = span_weights(starts, ends, [1.0] * len(ids), batch["input_ids"].shape[1], dtype)
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
    weights = encoded["token_weights"].to(encoded["input_ids"].device, accumulation_dtype(model_dtype(model)))
    sums = token_logprob_sums(model, encoded, token_weights=weights)
    n = int(encoded["n_pairs"])
    return sums[:n] - sums[n:]


def batch_margins(model, tokenizer, pairs, variant: str = "sentence") -> torch.Tensor:
    """Differentiable per-pair margins ``[B]``, equal (up to float rounding) to :func:`pair_margins`
    of :func:`encode_pairs`, and to ``score_pairs(...)["margin"]`` for ``"sentence"``.

    ``pairs`` is a frame with ``good`` / ``bad``, a ``(goods, bads)`` tuple or an
    ``EncodedPairs``; for ``variant="critical"`` only the critical tokens count (pairs without any
    raise). For a model that :func:`~taskspace_utils.prefix_tree.supports_prefix_tree`, the 2B
    sentences run as prefix trees (rows of :data:`MARGIN_TREE_ROW_TOKENS` positions): a pair's good
    and bad sentence share the positions of their common beginning, and no row is padded to the
    longest sentence, so an FTGD step feeds fewer positions through the model than the padded batch
    of :func:`encode_pairs`, which other models use. Each margin is then

        m_i = sum over the scored nodes of good_i of log p(node) - the same over bad_i

    from :func:`~taskspace_utils.prefix_tree.prefix_tree_sums` (tested in float64 to 1e-10
    against the padded path, margins and gradients).
    """
    device = next(model.parameters()).device
    if not supports_prefix_tree(model):
        return pair_margins(model, encode_pairs(tokenizer, pairs, variant, device=device))
    good_ids, bad_ids, start, end_good, end_bad = _scored_spans(tokenizer, pairs, variant)
    n = len(good_ids)
    if n == 0:
        raise ValueError("batch_margins: no pairs")
    plan = plan_batches(good_ids + bad_ids, prefix_token_id(tokenizer), pad_token_id(tokenizer), tree=True,
                        row_tokens=MARGIN_TREE_ROW_TOKENS, ranges=(np.concatenate([start, start]),
                                                                   np.concatenate([end_good, end_bad])), device=device)
    # the dtype of prefix_tree_sums (log-probabilities in float32 for a 16-bit model), as pair_margins
    sums = torch.zeros(2 * n, dtype=accumulation_dtype(model_dtype(model)), device=device)
    for index, batch in plan:  # one batch for an FTGD step of 16 pairs (about 350 positions)
        sums = sums.index_add(0, torch.as_tensor(index, device=device), prefix_tree_sums(model, batch, len(index)))
    return sums[:n] - sums[n:]


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
    gradient), in :func:`~taskspace_utils.models.accumulation_dtype` of each parameter's dtype:
    the per-batch gradients of a bf16 model are summed in float32 buffers and returned in
    float32 (rounding the sum back to bf16 would cost ~0.4 % of every entry). Mode, ``.grad`` and
    parameters are left unchanged.
    """
    params = _trainable(model)
    device = params[0][1].device
    total: dict[str, torch.Tensor] = {}  # filled by the first batch's gradients (no zero-filled start)
    prefix, pad = prefix_token_id(tokenizer), pad_token_id(tokenizer)
    weight_dtype = accumulation_dtype(model_dtype(model))  # +-1/N in float32 at least (bf16 would round it)
    # prefix trees: a good and a bad sentence share the positions of their common beginning,
    # whose +w and -w token weights cancel, so the LM head skips those positions entirely
    use_tree = batch_size is None and supports_prefix_tree(model)
    plan = plan_batches([r[0] for r in rows], prefix, pad, tree=use_tree, batch_tokens=batch_tokens,
                        batch_size=batch_size, ranges=([r[1] for r in rows], [r[2] for r in rows]),
                        weights=[r[3] for r in rows], weight_dtype=weight_dtype, device=device)
    show = len(plan) > 20 if progress is None else bool(progress)
    with eval_mode(model):
        for _, batch in tqdm(plan, total=len(plan), desc=desc, unit="batch", disable=not show, leave=False):
            if use_tree:
                if not len(batch["node_weight"]):
                    continue
                lp = prefix_tree_logprobs(model, batch)
                objective = (lp * batch["node_weight"].to(lp.dtype)).sum()
            else:
                objective = token_logprob_sums(model, batch, token_weights=batch["token_weights"]).sum()
            grads = torch.autograd.grad(objective, [p for _, p in params], allow_unused=True)
            for (name, p), g in zip(params, grads):
                if g is None:
                    continue
                if name in total:
                    total[name] += g.to(total[name].dtype)
                else:
                    total[name] = g.to(accumulation_dtype(p.dtype))
    return {n: total[n] if n in total else torch.zeros_like(p, dtype=accumulation_dtype(p.dtype)) for n, p in params}


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
    model that :func:`~taskspace_utils.prefix_tree.supports_prefix_tree`, rows are packed as prefix
    trees of at most ``batch_tokens`` positions per batch: a pair's good and bad sentence share the
    positions of their common beginning, whose ``+1/N`` and ``-1/N`` weights cancel, so the LM head
    and its backward skip them (the context they give the later tokens is still computed once).
    Otherwise rows are sorted by length and cut into batches of ``batch_size`` sentences or at most
    ``batch_tokens`` padded tokens.
    Batching and padding change the result only by floating-point summation order (tested in
    float64 to 1e-12 against a per-pair loop and a central finite difference).

    Args:
        pairs: frame with ``good`` / ``bad`` (every row is used; select the training split first),
            a ``(goods, bads)`` tuple or an ``EncodedPairs``.
        variant: ``"sentence"`` or ``"critical"``; for ``"critical"`` pairs without critical tokens
            are excluded with a ``UserWarning`` naming how many and why (see
            :func:`critical_exclusions`) and the mean is over the remaining pairs.

    Returns:
        ``{name: tensor}`` for every trainable parameter (``model.named_parameters()`` order, tied
        parameters once), same shape as the parameter, dtype
        :func:`~taskspace_utils.models.accumulation_dtype` of its dtype (the parameter's own for
        float32/float64 models, float32 for bf16/fp16: accumulated across batches in float32). The model's parameters,
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
