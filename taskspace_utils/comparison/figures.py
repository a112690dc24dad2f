"""Figures of the comparison across units (notebook 05 and the report): each takes the tables of
:func:`~taskspace_utils.comparison.compare_units` and returns its figure, or ``None`` when the run
has nothing to show for it, together with the table it plotted."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from ..plotting import _new_axes

__all__ = [
    "plot_trend",
    "accuracy_figure",
    "alignment_figure",
    "baseline_figure",
    "generalisation_figure",
    "sharing_figure",
    "module_sharing_figure",
    "stability_figure",
]

Tables = dict


def plot_trend(
    frame: pd.DataFrame,
    x: str,
    y: str,
    hue: str | None = None,
    ci: tuple[str, str] = ("ci_low", "ci_high"),
    logx: bool = False,
    symlogx: bool = False,
    reference: float | None = None,
    title: str | None = None,
    ax: plt.Axes | None = None,
) -> Figure:
    """A statistic against model size or training step: one line per ``hue`` group (points sorted
    by ``x``), a shaded band between the ``ci`` columns when present, an optional horizontal
    ``reference`` line (e.g. chance or zero). ``logx`` for parameter counts; ``symlogx`` for steps
    (Pythia-style log-spaced checkpoints that include step 0)."""
    for column in [x, y] + ([hue] if hue else []):
        if column not in frame.columns:
            raise ValueError(f"frame: no column {column!r}; has {list(frame.columns)}")
    fig, ax = _new_axes(ax, (6, 4))
    groups = list(dict.fromkeys(frame[hue])) if hue else [None]
    colours = sns.color_palette("colorblind", len(groups))
    for colour, group in zip(colours, groups):
        part = (frame if group is None else frame[frame[hue] == group]).sort_values(x)
        ax.plot(part[x], part[y], marker="o", color=colour, label=None if group is None else str(group))
        if all(c in part.columns for c in ci) and part[list(ci)].notna().any().any():
            ax.fill_between(part[x], part[ci[0]], part[ci[1]], color=colour, alpha=0.2, linewidth=0)
    if reference is not None:
        ax.axhline(reference, color="#888888", linestyle="--", linewidth=0.8)
    if logx:
        ax.set_xscale("log")
    elif symlogx:
        ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    if hue:
        ax.legend(title=hue, fontsize=8)
    if title:
        ax.set_title(title)
    return fig


def accuracy_figure(tables: Tables) -> tuple[Figure | None, pd.DataFrame]:
    """BLiMP accuracy of the final checkpoints against size, and of every unit over training."""
    if tables["accuracy"].empty:
        return None, pd.DataFrame()
    acc = tables["units"].join(tables["accuracy"], how="inner").reset_index()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    plot_trend(acc[acc.is_final].assign(model="final"), "n_parameters", "blimp_accuracy", hue="model",
               logx=True, reference=0.5, title="Final checkpoints vs. size", ax=axes[0])
    plot_trend(acc, "step", "blimp_accuracy", hue="family", symlogx=True, reference=0.5,
               title="Accuracy over pre-training", ax=axes[1])
    return fig, acc[["unit", "family", "step", "n_parameters", "blimp_accuracy"]]


def alignment_figure(tables: Tables) -> tuple[Figure | None, pd.DataFrame]:
    """Phenomenon alignment of every space over training; the table: statistic per unit, space,
    hypothesis and control."""
    alignment = tables["alignment"]
    if alignment.empty:
        return None, pd.DataFrame()
    shown = alignment.merge(tables["units"][["family", "step", "n_parameters"]], left_on="unit", right_index=True)
    table = shown.pivot_table(index=["unit", "space"], columns=["hypothesis", "controlled"], values="statistic")
    phen = shown[shown.hypothesis == "phenomenon"].assign(series=lambda f: f.space + " · " + f.controlled)
    fig = plot_trend(phen, "step", "statistic", hue="series", symlogx=True, reference=0,
                     title="Phenomenon alignment over pre-training (all families)")
    return fig, table


def baseline_figure(tables: Tables) -> tuple[Figure | None, pd.DataFrame]:
    """Trained-minus-step-0 phenomenon alignment with its 95 % CI, per family, space and control."""
    baseline = tables["baseline"]
    if baseline.empty:
        return None, baseline
    sel = baseline[baseline.hypothesis == "phenomenon"].assign(
        series=lambda f: f.family + " · " + f.space + " · " + f.controlled)
    fig = plot_trend(sel, "step", "difference", hue="series", symlogx=True, reference=0,
                     title="Phenomenon alignment: trained − step 0 (95% CI)")
    return fig, baseline


def generalisation_figure(tables: Tables) -> tuple[Figure | None, pd.DataFrame]:
    """Generalisation index (same phenomenon, same field, other fields) over training."""
    gen = tables["generalisation"]
    if gen.empty:
        return None, gen
    long = tables["units"].join(gen, how="inner").reset_index().melt(
        id_vars=["unit", "family", "step", "n_parameters"], value_vars=["same_phenomenon", "same_field", "other_field"],
        var_name="reach", value_name="index")
    fig = plot_trend(long, "step", "index", hue="reach", symlogx=True, reference=0,
                     title="Generalisation index over pre-training")
    return fig, gen


def sharing_figure(tables: Tables) -> tuple[Figure | None, pd.DataFrame]:
    """Within- minus across-phenomenon subnetwork overlap over training, per family."""
    sharing = tables["sharing"]
    if sharing.empty:
        return None, sharing
    share = tables["units"].join(sharing, how="inner").reset_index()
    share = share.rename(columns={"difference_ci_low": "ci_low", "difference_ci_high": "ci_high"})
    fig = plot_trend(share, "step", "difference", hue="family", symlogx=True, reference=0,
                     title="Subnetwork overlap: within − across phenomena")
    return fig, sharing


def module_sharing_figure(tables: Tables) -> tuple[Figure | None, pd.DataFrame]:
    """Heatmap of ``same phenomenon − other field`` overlap per module (rows) and unit (columns)."""
    modules = tables["sharing_modules"]
    if modules.empty:
        return None, modules
    mod = modules.assign(excess=modules.same_phenomenon - modules.other_field)
    grid = mod.pivot_table(index="space", columns="unit", values="excess", sort=False)
    fig, ax = plt.subplots(figsize=(1.2 * grid.shape[1] + 3, 0.3 * grid.shape[0] + 2))
    sns.heatmap(grid, cmap="RdBu_r", center=0, ax=ax, cbar_kws={"label": "same phenomenon − other field"})
    ax.set_title("Where subnetworks of one phenomenon overlap (per module)")
    return fig, grid


def stability_figure(tables: Tables) -> tuple[Figure | None, pd.DataFrame]:
    """Agreement of each checkpoint's space with the final checkpoint's, per family and space."""
    stab = tables["stability"]
    if stab.empty:
        return None, stab
    fig = plot_trend(stab.assign(series=stab.family + " · " + stab.space), "step", "rho_final", hue="series",
                     symlogx=True, reference=0, title="Agreement with the final checkpoint")
    return fig, stab
