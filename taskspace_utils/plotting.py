"""Figures for task spaces and their statistics (the paper's task-space heatmaps, dendrograms,
embeddings and per-task transfer bars; used by notebooks 03-05).

Every function returns the figure (or seaborn ``ClusterGrid``) it drew and never calls
``plt.show()``; pass ``ax=`` to draw into an existing axes where offered. Colours are fixed per
phenomenon and field across all figures (:func:`phenomenon_palette`), so one phenomenon has one
colour in every heatmap, dendrogram and embedding, whatever subset of tasks is shown.

Contents
--------
- :func:`phenomenon_palette`: colours for the 13 BLiMP phenomena and 4 fields (others appended);
  :func:`order_tasks`: tasks sorted by field, phenomenon, name.
- :func:`plot_space`: clustered heatmap of a task space with phenomenon/field colour bars.
- :func:`plot_dendrogram`, :func:`plot_mds`: hierarchical clustering and classical-MDS embedding
  of tasks (distances from :func:`taskspace_utils.spaces.task_distances`).
- :func:`plot_transfer_bars`: what a tuned task (or phenomenon) transfers to, or receives from.
- :func:`plot_alignment`: correlations with hypotheses (CIs, significance) across models/spaces.
- :func:`plot_tradeoff`: generic labelled scatter (e.g. FTGD target gain vs. perplexity damage).
- :func:`plot_prediction`: predicted vs. measured entries of a space (first-order prediction).
- The comparison's figures (trends over size and training step) are in
  :mod:`taskspace_utils.comparison.figures`.
"""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from scipy.cluster import hierarchy
from scipy.spatial.distance import squareform

from taskspace_utils.agg_fonts import render_fonts_from_memory
from taskspace_utils.spaces import check_space, embed_mds, relation_labels, task_distances

render_fonts_from_memory()   # PNG figures read their fonts from memory (see agg_fonts)

__all__ = [
    "PHENOMENA",
    "FIELDS",
    "RELATION_COLOURS",
    "phenomenon_palette",
    "order_tasks",
    "plot_space",
    "plot_dendrogram",
    "plot_mds",
    "transfer_profile",
    "plot_transfer_bars",
    "plot_alignment",
    "plot_tradeoff",
    "plot_prediction",
]

# BLiMP's 13 phenomena ("linguistics_term") and 4 fields, in the order colours are assigned.
PHENOMENA = (
    "anaphor_agreement", "argument_structure", "binding", "control_raising",
    "determiner_noun_agreement", "ellipsis", "filler_gap_dependency", "irregular_forms",
    "island_effects", "npi_licensing", "quantifiers", "s-selection", "subject_verb_agreement",
)  # fmt: skip
FIELDS = ("morphology", "syntax", "syntax_semantics", "semantics")
RELATION_COLOURS = {"self": "#222222", "same phenomenon": "#d62728", "same field": "#ff9f1c", "other": "#9e9e9e"}
_FIELD_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def _ordered(known: Sequence[str], present) -> list[str]:
    extra = sorted(set(present) - set(known), key=str)
    return list(known) + extra


def phenomenon_palette(metadata: pd.DataFrame | None = None) -> dict[str, dict[str, str]]:
    """``{"phenomenon": {name: hex colour}, "field": {name: hex colour}}``.

    The 13 BLiMP phenomena take tab20's ten dark shades then its light ones, in the order of
    :data:`PHENOMENA`; the fields take seaborn's ``Set2`` in the order of :data:`FIELDS`. Labels in
    ``metadata`` that are not BLiMP's are appended (sorted) with further colours, so a label keeps
    its colour whatever subset of tasks a figure shows."""
    phen_present = metadata["phenomenon"].unique() if metadata is not None else []
    field_present = metadata["field"].unique() if metadata is not None else []
    phenomena, fields = _ordered(PHENOMENA, phen_present), _ordered(FIELDS, field_present)
    tab20 = sns.color_palette("tab20", 20).as_hex()
    colours = tab20[0::2] + tab20[1::2]
    if len(phenomena) > len(colours):
        colours += sns.color_palette("husl", len(phenomena) - len(colours)).as_hex()
    field_colours = sns.color_palette("Set2", max(8, len(fields))).as_hex()
    return {
        "phenomenon": dict(zip(phenomena, colours)),
        "field": dict(zip(fields, field_colours)),
    }


