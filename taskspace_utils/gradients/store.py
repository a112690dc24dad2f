"""The gradient stage's run folder on disk: file names, per-task metadata, and reading it back.

Layout of a run folder (written by :func:`~.stage.extract_task_differentials` and
:func:`~.stage.summarise_run`)::

    config.json                           the GradientConfig (ensure_run_config: one config per folder)
    differentials/<task>.safetensors      store="full": D_t, one tensor per parameter;
                                          store="summary" (default): per parameter <name> the values and
                                          <name>:indices the int32 flat indices of D_t's top entries
                                          (.summary); metadata (JSON values): task, config, pairs_sha,
                                          stats, excluded_pair_ids, and for a summary
                                          summary = {top_k, per_module, shapes}
    gram.safetensors                      store="summary": per-parameter Gram matrices of the D_t
    sketches/<task>.safetensors           "sketch": [N, projection_dim] (only with projection_dim)
    differential_stats.parquet            one row per task (n_pairs, n_excluded, norm_of_mean, ...)
    task_space_gradient.csv               the config.metric space, tasks x tasks
    task_space_gradient_modules.parquet   long format: module, task, other, value
    mask_overlap.csv                      Jaccard of the subnetworks M_t(config.k)

``pairs_sha`` (:func:`_pairs_sha`) is the first 16 hex digits of ``sha256`` over the task's pairs
(``good<TAB>bad``, one line per pair, in order): a rerun skips a task whose file holds the same
hash and refuses one computed from other pairs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd
import torch

from ..encoding import pairs_hash
from ..layout import task_file_stem
from ..results import ConfigMismatchError, ensure_run_config, read_json, to_jsonable
from .space import _module_order

__all__ = ["load_task_differentials", "load_gradient_spaces", "load_differential_stats", "modules_to_long",
           "ensure_stage_config"]


def _pairs_sha(frame: pd.DataFrame) -> str:
    """The key stored in every task file's metadata: :func:`taskspace_utils.encoding.pairs_hash`
    without the task column."""
    return pairs_hash(frame, with_task=False)


def _task_file(out_dir: Path, task: str) -> Path:
    """``out_dir/differentials/<task>.safetensors``; ``ValueError`` for an unsafe task name."""
    return out_dir / "differentials" / f"{task_file_stem(task)}.safetensors"


def _task_metadata(path: Path) -> dict:
    """The JSON-decoded metadata of a task file (``task``, ``config``, ``pairs_sha``, ...)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata() or {}
    return {k: json.loads(v) for k, v in meta.items()}


def ensure_stage_config(out_dir: Path, config, extra: dict | None = None) -> None:
    """:func:`~taskspace_utils.results.ensure_run_config` for a :class:`~.stage.GradientConfig`
    (with ``extra`` keys, e.g. :func:`taskspace_utils.models.dtype_identity` of the model), also for
    folders written before ``store``/``top_k`` existed (full differentials): such a folder takes
    ``store="full"``, ``top_k=None`` and otherwise the same config."""
    path = out_dir / "config.json"
    found = read_json(path) if path.exists() else None
    if isinstance(found, dict) and "store" not in found:
        wanted = {k: v for k, v in {**to_jsonable(config), **(extra or {})}.items() if k not in ("store", "top_k")}
        if config.store != "full" or config.top_k is not None:
            raise ConfigMismatchError(f"{path}: a folder of full differentials written before GradientConfig.store "
                                      "existed; resume it with store='full' or use another folder")
        if json.dumps(found, sort_keys=True) != json.dumps(wanted, sort_keys=True):
            raise ConfigMismatchError(f"{path} holds results of a different config; use another output folder")
        return
    ensure_run_config(out_dir, {**to_jsonable(config), **(extra or {})})


def load_task_differentials(out_dir, tasks: Sequence[str] | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """``{task: {name: tensor}}`` from a run folder (all tasks, or ``tasks`` in the given order).

    Memory: ``n_tasks x P`` entries (67 tasks of an 8M-parameter model: 2.2 GB in float32); for
    the spaces prefer the tables :func:`~.stage.extract_task_differentials` wrote. Only folders
    of ``store="full"`` hold the differentials; a summary file raises ``ValueError`` (recompute one
    with :func:`~.stage.recompute_differential`, or read it through
    :func:`taskspace_utils.probing.differential_store`)."""
    from safetensors.torch import load_file

    out_dir = Path(out_dir)
    if tasks is None:
        paths = sorted((out_dir / "differentials").glob("*.safetensors"))
        if not paths:
            raise FileNotFoundError(f"{out_dir}: no differentials/*.safetensors")
    else:
        paths = [_task_file(out_dir, task) for task in tasks]
    out = {}
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"{path}: no differential for task {path.stem!r} (not extracted yet?)")
        if _task_metadata(path).get("summary"):
            raise ValueError(f"{path}: holds the top entries of D_t only (GradientConfig.store='summary'); "
                             "extract with store='full' to keep whole differentials")
        out[path.stem] = load_file(str(path))
    return out


def modules_to_long(spaces: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """``{module: task x task frame}`` as one long frame with columns ``module, task, other, value``
    (the per-module files' format)."""
    return pd.concat(
        [s.rename_axis(index="task", columns="other").stack().rename("value").reset_index().assign(module=m)
         for m, s in spaces.items()],
        ignore_index=True,
    )[["module", "task", "other", "value"]]


def _modules_from_long(path: Path) -> dict[str, pd.DataFrame]:
    long = pd.read_parquet(path)
    tasks = list(dict.fromkeys(long["task"]))
    out = {}
    for module in _module_order(long["module"].unique()):
        part = long[long["module"] == module].pivot(index="task", columns="other", values="value")
        out[module] = part.loc[tasks, tasks].rename_axis(index="task", columns="task")
    return out


def load_gradient_spaces(out_dir, by: str = "model", name: str = "gradient") -> pd.DataFrame | dict[str, pd.DataFrame]:
    """Read back a run's spaces: ``name="gradient"`` (cosine of the task differentials) or
    ``"mask_overlap"`` (Jaccard of the top-k subnetworks); ``by="model"`` the whole-model frame
    (``task_space_gradient.csv`` / ``mask_overlap.csv``), ``"module"`` ``{module: frame}`` in
    network order (``task_space_gradient_modules.parquet`` / ``mask_overlap_modules.parquet``)."""
    out_dir = Path(out_dir)
    stems = {"gradient": "task_space_gradient", "mask_overlap": "mask_overlap"}
    if name not in stems:
        raise ValueError(f"name={name!r}: use 'gradient' or 'mask_overlap'")
    if by == "model":
        return pd.read_csv(out_dir / f"{stems[name]}.csv", index_col=0)
    if by != "module":
        raise ValueError(f"by={by!r}: use 'model' or 'module'")
    return _modules_from_long(out_dir / f"{stems[name]}_modules.parquet")


def load_differential_stats(out_dir) -> pd.DataFrame:
    """The per-task statistics table of a run folder (``differential_stats.parquet``)."""
    path = Path(out_dir) / "differential_stats.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{path}: not written yet (run extract_task_differentials)")
    return pd.read_parquet(path)
