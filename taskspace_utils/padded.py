"""Right-padded batches of ``[prefix] + tokens`` rows and their differentiable weighted sums.

The building blocks that scoring, gradient differentials and FTGD share, so that scores and
gradients follow one convention (:mod:`taskspace_utils.scoring`):

    sum_i w_i log p(t_i | BOS, t_1 .. t_{i-1})     per row, w = 1 on the sentence's tokens

Position 0 holds the BOS/EOS prefix and is never scored; padding is never attended to nor scored.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .encoding import pad_token_id, prefix_token_id, tokenize_sentences
from .lm_head import head_logprobs, scored_hidden_and_head

__all__ = ["DEFAULT_BATCH_TOKENS", "collate_token_ids", "encode_batch", "span_mask", "mask_weights", "span_weights",
           "token_logprob_sums", "batches_by_tokens"]

#: Default token budget of a batch (padded positions). Measured on tiny-m, 2 idle CPU cores,
#: 4,000 BLiMP sentences (sentences/s): 512 -> 1,491; 1,024 -> 1,518-1,565; 2,048 -> 1,285;
#: 4,096 -> 1,266-1,304; 8,192 -> 1,311; 16,384 -> 1,127 (smaller batches stay in cache).
DEFAULT_BATCH_TOKENS = 1024


def collate_token_ids(id_lists: Sequence[Sequence[int]], prefix_id: int, pad_id: int, device=None) -> dict:
    """Right-pad ``[prefix] + ids`` rows into a batch.

    Returns ``input_ids`` and ``attention_mask`` (``[B, L]``, ``L = 1 + max len``) and
    ``score_mask`` (``[B, L]`` bool): True at the positions of the sentence tokens (never at the
    prefix position 0, never at padding).
    """
    lengths = [len(ids) for ids in id_lists]
    if any(n == 0 for n in lengths):
        raise ValueError("cannot score an empty sentence (0 tokens)")
    width = 1 + max(lengths)
    ends = 1 + np.asarray(lengths)
    attention_np = np.arange(width)[None, :] < ends[:, None]
    input_np = np.full((len(id_lists), width), int(pad_id), dtype=np.int64)
    input_np[:, 0] = prefix_id
    input_np[attention_np & (np.arange(width)[None, :] > 0)] = np.fromiter(
        (t for ids in id_lists for t in ids), dtype=np.int64, count=int(sum(lengths)))
    input_ids = torch.from_numpy(input_np)
    attention = torch.from_numpy(attention_np.astype(np.int64))
    score_mask = torch.from_numpy(attention_np.copy())
    score_mask[:, 0] = False
    batch = {"input_ids": input_ids, "attention_mask": attention, "score_mask": score_mask}
    return {k: v.to(device) for k, v in batch.items()} if device is not None else batch


def span_mask(starts: Sequence[int], ends: Sequence[int], width: int) -> torch.Tensor:
    """``[B, width]`` bool: True at the collated positions ``1 + starts[r] .. ends[r]`` of row r,
    i.e. its tokens ``starts[r] .. ends[r] - 1`` (0-based; position 0 holds the prefix)."""
    position = torch.arange(width)[None, :]
    return (position > torch.as_tensor(np.asarray(starts, dtype=np.int64))[:, None]) & (
        position <= torch.as_tensor(np.asarray(ends, dtype=np.int64))[:, None])


def mask_weights(mask: torch.Tensor, values: Sequence[float], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``[B, width]`` token weights for :func:`token_logprob_sums`: ``values[r]`` (rounded from
    float64 to ``dtype``) where the bool ``mask`` of row r is True, 0 elsewhere."""
    values = torch.as_tensor(np.asarray(values, dtype=np.float64), dtype=dtype)[:, None]
    return torch.where(mask, values, torch.zeros((), dtype=dtype))


def span_weights(starts: Sequence[int], ends: Sequence[int], values: Sequence[float], width: int,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """:func:`mask_weights` on the positions of :func:`span_mask`."""
    return mask_weights(span_mask(starts, ends, width), values, dtype)


def encode_batch(tokenizer, sentences: Sequence[str], device=None) -> dict:
    """Tokenise ``sentences`` with the kit's convention and collate them (see :func:`collate_token_ids`)."""
    return collate_token_ids(tokenize_sentences(tokenizer, sentences), prefix_token_id(tokenizer), pad_token_id(tokenizer), device)


def token_logprob_sums(model, batch: dict, token_weights: torch.Tensor | None = None,
                       head_chunk_rows: int | None = None) -> torch.Tensor:
    """Differentiable ``sum_i w_i log p(t_i | t_<i)`` per row of a collated batch.

    Args:
        model: a causal LM (``AutoModelForCausalLM``).
        batch: from :func:`encode_batch` / :func:`collate_token_ids` (``input_ids``,
            ``attention_mask``, ``score_mask``; ``[B, L]``).
        token_weights: optional ``[B, L]`` float weights replacing ``score_mask`` (e.g. 1 on the
            critical tokens only); position 0 (the prefix) is never scored.
        head_chunk_rows: scored positions per call of the LM head (default: ``_HEAD_CHUNK_ROWS``;
            ``0``: a single call, as per-example gradient hooks on the head need).

    Returns:
        ``[B]`` tensor in :func:`~taskspace_utils.models.accumulation_dtype` of the model's dtype
        (float32 for a bf16/fp16 model, else the model's dtype): the weighted sum of token
        log-probabilities. The log-softmax is evaluated only at scored positions, on the logits
        upcast to float32 or wider (:func:`~taskspace_utils.lm_head.head_logprobs`), and the
        weights are cast to that dtype before the sum (a 16-bit weight ``1/N`` would be rounded).
    """
    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
    weights = batch["score_mask"] if token_weights is None else token_weights
    weights = weights.to(input_ids.device)
    target_w = weights[:, 1:]
    selected = target_w != 0
    rows = torch.nonzero(selected, as_tuple=True)
    targets = input_ids[:, 1:][rows]
    hidden, head = scored_hidden_and_head(model, input_ids, attention_mask)
    if hidden is not None:
        token_lp = head_logprobs(head, hidden[:, :-1][rows], targets, head_chunk_rows)
    else:
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1][rows]
        token_lp = head_logprobs(torch.nn.Identity(), logits, targets)
    w = target_w[rows].to(token_lp.dtype)
    out = torch.zeros(input_ids.shape[0], dtype=token_lp.dtype, device=token_lp.device)
    return out.index_add(0, rows[0], token_lp * w)


def batches_by_tokens(lengths: np.ndarray, batch_size: int | None, batch_tokens: int) -> list[np.ndarray]:
    """Indices sorted by length (longest first), cut into batches of ``batch_size`` sentences or,
    when ``batch_size`` is None, of at most ``batch_tokens`` padded tokens."""
    order = np.argsort(-lengths, kind="stable")
    batches, start = [], 0
    while start < len(order):
        if batch_size is not None:
            stop = start + int(batch_size)
        else:
            width = int(lengths[order[start]]) + 1
            stop = start + max(1, batch_tokens // width)
        batches.append(order[start:stop])
        start = stop
    return batches
