"""First-order prediction of transfer (beyond the paper): what the linear overlap of two tasks'
gradients predicts for the measured margin transfer.

Tuning t moves the parameters by ``delta_t`` (the masked FTGD update, a sparse
:class:`~taskspace_utils.ftgd.SparseDelta`); to first order the mean margin of task u moves by

       P[t, u] = < D_u , delta_t >        (D_u: task u's differential, grad of its mean margin)

(:func:`first_order_prediction`, float64); comparing ``P`` with ``T_margin``
(:func:`taskspace_utils.spaces.compare_prediction`) says how much of the measured transfer is the
linear overlap of the two tasks' gradients and how much comes from curvature / the optimiser. The
differentials are read lazily from the gradient stage's folder (:func:`differential_store`).

A folder of ``GradientConfig(store="summary")`` keeps only the top entries of each ``D_u``
(:mod:`taskspace_utils.gradients.summary`): they give FTGD's mask exactly (``k <= top_k``, same
mode), and ``P`` needs ``D_u`` on the support of every ``delta_t``, so the store recomputes
``D_u`` there (one batched backward per ``u``, :func:`~taskspace_utils.gradients.stage.recompute_differential`,
bit for bit the stage's ``D_u`` with ghost norms; then dotted with every delta). Why recompute
rather than store ``D_u`` on the union of the masks: on ``tiny-s`` (k = 1 %) that union covers
7.4 % of the parameters for the 12 transfer tasks and 19 % for all 67, so a 67-task unit would keep
19 % of its full differentials (over the 10 % disk target), while recomputing costs one batched
backward of ``n_train`` pairs per evaluated task (``tiny-s``, 32 pairs: about 1 s a task on one core).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..encoding import EncodedPairs
from ..ftgd import SparseDelta

__all__ = ["differential_store", "first_order_prediction", "probe_differentials"]


class _DifferentialStore(Mapping):
    """Lazily loaded task differentials of a gradient-stage folder (see :func:`differential_store`)."""

    def __init__(self, folder: Path, hashes: Mapping[str, str] | None, variant: str | None, frames=None,
                 k: float | None = None, per_module: bool = False, model=None, tokenizer=None):
        self.folder = folder
        self.hashes = dict(hashes) if hashes is not None else None
        self.variant = variant
        self.frames, self.model, self.tokenizer = frames or {}, model, tokenizer
        self.k, self.per_module = k, bool(per_module)
        self._meta = {}
        self._usable = [t for t in sorted(f.stem for f in (folder / "differentials").glob("*.safetensors"))
                        if self._matches(t)]

    def _matches(self, task: str) -> bool:
        from ..gradients import _task_metadata
        from ..gradients.summary import covers

        if self.hashes is not None and task not in self.hashes:
            return False
        meta = _task_metadata(self.folder / "differentials" / f"{task}.safetensors")
        if self.variant is not None and meta.get("config", {}).get("variant") != self.variant:
            return False
        if meta.get("summary") and not covers(meta, self.k, self.per_module):
            return False
        self._meta[task] = meta
        return self.hashes is None or meta.get("pairs_sha") == self.hashes[task]

    def is_summary(self, task: str) -> bool:
        """Whether ``task``'s file keeps only the top entries of ``D_t``."""
        return bool(self._meta[task].get("summary"))

    def __getitem__(self, task: str) -> dict[str, torch.Tensor]:
        """A full file's ``D_t``; for a summary file ``D_t`` on its top entries and 0 elsewhere,
        whose top-k mask (``k <= top_k``, the stored mode) is ``D_t``'s: what FTGD's mask reads
        (offered only with the ``k`` it covers); :meth:`full` for ``D_t`` itself."""
        from safetensors.torch import load_file

        from ..gradients.summary import dense_from_summary

        if task not in self._usable:
            raise KeyError(task)
        tensors = load_file(str(self.folder / "differentials" / f"{task}.safetensors"))
        if not self.is_summary(task):
            return tensors
        return dense_from_summary(tensors, self._meta[task]["summary"]["shapes"])

    def full(self, task: str) -> dict[str, torch.Tensor]:
        """``D_t`` itself: read from a full file, or recomputed with the store's model from the
        task's pairs for a summary file (:func:`~taskspace_utils.gradients.stage.recompute_differential`)."""
        from ..gradients import GradientConfig
        from ..gradients.stage import recompute_differential

        if task not in self._usable:
            raise KeyError(task)
        if not self.is_summary(task):
            return self[task]
        if self.model is None or task not in self.frames:
            raise ValueError(f"{self.folder}: task {task!r} keeps only the top entries of D_t (store='summary'); "
                             "pass model=, tokenizer= and pairs= to differential_store to recompute it")
        return recompute_differential(self.model, self.tokenizer, self.frames[task],
                                      GradientConfig(**self._meta[task]["config"]))

    def __iter__(self) -> Iterator[str]:
        return iter(self._usable)

    def __len__(self) -> int:
        return len(self._usable)

    def __contains__(self, task) -> bool:
        return task in self._usable

    def __repr__(self) -> str:
        return f"differential_store({str(self.folder)!r}: {len(self)} task(s))"


