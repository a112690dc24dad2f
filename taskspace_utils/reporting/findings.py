"""The report's findings table and its paragraphs, generated from the comparison tables' numbers.

Every sentence is built from the values of :func:`taskspace_utils.comparison.compare_units`'s
tables (as written to ``<run>/comparison/``): nothing is written in advance, a statistic that is
missing is said to be missing.

Reading rule of the findings table (fixed, stated in the report): a value with a 95 % interval is
``above 0`` when the whole interval is above 0, ``below 0`` when it is below, ``includes 0``
otherwise; a trend (Spearman over models or checkpoints) is ``increases``/``decreases`` when its
p < 0.05 and ``no monotone trend`` otherwise, and ``not testable`` with fewer than 3 points.

The findings are read on the headline: the margin transfer space
(:data:`taskspace_utils.comparison.HEADLINE`) and the subnetwork overlap over non-embedding
parameters (:func:`taskspace_utils.comparison.headline_sharing`); the embedding (``embed_in``) and
output (``embed_out``) matrices get rows of their own, and the accuracy transfer space is named
``accuracy transfer (secondary)`` where it appears.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd
from scipy import stats

from ..comparison.sharing import EMBEDDING, NON_EMBEDDING, OUTPUT, headline_sharing
from ..comparison.units import HEADLINE, SPACE_FILES, SPACE_LABELS

__all__ = ["headline_space", "findings_table", "blimp_paragraph", "generalisation_paragraph",
           "sharing_paragraph", "stability_paragraph", "READING_RULE"]

Tables = Mapping[str, pd.DataFrame]

#: The reading rule of :func:`findings_table`, as the report states it.
READING_RULE = ("Reading rule (fixed in advance): a value with a 95% interval is 'above 0' when the whole "
                "interval lies above 0, 'below 0' when it lies below, 'includes 0' otherwise; a trend "
                "(Spearman over models or checkpoints) 'increases' or 'decreases' when p < 0.05, "
                "'no monotone trend' otherwise, and is 'not testable' with fewer than 3 points.")

#: How the report names each space (:data:`taskspace_utils.comparison.SPACE_LABELS`).
SPACE_NAMES = SPACE_LABELS


def _get(tables: Tables, name: str) -> pd.DataFrame:
    frame = tables.get(name)
    return frame if frame is not None else pd.DataFrame()


def headline_space(tables: Tables) -> str:
    """The space the findings are read on: the headline margin transfer space when the run has it,
    else the accuracy transfer space, else the gradient space (the first of
    :data:`~taskspace_utils.comparison.SPACE_FILES` present in ``alignment``)."""
    al = _get(tables, "alignment")
    present = set(al["space"]) if "space" in al else set()
    return next((s for s in SPACE_FILES if s in present), HEADLINE)


def _generalisation(tables: Tables, space: str) -> pd.DataFrame:
    """The rows of the ``generalisation`` table on ``space`` (one per unit)."""
    gen = _get(tables, "generalisation")
    if gen.empty or "same_phenomenon" not in gen:
        return pd.DataFrame()
    return gen[gen["space"] == space] if "space" in gen else gen


def _ci_reading(low: float, high: float) -> str:
    if not (np.isfinite(low) and np.isfinite(high)):
        return "no interval"
    return "above 0" if low > 0 else ("below 0" if high < 0 else "includes 0")


def _trend(x, y) -> tuple[float, float, int, str]:
    """Spearman of ``y`` over ``x`` (finite points only): (rho, p, n, reading per the rule)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = np.isfinite(x) & np.isfinite(y)
    n = int(keep.sum())
    if n < 3 or np.ptp(x[keep]) == 0 or np.ptp(y[keep]) == 0:
        return float("nan"), float("nan"), n, "not testable" if n < 3 else "no variation"
    res = stats.spearmanr(x[keep], y[keep])
    rho, p = float(res.statistic), float(res.pvalue)
    reading = ("increases" if rho > 0 else "decreases") if p < 0.05 else "no monotone trend"
    return rho, p, n, reading


def _phenomenon_alignment(tables: Tables, space: str) -> tuple[pd.DataFrame, str]:
    """Phenomenon alignment rows of ``space``, lexically controlled when the run has controlled
    values, else raw; with the units' family, step, size and ``is_final``."""
    al = _get(tables, "alignment")
    if al.empty or "space" not in al:
        return pd.DataFrame(), "raw"
    sel = al[(al["space"] == space) & (al["hypothesis"] == "phenomenon") & al["statistic"].notna()]
    units = _get(tables, "units")[["family", "step", "n_parameters", "is_final"]]
    sel = sel.merge(units, left_on="unit", right_index=True)
    controlled, raw = sel[sel["controlled"] != "none"], sel[sel["controlled"] == "none"]
    # lexically controlled when it is available for at least as many final units as the raw value
    n_final = lambda f: int(f["is_final"].astype(bool).sum())  # noqa: E731
    if not controlled.empty and n_final(controlled) >= n_final(raw):
        return controlled, "lexically controlled"
    return raw, "raw"


