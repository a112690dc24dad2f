"""The gradient stage (notebook ``02_gradient_extraction``): every task of one model to disk.

For each task t (its first ``n_train`` training pairs): the task differential ``D_t``, its spread

    consistency = ||D_t|| / mean_i ||d_i||        (1: all pairs pull the same way; ~1/sqrt(N): unrelated)

and the split-half cosine ``cos(D_t^(0), D_t^(1))`` of two seeded random halves of the pairs
(``D_t`` is their size-weighted mean). The per-pair norms come from ghost norms
(:mod:`.ghost_norms`) or per-pair differentials (:mod:`.per_pair`), as :class:`GradientConfig`
says. Then, over all task files of the folder: the statistics table, the gradient space (whole
model and per module, :mod:`.space`) and the mask-overlap space (:mod:`.subnetworks`). The files
and their metadata are described in :mod:`.store`; a run is resumable task by task.

What is kept per task (``GradientConfig.store``): ``"summary"`` (default) keeps the top entries of
``D_t`` (:mod:`.summary`: every top-k mask with ``k <= top_k`` is exact) and the gradient space is
computed from the differentials while they are in memory (``gram.safetensors``; a task no longer in
memory is recomputed by :func:`recompute_differential`); ``"full"`` keeps every ``D_t`` in float32.
Disk per unit (T tasks, P parameters in n tensors): summary ``T (8 top_k P + 280 n) + 8 n T (T + 1)``
bytes (entries, headers, ``gram.safetensors``), full ``4 T P``; measured on ``tiny-s`` (67 tasks,
top_k = 1 %): 19.2 MB vs. 776 MB; ``tiny-l`` 47 MB vs. 2.2 GB, Pythia-410m 2.2 GB vs. 109 GB by the
formula. Peak memory of the summary pass: the model and its backward, the differentials it holds
for the gradient space (``min(T, memory budget / 4P)`` of ``4 P`` bytes) and one stack of them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..data import split_pairs
from ..encoding import EncodedPairs, check_variant, encode
from ..padded import DEFAULT_BATCH_TOKENS
from ..results import (
    ConfigMismatchError,
    atomic_save_safetensors,
    atomic_write_csv,
    atomic_write_parquet,
)
from .differentials import _trainable, task_differential
from .ghost_norms import _GhostNorms, pair_differential_norms
from .per_pair import ParameterSketch, pair_differential_stats
from .space import METRICS, _grams, _spaces_from_grams, module_groups
from ..models import dtype_identity
from .store import _pairs_sha, _task_file, _task_metadata, ensure_stage_config, modules_to_long
from .subnetworks import pack_masks, packed_jaccard_space, packed_overlap_counts, subnetwork_masks
from .summary import STORES, default_memory_bytes, dense_from_summary, gram_pass, load_grams, save_grams, top_entries

__all__ = ["GradientConfig", "extract_task_differentials", "summarise_run", "recompute_differential"]

log = logging.getLogger(__name__)


@dataclass
class GradientConfig:
    """Settings of the gradient stage (notebook ``02_gradient_extraction``).

    Attributes:
        model: model spec the differentials are taken from (recorded with the results; see
            :func:`taskspace_utils.models.load_model`).
        variant: ``"sentence"`` (score all tokens) or ``"critical"`` (score only the tokens where
            good and bad differ; see :mod:`.differentials`).
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
            from the batched pass: :func:`~.ghost_norms.pair_differential_norms`), ``"loop"`` (one
            backward per pair), ``"vmap"`` (``torch.func``) or ``"auto"``: ghost norms when the
            model supports them and no sketch is asked for, else vmap up to 10M parameters and the
            loop above (``benchmarks/bench_gradients.py``).
        projection_dim: with ``per_pair``, also save a ``[N, projection_dim]`` CountSketch of the
            per-pair differentials per task (``0``: none).
        store: what each task file keeps: ``"summary"`` (default) the top entries of ``D_t`` at the
            fraction ``top_k`` (in the ``per_module`` mode; :mod:`.summary`), enough for every mask
            with ``k <= top_k``, the gradient space being computed before the vectors are dropped;
            ``"full"`` every entry in float32 (opt-in: ``T x P x 4`` bytes per unit).
        top_k: the fraction a summary keeps (``None``: ``k``; at least ``k``): the largest FTGD ``k`` of notebook 04.
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
    store: str = "summary"
    top_k: float | None = None

    def __post_init__(self):
        check_variant(self.variant)
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
        if self.store not in STORES:
            raise ValueError(f"store={self.store!r}: use one of {STORES}")
        if self.top_k is not None and not float(self.k) <= float(self.top_k) <= 1.0:
            raise ValueError(f"top_k={self.top_k!r}: a fraction in [k, 1] (k={self.k})")

    @property
    def kept_fraction(self) -> float:
        """The fraction of entries a summary keeps: ``top_k``, else ``k``."""
        return float(self.k if self.top_k is None else self.top_k)


