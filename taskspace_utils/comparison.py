"""Comparing task spaces across model sizes and pre-training checkpoints (paper Section 6).

A *run* folder holds one *unit* folder per model@revision (written by notebooks 01–04 through
``run_all.py``); each unit holds ``model_info.json`` (spec, family, step, parameters),
``eval_blimp.csv``, ``data/pairs.parquet`` and, when those stages ran, the gradient stage's folder
``gradients_<variant>/`` (``task_space_gradient.csv``, ``mask_overlap.csv``, ``differentials/``;
see :func:`gradient_dir`) and ``task_space_transfer.csv`` / ``task_space_transfer_margin.csv``. This module reads them all and answers the paper's three
questions, always against the untrained initialisation (step 0) as baseline:

1. **Generalisation to phenomena** — alignment of each space with the phenomenon and field
   hypotheses, raw and controlling for lexical overlap (:func:`unit_alignment`), the
   trained-minus-step-0 difference with a task-bootstrap CI (:func:`baseline_differences`), and the
   generalisation index of the transfer space (:func:`generalisation_summary`).
2. **Parameter sharing** — overlap (Jaccard) of the task subnetworks within vs. across phenomena,
   for the whole model (:func:`parameter_sharing`) and per module (:func:`sharing_by_module`).
3. **Stability** — agreement of each checkpoint's space with the next checkpoint's and with the
   final one (:func:`stability`).

Public functions
----------------
- :class:`ComparisonConfig`; :func:`discover_units`, :func:`load_unit_spaces`.
- :func:`unit_alignment`, :func:`baseline_differences`, :func:`generalisation_summary`,
  :func:`parameter_sharing`, :func:`sharing_by_module`, :func:`stability`.
- :func:`compare_units` — all of the above for a run, written atomically to
  ``<run_dir>/comparison/*.csv`` beside its config; :func:`describe_findings` — plain sentences
  stating what the numbers say.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from . import spaces as sp
from .data import task_metadata
from .results import atomic_write_csv, atomic_write_json

__all__ = [
    "ComparisonConfig",
    "SPACE_FILES",
    "discover_units",
    "gradient_dir",
    "load_unit_spaces",
    "unit_alignment",
    "baseline_differences",
    "generalisation_summary",
    "parameter_sharing",
    "sharing_by_module",
    "stability",
    "compare_units",
    "describe_findings",
]

log = logging.getLogger(__name__)

#: Task spaces a unit may hold: name -> file (transfer spaces in the unit folder, the gradient
#: space in :func:`gradient_dir`).
SPACE_FILES = {
    "transfer": "task_space_transfer.csv",
    "transfer_margin": "task_space_transfer_margin.csv",
    "gradient": "task_space_gradient.csv",
}


def gradient_dir(folder) -> Path:
    """Where a unit's gradient-stage results live: ``gradients_sentence/`` (notebook 02's default
    variant), else another ``gradients_*/``, else ``transfer_differentials/`` (computed by notebook
    04 when 02 did not run), else the unit folder itself."""
    folder = Path(folder)
    candidates = [folder / "gradients_sentence", *sorted(folder.glob("gradients_*")),
                  folder / "transfer_differentials", folder]
    for candidate in candidates:
        if (candidate / "task_space_gradient.csv").exists() or (candidate / "differentials").is_dir():
            return candidate
    return folder


@dataclass
class ComparisonConfig:
    """Settings of the comparison stage (notebook ``05_scale_and_checkpoints``).

    Attributes:
        method: rank correlation for every comparison (``"spearman"``, ``"pearson"``, ``"kendall"``).
        n_permutations: label permutations per Mantel test (p resolution ``1/(n+1)``).
        n_boot: task-bootstrap replicates for confidence intervals (0: no CIs).
        ci: confidence level of the intervals.
        seed: seed of permutations and bootstraps.
        lexical_controls: also report alignment partialling out lexical overlap (critical words and
            vocabularies, :func:`taskspace_utils.spaces.lexical_spaces`).
        sharing_k: subnetwork size (fraction of parameters) for the per-module sharing analysis;
            ``None`` uses the ``k`` of the unit's gradient config.
        modules: compute per-module sharing from the saved differentials (reads every task's
            differential once; seconds for the suite, minutes for 400M-parameter models).
    """

    method: str = "spearman"
    n_permutations: int = 1000
    n_boot: int = 200
    ci: float = 0.95
    seed: int = 0
    lexical_controls: bool = True
    sharing_k: float | None = None
    modules: bool = True


def _attempt(what: str, fn, *args, **kwargs):
    """Run one statistic; if the data are too few for it (a ``ValueError`` from
    :mod:`taskspace_utils.spaces`, e.g. fewer than 2 within-group pairs in a 3-task smoke run),
    warn with the reason and return ``None`` so the other tables are still produced."""
    try:
        return fn(*args, **kwargs)
    except ValueError as err:
        warnings.warn(f"{what}: skipped ({err})", stacklevel=2)
        return None


# --------------------------------------------------------------------------------------------
# reading a run


def discover_units(run_dir, units: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per unit folder (index ``unit``) with its ``model_info.json`` fields, ``folder``,
    ``step_rank`` (order within its family) and ``is_final`` (largest step of the family).

    ``units``: folder names to use (default: every sub-folder holding ``model_info.json``). A
    named unit without ``model_info.json`` raises, naming it."""
    run_dir = Path(run_dir)
    if units is None:
        folders = sorted(p.parent for p in run_dir.glob("*/model_info.json"))
    else:
        folders = [run_dir / u for u in units]
        missing = [f.name for f in folders if not (f / "model_info.json").exists()]
        if missing:
            raise FileNotFoundError(f"{run_dir}: units without model_info.json (notebook 01 not run?): {missing}")
    if not folders:
        raise FileNotFoundError(f"{run_dir}: no unit folders with model_info.json")
    rows = []
    for folder in folders:
        info = json.loads((folder / "model_info.json").read_text(encoding="utf-8"))
        rows.append({"unit": folder.name, "folder": str(folder), **info})
    table = pd.DataFrame(rows).set_index("unit")
    table["step"] = pd.to_numeric(table["step"], errors="coerce")
    table["step_rank"] = table.groupby("family")["step"].rank(method="dense")
    table["is_final"] = table["step"] == table.groupby("family")["step"].transform("max")
    return table.sort_values(["n_parameters", "step"] if "n_parameters" in table else ["family", "step"])


