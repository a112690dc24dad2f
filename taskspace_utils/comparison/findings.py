"""All comparison tables of a run, written beside their config, and what they say in words.

The headline is the margin transfer space (:data:`~.units.HEADLINE`) and the subnetwork overlap
over non-embedding parameters (:func:`~.sharing.headline_sharing`); the accuracy transfer space is
the secondary view, and the embedding and output matrices are reported apart."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from ..layout import CONFIG, run_layout, unit_layout
from ..results import atomic_write_csv, atomic_write_json
from .alignment import baseline_differences, generalisation_summary, unit_alignment
from .claims import claims_table
from .sharing import headline_sharing, parameter_sharing, sharing_by_module
from .stability import stability
from .units import (
    HEADLINE,
    SECONDARY,
    SPACE_FILES,
    SPACE_LABELS,
    ComparisonConfig,
    check_space,
    discover_units,
)

__all__ = ["compare_units", "describe_findings"]


def compare_units(run_dir, units: Sequence[str] | None = None, config: ComparisonConfig | None = None,
                  out_dir=None) -> dict[str, pd.DataFrame]:
    """Every comparison table for a run; written to ``out_dir`` (default ``<run_dir>/comparison``)
    as CSV, atomically, beside its ``config.json``. Returns ``{name: frame}`` with
    ``units``, ``accuracy``, ``alignment``, ``baseline``, ``generalisation``, ``sharing``,
    ``sharing_modules``, ``stability`` and ``claims`` (:func:`~taskspace_utils.comparison.claims_table`,
    written without an index). Tables with a ``space`` column list the headline ``transfer_margin``
    first, then ``transfer_accuracy`` and ``gradient``; ``generalisation`` holds the margin space's
    rows, then the accuracy space's; ``sharing`` one row per unit and ``scope`` (non-embedding
    first, then the embedding and output matrices and all parameters), ``sharing_modules`` one row
    per unit and ``module`` (:func:`~.sharing.sharing_by_module`)."""
    from tqdm.auto import tqdm

    config = config or ComparisonConfig()
    table = discover_units(run_dir, units)
    out = Path(out_dir) if out_dir is not None else run_layout(run_dir).comparison
    accuracy, alignment, modules = [], [], []
    for unit, row in tqdm(list(table.iterrows()), desc="units", unit="unit"):
        path = unit_layout(row["folder"]).eval_blimp
        if path.exists():
            acc = pd.read_csv(path)
            accuracy.append({"unit": unit, "blimp_accuracy": acc["accuracy"].mean(), "n_tasks": len(acc),
                             "ties": int(acc["ties"].sum())})
        al = unit_alignment(row["folder"], config)
        if not al.empty:
            alignment.append(al.assign(unit=unit))
        if config.modules:
            mod = sharing_by_module(row["folder"])
            if not mod.empty:
                modules.append(mod.reset_index().assign(unit=unit))
    tables = {
        "units": table,
        "accuracy": pd.DataFrame(accuracy).set_index("unit") if accuracy else pd.DataFrame(),
        "alignment": pd.concat(alignment, ignore_index=True) if alignment else pd.DataFrame(),
        "baseline": baseline_differences(table, config),
        "generalisation": _concat([generalisation_summary(table, s) for s in (HEADLINE, SECONDARY)]),
        "sharing": parameter_sharing(table, config),
        "sharing_modules": pd.concat(modules, ignore_index=True) if modules else pd.DataFrame(),
        "stability": stability(table, config),
        "claims": claims_table(table, config),
    }
    atomic_write_json(out / CONFIG, {"config": config, "units": list(table.index)})
    for name, frame in tables.items():
        atomic_write_csv(out / f"{name}.csv", frame, **({"index": False} if name == "claims" else {}))
    return tables


def _trend(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, int]:
    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = np.isfinite(x) & np.isfinite(y)
    if keep.sum() < 3 or np.ptp(x[keep]) == 0 or np.ptp(y[keep]) == 0:
        return float("nan"), float("nan"), int(keep.sum())
    res = stats.spearmanr(x[keep], y[keep])
    return float(res.statistic), float(res.pvalue), int(keep.sum())


def _concat(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames) if frames else pd.DataFrame()


def _label(space: str) -> str:
    return SPACE_LABELS.get(space, space)


def _space_order(frame: pd.DataFrame, space: str) -> list[str]:
    """The spaces of ``frame``: ``space`` first, then the others in the order of :data:`SPACE_FILES`."""
    present = list(dict.fromkeys(frame["space"]))
    rest = [s for s in SPACE_FILES if s in present and s != space] + [s for s in present if s not in SPACE_FILES]
    return ([space] if space in present else []) + rest


def describe_findings(tables: Mapping[str, pd.DataFrame], space: str = HEADLINE) -> list[str]:
    """Plain sentences on what the numbers of :func:`compare_units` say for this suite, read on
    ``space`` (default the headline margin transfer space; others follow, labelled, e.g. the
    accuracy transfer space as the secondary view): whether alignment with the phenomenon hypothesis
    (lexically controlled when available) grows with model size, whether it exceeds step 0, whether
    subnetwork sharing within phenomena (non-embedding parameters; the embedding and output matrices
    apart) grows with pre-training, and whether the space is stable. Each sentence carries its
    numbers; with fewer than three units a trend (Spearman) is reported as not testable."""
    check_space(space)
    units, lines = tables["units"], []
    al = tables.get("alignment", pd.DataFrame())
    if not al.empty:
        ctrl = al[al["controlled"] != "none"] if (al["controlled"] != "none").any() else al
        pick = ctrl[(ctrl["space"] == space) & (ctrl["hypothesis"] == "phenomenon")]
        if pick.empty:
            pick = ctrl[(ctrl["space"] == _space_order(ctrl, space)[0]) & (ctrl["hypothesis"] == "phenomenon")]
        if not pick.empty:
            finals = units[units["is_final"]]
            sel = pick.set_index("unit").reindex(finals.index).dropna(subset=["statistic"])
            kind = "lexically controlled" if (pick["controlled"] != "none").any() else "raw"
            rho, p, n = _trend(finals.loc[sel.index, "n_parameters"], sel["statistic"])
            values = ", ".join(f"{u}: {v:+.3f} (p={q:.3f})" for u, v, q in zip(sel.index, sel["statistic"], sel["p_value"]))
            verdict = "not testable (fewer than 3 final models)" if np.isnan(rho) else (
                f"Spearman with parameter count {rho:+.2f} over {n} models")
            lines.append(f"Phenomenon alignment of the {_label(pick['space'].iloc[0])} space ({kind}) at the final step — "
                         f"{values}; trend with size: {verdict}.")
    base = tables.get("baseline", pd.DataFrame())
    if not base.empty:
        sel = base[base["hypothesis"] == "phenomenon"]
        for name in _space_order(sel, space):
            for _, r in sel[sel["space"] == name].iterrows():
                sig = "above" if r["ci_low"] > 0 else ("below" if r["ci_high"] < 0 else "not distinguishable from")
                lines.append(f"{r['unit']} {_label(name)} ({r['controlled']}): alignment {r['trained']:+.3f} vs step 0 "
                             f"{r['step0']:+.3f}, difference {r['difference']:+.3f} [{r['ci_low']:+.3f}, "
                             f"{r['ci_high']:+.3f}]: {sig} the untrained baseline.")
    gen = tables.get("generalisation", pd.DataFrame())
    if not gen.empty and "space" in gen and "same_phenomenon" in gen:
        for name in _space_order(gen, space):
            g = gen[gen["space"] == name].dropna(subset=["same_phenomenon"])
            if not g.empty:
                lines.append(f"Generalisation index of the {_label(name)} space (transfer relative to self-transfer): "
                             + ", ".join(f"{u}: same phenomenon {a:+.3f}, other fields {b:+.3f}"
                                         for u, a, b in zip(g.index, g["same_phenomenon"], g["other_field"])) + ".")
    share = tables.get("sharing", pd.DataFrame())
    if not share.empty and "difference" in share:
        joined = units[["family", "step"]].join(share, how="inner")
        scopes = list(dict.fromkeys(joined["scope"])) if "scope" in joined else [None]
        head = headline_sharing(share)["scope"].iloc[0] if "scope" in share else None
        for scope in [head] + [s for s in scopes if s != head]:
            part = joined if scope is None else joined[joined["scope"] == scope]
            what = "" if scope is None else f" ({scope}{', headline' if scope == head else ''})"
            for family, g in part.groupby("family"):
                rho, _, n = _trend(g["step"], g["difference"])
                trend = "not testable (fewer than 3 checkpoints)" if np.isnan(rho) else f"Spearman with step {rho:+.2f} (n={n})"
                lines.append(f"{family}: within- minus across-phenomenon subnetwork overlap{what} "
                             + ", ".join(f"step {int(s)}: {d:+.4f}" for s, d in zip(g["step"], g["difference"]))
                             + f"; trend over pre-training: {trend}.")
    stab = tables.get("stability", pd.DataFrame())
    if not stab.empty and "rho_final" in stab:
        for name in _space_order(stab, space):
            for family, g in stab[stab["space"] == name].groupby("family"):
                lines.append(f"{family} {_label(name)} space: agreement with the final checkpoint "
                             + ", ".join(f"step {int(s)}: {r:+.2f}" for s, r in zip(g["step"], g["rho_final"])) + ".")
    if not lines:
        lines.append("No comparable spaces found in this run.")
    return lines