def _train_pairs(pairs: pd.DataFrame, config: GradientConfig) -> pd.DataFrame:
    """The first ``config.n_train`` training pairs of every task (split here when no ``split``)."""
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


def _pooled_mean(means: Sequence[Mapping[str, torch.Tensor] | None], sizes: Sequence[int]) -> dict[str, torch.Tensor]:
    """``sum_g n_g mean_g / sum_g n_g`` over the groups present, in float64, cast back."""
    present = [(m, n) for m, n in zip(means, sizes) if m is not None]
    return {
        name: (sum(m[name].double() * n for m, n in present) / sum(n for _, n in present)).to(t.dtype)
        for name, t in present[0][0].items()
    }


def _compute_task(model, tokenizer, task: str, frame: pd.DataFrame, config: GradientConfig, sketch, progress):
    """Differential and statistics of one task (see :func:`extract_task_differentials`); the
    task's pairs are encoded once here and passed along."""
    n_given = len(frame)
    enc = encode(tokenizer, frame)
    if config.variant == "critical":
        reasons = enc.excluded
        excluded = frame.loc[reasons.notna(), "pair_id"].tolist() if "pair_id" in frame.columns else list(np.flatnonzero(reasons.notna()))
        enc = enc.select(reasons.isna().to_numpy())
        if excluded:
            log.warning("task %s: %d pair(s) without critical tokens excluded: %s", task, len(excluded), dict(reasons.value_counts()))
    else:
        excluded = []
    if not len(enc):
        raise ValueError(f"task {task!r}: no pairs left ({n_given} given, {len(excluded)} without critical tokens)")
    halves = _halves(task, len(enc), config.seed)
    stats = {"task": task, "n_pairs": len(enc), "n_excluded": len(excluded)}
    sketches = None
    method = config.per_pair_method
    if method == "auto" and not config.projection_dim and _GhostNorms.supports(model):
        method = "ghost"  # else pair_differential_stats resolves "auto" to vmap or loop
    sizes = [int((halves == label).sum()) for label in (0, 1)]
    if config.per_pair and method == "ghost":
        half, norms = [None, None], np.full(len(enc), np.nan)
        for label in (0, 1):
            chosen = halves == label
            if chosen.any():
                total, norms[chosen] = pair_differential_norms(model, tokenizer, enc.select(chosen), config.variant, config.batch_tokens)
                half[label] = {name: t / sizes[label] for name, t in total.items()}
        mean = _pooled_mean(half, sizes)
        stats["mean_norm"] = float(np.mean(norms))
    elif config.per_pair:
        result = pair_differential_stats(
            model, tokenizer, enc, config.variant, method=method, groups=halves,
            sketch=sketch, progress=progress,
        )
        mean = result["mean"]
        half = [result["group_means"].get(label) for label in (0, 1)]
        stats["mean_norm"] = result["mean_norm"]
        sketches = result["sketches"]
    else:
        half = [
            task_differential(model, tokenizer, enc.select(halves == label), config.variant, batch_tokens=config.batch_tokens)
            if sizes[label] else None
            for label in (0, 1)
        ]
        mean = _pooled_mean(half, sizes)
        stats["mean_norm"] = float("nan")
    stats["norm_of_mean"] = _norm(mean)
    stats["consistency"] = stats["norm_of_mean"] / stats["mean_norm"] if stats["mean_norm"] > 0 else float("nan")
    stats["split_half_cosine"] = _cosine(half[0], half[1]) if half[0] is not None and half[1] is not None else float("nan")
    return mean, stats, excluded, sketches