def _row(question, comparison, value, low=np.nan, high=np.nan, p=np.nan, n=np.nan, reading=""):
    return {"question": question, "comparison": comparison, "value": value, "ci_low": low, "ci_high": high,
            "p_value": p, "n": n, "reading": reading}


def _apart(share: pd.DataFrame, unit: str) -> list[pd.Series]:
    """The rows of ``unit`` for the embedding and output matrices, reported apart from the headline."""
    if "scope" not in share or unit not in share.index:
        return []
    rows = share.loc[[unit]]
    return [r for _, r in rows[rows["scope"].isin([EMBEDDING, OUTPUT])].iterrows()]


def findings_table(tables: Tables) -> pd.DataFrame:
    """One row per finding: ``question``, ``comparison``, ``value``, ``ci_low``, ``ci_high``,
    ``p_value``, ``n`` (tasks, models or checkpoints) and ``reading`` (:data:`READING_RULE`).

    Generalisation: phenomenon alignment of the headline space (:func:`headline_space`) at each
    family's final step, its trend over parameter count, trained − step 0 at the final step, and
    the generalisation index (same-phenomenon transfer / self-transfer) of that space. Sharing:
    within − across phenomenon subnetwork overlap in the headline scope (non-embedding parameters;
    all parameters for a gradient stage without per-module counts) at the final step and its trend
    over steps, then the same difference for the embedding (``embed_in``) and output (``embed_out``)
    matrices, each its own row. Stability: the lowest agreement of consecutive checkpoints and the
    agreement of the first checkpoint with the final, on the headline space."""
    rows, space = [], headline_space(tables)
    name = SPACE_NAMES.get(space, space)
    align, kind = _phenomenon_alignment(tables, space)
    if not align.empty:
        finals = align[align["is_final"].astype(bool)].sort_values("n_parameters")
        for _, r in finals.iterrows():
            rows.append(_row("generalisation", f"phenomenon alignment, {name} space ({kind}), {r['unit']}",
                             r["statistic"], r.get("ci_low", np.nan), r.get("ci_high", np.nan), r["p_value"],
                             r.get("n_tasks", np.nan), _ci_reading(r.get("ci_low", np.nan), r.get("ci_high", np.nan))))
        rho, p, n, reading = _trend(finals["n_parameters"], finals["statistic"])
        rows.append(_row("generalisation", "phenomenon alignment vs. parameter count (Spearman, final steps)",
                         rho, p=p, n=n, reading=reading))
    base = _get(tables, "baseline")
    if not base.empty:
        sel = base[(base["space"] == space) & (base["hypothesis"] == "phenomenon")]
        ctrl = sel[(sel["controlled"] != "none") & sel["difference"].notna()]
        sel = ctrl if not ctrl.empty else sel[sel["controlled"] == "none"]
        last = sel.loc[sel.groupby("family")["step"].idxmax()] if not sel.empty else sel
        for _, r in last.iterrows():
            rows.append(_row("generalisation", f"phenomenon alignment, trained − step 0, {r['unit']}",
                             r["difference"], r["ci_low"], r["ci_high"], n=r.get("n_tasks", np.nan),
                             reading=_ci_reading(r["ci_low"], r["ci_high"])))
    gen, units = _generalisation(tables, space), _get(tables, "units")
    if not gen.empty:
        for unit in units.index[units["is_final"].astype(bool)]:
            if unit in gen.index and np.isfinite(gen.loc[unit, "same_phenomenon"]):
                g = gen.loc[unit]
                more = "reaches its phenomenon more than other fields" if g["same_phenomenon"] > g["other_field"] \
                    else "reaches its phenomenon no more than other fields"
                rows.append(_row("generalisation", f"generalisation index (same phenomenon / self), {name} space, {unit}",
                                 g["same_phenomenon"], n=g["n_tasks"] - g["n_undefined"], reading=more))
    share = _get(tables, "sharing")
    if not share.empty and "difference" in share:
        head = headline_sharing(share)
        scope = head["scope"].iloc[0] if "scope" in head else "all parameters"
        for family, g in units[["family", "step"]].join(head, how="inner").groupby("family", sort=False):
            g = g.sort_values("step")
            f = g.iloc[-1]
            rows.append(_row("sharing", f"subnetwork overlap within − across phenomena ({scope}), {g.index[-1]}",
                             f["difference"], f["difference_ci_low"], f["difference_ci_high"], f.get("p_value", np.nan),
                             f.get("n_within", np.nan), _ci_reading(f["difference_ci_low"], f["difference_ci_high"])))
            rho, p, n, reading = _trend(g["step"], g["difference"])
            rows.append(_row("sharing", f"within − across overlap ({scope}) vs. step (Spearman), {family}", rho, p=p,
                             n=n, reading=reading))
            for apart in _apart(share, g.index[-1]):
                rows.append(_row("sharing", f"subnetwork overlap within − across phenomena ({apart['scope']}), "
                                 f"{g.index[-1]}", apart["difference"], apart["difference_ci_low"],
                                 apart["difference_ci_high"], apart.get("p_value", np.nan), apart.get("n_within", np.nan),
                                 _ci_reading(apart["difference_ci_low"], apart["difference_ci_high"])))
    stab = _get(tables, "stability")
    if not stab.empty and "rho_next" in stab:
        for (family, sp_name), g in stab[stab["space"] == space].groupby(["family", "space"], sort=False):
            g = g.dropna(subset=["rho_next"]).sort_values("step")
            if g.empty:
                continue
            low = g.loc[g["rho_next"].idxmin()]
            rows.append(_row("stability", f"lowest agreement of consecutive checkpoints, {family}",
                             low["rho_next"], p=low["p_next"], n=len(g), reading=f"from step {int(low['step'])} to the next"))
            first = g.iloc[0]
            if "rho_final" in g and np.isfinite(first["rho_final"]):
                rows.append(_row("stability", f"agreement with the final checkpoint, {family} step {int(first['step'])}",
                                 first["rho_final"], p=first["p_final"], reading=""))
    table = pd.DataFrame(rows, columns=list(_row("", "", np.nan)))
    table["n"] = pd.to_numeric(table["n"]).round().astype("Int64")
    return table


