"""Every pair's ``||d_i||`` from the batched backward pass itself ("ghost norms").

For a linear map ``y = W a + b`` applied at the tokens t of a pair, the pair's gradient is
``G_W = sum_t g_t a_t^T`` and ``G_b = sum_t g_t`` (``g_t = d margin / d y_t``), so

    ||G_W||^2 = sum_{t,t'} (a_t . a_t') (g_t . g_t')

needs only the pair's ``[T, T]`` Gram matrices of module inputs and output gradients, never the
``P``-sized per-pair gradient (Goodfellow, 2015; Li et al., 2022 "ghost clipping"). This gives the
spread statistic ``mean_i ||d_i||`` (:mod:`.per_pair`) at little more than the cost of the
batched mean. Here: :class:`_GhostNorms` (the hooks) and :func:`pair_differential_norms`.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from tqdm.auto import tqdm

from ..encoding import pad_token_id, prefix_token_id
from ..models import accumulation_dtype, eval_mode, model_dtype
from ..padded import (
    DEFAULT_BATCH_TOKENS,
    batches_by_tokens,
    collate_token_ids,
    span_weights,
    token_logprob_sums,
)
from .differentials import _pair_spans, _trainable

__all__ = ["pair_differential_norms"]


def _by_pair(x: torch.Tensor, pair: torch.Tensor, n_pairs: int) -> torch.Tensor:
    """Rows of ``x`` (``[N, d]``) grouped by ``pair`` (``[N]``, non-decreasing: a pair's positions
    are adjacent and in order) into a zero-padded ``[P, T, d]``, ``T`` the most positions of a pair.

    When every pair has ``T`` positions (the ``[batch, length, ...]`` inputs: two rows per pair)
    this is a view of ``x``; otherwise (the LM head's scored positions) the rows are copied to
    their slots."""
    if len(pair) > 1 and not bool((pair[1:] >= pair[:-1]).all()):
        raise ValueError("ghost norms: positions must be grouped by pair, in order")
    counts = torch.bincount(pair, minlength=n_pairs)
    width = int(counts.max()) if len(pair) else 0
    if bool((counts == width).all()):
        return x.reshape(n_pairs, width, *x.shape[1:])
    slot = torch.arange(len(pair), device=pair.device) - (torch.cumsum(counts, 0) - counts)[pair]
    out = x.new_zeros((n_pairs, width, *x.shape[1:]))
    out[pair, slot] = x
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
        # Gram matrices in float32 at least (a bf16 model's activations and output gradients are
        # upcast first: a bf16 Gram would round every entry to 8 mantissa bits), sums in float64
        n = self.sq.shape[0]
        wide = accumulation_dtype(g.dtype)
        g = _by_pair(g.detach().reshape(-1, g.shape[-1]).to(wide), pair, n)  # [P, T, d_out]
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
            xf = x.reshape(-1, x.shape[-1]).to(wide)
            xhat = (xf - xf.mean(-1, keepdim=True)) / torch.sqrt(xf.var(-1, unbiased=False, keepdim=True) + module.eps)
            xhat = _by_pair(xhat, pair, n)
            if module.weight is not None and module.weight.requires_grad:
                self.sq += (g * xhat).sum(1).double().pow(2).sum(1)
        else:  # Linear
            a = _by_pair(x.reshape(-1, x.shape[-1]).to(wide), pair, n)
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
    the critical variant are skipped (norm NaN). ``pairs``: a frame, a ``(goods, bads)`` tuple or
    an ``EncodedPairs``. Only for models :meth:`_GhostNorms.supports`
    (Linear / Embedding / LayerNorm parameters, untied); raises ``NotImplementedError`` otherwise
    (use :func:`~.per_pair.pair_differential_stats`). Mode, ``.grad`` and parameters are left
    unchanged.

    Returns:
        ``({name: tensor}, norms)`` - the *sum* over kept pairs (divide by their number for
        ``D``; accumulated and returned in float32 for a bf16/fp16 model, else in the parameter
        dtype) and a float64 array ``[len(pairs)]``.
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
    dtype = accumulation_dtype(model_dtype(model))  # token weights +-1 and the sums: float32 at least
    prefix, pad = prefix_token_id(tokenizer), pad_token_id(tokenizer)
    total = {n: torch.zeros_like(p, dtype=accumulation_dtype(p.dtype)) for n, p in params}
    norms = np.full(len(excluded), np.nan)
    lengths = np.array([max(len(good_ids[i]), len(bad_ids[i])) for i in keep])
    batches = [keep[b] for b in batches_by_tokens(lengths, None, max(1, batch_tokens // 2))]
    show = len(batches) > 20 if progress is None else bool(progress)
    with eval_mode(model), _GhostNorms(model) as ghost:
        for index in tqdm(batches, desc="per-pair norms", unit="batch", disable=not show, leave=False):
            ids = [x for i in index for x in (good_ids[i], bad_ids[i])]
            starts = [s for i in index for s in (start[i], start[i])]
            ends = [e for i in index for e in (end_good[i], end_bad[i])]
            batch = collate_token_ids(ids, prefix, pad, device)
            weights = span_weights(starts, ends, [1.0, -1.0] * len(index), batch["input_ids"].shape[1], dtype).to(device)
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
    return total, norms