def _meta(tasks: Sequence[str], metadata: pd.DataFrame) -> pd.DataFrame:
    missing = [t for t in tasks if t not in metadata.index]
    if missing:
        raise ValueError(f"metadata has no row for task(s) {missing}")
    return metadata.loc[list(tasks), ["phenomenon", "field"]]


def order_tasks(tasks: Sequence[str], metadata: pd.DataFrame) -> list[str]:
    """Tasks sorted by field, then phenomenon (palette order), then name."""
    meta = _meta(tasks, metadata)
    palette = phenomenon_palette(meta)
    f_rank = {f: i for i, f in enumerate(palette["field"])}
    p_rank = {p: i for i, p in enumerate(palette["phenomenon"])}
    key = lambda t: (f_rank[meta.at[t, "field"]], p_rank[meta.at[t, "phenomenon"]], str(t))  # noqa: E731
    return sorted(tasks, key=key)


def _legend_handles(mapping: dict[str, str], present) -> list[Patch]:
    return [Patch(facecolor=c, label=k) for k, c in mapping.items() if k in set(present)]


def _new_axes(ax, figsize) -> tuple[Figure, plt.Axes]:
    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=figsize)
    return fig, ax


def plot_space(
    space: pd.DataFrame,
    metadata: pd.DataFrame,
    title: str | None = None,
    cluster: bool = True,
    diverging: bool | None = None,
    method: str = "average",
    figsize: tuple[float, float] | None = None,
    **heatmap_kws,
) -> sns.matrix.ClusterGrid:
    """Heatmap of a task space (rows: tuned, columns: evaluated) via ``seaborn.clustermap``.

    Two colour bars on each side give each task's phenomenon and field (legends at the right).
    ``cluster=True`` orders rows and columns by average-linkage clustering (``method``) of their
    profiles (Euclidean; NaN entries replaced by the mean of the space for the clustering only and
    left blank in the heatmap); ``cluster=False`` keeps the metadata order (field, phenomenon,
    task). ``diverging`` (default: whether any entry is negative) uses ``RdBu_r`` centred at 0,
    otherwise ``viridis``. Returns the ``ClusterGrid`` (``.figure``, ``.ax_heatmap``,
    ``.ax_row_colors``, ...)."""
    space = check_space(space)
    order = order_tasks(list(space.index), metadata)
    space = space.loc[order, order]
    meta = _meta(order, metadata)
    palette = phenomenon_palette(meta)
    colours = pd.DataFrame(
        {"phenomenon": meta["phenomenon"].map(palette["phenomenon"]), "field": meta["field"].map(palette["field"])},
        index=order,
    )
    values = space.to_numpy()
    if diverging is None:
        diverging = bool(np.nanmin(values) < 0)
    kws: dict = dict(cmap="RdBu_r", center=0.0) if diverging else dict(cmap="viridis")
    n = len(order)
    kws.update(xticklabels=n <= 100, yticklabels=n <= 100)
    kws.update(heatmap_kws)
    linkage = {}
    if cluster:
        filled = np.where(np.isnan(values), np.nanmean(values), values)
        linkage = dict(
            row_linkage=hierarchy.linkage(filled, method=method),
            col_linkage=hierarchy.linkage(filled.T, method=method),
        )
    size = figsize or (max(8.0, 0.16 * n + 4), max(8.0, 0.16 * n + 3))
    grid = sns.clustermap(
        space, row_cluster=cluster, col_cluster=cluster, row_colors=colours, col_colors=colours,
        mask=space.isna(), figsize=size, **linkage, **kws,
    )  # fmt: skip
    grid.ax_heatmap.tick_params(labelsize=max(4.0, min(9.0, 500 / max(n, 1))))
    grid.ax_heatmap.set_xlabel("evaluated task")
    grid.ax_heatmap.set_ylabel("tuned task")
    fig = grid.figure
    fig.legend(handles=_legend_handles(palette["phenomenon"], meta["phenomenon"]), title="phenomenon",
               loc="upper left", bbox_to_anchor=(1.0, 0.98), fontsize=8, title_fontsize=9)  # fmt: skip
    fig.legend(handles=_legend_handles(palette["field"], meta["field"]), title="field",
               loc="upper left", bbox_to_anchor=(1.0, 0.55), fontsize=8, title_fontsize=9)  # fmt: skip
    if title:
        fig.suptitle(title, y=1.01)
    return grid