def _fmt(value: float, digits: int = 3) -> str:
    return f"{value:+.{digits}f}" if np.isfinite(value) else "n/a"


def _interval(low: float, high: float) -> str:
    return f" [{_fmt(low)}, {_fmt(high)}]" if np.isfinite(low) and np.isfinite(high) else ""


def blimp_paragraph(tables: Tables) -> str:
    """Final-step BLiMP accuracy per family (ordered by size) and its change over pre-training."""
    acc = _get(tables, "accuracy")
    if acc.empty:
        return "No BLiMP accuracy in this run (notebook 01 wrote no eval_blimp.csv)."
    joined = _get(tables, "units").join(acc, how="inner").sort_values(["n_parameters", "step"])
    finals = joined[joined["is_final"].astype(bool)]
    parts = [f"{u} {a:.3f}" for u, a in zip(finals.index, finals["blimp_accuracy"])]
    text = f"Mean BLiMP accuracy over {int(joined['n_tasks'].max())} tasks at the final step: {', '.join(parts)} (chance 0.5)."
    if len(finals) >= 2:
        ordered = bool(np.all(np.diff(finals["blimp_accuracy"].to_numpy()) > 0))
        text += " Accuracy " + ("rises with every size step." if ordered else "does not rise with every size step.")
    for family, g in joined.groupby("family", sort=False):
        if len(g) >= 2:
            g = g.sort_values("step")
            text += (f" {family}: {g['blimp_accuracy'].iloc[0]:.3f} at step {int(g['step'].iloc[0])} → "
                     f"{g['blimp_accuracy'].iloc[-1]:.3f} at step {int(g['step'].iloc[-1])}.")
    return text


def generalisation_paragraph(tables: Tables) -> str:
    """Phenomenon alignment at the final steps, its size trend, and the comparison with step 0."""
    space = headline_space(tables)
    align, kind = _phenomenon_alignment(tables, space)
    if align.empty:
        return "No task space in this run to align with the phenomenon hypothesis (notebooks 02/04 not run)."
    name = SPACE_NAMES.get(space, space)
    finals = align[align["is_final"].astype(bool)].sort_values("n_parameters")
    parts = [f"{u} {_fmt(s)} (p = {p:.3f})" for u, s, p in zip(finals["unit"], finals["statistic"], finals["p_value"])]
    rho, p, n, reading = _trend(finals["n_parameters"], finals["statistic"])
    text = (f"Phenomenon alignment of the {name} space ({kind}) at the final step: {', '.join(parts) or 'n/a'}. "
            + (f"With parameter count: Spearman {rho:+.2f} over {n} models (p = {p:.3f}), {reading}."
               if np.isfinite(rho) else f"A size trend is {reading} here ({n} final models)."))
    base = _get(tables, "baseline")
    if not base.empty:
        sel = base[(base["space"] == space) & (base["hypothesis"] == "phenomenon") & base["difference"].notna()]
        if not sel.empty:
            readings = [_ci_reading(lo, hi) for lo, hi in zip(sel["ci_low"], sel["ci_high"])]
            counts = {k: readings.count(k) for k in ("above 0", "below 0", "includes 0")}
            text += (f" Against the untrained model (step 0), {len(sel)} trained − step-0 differences of this space: "
                     f"{counts['above 0']} above 0, {counts['below 0']} below 0, {counts['includes 0']} with an interval "
                     f"that includes 0.")
    gen = _generalisation(tables, space)
    if not gen.empty and gen["same_phenomenon"].notna().any():
        g = gen.dropna(subset=["same_phenomenon"])
        text += (f" Transfer to the other paradigms of a phenomenon, relative to self-transfer, ranges from "
                 f"{g['same_phenomenon'].min():+.3f} to {g['same_phenomenon'].max():+.3f} over {len(g)} units "
                 f"(to other fields: {g['other_field'].min():+.3f} to {g['other_field'].max():+.3f}).")
    return text