def load_unit_spaces(folder) -> dict[str, pd.DataFrame]:
    """The task spaces present in a unit folder (see :data:`SPACE_FILES`), tasks as labels."""
    folder = Path(folder)
    out = {}
    for name, file in SPACE_FILES.items():
        path = (gradient_dir(folder) if name == "gradient" else folder) / file
        if path.exists():
            space = pd.read_csv(path, index_col=0)
            space.columns = space.columns.astype(str)
            out[name] = space
    return out


def _unit_pairs(folder) -> pd.DataFrame:
    path = Path(folder) / "data" / "pairs.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing (notebook 01 writes it)")
    return pd.read_parquet(path)


def _hypotheses(metadata: pd.DataFrame, tasks: Sequence[str]) -> dict[str, pd.DataFrame]:
    hyps = sp.hypothesis_spaces(metadata.loc[list(tasks)])
    return {k: v for k, v in hyps.items() if k in ("phenomenon", "field")}


def _controls(pairs: pd.DataFrame, config: ComparisonConfig) -> dict[str, pd.DataFrame] | None:
    if not config.lexical_controls:
        return None
    lexical = sp.lexical_spaces(pairs)
    return {k: lexical[k] for k in ("critical_words", "vocabulary") if k in lexical}


# --------------------------------------------------------------------------------------------
# 1. generalisation