def plot_dendrogram(
    space: pd.DataFrame,
    metadata: pd.DataFrame,
    kind: str = "correlation",
    method: str = "average",
    title: str | None = None,
    ax: plt.Axes | None = None,
) -> Figure:
    """Dendrogram of the tasks: ``scipy.cluster.hierarchy.linkage`` (``method``) on the distances
    of :func:`~taskspace_utils.spaces.task_distances` (``kind="correlation"``: 1 - correlation of
    the tasks' profiles in the symmetrised space; ``"similarity"``: max - symmetrised entry). Leaf
    labels are coloured by phenomenon (legend)."""
    dist = task_distances(space, kind)
    tasks = list(dist.index)
    meta = _meta(tasks, metadata)
    palette = phenomenon_palette(meta)["phenomenon"]
    fig, ax = _new_axes(ax, (7, max(4.0, 0.18 * len(tasks) + 1)))
    link = hierarchy.linkage(squareform(dist.to_numpy(), checks=False), method=method)
    hierarchy.dendrogram(link, labels=tasks, orientation="left", ax=ax, color_threshold=0,
                         above_threshold_color="#555555", leaf_font_size=7)  # fmt: skip
    for label in ax.get_yticklabels():
        label.set_color(palette[meta.at[label.get_text(), "phenomenon"]])
    ax.set_xlabel({"correlation": "1 - correlation", "similarity": "max - transfer"}[kind])
    ax.legend(handles=_legend_handles(palette, meta["phenomenon"]), title="phenomenon", fontsize=7,
              loc="upper left", bbox_to_anchor=(1.02, 1.0))  # fmt: skip
    if title:
        ax.set_title(title)
    return fig


def plot_mds(
    space: pd.DataFrame,
    metadata: pd.DataFrame,
    kind: str = "correlation",
    annotate: bool = False,
    title: str | None = None,
    ax: plt.Axes | None = None,
) -> Figure:
    """2-D classical MDS of the tasks (:func:`~taskspace_utils.spaces.embed_mds` on
    :func:`~taskspace_utils.spaces.task_distances`, numpy only): colour = phenomenon, marker =
    field; the axis labels give each dimension's share of the positive eigenvalues."""
    coords = embed_mds(task_distances(space, kind), n_components=2)
    meta = _meta(list(coords.index), metadata)
    palette = phenomenon_palette(meta)
    markers = dict(zip(palette["field"], _FIELD_MARKERS * 4))
    fig, ax = _new_axes(ax, (7, 6))
    for (phen, field), group in meta.groupby(["phenomenon", "field"], sort=False):
        xy = coords.loc[group.index]
        ax.scatter(xy["mds1"], xy["mds2"], c=palette["phenomenon"][phen], marker=markers[field],
                   s=45, edgecolor="k", linewidth=0.4)  # fmt: skip
    if annotate:
        for task, (x, y) in coords.iterrows():
            ax.annotate(str(task), (x, y), fontsize=6, xytext=(2, 2), textcoords="offset points")
    eig = np.clip(np.asarray(coords.attrs["eigenvalues"]), 0, None)
    share = eig[:2] / eig.sum() if eig.sum() > 0 else [np.nan, np.nan]
    ax.set_xlabel(f"MDS 1 ({share[0]:.0%})")
    ax.set_ylabel(f"MDS 2 ({share[1]:.0%})")
    phen_legend = ax.legend(handles=_legend_handles(palette["phenomenon"], meta["phenomenon"]), title="phenomenon",
                            fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))  # fmt: skip
    ax.add_artist(phen_legend)
    field_handles = [Line2D([], [], marker=markers[f], color="w", markerfacecolor="#777777", markeredgecolor="k",
                            markersize=7, label=f) for f in palette["field"] if f in set(meta["field"])]  # fmt: skip
    ax.legend(handles=field_handles, title="field", fontsize=7, loc="lower left", bbox_to_anchor=(1.02, 0.0))
    if title:
        ax.set_title(title)
    return fig