def differential_store(folder, pairs: pd.DataFrame | EncodedPairs | None = None, variant: str | None = None, *,
                       k: float | None = None, per_module: bool = False, model=None, tokenizer=None) -> Mapping:
    """The task differentials of a gradient-stage folder (``<folder>/differentials/<task>.safetensors``,
    :func:`taskspace_utils.gradients.extract_task_differentials`) as a lazily loading mapping
    ``{task: {param name: D_t}}`` (one task in memory at a time: 67 tasks of ``tiny-m`` would be
    1.3 GB at once).

    With ``pairs`` (e.g. the probe's training pairs) only tasks whose file was computed from
    exactly those pairs, in that order, are offered (a frame or its ``EncodedPairs``); with
    ``variant`` only those of that variant.
    An empty folder gives an empty mapping.

    Summary files (``GradientConfig(store="summary")``) are offered only when they give exact
    top-``k`` masks (``k <= top_k``, ``per_module`` as stored; none without ``k``); ``store[t]`` is
    then ``D_t`` on its top entries (enough for the mask) and ``store.full(t)`` recomputes ``D_t``
    with ``model`` and ``tokenizer`` from ``pairs``. Full files are offered as before."""
    from ..gradients import _pairs_sha

    folder = Path(folder)
    hashes, frames = None, {}
    if isinstance(pairs, EncodedPairs):
        pairs = pairs.pairs
    if pairs is not None:
        frames = {str(t): g for t, g in pairs.groupby("task", sort=True)}
        hashes = {t: _pairs_sha(g) for t, g in frames.items()}
    return _DifferentialStore(folder, hashes, variant, frames, k, per_module, model, tokenizer)


def _flat_delta(delta: SparseDelta, offsets: Mapping[str, int], shapes: Mapping[str, torch.Size]) -> tuple[torch.Tensor, torch.Tensor]:
    """Global flat indices (in the concatenation of the differential's tensors) and float64 values
    of a delta's update ``tuned - original``."""
    idx, val = [], []
    for name, update in delta.values.items():
        if name not in offsets:
            raise KeyError(f"first_order_prediction: the differentials have no parameter {name!r} (delta of "
                           f"task {delta.meta.get('task')!r})")
        local = delta.indices[name]
        if local is None:
            local = torch.arange(int(np.prod(shapes[name])))
        idx.append(local.cpu().reshape(-1) + offsets[name])
        val.append(update.detach().cpu().reshape(-1).double())
    if not idx:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.float64)
    return torch.cat(idx), torch.cat(val)