def recompute_differential(model, tokenizer, frame: pd.DataFrame, config: GradientConfig) -> dict[str, torch.Tensor]:
    """``D_t`` of one task's pairs ``frame`` (the rows the stage averaged, e.g. a group of
    :func:`_train_pairs`) again, as :func:`extract_task_differentials` computed it: the same
    function on the same batches, so bit for bit the stored ``D_t`` on the same model, device and
    threads when the stage used ghost norms (the default for GPT-NeoX/GPT-2/Llama-style models) or
    ``per_pair=False``; with per-pair vmap/loop the two halves are taken by batched backward
    instead (equal to float rounding, ~1e-7 relative in float32). One batched backward pass over
    the pairs (two halves), plus the ghost norms' cheap per-pair sums when the stage used them."""
    ghost = config.per_pair and config.per_pair_method in ("auto", "ghost") and _GhostNorms.supports(model)
    again = dataclasses.replace(config, per_pair=ghost, per_pair_method="ghost" if ghost else "auto", projection_dim=0)
    return _compute_task(model, tokenizer, str(frame["task"].iloc[0]), frame, again, None, False)[0]


def extract_task_differentials(
    model,
    tokenizer,
    pairs: pd.DataFrame | EncodedPairs,
    out_dir,
    config: GradientConfig | None = None,
    tasks: Sequence[str] | None = None,
    progress: bool | None = None,
    memory_gb: float | None = None,
) -> pd.DataFrame:
    """Task differentials of every task to ``out_dir``, resumable; returns the statistics frame.

    For each task (its first ``config.n_train`` training pairs, see :class:`GradientConfig`):
    ``D_t`` (and, with ``per_pair``, the per-pair norms and optional sketches) is computed and
    written atomically to ``differentials/<task>.safetensors`` with the config, the pairs' hash,
    the excluded pair ids and the statistics in the file's metadata (``sketches/<task>.safetensors``
    first when ``projection_dim``). A task whose file exists is skipped (a file from other pairs
    raises :class:`~taskspace_utils.results.ConfigMismatchError`); ``config.json`` is checked by
    :func:`~taskspace_utils.results.ensure_run_config`, so one folder never mixes configs.
    ``pairs``: a frame (``task``, ``good``, ``bad``, optionally ``split`` and ``pair_id``) or an
    ``EncodedPairs`` of one (its frame is used; its tokenisation is reused through the memo).

    After the tasks, over all files in the folder: ``differential_stats.parquet`` (one row per
    task: ``n_pairs``, ``n_excluded``, ``norm_of_mean`` ``||D_t||``, ``mean_norm``
    ``mean_i ||d_i||``, ``consistency`` = their ratio, ``split_half_cosine``),
    ``task_space_gradient.csv`` (the ``config.metric`` space), ``task_space_gradient_modules.parquet``
    (long format: module, task, other, value) and ``mask_overlap.csv`` (Jaccard of
    ``M_t(config.k)``).

    With ``config.store="summary"`` a task file holds the top entries of ``D_t`` (:mod:`.summary`)
    and the metadata ``summary`` (``top_k``, ``per_module``, ``shapes``); the differentials
    computed here stay in memory, up to ``memory_gb`` (default: half the available memory), for
    ``gram.safetensors``; the others are recomputed (:func:`recompute_differential`).
    """
    config = config if config is not None else GradientConfig()
    out_dir = Path(out_dir)
    ensure_stage_config(out_dir, config, dtype_identity(model))
    train = _train_pairs(pairs.pairs if isinstance(pairs, EncodedPairs) else pairs, config)
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
    task_bytes = sum(p.numel() * p.element_size() for _, p in params)
    budget = None if memory_gb is None else int(float(memory_gb) * 2**30)
    cache = {}
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
        metadata = {"task": task, "config": config, "pairs_sha": sha, "stats": stats, "excluded_pair_ids": excluded}
        if config.store == "full":
            atomic_save_safetensors(path, mean, metadata=metadata)
            continue
        metadata["summary"] = {"top_k": config.kept_fraction, "per_module": bool(config.per_module),
                               "shapes": {n: list(t.shape) for n, t in mean.items()}}
        atomic_save_safetensors(path, top_entries(mean, config.kept_fraction, config.per_module), metadata=metadata)
        if (len(cache) + 1) * task_bytes <= (budget if budget is not None else default_memory_bytes()):
            cache[task] = {n: t.detach().cpu() for n, t in mean.items()}
        del mean
    recompute = None
    if config.store == "summary":
        def recompute(task):
            if task not in by_task:
                raise KeyError(f"{out_dir}: task {task!r} has a file but no training pairs in `pairs`; pass its pairs")
            return recompute_differential(model, tokenizer, by_task[task], config)
    return summarise_run(out_dir, config, progress, _recompute=recompute, _cache=cache, _memory=budget, _task_bytes=task_bytes)