def transfer_profile(space: pd.DataFrame, key: str, metadata: pd.DataFrame, direction: str = "to") -> pd.DataFrame:
    """Entries of one tuned task (``direction="to"``: the row, what it transfers to) or of one
    evaluated task (``"from"``: the column, what transfers to it), with each other task's relation:
    ``self`` / ``same phenomenon`` / ``same field`` / ``other``. ``key`` may also be a phenomenon:
    then the mean over its paradigms (``self`` = its own paradigms). Sorted by relation, then value
    (descending). Columns: ``task``, ``value``, ``relation``."""
    space = check_space(space)
    if direction not in ("to", "from"):
        raise ValueError(f"direction must be 'to' or 'from', got {direction!r}")
    meta = _meta(list(space.index), metadata)
    matrix = space if direction == "to" else space.T
    if key in space.index:
        members = [key]
    else:
        members = list(meta.index[meta["phenomenon"] == key])
        if not members:
            raise ValueError(f"{key!r} is neither a task of the space nor a phenomenon of its tasks")
    values = matrix.loc[members].mean(axis=0)
    # the members share one phenomenon (a task, or the paradigms of one phenomenon)
    relation = np.where(values.index.isin(members), "self", relation_labels(members[0], np.asarray(values.index), meta))
    frame = pd.DataFrame({"task": values.index, "value": values.to_numpy(), "relation": relation})
    frame["order"] = frame["relation"].map({r: i for i, r in enumerate(RELATION_COLOURS)})
    return frame.sort_values(["order", "value"], ascending=[True, False]).drop(columns="order").reset_index(drop=True)


def plot_transfer_bars(
    space: pd.DataFrame,
    task: str,
    metadata: pd.DataFrame,
    direction: str = "to",
    title: str | None = None,
    ax: plt.Axes | None = None,
) -> Figure:
    """Bar chart of :func:`transfer_profile`: what tuned task ``task`` transfers to
    (``direction="to"``) or what transfers to it (``"from"``), bars coloured by relation
    (:data:`RELATION_COLOURS`); ``task`` may be a phenomenon (mean over its paradigms)."""
    profile = transfer_profile(space, task, metadata, direction)
    fig, ax = _new_axes(ax, (max(6.0, 0.14 * len(profile) + 2), 4))
    ax.bar(np.arange(len(profile)), profile["value"], color=profile["relation"].map(RELATION_COLOURS))
    ax.set_xticks(np.arange(len(profile)), profile["task"], rotation=90, fontsize=max(4.0, min(8.0, 450 / len(profile))))
    ax.axhline(0, color="k", linewidth=0.6)
    ax.set_xlim(-0.6, len(profile) - 0.4)
    ax.set_ylabel("transfer" if direction == "to" else "transfer received")
    ax.legend(handles=_legend_handles(RELATION_COLOURS, profile["relation"]), fontsize=7, loc="upper right")
    ax.set_title(title or (f"{task} -> evaluated tasks" if direction == "to" else f"tuned tasks -> {task}"))
    return fig