def first_order_prediction(
    differentials_by_task: Mapping[str, Mapping[str, torch.Tensor]],
    deltas_by_task: Mapping[str, SparseDelta],
    evaluated: Sequence[str] | None = None,
    progress: bool | None = None,
) -> pd.DataFrame:
    """First-order prediction of the margin transfer: ``P[t, u] = < D_u, delta_t >``.

    ``delta_t = theta_tuned(t) - theta`` is tuned task t's update (a sparse
    :class:`~taskspace_utils.ftgd.SparseDelta`) and ``D_u = grad_theta mean_i m_i(u)`` task u's
    differential, so ``P[t, u]`` is the first-order Taylor term of the change in u's mean margin,
    the quantity :func:`probe_transfer` measures as ``T_margin[t, u]`` (exact as the update goes
    to 0; tested against a finite difference). Computed in float64: every ``D_u`` is flattened
    once (parameters in its own order) and dotted with every delta's entries by a gather.

    Args:
        differentials_by_task: ``{u: {param name: tensor}}``; may load lazily
            (:func:`differential_store`): each task is read (or, from a summary folder,
            recomputed) once.
        deltas_by_task: ``{t: SparseDelta}`` (:func:`load_transfer_deltas`).
        evaluated: the tasks u (columns), read from ``differentials_by_task`` one at a time
            (default: all of its tasks).

    Returns:
        DataFrame, index ``tuned`` (the deltas' tasks), columns ``evaluated`` (the differentials'
        tasks), in the mappings' orders; units: nats of mean margin.
    """
    tuned = list(deltas_by_task)
    evaluated = list(evaluated) if evaluated is not None else list(differentials_by_task)
    missing = [u for u in evaluated if u not in differentials_by_task]
    if missing:
        raise KeyError(f"first_order_prediction: no differential for task(s) {missing}")
    if not tuned or not evaluated:
        raise ValueError(f"first_order_prediction: {len(tuned)} delta(s) and {len(evaluated)} differential(s); need both")
    out = np.zeros((len(tuned), len(evaluated)))
    flat = None
    show = len(evaluated) > 10 if progress is None else progress
    for j, u in enumerate(tqdm(evaluated, desc="first-order prediction", unit="task", disable=not show, leave=False)):
        diff = differentials_by_task.full(u) if isinstance(differentials_by_task, _DifferentialStore) else differentials_by_task[u]
        if flat is None:  # layout of the first differential; every other must match it
            names = list(diff)
            shapes = {n: diff[n].shape for n in names}
            offsets = dict(zip(names, np.cumsum([0] + [diff[n].numel() for n in names[:-1]]).tolist()))
            flat = [_flat_delta(deltas_by_task[t], offsets, shapes) for t in tuned]
        if list(diff) != names or any(diff[n].shape != shapes[n] for n in names):
            raise ValueError(f"first_order_prediction: differential of task {u!r} has other parameters than {evaluated[0]!r}")
        vector = torch.cat([diff[n].detach().reshape(-1).cpu().double() for n in names])
        for i, (idx, val) in enumerate(flat):
            out[i, j] = float(vector[idx] @ val) if len(idx) else 0.0
    frame = pd.DataFrame(out, index=pd.Index(tuned, name="tuned"), columns=pd.Index(evaluated, name="evaluated"))
    return frame


def probe_differentials(model, tokenizer, train: pd.DataFrame, unit_dir, config, *, model_spec: str,
                        variant: str = "sentence", seed: int = 0, progress: bool = True) -> tuple[Mapping, Path]:
    """The task differentials a probe of the unit in ``unit_dir`` reads, and their folder.

    Notebook 02's ``gradients_<variant>/`` when it holds a differential of every task of
    ``train`` computed from exactly these pairs; otherwise they are computed here
    (:func:`taskspace_utils.gradients.extract_task_differentials`, ``per_pair=False``; summary
    files at FTGD's ``k`` and ``per_module``, or full files in a folder written before
    ``GradientConfig.store``) into the probe's own ``probing/differentials/``
    (:mod:`taskspace_utils.layout`). Summary files of notebook 02 count when they give FTGD's mask
    exactly (``top_k >= k``, same ``per_module``); the store recomputes their ``D_u`` for
    :func:`first_order_prediction` with ``model``. ``config`` is the
    :class:`~taskspace_utils.probing.ProbingConfig` (its ``n_train`` and FTGD ``k``)."""
    from ..gradients import GradientConfig, extract_task_differentials
    from ..layout import unit_layout
    from ..results import read_json

    unit = unit_layout(unit_dir)
    tasks = sorted(set(train["task"]))
    source = unit.gradients(variant)
    mask = {"k": config.ftgd.k, "per_module": config.ftgd.per_module, "model": model, "tokenizer": tokenizer}
    store = differential_store(source, train, variant, **mask) if (source / "differentials").exists() else {}
    if len(store) < len(tasks):
        source = unit.probing_differentials
        legacy = (source / "config.json").exists() and "store" not in read_json(source / "config.json")
        own = {"store": "full"} if legacy else {"per_module": config.ftgd.per_module}  # full: written before `store`
        extract_task_differentials(model, tokenizer, train, source, GradientConfig(
            model=str(model_spec), variant=variant, n_train=config.n_train, seed=seed, k=config.ftgd.k,
            per_pair=False, **own), progress=progress)
        store = differential_store(source, train, variant, **mask)
    return store, source