def unit_alignment(folder, config: ComparisonConfig | None = None) -> pd.DataFrame:
    """Alignment of every space of one unit with the phenomenon and field hypotheses.

    Rows from :func:`taskspace_utils.spaces.alignment_table`: ``space``, ``hypothesis``,
    ``controlled`` (``"none"`` or the lexical controls partialled out), ``statistic`` (rank
    correlation over off-diagonal entries), ``p_value`` (label permutations), ``ci_low``/``ci_high``
    (task bootstrap, when ``n_boot``)."""
    config = config or ComparisonConfig()
    spaces = load_unit_spaces(folder)
    if not spaces:
        return pd.DataFrame()
    pairs = _unit_pairs(folder)
    meta = task_metadata(pairs)
    tasks = sorted(set.intersection(*[set(s.index) for s in spaces.values()]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        table = _attempt(
            f"alignment of {Path(folder).name}", sp.alignment_table,
            spaces, _hypotheses(meta, tasks), controls=_controls(pairs[pairs.task.isin(tasks)], config),
            method=config.method, n_permutations=config.n_permutations, n_boot=config.n_boot, seed=config.seed,
            ci=config.ci,
        )
    return table if table is not None else pd.DataFrame()


def baseline_differences(units: pd.DataFrame, config: ComparisonConfig | None = None) -> pd.DataFrame:
    """Alignment of every checkpoint minus that of the same family's step-0 unit, per space and
    hypothesis, raw and lexically controlled, with a task-bootstrap CI
    (:func:`taskspace_utils.spaces.difference_with_uncertainty`). Families without a step-0 unit
    are skipped (logged)."""
    config = config or ComparisonConfig()
    rows = []
    for family, group in units.groupby("family", sort=False):
        base = group[group["step"] == 0]
        if base.empty:
            log.info("family %s has no step-0 unit: no baseline difference", family)
            continue
        base_spaces = load_unit_spaces(base["folder"].iloc[0])
        for unit, row in group[group["step"] != 0].iterrows():
            spaces = load_unit_spaces(row["folder"])
            pairs = _unit_pairs(row["folder"])
            meta = task_metadata(pairs)
            for name in sorted(set(spaces) & set(base_spaces)):
                tasks = sorted(set(spaces[name].index) & set(base_spaces[name].index))
                controls = _controls(pairs[pairs.task.isin(tasks)], config)
                for hname, hyp in _hypotheses(meta, tasks).items():
                    for ctrl in ([None, controls] if controls else [None]):
                        res = _attempt(
                            f"baseline difference of {unit} {name}", sp.difference_with_uncertainty,
                            spaces[name], base_spaces[name], hyp, method=config.method, controls=ctrl,
                            n_boot=max(config.n_boot, 1), seed=config.seed, ci=config.ci,
                        )
                        if res is None:
                            continue
                        rows.append({"unit": unit, "family": family, "step": row["step"], "space": name,
                                     "hypothesis": hname, "controlled": ", ".join(ctrl) if ctrl else "none",
                                     "trained": res.statistic_a, "step0": res.statistic_b,
                                     "difference": res.difference, "ci_low": res.ci_low, "ci_high": res.ci_high,
                                     "n_tasks": res.n_tasks})
    return pd.DataFrame(rows)


def generalisation_summary(units: pd.DataFrame, space: str = "transfer") -> pd.DataFrame:
    """Per unit, the mean generalisation index of its transfer space
    (:func:`taskspace_utils.spaces.generalisation_index`: transfer to the rest of the phenomenon,
    the rest of the field and other fields, each relative to the self-transfer) and the number of
    tuned tasks whose self-transfer was not positive (excluded from the means)."""
    rows = []
    for unit, row in units.iterrows():
        spaces = load_unit_spaces(row["folder"])
        if space not in spaces:
            continue
        meta = task_metadata(_unit_pairs(row["folder"]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gi = _attempt(f"generalisation index of {unit}", sp.generalisation_index, spaces[space], meta)
        if gi is None:
            continue
        overall = gi.attrs.get("overall", {})
        rows.append({"unit": unit, **{k: float(v) for k, v in overall.items()},
                     "mean_self_transfer": float(gi["self"].mean()), "n_undefined": int(gi.attrs.get("n_undefined", 0)),
                     "n_tasks": len(gi)})
    return pd.DataFrame(rows).set_index("unit") if rows else pd.DataFrame()


# --------------------------------------------------------------------------------------------
# 2. parameter sharing


def parameter_sharing(units: pd.DataFrame, config: ComparisonConfig | None = None) -> pd.DataFrame:
    """Mean Jaccard overlap of task subnetworks (``mask_overlap.csv``) within the same phenomenon
    vs. across phenomena, per unit, with bootstrap CIs over task pairs
    (:func:`taskspace_utils.spaces.within_across`) and the permutation test of the overlap space
    against the phenomenon hypothesis."""
    config = config or ComparisonConfig()
    rows = []
    for unit, row in units.iterrows():
        path = gradient_dir(row["folder"]) / "mask_overlap.csv"
        if not path.exists():
            continue
        overlap = pd.read_csv(path, index_col=0)
        overlap.columns = overlap.columns.astype(str)
        meta = task_metadata(_unit_pairs(row["folder"]))
        hyp = sp.hypothesis_space(meta.loc[list(overlap.index)], "phenomenon")
        wa = _attempt(f"subnetwork sharing of {unit}", sp.within_across, overlap, hyp,
                      n_boot=max(config.n_boot, 10), seed=config.seed, ci=config.ci)
        test = _attempt(f"subnetwork sharing test of {unit}", sp.compare_spaces, overlap, hyp,
                        method=config.method, n_permutations=config.n_permutations, seed=config.seed)
        if wa is None or test is None:
            continue
        rows.append({"unit": unit, **{k: v for k, v in wa.to_dict().items() if not isinstance(v, (list, np.ndarray))},
                     "rho_phenomenon": test.statistic, "p_value": test.p_value})
    return pd.DataFrame(rows).set_index("unit") if rows else pd.DataFrame()


def sharing_by_module(folder, k: float | None = None) -> pd.DataFrame:
    """Where in the network task subnetworks overlap: per module (embeddings, each layer's attention
    and MLP, head), the mean Jaccard overlap of the tasks' global top-``k`` masks restricted to that
    module, over task pairs of the same phenomenon, of different phenomena in one field, and of
    different fields (:func:`taskspace_utils.gradients.summarise_module_spaces`).

    Streams the unit's ``differentials/*.safetensors`` one task at a time: each task's global mask
    is computed once (``subnetwork_masks``) and kept as packed bits per module
    (:func:`~taskspace_utils.gradients.pack_masks`, P/8 bytes per task)."""
    from safetensors import safe_open

    from .gradients import module_groups, pack_masks, packed_jaccard_space, subnetwork_masks, summarise_module_spaces
    from .results import read_json

    folder = Path(folder)
    stage = gradient_dir(folder)
    files = sorted((stage / "differentials").glob("*.safetensors"))
    if not files:
        return pd.DataFrame()
    if k is None:
        k = float(read_json(stage / "config.json").get("k", 0.01)) if (stage / "config.json").exists() else 0.01
    with safe_open(str(files[0]), framework="pt") as handle:
        names = list(handle.keys())
    groups = module_groups(names)
    by_module = {m: [n for n in names if groups[n] == m] for m in dict.fromkeys(groups[n] for n in names)}
    packed: dict[str, dict[str, np.ndarray]] = {m: {} for m in by_module}
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            masks = subnetwork_masks({n: handle.get_tensor(n) for n in names}, k)
        for module, module_names in by_module.items():
            packed[module][file.stem] = pack_masks(masks, module_names)
    spaces = {module: packed_jaccard_space(by_task) for module, by_task in packed.items()}
    meta = task_metadata(_unit_pairs(folder))
    return summarise_module_spaces(spaces, meta)


# --------------------------------------------------------------------------------------------
# 3. stability


def stability(units: pd.DataFrame, config: ComparisonConfig | None = None) -> pd.DataFrame:
    """Per family and space, for each checkpoint (ordered by step): rank correlation (with its
    permutation p-value) of its space with the next checkpoint's and with the final checkpoint's."""
    config = config or ComparisonConfig()
    rows = []
    for family, group in units.groupby("family", sort=False):
        group = group.sort_values("step")
        if len(group) < 2:
            continue
        loaded = {u: load_unit_spaces(r["folder"]) for u, r in group.iterrows()}
        order = list(group.index)
        final = order[-1]
        for i, unit in enumerate(order[:-1]):
            for name, space in loaded[unit].items():
                row = {"family": family, "unit": unit, "step": group.loc[unit, "step"], "space": name}
                for label, other in (("next", order[i + 1]), ("final", final)):
                    if name in loaded[other]:
                        res = _attempt(f"stability of {unit} {name}", sp.compare_spaces, space, loaded[other][name],
                                       method=config.method, n_permutations=config.n_permutations, seed=config.seed)
                        if res is not None:
                            row[f"rho_{label}"], row[f"p_{label}"] = res.statistic, res.p_value
                rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# all together


def compare_units(run_dir, units: Sequence[str] | None = None, config: ComparisonConfig | None = None,
                  out_dir=None) -> dict[str, pd.DataFrame]:
    """Every comparison table for a run; written to ``out_dir`` (default ``<run_dir>/comparison``)
    as CSV, atomically, with ``comparison_config.json``. Returns ``{name: frame}`` with
    ``units``, ``accuracy``, ``alignment``, ``baseline``, ``generalisation``, ``sharing``,
    ``sharing_modules`` and ``stability``."""
    from tqdm.auto import tqdm

    config = config or ComparisonConfig()
    table = discover_units(run_dir, units)
    out = Path(out_dir) if out_dir is not None else Path(run_dir) / "comparison"
    accuracy, alignment, modules = [], [], []
    for unit, row in tqdm(list(table.iterrows()), desc="units", unit="unit"):
        path = Path(row["folder"]) / "eval_blimp.csv"
        if path.exists():
            acc = pd.read_csv(path)
            accuracy.append({"unit": unit, "blimp_accuracy": acc["accuracy"].mean(), "n_tasks": len(acc),
                             "ties": int(acc["ties"].sum())})
        al = unit_alignment(row["folder"], config)
        if not al.empty:
            alignment.append(al.assign(unit=unit))
        if config.modules:
            mod = sharing_by_module(row["folder"], config.sharing_k)
            if not mod.empty:
                modules.append(mod.reset_index().assign(unit=unit))
    tables = {
        "units": table,
        "accuracy": pd.DataFrame(accuracy).set_index("unit") if accuracy else pd.DataFrame(),
        "alignment": pd.concat(alignment, ignore_index=True) if alignment else pd.DataFrame(),
        "baseline": baseline_differences(table, config),
        "generalisation": generalisation_summary(table),
        "sharing": parameter_sharing(table, config),
        "sharing_modules": pd.concat(modules, ignore_index=True) if modules else pd.DataFrame(),
        "stability": stability(table, config),
    }
    atomic_write_json(out / "comparison_config.json", {"config": config, "units": list(table.index)})
    for name, frame in tables.items():
        atomic_write_csv(out / f"{name}.csv", frame)
    return tables


def _trend(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, int]:
    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = np.isfinite(x) & np.isfinite(y)
    if keep.sum() < 3 or np.ptp(x[keep]) == 0 or np.ptp(y[keep]) == 0:
        return float("nan"), float("nan"), int(keep.sum())
    res = stats.spearmanr(x[keep], y[keep])
    return float(res.statistic), float(res.pvalue), int(keep.sum())


def describe_findings(tables: Mapping[str, pd.DataFrame], space: str = "transfer") -> list[str]:
    """Plain sentences on what the numbers of :func:`compare_units` say for this suite: whether
    alignment with the phenomenon hypothesis (lexically controlled when available) grows with model
    size, whether it exceeds step 0, whether subnetwork sharing within phenomena grows with
    pre-training, and whether the space is stable. Each sentence carries its numbers; with fewer
    than three units a trend is reported as not testable."""
    units, lines = tables["units"], []
    al = tables.get("alignment", pd.DataFrame())
    if not al.empty:
        ctrl = al[al["controlled"] != "none"] if (al["controlled"] != "none").any() else al
        pick = ctrl[(ctrl["space"] == space) & (ctrl["hypothesis"] == "phenomenon")]
        if pick.empty:
            pick = ctrl[ctrl["hypothesis"] == "phenomenon"]
        if not pick.empty:
            finals = units[units["is_final"]]
            sel = pick.set_index("unit").reindex(finals.index).dropna(subset=["statistic"])
            kind = "lexically controlled" if (pick["controlled"] != "none").any() else "raw"
            rho, p, n = _trend(finals.loc[sel.index, "n_parameters"], sel["statistic"])
            values = ", ".join(f"{u}: {v:+.3f} (p={q:.3f})" for u, v, q in zip(sel.index, sel["statistic"], sel["p_value"]))
            verdict = "not testable (fewer than 3 final models)" if np.isnan(rho) else (
                f"Spearman with parameter count {rho:+.2f} over {n} models")
            lines.append(f"Phenomenon alignment of the {pick['space'].iloc[0]} space ({kind}) at the final step — "
                         f"{values}; trend with size: {verdict}.")
    base = tables.get("baseline", pd.DataFrame())
    if not base.empty:
        sel = base[base["hypothesis"] == "phenomenon"]
        for _, r in sel.iterrows():
            sig = "above" if r["ci_low"] > 0 else ("below" if r["ci_high"] < 0 else "not distinguishable from")
            lines.append(f"{r['unit']} {r['space']} ({r['controlled']}): alignment {r['trained']:+.3f} vs step 0 "
                         f"{r['step0']:+.3f}, difference {r['difference']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]: "
                         f"{sig} the untrained baseline.")
    share = tables.get("sharing", pd.DataFrame())
    if not share.empty and "difference" in share:
        joined = units.join(share, how="inner")
        for family, g in joined.groupby("family"):
            rho, p, n = _trend(g["step"], g["difference"])
            trend = "not testable (fewer than 3 checkpoints)" if np.isnan(rho) else f"Spearman with step {rho:+.2f} (n={n})"
            lines.append(f"{family}: within- minus across-phenomenon subnetwork overlap "
                         + ", ".join(f"step {int(s)}: {d:+.4f}" for s, d in zip(g["step"], g["difference"]))
                         + f"; trend over pre-training: {trend}.")
    stab = tables.get("stability", pd.DataFrame())
    if not stab.empty and "rho_final" in stab:
        for (family, name), g in stab.groupby(["family", "space"]):
            lines.append(f"{family} {name} space: agreement with the final checkpoint "
                         + ", ".join(f"step {int(s)}: {r:+.2f}" for s, r in zip(g["step"], g["rho_final"])) + ".")
    if not lines:
        lines.append("No comparable spaces found in this run.")
    return lines