def plot_alignment(
    results: pd.DataFrame,
    x: str = "hypothesis",
    y: str = "statistic",
    hue: str | None = None,
    ci: tuple[str, str] = ("ci_low", "ci_high"),
    p: str = "p_value",
    alpha: float = 0.05,
    title: str | None = None,
    ax: plt.Axes | None = None,
) -> Figure:
    """Point plot of alignment statistics (one row of ``results`` per point, e.g. the
    ``to_dict()`` of :func:`~taskspace_utils.spaces.compare_spaces` results plus ``hypothesis`` and
    ``model`` columns): x categories, ``hue`` groups dodged side by side, error bars from the
    ``ci`` columns if present, filled markers where ``p < alpha`` (open otherwise) and ``*`` above
    them."""
    for column in [x, y] + ([hue] if hue else []):
        if column not in results.columns:
            raise ValueError(f"results: no column {column!r}; has {list(results.columns)}")
    fig, ax = _new_axes(ax, (max(5.0, 1.2 * results[x].nunique() + 2), 4))
    cats = list(dict.fromkeys(results[x]))
    groups = list(dict.fromkeys(results[hue])) if hue else [None]
    colours = sns.color_palette("colorblind", len(groups))
    width = 0.6 / max(len(groups), 1)
    has_ci = all(c in results.columns for c in ci)
    for g_idx, group in enumerate(groups):
        rows = results if group is None else results[results[hue] == group]
        pos = np.array([cats.index(v) for v in rows[x]]) + (g_idx - (len(groups) - 1) / 2) * width
        vals = rows[y].to_numpy(float)
        if has_ci:
            err = np.abs(np.vstack([vals - rows[ci[0]].to_numpy(float), rows[ci[1]].to_numpy(float) - vals]))
            ax.errorbar(pos, vals, yerr=err, fmt="none", ecolor=colours[g_idx], capsize=3)
        sig = rows[p].to_numpy(float) < alpha if p in rows.columns else np.ones(len(rows), bool)
        ax.scatter(pos[sig], vals[sig], color=colours[g_idx], s=40, zorder=3, label=None if group is None else str(group))
        ax.scatter(pos[~sig], vals[~sig], facecolor="white", edgecolor=colours[g_idx], s=40, zorder=3)
        if p in rows.columns:
            for xp, yp in zip(pos[sig], vals[sig]):
                ax.annotate("*", (xp, yp), xytext=(0, 6), textcoords="offset points", ha="center")
    ax.axhline(0, color="k", linewidth=0.6)
    ax.set_xticks(range(len(cats)), cats, rotation=30, ha="right")
    ax.set_ylabel(y)
    if hue:
        ax.legend(title=hue, fontsize=8)
    if title:
        ax.set_title(title)
    return fig


def plot_tradeoff(
    frame: pd.DataFrame,
    x: str,
    y: str,
    hue: str | None = None,
    style: str | None = None,
    label: str | None = None,
    title: str | None = None,
    ax: plt.Axes | None = None,
) -> Figure:
    """Scatter of two columns (e.g. target-task gain vs. perplexity damage per FTGD run) with
    ``seaborn.scatterplot``, dashed zero lines, and optional text labels from column ``label``."""
    fig, ax = _new_axes(ax, (6, 5))
    sns.scatterplot(data=frame, x=x, y=y, hue=hue, style=style, ax=ax)
    ax.axhline(0, color="#888888", linestyle="--", linewidth=0.7)
    ax.axvline(0, color="#888888", linestyle="--", linewidth=0.7)
    if label:
        for _, row in frame.iterrows():
            ax.annotate(str(row[label]), (row[x], row[y]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if title:
        ax.set_title(title)
    return fig


def plot_prediction(predicted: pd.DataFrame, measured: pd.DataFrame, ax: plt.Axes | None = None,
                    title: str = "first-order prediction (red: self-transfer)") -> Figure:
    """Every entry of ``measured`` (y) against the same entry of ``predicted`` (x), e.g. the
    first-order prediction ``<D_u, delta_t>`` vs. the measured margin transfer; diagonal entries
    (self-transfer) in red, the identity line for reference."""
    from taskspace_utils.spaces import space_entries

    entries = space_entries({"predicted": predicted, "measured": measured}, include_diagonal=True)
    fig, ax = _new_axes(ax, (5, 4.5))
    ax.scatter(entries.predicted, entries.measured, s=8, c=np.where(entries.tuned == entries.evaluated, "C3", "C0"))
    ax.axline((0, 0), slope=1, color="k", linewidth=0.6)
    ax.set(xlabel=r"predicted $\langle D_u, \Delta\theta_t\rangle$ (nats)", ylabel="measured margin transfer (nats)",
           title=title)
    return fig
