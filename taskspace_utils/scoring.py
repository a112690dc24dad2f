"""Scoring minimal pairs with a causal LM: log p(good) vs. log p(bad).

Convention (used by every stage of the kit, and by the gradient differential):

    log p(s) = sum_{i=1..n} log p(t_i | BOS, t_1, ..., t_{i-1})

where ``t_1..t_n`` are the tokens of the sentence *as given* (``tokenizer(s,
add_special_tokens=False)``: no added leading space, no special tokens) and ``BOS`` is the
tokenizer's BOS token, or its EOS token when it has no BOS (GPT-2 and Pythia use the same
``<|endoftext|>`` for both). Why: with the BOS prefix *every* word of the sentence, the first one
included, is scored, so pairs that differ in their first word (several BLiMP paradigms) are
compared fairly; the sum (not the mean) is the sentence's log-probability, which is what BLiMP's
"simple LM method" compares. This equals minicons' ``sequence_score(..., bos_token=True,
reduction=sum)``. lm-evaluation-harness' BLiMP task differs: it scores the whole sentence as a
continuation of an *empty* context that it fills with the EOS token, which is the same for
Pythia/GPT-2 but not for tokenizers with a distinct BOS; we always use BOS.

A pair is ``correct`` when ``log p(good) > log p(bad)`` strictly; equal scores are ``tie`` (never
correct) and are counted separately. Identical sentences are scored once (sentences are
de-duplicated before scoring), so BLiMP's identical pairs tie exactly.

Public functions
----------------
- :func:`sentence_logprobs` — float64 log-probabilities of many sentences, batched and fast.
- :func:`score_pairs` — adds ``logp_good``, ``logp_bad``, ``margin``, ``correct``, ``tie``.
- :func:`blimp_accuracy` — accuracy / ties / mean margin per task, phenomenon or field.
- The batches live in :mod:`.padded` (right-padded rows, :func:`~.padded.token_logprob_sums`) and
  :mod:`.prefix_tree` (shared prefixes run once); tokenisation in :mod:`.encoding` (once per
  sentence and tokenizer). Their names stay importable from here.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .batching import fill_logprob_sums, plan_batches
from .encoding import EncodedPairs, encode, pad_token_id, prefix_token_id, tokenize_sentences
from .models import context_length, eval_mode
from .padded import DEFAULT_BATCH_TOKENS, collate_token_ids, encode_batch, token_logprob_sums
from .prefix_tree import (
    DEFAULT_TREE_ROW_TOKENS,
    build_prefix_tree_rows,
    collate_prefix_tree,
    iter_prefix_tree_batches,
    prefix_tree_logprobs,
    prefix_tree_sums,
    supports_prefix_tree,
)

__all__ = [
    "sentence_logprobs",
    "score_pairs",
    "blimp_accuracy",
    "DEFAULT_BATCH_TOKENS",
    # re-exported from .encoding, .padded and .prefix_tree
    "prefix_token_id",
    "tokenize_sentences",
    "encode_batch",
    "collate_token_ids",
    "token_logprob_sums",
    "DEFAULT_TREE_ROW_TOKENS",
    "supports_prefix_tree",
    "build_prefix_tree_rows",
    "collate_prefix_tree",
    "iter_prefix_tree_batches",
    "prefix_tree_logprobs",
    "prefix_tree_sums",
]

def sentence_logprobs(
    model,
    tokenizer,
    sentences: Sequence[str],
    batch_size: int | None = None,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    progress: bool | None = None,
    packing: str = "auto",
    row_tokens: int | None = None,
) -> np.ndarray:
    """log p(sentence) for every sentence, float64, with the module's BOS-prefix / sum convention.

    Sentences are de-duplicated and run without gradient, packed in one of two ways:

    - ``packing="tree"``: prefix trees (:func:`build_prefix_tree_rows`): sentences that share a
      beginning (the two sentences of a minimal pair, paradigms built from one template) share the
      positions of that beginning, so every distinct prefix goes through the model once (29 % fewer
      positions on BLiMP with tiny-m's tokenizer). Rows of ``row_tokens`` positions with a 4-D
      ancestor mask and tree-depth position ids; exact for the model types in
      ``_TREE_MODEL_TYPES`` with SDPA or eager attention.
    - ``packing="padded"``: sorted by token length (so batches carry little padding), right padded.

    ``"auto"`` (default) takes the tree when :func:`supports_prefix_tree` and no ``batch_size`` is
    given. ``batch_size`` fixes the number of sentences per padded batch; otherwise batches hold
    at most ``batch_tokens`` positions. Results do not depend on packing or batch size beyond
    floating-point summation order (tested: < 1e-5 absolute in float32, 1e-10 in float64). On the
    CPU the batches are spread over torch's threads (:func:`~taskspace_utils.batching.fill_logprob_sums`).
    ``progress`` shows a tqdm bar (default: when there are more than 20 batches).

    Returns:
        ``np.ndarray`` of shape ``[len(sentences)]``, dtype float64.
    """
    sentences = [str(s) for s in sentences]
    if not sentences:
        return np.zeros(0, dtype=np.float64)
    unique, inverse = np.unique(np.asarray(sentences, dtype=object), return_inverse=True)
    ids = tokenize_sentences(tokenizer, list(unique))
    lengths = np.array([len(x) for x in ids])
    if (lengths == 0).any():
        bad = [unique[i] for i in np.flatnonzero(lengths == 0)[:3]]
        raise ValueError(f"cannot score sentences with no tokens: {bad}")
    limit = context_length(model)
    if limit is not None and lengths.max() + 1 > limit:
        long = [f"{unique[i][:60]!r} ({lengths[i] + 1} positions)" for i in np.flatnonzero(lengths + 1 > limit)[:3]]
        raise ValueError(f"{int((lengths + 1 > limit).sum())} sentence(s) longer than the model's context of {limit} "
                         f"positions (tokens + 1 for the BOS prefix), e.g. {'; '.join(long)}")
    prefix, pad = prefix_token_id(tokenizer), pad_token_id(tokenizer)
    device = next(model.parameters()).device
    if packing not in ("auto", "tree", "padded"):
        raise ValueError(f"packing={packing!r}: use 'auto', 'tree' or 'padded'")
    if packing == "tree" and not supports_prefix_tree(model):
        raise ValueError(
            f"packing='tree' is not supported for model_type={getattr(model.config, 'model_type', None)!r} with "
            f"attention {getattr(model.config, '_attn_implementation', None)!r}; use packing='padded'"
        )
    use_tree = packing == "tree" or (packing == "auto" and batch_size is None and supports_prefix_tree(model))
    out = np.empty(len(unique), dtype=np.float64)
    with eval_mode(model), torch.inference_mode():
        plan = plan_batches(ids, prefix, pad, tree=use_tree, batch_tokens=batch_tokens,
                            batch_size=None if use_tree else batch_size,
                            row_tokens=row_tokens or DEFAULT_TREE_ROW_TOKENS, device=device)
        show = len(plan) > 20 if progress is None else progress
        with tqdm(total=len(plan), desc="scoring", unit="batch", disable=not show, leave=False) as bar:
            fill_logprob_sums(model, plan, out, tree=use_tree, device=device, bar=bar)
    return out[inverse]


def score_pairs(model, tokenizer, pairs: pd.DataFrame | EncodedPairs, batch_size: int | None = None,
                progress: bool | None = None) -> pd.DataFrame:
    """Score every pair: a copy of ``pairs`` with ``logp_good``, ``logp_bad``, ``margin =
    logp_good - logp_bad``, ``correct = margin > 0`` and ``tie = margin == 0``.

    Good and bad sentences of all pairs are scored in one :func:`sentence_logprobs` call.
    ``pairs`` may be an :class:`~.encoding.EncodedPairs` (its frame is scored and copied).
    """
    # every sentence must fit the model's context: checked before any forward pass, naming the pairs
    encode(tokenizer, pairs).check_length(context_length(model))
    if isinstance(pairs, EncodedPairs):
        pairs = pairs.pairs
    n = len(pairs)
    scores = sentence_logprobs(
        model, tokenizer, list(pairs["good"].astype(str)) + list(pairs["bad"].astype(str)),
        batch_size=batch_size, progress=progress,
    )
    out = pairs.copy()
    out["logp_good"] = scores[:n]
    out["logp_bad"] = scores[n:]
    out["margin"] = out["logp_good"] - out["logp_bad"]
    out["correct"] = out["margin"] > 0
    out["tie"] = out["margin"] == 0
    return out


def blimp_accuracy(scored: pd.DataFrame, by: str = "task") -> pd.DataFrame:
    """Accuracy per ``by`` (``"task"``, ``"phenomenon"`` or ``"field"``) of a :func:`score_pairs` frame.

    Per task: ``accuracy`` = mean of ``correct`` (ties count as wrong), ``ties``, ``n_pairs`` and
    ``mean_margin``. For ``phenomenon`` / ``field`` the accuracy is the *macro* mean over the
    group's tasks (every paradigm weighs the same, as in the BLiMP paper), with ``n_tasks``. Pairs
    without ``phenomenon``/``field`` columns get the per-task table without them.
    """
    labels = {c: (c, "first") for c in ("phenomenon", "field") if c in scored.columns}
    per_task = scored.groupby("task", sort=True).agg(
        **labels, accuracy=("correct", "mean"), ties=("tie", "sum"), n_pairs=("correct", "size"),
        mean_margin=("margin", "mean"),
    )
    if by == "task":
        return per_task
    if by not in ("phenomenon", "field"):
        raise ValueError(f"by={by!r}: use 'task', 'phenomenon' or 'field'")
    return per_task.groupby(by, sort=True).agg(
        accuracy=("accuracy", "mean"), ties=("ties", "sum"), n_tasks=("accuracy", "size"), mean_margin=("mean_margin", "mean"),
    )
