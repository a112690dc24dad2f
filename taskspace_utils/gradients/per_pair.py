"""Every pair's own gradient differential ``d_i``, streamed in chunks, and reductions over them.

The task differential (:mod:`.differentials`) is the mean ``D_t = (1/N) sum_i d_i``; its *spread*
says how much the pairs agree: ``||D_t|| / mean_i ||d_i||`` (1 when all pairs pull the same way,
about ``1/sqrt(N)`` for unrelated directions) and the cosine between the differentials of two
random halves of the pairs (split-half agreement). Both need the ``d_i`` themselves (or their
norms: :mod:`.ghost_norms`).

Here: :func:`iter_pair_differentials` yields the ``d_i`` in chunks (``torch.func`` vmap or one
backward per pair), :func:`pair_differential_stats` streams reductions over them (mean, norms,
group means, sketches) and :class:`ParameterSketch` is a seeded CountSketch (sparse
Johnson-Lindenstrauss) projection of parameter-shaped vectors to a fixed dimension.
"""

from __future__ import annotations

import math
import warnings
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..encoding import pad_token_id, prefix_token_id
from ..models import accumulation_dtype, eval_mode
from ..padded import collate_token_ids, span_weights, token_logprob_sums
from .differentials import _pair_spans, _trainable

__all__ = ["iter_pair_differentials", "pair_differential_stats", "ParameterSketch"]


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

    ``positions`` are 0-based positions in ``pairs`` (a frame, a ``(goods, bads)`` tuple or an
    ``EncodedPairs``; excluded pairs of the critical variant are skipped). Only one chunk is held
    at a time (``chunk_pairs``, default ``2**26 / P`` capped to 32), so reductions over any number
    of pairs stream (:func:`pair_differential_stats`).

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
    prefix, pad = prefix_token_id(tokenizer), pad_token_id(tokenizer)
    device = params[0][1].device
    dtype = params[0][1].dtype
    chunks = [keep[i : i + chunk] for i in range(0, len(keep), chunk)]
    show = len(keep) > 200 if progress is None else bool(progress)
    with eval_mode(model):
        bar = tqdm(total=len(keep), desc=f"per-pair differentials ({method})", unit="pair", disable=not show, leave=False)
        for positions in chunks:
            ids = [good_ids[i] for i in positions] + [bad_ids[i] for i in positions]
            batch = collate_token_ids(ids, prefix, pad, device)
            starts = np.concatenate([start[positions], start[positions]])
            ends = np.concatenate([end_good[positions], end_bad[positions]])
            c = len(positions)
            signs = [1.0] * c + [-1.0] * c
            weights = span_weights(starts, ends, signs, batch["input_ids"].shape[1], dtype).to(device)
            if method == "loop":
                out = _loop_chunk(model, params, batch, weights, c)
            else:
                out = _vmap_chunk(model, params, batch, weights, c)
            bar.update(c)
            yield positions, out
        bar.close()


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
        equals :func:`~.differentials.task_differential` up to rounding), ``norms`` (``[N]``
        float64, ``||d_i||``), ``mean_norm``, ``norm_of_mean``, ``group_means`` (means summed in
        float64, returned in the parameter dtype, float32 for a bf16/fp16 model),
        (``{label: {name: tensor}}``), ``group_sizes`` and ``sketches`` (``[N, dim]`` or ``None``).
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
    dtypes = {name: accumulation_dtype(p.dtype) for name, p in params}  # bf16 model: float32 means
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
