"""Task subnetworks ``M_t(k)`` (top-k parameters by ``|D_t|``) and their Jaccard overlap space.

The *task subnetwork* ``M_t(k)`` is the set of the ``round(k * P)`` parameters with the largest
``|D_t|`` (:func:`subnetwork_masks`; globally or per parameter tensor; ties go to the lower flat
index). FTGD tunes these, and the mask-overlap space compares them between tasks:

    J(t, u) = |M_t & M_u| / |M_t | M_u|

(:func:`mask_overlap_space`; NaN where both masks are empty), computed on bit-packed masks
(:func:`pack_masks`, ``P / 8`` bytes per task) with popcounts (:func:`packed_jaccard_space`).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

__all__ = ["subnetwork_masks", "pack_masks", "packed_jaccard_space",
    "packed_overlap_counts", "mask_overlap_space"]


def _flat_abs(differentials: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """``|D|`` of all tensors, flattened and concatenated in dict order, on their common device (on
    the CPU when they are spread over several devices)."""
    parts = []
    for name, t in differentials.items():
        if not torch.is_floating_point(t):
            raise TypeError(f"differential {name!r}: expected a floating tensor, got {t.dtype}")
        if not torch.isfinite(t).all():
            raise ValueError(f"differential {name!r} has NaN or infinite entries")
        parts.append(t.detach().reshape(-1).abs())
    if not parts:
        return torch.zeros(0)
    if len({p.device for p in parts}) > 1:
        parts = [p.cpu() for p in parts]
    return torch.cat(parts)


def _numpy_exact(t: torch.Tensor) -> np.ndarray:
    """A CPU tensor as numpy, exactly: half and bfloat16 (numpy has no bfloat16) widened to
    float32, which keeps every value and their order."""
    return (t if t.dtype in (torch.float32, torch.float64) else t.float()).numpy()


def kth_largest(values: np.ndarray, count: int) -> float:
    """The ``count``-th largest entry of the non-negative ``values`` (``1 <= count <= n``), exactly.

    Selection (``numpy.partition``, ``O(n)``) over the positive entries only, in a copy that is
    partitioned in place; ``0`` when fewer than ``count`` entries are positive. Dropping the zeros
    first matters: numpy's introselect slows down 20x on arrays of many equal entries (the zero rows
    of unused embeddings, a summary's zero-filled differential; on 4.9M entries it took 590 ms with
    98 % zeros and 30 ms with 30 %). ``torch.kthvalue``, used before, gives the same value but
    copies its input and builds an int64 index array as large as the model on every call, and
    takes 1.4-1.7x as long at the suite's sizes (``benchmarks/bench_selection.py``).
    """
    positive = values[values > 0]
    if count > positive.size:
        return 0.0
    position = positive.size - int(count)
    positive.partition(position)
    return float(positive[position])


def kth_largest_on_device(values: torch.Tensor, count: int) -> torch.Tensor:
    """:func:`kth_largest` of a tensor where it lives, for accelerators: the smallest of the
    ``count`` largest positive entries (``torch.topk(..., sorted=False)``), as a 0-d tensor on
    ``values``' device; ``0`` when fewer than ``count`` entries are positive. The same value as
    :func:`kth_largest` (both return an entry of ``values``; tested on the CPU).

    Why ``topk`` and not ``kthvalue`` or numpy there: CUDA's ``kthvalue`` selects within one thread
    block per slice, about 20x slower than a sort on 100M entries (pytorch/pytorch#75599), while
    ``topk`` spreads a large slice over many blocks (pytorch/pytorch#71081) and allocates only
    ``count`` values and indices. On the host, numpy's selection alone takes 1.4 s for a
    Pythia-160m-shaped differential (``benchmarks/bench_selection.py``), before the copy: 67 tasks
    would spend most of the GPU benchmark's 60 s budget on it.
    """
    positive = values[values > 0]
    if count > positive.numel():
        return torch.zeros((), dtype=values.dtype, device=values.device)
    return torch.topk(positive, int(count), sorted=False).values.min()


def _threshold(values: torch.Tensor, count: int) -> torch.Tensor:
    """The ``count``-th largest of the non-negative ``values`` as a 0-d tensor of their dtype, on
    their device: numpy's selection on the CPU (:func:`kth_largest`, the faster there), ``topk`` on
    an accelerator (:func:`kth_largest_on_device`)."""
    if values.device.type == "cpu":
        return torch.tensor(kth_largest(_numpy_exact(values), count), dtype=values.dtype)
    return kth_largest_on_device(values, count)


def _top_count(values: torch.Tensor, count: int) -> torch.Tensor:
    """Bool mask of the ``count`` largest of the non-negative ``values``; ties go to the lower
    flat index.

    Same result as taking the first ``count`` of a stable descending sort, in ``O(n)``:
    every value above the ``count``-th largest ``v`` (:func:`kth_largest`), then the values equal
    to ``v`` in index order until ``count`` are chosen.
    """
    n = values.numel()
    count = int(count)
    if count <= 0:
        return torch.zeros(n, dtype=torch.bool, device=values.device)
    if count >= n:
        return torch.ones(n, dtype=torch.bool, device=values.device)
    threshold = _threshold(values, count)  # exact: an entry of values
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
    norms) is represented. Returns ``{name: BoolTensor}`` with the parameters' shapes, on the
    differentials' device (the selection runs there: :func:`_threshold`).
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


def packed_overlap_counts(packed_by_module: Mapping[str, Mapping[str, np.ndarray]]) -> pd.DataFrame:
    """The counts behind the per-module Jaccard: one row per module and ordered task pair with
    ``intersection`` = ``|M_t & M_u|``, ``size_task`` = ``|M_t|`` and ``size_other`` = ``|M_u|``
    within the module (bit-packed masks, :func:`pack_masks`). Summed over any set of modules they
    give the Jaccard over those modules' parameters, e.g. without the embedding and output matrices:
    ``sum(inter) / (sum(size_task) + sum(size_other) - sum(inter))``."""
    rows = []
    for module, packed in packed_by_module.items():
        tasks = list(packed)
        sizes = {t: int(np.bitwise_count(packed[t]).sum()) for t in tasks}
        for a in tasks:
            for b in tasks:
                inter = int(np.bitwise_count(packed[a] & packed[b]).sum())
                rows.append((module, a, b, inter, sizes[a], sizes[b]))
    return pd.DataFrame(rows, columns=["module", "task", "other", "intersection", "size_task", "size_other"])


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
