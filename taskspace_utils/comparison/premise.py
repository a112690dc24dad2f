"""FTGD's premise at the probing settings: did the probe's tuned models learn their task without
damaging the language model?

The transfer space reads the change of every task after tuning one; if tuning also disrupts the
model in general, that disruption is mixed into every entry. The probe (notebook 04,
:func:`taskspace_utils.probing.probe_transfer`) records for every tuned task t the validation
perplexity of held-out corpus sentences before and after tuning:

    val_ppl_change(t) = ppl(theta + delta_t) / ppl(theta) - 1          (0.05 = 5 % worse)

beside its self-transfer ``T[t, t]`` (accuracy points as fractions, and nats of mean margin).

Rule (fixed in advance, the same for every unit): the premise is **kept** when the median over
tuned tasks of ``val_ppl_change`` is at most :data:`PREMISE_MAX_MEDIAN_CHANGE` (10 %), else it is
**damaged**; a probe run with ``n_val_texts = 0`` (or written before the perplexity was recorded)
is **not measured**. The median, not the mean, so that one fragile task does not decide; the
maximum is reported beside it. 10 %: measured on ``tiny-m`` (``benchmarks/bench_ftgd_premise.py``,
4 tasks of 4 phenomena), FTGD's default settings, chosen on this trade-off for both notebooks
(:class:`taskspace_utils.ftgd.FTGDConfig`: lr 1e-4, 50 x 16), change it by a median +6.8 % (at
most +9.2 %), while the former probing settings (lr 1e-3, 20 x 20) gained the same target accuracy
at a median +63 % (+9 % to +126 %).

Public functions: :func:`probe_premise` (per tuned task, one probe folder), :func:`premise_table`
(one row per unit of a run), :func:`plot_premise` (self-transfer against perplexity change).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from ..layout import CONFIG, UnitLayout, task_file_stem, unit_layout

__all__ = ["PREMISE_MAX_MEDIAN_CHANGE", "PREMISE_COLUMNS", "probe_premise", "premise_table", "plot_premise"]

#: The rule's threshold: premise kept when the median relative perplexity change is at most this.
PREMISE_MAX_MEDIAN_CHANGE = 0.10
#: Columns of :func:`premise_table`, in order.
PREMISE_COLUMNS = ("unit", "n_tasks", "lr", "steps", "batch_size", "n_val_texts", "self_accuracy_mean",
                   "self_margin_mean", "val_ppl_base", "val_ppl_change_median", "val_ppl_change_max",
                   "premise_kept", "verdict")
_PER_TASK = ("accuracy", "margin", "val_ppl_base", "val_ppl_tuned", "val_ppl_change")


def _read(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def _number(value) -> float:
    return float("nan") if value is None else float(value)


def probe_premise(probe_dir) -> pd.DataFrame:
    """Per finished tuned task of a probe folder (a unit's ``probing/``, or its ``baseline/`` or
    ``seed<N>/``), index ``task`` in config order: the self-transfer ``accuracy`` and ``margin``
    (NaN for a task that is not evaluated) and ``val_ppl_base``, ``val_ppl_tuned``,
    ``val_ppl_change`` (NaN when not measured). The same columns as
    :attr:`taskspace_utils.probing.TransferResult.premise`; read from the ``rows/`` files."""
    folder = Path(probe_dir)
    if not (folder / CONFIG).exists():
        raise FileNotFoundError(f"{folder / CONFIG}: no probe here (notebook 04 / probe_transfer not run)")
    tasks = _read(folder / CONFIG)["probing"]["tasks"]
    records = []
    for task in tasks:
        path = folder / "rows" / f"{task_file_stem(task)}.json"
        if path.exists():
            row = _read(path)
            records.append({"task": task, "accuracy": _number(row["accuracy"].get(task)),
                            "margin": _number(row["margin"].get(task)),
                            **{c: _number(row.get(c)) for c in _PER_TASK[2:]}})
    return pd.DataFrame(records, columns=["task", *_PER_TASK]).set_index("task")


def _verdict(median: float, max_median: float) -> tuple[object, str]:
    if not np.isfinite(median):
        return pd.NA, "not measured"
    return (True, "kept") if median <= max_median else (False, "damaged")


def _unit_folders(run_dir_or_units) -> dict[str, Path]:
    """``{unit name: unit folder}`` from a run folder, a unit folder, a :func:`discover_units`
    frame, a mapping or a list of unit folders."""
    if isinstance(run_dir_or_units, pd.DataFrame):
        if "folder" not in run_dir_or_units.columns:
            raise ValueError("premise_table: a units frame needs a 'folder' column (as discover_units gives)")
        return {str(u): Path(f) for u, f in run_dir_or_units["folder"].items()}
    if isinstance(run_dir_or_units, Mapping):
        return {str(u): Path(f) for u, f in run_dir_or_units.items()}
    if isinstance(run_dir_or_units, (str, Path)):
        root = Path(run_dir_or_units)
        if (unit_layout(root).probing / CONFIG).exists():  # one unit folder
            return {root.name: root}
        if not root.is_dir():
            raise FileNotFoundError(f"premise_table: {root} is not a folder")
        from .units import discover_units  # units in the comparison's order (size, then step)

        try:
            found = discover_units(root)
            folders = {str(u): Path(f) for u, f in found["folder"].items()}
        except FileNotFoundError:  # no data/model_info.json: every folder with a probe
            folders = {}
        extra = {p.parent.parent.name: p.parent.parent for p in sorted(root.glob(f"*/probing/{CONFIG}"))}
        return folders | {u: f for u, f in extra.items() if u not in folders}
    return {Path(f).name: Path(f) for f in run_dir_or_units}


def premise_table(run_dir_or_units, max_median_change: float = PREMISE_MAX_MEDIAN_CHANGE) -> pd.DataFrame:
    """One row per unit that has probing rows (its main probe, ``<unit>/probing/``): whether the
    probe's tuned models kept FTGD's premise (module docstring).

    Args:
        run_dir_or_units: a run folder (units in :func:`~.units.discover_units` order, plus any
            folder with a probe but no ``data/model_info.json``), one unit folder, the frame
            :func:`~.units.discover_units` returns, ``{unit: folder}``, or a list of unit folders.
        max_median_change: the rule's threshold (default :data:`PREMISE_MAX_MEDIAN_CHANGE`).

    Returns:
        Columns :data:`PREMISE_COLUMNS`: ``unit``; ``n_tasks`` (finished tuned tasks); the FTGD
        ``lr``, ``steps``, ``batch_size`` and ``n_val_texts`` of the probe; ``self_accuracy_mean``
        and ``self_margin_mean`` (mean self-transfer ``T[t, t]`` over the tuned tasks that are
        evaluated; accuracy as a fraction, margin in nats); ``val_ppl_base`` (the untuned model);
        ``val_ppl_change_median`` and ``val_ppl_change_max`` over tuned tasks (relative,
        ``tuned / base - 1``); ``premise_kept`` (nullable boolean: median <= threshold; ``<NA>``
        when not measured) and ``verdict`` (``"kept"``, ``"damaged"``, ``"not measured"``).
        Units without a finished row are left out; an empty frame (same columns) when none has one.
    """
    if not float(max_median_change) >= 0:
        raise ValueError(f"premise_table: max_median_change={max_median_change!r} must be >= 0")
    rows = []
    for unit, folder in _unit_folders(run_dir_or_units).items():
        probe = UnitLayout(folder).probing
        if not (probe / CONFIG).exists():
            continue
        per_task = probe_premise(probe)
        if per_task.empty:
            continue
        settings = _read(probe / CONFIG)["probing"]
        change = per_task["val_ppl_change"].dropna()
        median = float(change.median()) if len(change) else float("nan")
        kept, verdict = _verdict(median, float(max_median_change))
        rows.append({"unit": unit, "n_tasks": len(per_task), "lr": settings["ftgd"]["lr"],
                     "steps": settings["ftgd"]["steps"], "batch_size": settings["ftgd"]["batch_size"],
                     "n_val_texts": settings.get("n_val_texts", 0),
                     "self_accuracy_mean": float(per_task["accuracy"].mean()),
                     "self_margin_mean": float(per_task["margin"].mean()),
                     "val_ppl_base": float(per_task["val_ppl_base"].dropna().iloc[0]) if len(change) else float("nan"),
                     "val_ppl_change_median": median,
                     "val_ppl_change_max": float(change.max()) if len(change) else float("nan"),
                     "premise_kept": kept, "verdict": verdict})
    table = pd.DataFrame(rows, columns=list(PREMISE_COLUMNS))
    table["premise_kept"] = table["premise_kept"].astype("boolean")
    return table


def plot_premise(premise, meta: pd.DataFrame | None = None, ax=None, title: str | None = None,
                 max_median_change: float = PREMISE_MAX_MEDIAN_CHANGE):
    """Each tuned task's self-transfer (margin, nats) against its validation-perplexity change (%),
    with the rule's threshold and the median change; the title says the verdict.

    Args:
        premise: a per-task frame (:func:`probe_premise`, or ``TransferResult.premise``) or a probe
            folder (read with :func:`probe_premise`).
        meta: optional task metadata with a ``phenomenon`` column (colours).
        ax: matplotlib axes (default: a new figure).
        title: first line of the title (default ``"FTGD's premise"``).

    Returns the figure. A probe without perplexity (``n_val_texts = 0``) gives an empty plot saying so.
    """
    import matplotlib.pyplot as plt

    frame = premise if isinstance(premise, pd.DataFrame) else probe_premise(premise)
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    data = frame.dropna(subset=["val_ppl_change", "margin"])
    median = float(data["val_ppl_change"].median()) if len(data) else float("nan")
    _, verdict = _verdict(median, float(max_median_change))
    if len(data):
        groups = data.join(meta[["phenomenon"]]).groupby("phenomenon", sort=True) if meta is not None and \
            "phenomenon" in meta.columns else [("tuned tasks", data)]
        for name, group in groups:
            ax.scatter(100 * group["val_ppl_change"], group["margin"], s=28, label=str(name))
        ax.axvline(100 * median, color="black", linewidth=1, label=f"median {median:+.1%}")
        ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.02, 1))
    else:
        ax.text(0.5, 0.5, "validation perplexity not measured (n_val_texts = 0)", ha="center", va="center",
                transform=ax.transAxes)
    ax.axvline(100 * max_median_change, color="grey", linestyle="--", linewidth=1)
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set(xlabel="validation perplexity change (%)", ylabel="self-transfer (margin, nats)",
           title=f"{title or 'FTGD premise'}\npremise {verdict}: median change {median:+.1%} "
                 f"(rule: <= {max_median_change:.0%})")
    return ax.figure