def sharing_paragraph(tables: Tables) -> str:
    """Within − across subnetwork overlap in the headline scope (non-embedding parameters) at the
    final step per family and its trend; the embedding and output matrices apart, with the share of
    the subnetworks they hold; the non-embedding module where one phenomenon's subnetworks overlap most."""
    share, units = _get(tables, "sharing"), _get(tables, "units")
    if share.empty or "difference" not in share:
        return "No subnetwork overlap in this run (notebook 02 not run, or too few tasks per phenomenon)."
    head = headline_sharing(share)
    scope = head["scope"].iloc[0] if "scope" in head else "all parameters"
    parts, apart = [], []
    for family, g in units[["family", "step"]].join(head, how="inner").groupby("family", sort=False):
        g = g.sort_values("step")
        f = g.iloc[-1]
        rho, p, _, reading = _trend(g["step"], g["difference"])
        trend = f"Spearman with step {rho:+.2f} (p = {p:.3f}, {reading})" if np.isfinite(rho) else f"trend {reading}"
        parts.append(f"{family} at step {int(f['step'])}: {_fmt(f['difference'], 4)}"
                     f"{_interval(f['difference_ci_low'], f['difference_ci_high'])}, {trend}")
        for r in _apart(share, g.index[-1]):
            held = r.get("subnetwork_fraction", np.nan)
            apart.append(f"{r['scope']} of {g.index[-1]} {_fmt(r['difference'], 4)}"
                         f"{_interval(r['difference_ci_low'], r['difference_ci_high'])}"
                         + (f", holding {held:.0%} of a task's subnetwork" if np.isfinite(held) else ""))
    text = f"Subnetwork overlap within minus across phenomena ({scope} parameters) — " + "; ".join(parts) + "."
    if scope != NON_EMBEDDING:
        text += " The gradient stage stored no per-module counts, so the overlap is over all parameters."
    if apart:
        text += " Reported apart: " + "; ".join(apart) + "."
    modules = _get(tables, "sharing_modules")
    column = "module" if "module" in modules else "space"
    if not modules.empty and {"same_phenomenon", "other_field", column} <= set(modules.columns):
        body = modules[~modules[column].isin([NON_EMBEDDING, EMBEDDING, OUTPUT, "embed", "head"])]
        excess = (body["same_phenomenon"] - body["other_field"]).dropna()
        if not excess.empty:
            top = body.loc[excess.idxmax()]
            text += (f" Largest same-phenomenon excess over other fields in one non-embedding module: {top[column]} of "
                     f"{top['unit']} ({excess.max():+.4f}); {int((excess > 0).sum())} of {len(excess)} "
                     "module × unit cells are positive.")
    return text


def stability_paragraph(tables: Tables) -> str:
    """Range of consecutive-checkpoint agreement and agreement with the final checkpoint, the
    headline space first, then the others (labelled)."""
    stab, space = _get(tables, "stability"), headline_space(tables)
    if stab.empty or "rho_next" not in stab:
        return "Fewer than two checkpoints of any family in this run: stability cannot be measured."
    parts = []
    order = [space] + [s for s in SPACE_FILES if s != space]
    stab = stab.assign(_order=stab["space"].map(lambda s: order.index(s) if s in order else len(order)))
    for (_, family, name), g in stab.groupby(["_order", "family", "space"], sort=True):
        g = g.dropna(subset=["rho_next"]).sort_values("step")
        if g.empty:
            continue
        low = g.loc[g["rho_next"].idxmin()]
        parts.append(f"{family} {SPACE_NAMES.get(name, name)}: consecutive agreement {g['rho_next'].min():+.2f} to "
                     f"{g['rho_next'].max():+.2f} (lowest from step {int(low['step'])}), agreement with the final "
                     f"checkpoint {_fmt(g['rho_final'].iloc[0], 2)} at step {int(g['step'].iloc[0])}")
    if not parts:
        return "No pair of checkpoints with a comparable space in this run."
    return "Rank agreement between checkpoints — " + "; ".join(parts) + "."
