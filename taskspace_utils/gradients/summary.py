"""What a gradient-stage folder keeps per task when it does not keep the whole differential
(``GradientConfig.store="summary"``, the default), and the gradient space computed while the
differentials are in memory.

**Top entries.** For a task differential ``D`` and a fraction ``K`` (``GradientConfig.top_k``,
default ``k``) the file keeps, per parameter tensor, the local flat indices (int32) and the values
(in ``D``'s dtype, float32 for a float32 model) of the set

    S = { i : |D_i| >= v_K  and  |D_i| > 0 }        v_K = the round(K * P)-th largest |D_i|

(globally over all ``P`` entries, or within each tensor with ``round(K * numel)`` when
``per_module``). ``S`` holds the top ``round(K * P)`` entries and every entry tied with the last of
them. Why this set: the dense vector ``D^S`` (``D`` on ``S``, 0 elsewhere;
:func:`dense_from_summary`) has **the same top-k mask as D for every k <= K** in the same mode,
whatever the order in which ties are broken: every entry of a top-k mask has ``|D_i| >= v_k >=
v_K``, so it lies in ``S`` (or ``v_K = 0`` and ``D^S = D``), and entries outside ``S`` are 0 in
``D^S`` and below ``v_K`` in ``D``. Values are kept in ``D``'s dtype, not half precision: the order of
the values inside ``S`` decides the masks at ``k < K``, and rounding to 16 bits would create ties
that are not in ``D``. Disk per task: ``|S| * 8`` bytes, about ``8 K P`` (K = 1 %: 2 % of the full
float32 differential).

**Gram matrices.** The gradient space needs ``<D_t^p, D_u^p>`` for every pair of tasks and every
parameter tensor ``p`` (and the row sums for ``pearson``). :func:`gram_pass` computes them from
full differentials kept in memory (at most ``memory_bytes`` of them at a time); a task not in
memory is recomputed (one batched backward, :func:`~.stage.recompute_differential`). With all
tasks in memory no task is recomputed and the result is :func:`~.space._grams` of the stacked
vectors, bit for bit; with blocks of ``B < T`` tasks, block ``b`` is held and every later task is
recomputed once per earlier block (``T + sum_b (T - (b + 1) B)`` differentials in all). They are
saved as ``gram.safetensors`` (``<name>``: ``[T, T]`` float64, ``<name>.sum``: ``[T]``; metadata
``tasks``, ``pairs_sha``, ``counts``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..results import atomic_save_safetensors
from .space import _grams
from .subnetworks import _numpy_exact, kth_largest

__all__ = ["STORES", "INDEX_SUFFIX", "top_entries", "dense_from_summary", "covers", "gram_pass",
           "save_grams", "load_grams", "default_memory_bytes"]

#: What a gradient-stage folder keeps per task (``GradientConfig.store``).
STORES = ("summary", "full")
#: Key suffix of a summary file's index tensors (``<param name><INDEX_SUFFIX>``).
INDEX_SUFFIX = ":indices"
GRAM_FILE = "gram.safetensors"


def _threshold(values: np.ndarray, count: int) -> float:
    """The ``count``-th largest entry of ``values`` (non-negative; ``inf`` for ``count <= 0``)."""
    if count <= 0 or values.size == 0:
        return float("inf")
    return kth_largest(values, min(count, values.size))


def _np_abs(v: torch.Tensor) -> np.ndarray:
    """``|v|`` as numpy, exactly (half and bfloat16 widened to float32, which keeps their order)."""
    return _numpy_exact(v.abs())


def top_entries(differential: Mapping[str, torch.Tensor], fraction: float, per_module: bool = False) -> dict[str, torch.Tensor]:
    """The set ``S`` of the module docstring as safetensors tensors: ``{name: values (the
    differential's dtype),
    name + INDEX_SUFFIX: int32 local flat indices}`` (ascending), for every tensor (empty ones too)."""
    fraction = float(fraction)
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"top_k={fraction!r}: a fraction of parameters in [0, 1]")
    flat = {}
    for name, t in differential.items():
        v = t.detach().reshape(-1).cpu()
        if not torch.is_floating_point(v):
            raise TypeError(f"differential {name!r}: expected a floating tensor, got {v.dtype}")
        if not torch.isfinite(v).all():
            raise ValueError(f"differential {name!r} has NaN or infinite entries")
        flat[name] = v
    if max((v.numel() for v in flat.values()), default=0) >= 2**31:
        raise ValueError("a parameter tensor has 2**31 entries or more: int32 indices do not fit")
    if not per_module:
        total = sum(v.numel() for v in flat.values())
        allabs = np.concatenate([_np_abs(v) for v in flat.values()]) if flat else np.zeros(0, np.float32)
        cut = _threshold(allabs, round(fraction * total))
        del allabs
    out = {}
    for name, v in flat.items():
        a = v.abs()
        level = _threshold(_np_abs(v), round(fraction * v.numel())) if per_module else cut
        idx = torch.nonzero((a >= level) & (a > 0)).reshape(-1)
        out[name] = v[idx].contiguous()
        out[name + INDEX_SUFFIX] = idx.to(torch.int32)
    return out


def dense_from_summary(tensors: Mapping[str, torch.Tensor], shapes: Mapping[str, Sequence[int]]) -> dict[str, torch.Tensor]:
    """``D^S`` (module docstring): ``{name: tensor of its shape}`` (the values' dtype), the stored values at
    their indices and 0 elsewhere, in the order of ``shapes``. Its top-k masks for ``k <= K`` (in
    the stored mode) are those of ``D``; it is not ``D``."""
    out = {}
    for name, shape in shapes.items():
        values = tensors[name]
        dense = torch.zeros(int(np.prod(shape, dtype=np.int64)), dtype=values.dtype)
        dense[tensors[name + INDEX_SUFFIX].long()] = values
        out[name] = dense.reshape(tuple(shape))
    return out


def covers(meta: Mapping, k: float | None, per_module: bool = False) -> bool:
    """Whether a task file's metadata gives exact top-``k`` masks in that mode: a full file
    always; a summary file when ``k <= top_k`` and its mode is ``per_module``."""
    summary = meta.get("summary")
    if not summary:
        return True
    if k is None:
        return False
    return float(k) <= float(summary["top_k"]) and bool(summary["per_module"]) == bool(per_module)


def default_memory_bytes() -> int:
    """Half of the memory the system reports available (``/proc/meminfo`` ``MemAvailable``), or
    4 GiB where it cannot be read: the default budget of :func:`gram_pass`."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 // 2
    except OSError:
        pass
    return 4 * 2**30


def gram_pass(tasks: Sequence[str], names: Sequence[str], cache: dict, recompute: Callable[[str], Mapping[str, torch.Tensor]],
              task_bytes: int, memory_bytes: int | None = None, progress: bool | None = None):
    """Per-tensor Gram matrices and row sums of the differentials of ``tasks`` (the output of
    :func:`~.space._grams`: ``grams``, ``sums``, ``counts`` over ``names``); see the module
    docstring. ``cache``: ``{task: {name: tensor}}`` already in memory (consumed); ``recompute(task)``
    gives a task's differential again; ``task_bytes``: memory of one differential."""
    budget = default_memory_bytes() if memory_bytes is None else int(memory_bytes)
    block = max(1, budget // max(1, int(task_bytes)))
    tasks = list(tasks)
    show = len(tasks) >= 20 if progress is None else bool(progress)
    if not tasks:
        raise ValueError("gram_pass: no tasks")

    def get(task):
        return cache.pop(task) if task in cache else recompute(task)

    def flat(d, name):
        return d[name].detach().reshape(-1).cpu()

    if block >= len(tasks):  # everything in memory at once: _grams of the stack, as from full files
        missing = [t for t in tasks if t not in cache]
        vectors = {t: cache.pop(t) for t in tasks if t in cache}
        for t in tqdm(missing, desc="recomputing differentials", unit="task", disable=not show, leave=False):
            vectors[t] = recompute(t)
        return _grams(lambda n: [flat(vectors[t], n) for t in tasks], names, "cosine", "gradient space", progress)
    T = len(tasks)
    grams = {n: torch.zeros(T, T, dtype=torch.float64) for n in names}
    sums = {n: torch.zeros(T, dtype=torch.float64) for n in names}
    counts = {}
    starts = list(range(0, T, block))
    bar = tqdm(total=T + sum(T - s - block for s in starts if s + block < T), desc="gradient space (blocks)",
               unit="task", disable=not show, leave=False)
    for start in starts:
        ids = list(range(start, min(start + block, T)))
        held = []
        for i in ids:
            held.append(dict(get(tasks[i])))
            bar.update(1)
        stacked = {}
        for n in names:  # each task's tensor is dropped once stacked: peak one block + one tensor of it
            stacked[n] = torch.stack([h.pop(n).detach().reshape(-1).cpu() for h in held])
        del held
        for n in names:
            grams[n][np.ix_(ids, ids)] = _dots(stacked[n], stacked[n])
            sums[n][ids] = _row_sums(stacked[n])
            counts[n] = stacked[n].shape[1]
        for j in range(start + block, T):
            other = get(tasks[j])
            bar.update(1)
            for n in names:
                dots = _dots(stacked[n], flat(other, n)[None])[:, 0]
                grams[n][ids, j] = dots
                grams[n][j, ids] = dots
        del stacked
    bar.close()
    return grams, sums, counts


_COLUMNS = 2**18


def _dots(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``x @ y.T`` in float64, over column blocks of 2**18 entries (as :func:`~.space._grams`)."""
    out = torch.zeros(x.shape[0], y.shape[0], dtype=torch.float64)
    for start in range(0, x.shape[1], _COLUMNS):
        out += x[:, start : start + _COLUMNS].double() @ y[:, start : start + _COLUMNS].double().T
    return out


def _row_sums(x: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(x.shape[0], dtype=torch.float64)
    for start in range(0, x.shape[1], _COLUMNS):
        out += x[:, start : start + _COLUMNS].double().sum(dim=1)
    return out


def save_grams(out_dir: Path, tasks: Sequence[str], shas: Sequence[str], grams, sums, counts) -> Path:
    """Write ``gram.safetensors`` (module docstring) atomically."""
    tensors = {}
    for n in grams:
        tensors[n] = grams[n].contiguous()
        tensors[n + ".sum"] = sums[n].contiguous()
    return atomic_save_safetensors(Path(out_dir) / GRAM_FILE, tensors, metadata={
        "tasks": list(tasks), "pairs_sha": list(shas), "counts": {n: int(c) for n, c in counts.items()}})


def load_grams(out_dir: Path, tasks: Sequence[str], shas: Sequence[str]):
    """``(grams, sums, counts)`` from ``gram.safetensors`` when it holds exactly ``tasks`` with
    ``shas``, else ``None``."""
    from safetensors import safe_open

    path = Path(out_dir) / GRAM_FILE
    if not path.exists():
        return None
    with safe_open(str(path), framework="pt") as handle:
        meta = {k: json.loads(v) for k, v in (handle.metadata() or {}).items()}
        if meta.get("tasks") != list(tasks) or meta.get("pairs_sha") != list(shas):
            return None
        counts = meta["counts"]
        grams = {n: handle.get_tensor(n) for n in counts}
        sums = {n: handle.get_tensor(n + ".sum") for n in counts}
    return grams, sums, counts