def summarise_run(out_dir, config: GradientConfig | None = None, progress: bool | None = None, *,
                  _recompute=None, _cache=None, _memory=None, _task_bytes=None) -> pd.DataFrame:
    """(Re)write the run's tables from its ``differentials/*.safetensors``: statistics, the gradient
    space and the mask-overlap space, each for the whole model and per module. Full files are
    streamed one parameter tensor of all tasks at a time, so the folder may hold more than fits in
    memory. Summary files (``store="summary"``) give the masks from their top entries and the
    gradient space from ``gram.safetensors``; when that does not hold exactly these tasks (a resumed
    or extended run) it is recomputed, which needs the model (called from
    :func:`extract_task_differentials`)."""
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
    kinds = {bool(m.get("summary")) for m in metas}
    if len(kinds) > 1:
        raise ConfigMismatchError(f"{out_dir}/differentials mixes summary and full task files")
    if kinds == {True}:
        names = sorted(metas[0]["summary"]["shapes"])  # the order of a full file's keys
        shapes = {n: metas[0]["summary"]["shapes"][n] for n in names}
        shas = [m["pairs_sha"] for m in metas]
        found = load_grams(out_dir, tasks, shas)
        if found is None:
            if _recompute is None:
                raise ValueError(f"{out_dir}: summary files without a gram.safetensors of these {len(tasks)} tasks; "
                                 "rerun extract_task_differentials (it recomputes the differentials it needs)")
            found = gram_pass(tasks, names, dict(_cache or {}), _recompute, _task_bytes or 4 * sum(
                int(np.prod(s)) for s in shapes.values()), _memory, progress)
            save_grams(out_dir, tasks, shas, *found)
        grams, sums, counts = found

        def task_tensors(handle):
            return dense_from_summary({n: handle.get_tensor(n) for n in handle.keys()}, shapes)
    else:
        names = list(handles[0].keys())
        grams, sums, counts = _grams(lambda n: [h.get_tensor(n).reshape(-1) for h in handles], names,
                                     config.metric, "gradient space", progress)

        def task_tensors(handle):
            return {n: handle.get_tensor(n) for n in names}
    space = _spaces_from_grams(grams, sums, counts, names, tasks, config.metric, "model")
    atomic_write_csv(out_dir / "task_space_gradient.csv", space)
    modules = _spaces_from_grams(grams, sums, counts, names, tasks, config.metric, "module")
    atomic_write_parquet(out_dir / "task_space_gradient_modules.parquet", modules_to_long(modules), index=False)

    # each task's mask once, packed for the whole model and for each module (P/8 bytes per task each)
    groups = module_groups(names)
    by_module = {m: [n for n in names if groups[n] == m] for m in dict.fromkeys(groups[n] for n in names)}
    packed, packed_modules = {}, {m: {} for m in by_module}
    show = len(tasks) >= 20 if progress is None else bool(progress)
    for task, handle in zip(tqdm(tasks, desc="masks", unit="task", disable=not show, leave=False), handles):
        masks = subnetwork_masks(task_tensors(handle), config.k, config.per_module)
        packed[task] = pack_masks(masks, names)
        for module, module_names in by_module.items():
            packed_modules[module][task] = pack_masks(masks, module_names)
    atomic_write_csv(out_dir / "mask_overlap.csv", packed_jaccard_space(packed))
    long = modules_to_long({m: packed_jaccard_space(p) for m, p in packed_modules.items()}).merge(  # + the counts
        packed_overlap_counts(packed_modules), on=["module", "task", "other"], how="left")
    atomic_write_parquet(out_dir / "mask_overlap_modules.parquet", long, index=False)
    return stats
