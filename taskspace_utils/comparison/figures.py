"""Figures of the comparison across units (notebook 05 and the report): each takes the tables of
:func:`~taskspace_utils.comparison.compare_units` and returns its figure, or ``None`` when the run
has nothing to show for it, together with the table it plotted.

Every figure leads with the headline: its left panel is the margin transfer space
(:data:`~.units.HEADLINE`) or, for subnetwork sharing, the overlap over non-embedding parameters;
the right panel, when the run has them, holds the secondary views (``accuracy transfer
(secondary)``, the gradient space; the embedding and output matrices)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import FixedFormatter, FixedLocator, NullFormatter
from matplotlib.transforms import blended_transform_factory

from ..plotting import _new_axes
from .sharing import (
    ALL_PARAMETERS,
    EMBEDDING,
    NON_EMBEDDING,
    OUTPUT,
    SCOPES,
    headline_scope,
)
from .units import HEADLINE, SECONDARY, SPACE_FILES, SPACE_LABELS

__all__ = [
    "step_positions",
    "step_axis_limits",
    "set_step_axis",
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


def step_positions(steps, zero_at: float) -> np.ndarray:
    """x positions of training steps on the step axis of :func:`set_step_axis`: a positive step is
    drawn at itself (log scale), step 0 at ``zero_at`` (left of the first decade, marked apart)."""
    steps = np.asarray(steps, dtype=float)
    return np.where(steps == 0, zero_at, steps)


def step_axis_limits(steps) -> tuple[float, float, float]:
    """``(zero_at, first_decade, right)`` of the step axis for ``steps`` (all ≥ 0).

    The log axis starts at the decade of the smallest positive step (``10**floor(log10(min))``,
    i.e. step 1 for the suite's and Pythia's checkpoints), step 0 sits ``10**-0.6`` of a decade to
    its left, and the axis ends a fifth of a decade right of the largest step, so the final
    checkpoints are not squeezed against the edge. Steps below 0 or not finite raise."""
    steps = np.asarray(steps, dtype=float)
    if steps.size == 0 or not np.all(np.isfinite(steps)) or (steps < 0).any():
        raise ValueError(f"steps: need finite steps >= 0, got {steps.tolist()}")
    positive = steps[steps > 0]
    if positive.size == 0:
        return 0.0, 1.0, 1.0
    first = 10.0 ** np.floor(np.log10(positive.min()))
    return first / 10 ** 0.6, first, positive.max() * 10 ** 0.2


def set_step_axis(ax: plt.Axes, steps) -> float:
    """Make ``ax``'s x axis a training-step axis for ``steps`` and return the position of step 0.

    A log axis from the first decade (:func:`step_axis_limits`) with ticks at every power of 10
    (``1``, ``10``, ``100``, ``1,000`` …) and step 0 drawn apart at its own tick labelled ``0``,
    with a broken-axis marker (``//``) between it and the first decade. Unlike ``symlog``, no
    negative decade is shown and every tick label is a step ≥ 0. Data must be placed with
    :func:`step_positions`. With only step 0 the axis is linear with the single tick ``0``."""
    zero_at, first, right = step_axis_limits(steps)
    has_zero = bool((np.asarray(steps, dtype=float) == 0).any())
    if right == first and zero_at == 0.0:  # only step 0
        ax.set_xlim(-1, 1)
        ax.set_xticks([0.0], ["0"])
        return 0.0
    ax.set_xscale("log")
    left = zero_at / 10 ** 0.25 if has_zero else first / 10 ** 0.2
    ax.set_xlim(left, max(right, first * 10 ** 0.4))
    decades = [10.0 ** k for k in range(round(np.log10(first)), int(np.floor(np.log10(right))) + 1)]
    ticks = ([zero_at] if has_zero else []) + decades
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FixedFormatter((["0"] if has_zero else []) + [f"{d:,.0f}" for d in decades]))
    ax.xaxis.set_minor_locator(FixedLocator([m * d for d in decades for m in range(2, 10) if m * d < right]))
    ax.xaxis.set_minor_formatter(NullFormatter())
    if has_zero:
        mid = np.sqrt(zero_at * first)
        trans = blended_transform_factory(ax.transData, ax.transAxes)
        for shift in (0.93, 1.07):
            ax.plot([mid * shift / 1.04, mid * shift * 1.04], [-0.025, 0.025], transform=trans, color="#444444",
                    linewidth=1, clip_on=False)
    return zero_at


def plot_trend(
    frame: pd.DataFrame,
    x: str,
    y: str,
    hue: str | None = None,
    ci: tuple[str, str] = ("ci_low", "ci_high"),
    logx: bool = False,
    stepx: bool = False,
    reference: float | None = None,
    title: str | None = None,
    ax: plt.Axes | None = None,
    symlogx: bool = False,
) -> Figure:
    """A statistic against model size or training step: one line per ``hue`` group (points sorted
    by ``x``), a shaded band between the ``ci`` columns when present, an optional horizontal
    ``reference`` line (e.g. chance or zero). ``logx`` for parameter counts; ``stepx`` for
    training steps (Pythia-style log-spaced checkpoints that include step 0): a log axis from step 1
    with step 0 marked apart (:func:`set_step_axis`). ``symlogx`` is the former name of ``stepx``
    (the same step axis; the symlog scale showed negative decades)."""
    for column in [x, y] + ([hue] if hue else []):
        if column not in frame.columns:
            raise ValueError(f"frame: no column {column!r}; has {list(frame.columns)}")
    stepx = stepx or symlogx
    fig, ax = _new_axes(ax, (6, 4))
    zero_at = set_step_axis(ax, frame[x].dropna()) if stepx and frame[x].notna().any() else None
    groups = list(dict.fromkeys(frame[hue])) if hue else [None]
    colours = sns.color_palette("colorblind", len(groups))
    for colour, group in zip(colours, groups):
        part = (frame if group is None else frame[frame[hue] == group]).sort_values(x)
        xs = step_positions(part[x], zero_at) if zero_at is not None else part[x]
        ax.plot(xs, part[y], marker="o", color=colour, label=None if group is None else str(group))
        if all(c in part.columns for c in ci) and part[list(ci)].notna().any().any():
            ax.fill_between(xs, part[ci[0]], part[ci[1]], color=colour, alpha=0.2, linewidth=0)
    if reference is not None:
        ax.axhline(reference, color="#888888", linestyle="--", linewidth=0.8)
    if logx:
        ax.set_xscale("log")
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
    plot_trend(acc, "step", "blimp_accuracy", hue="family", stepx=True, reference=0.5,
               title="Accuracy over pre-training", ax=axes[1])
    return fig, acc[["unit", "family", "step", "n_parameters", "blimp_accuracy"]]


def _ordered(frame: pd.DataFrame, column: str, order) -> pd.DataFrame:
    """``frame`` with its rows in the order of ``order`` for ``column`` (unknown values last)."""
    rank = {v: i for i, v in enumerate(order)}
    return frame.iloc[np.argsort([rank.get(v, len(rank)) for v in frame[column]], kind="stable")]


def _space_label(space: str) -> str:
    return SPACE_LABELS.get(space, space)


def _controlled(value: str) -> str:
    return "raw" if value == "none" else "lexically controlled"


def _series(frame: pd.DataFrame, *parts) -> pd.Series:
    """One legend label per row from ``parts`` (column names or callables of the frame); the
    family is prefixed when the frame holds more than one."""
    pieces = [frame[p].astype(str) if isinstance(p, str) else p(frame) for p in parts]
    if "family" in frame and frame["family"].nunique() > 1:
        pieces = [frame["family"].astype(str)] + pieces
    label = pieces[0]
    for piece in pieces[1:]:
        label = label + " · " + piece
    return label


def _headline_and_rest(panels, x: str, y: str, figsize=(6.5, 4), **trend) -> Figure | None:
    """The headline panel and, beside it, the secondary one: ``panels`` is ``[(frame, title), ...]``
    (each frame with a ``series`` column); empty frames are left out, ``None`` when all are."""
    panels = [(f, t) for f, t in panels if not f.empty]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(figsize[0] * len(panels), figsize[1]), squeeze=False)
    for ax, (frame, title) in zip(axes[0], panels):
        plot_trend(frame, x, y, hue="series", title=title, ax=ax, **trend)
        ax.get_legend().set_title(None)
    return fig


def alignment_figure(tables: Tables) -> tuple[Figure | None, pd.DataFrame]:
    """Phenomenon alignment over training: the headline margin transfer space on the left (raw and
    lexically controlled), the other spaces on the right (accuracy transfer (secondary), gradient);
    the table: statistic per space (headline first), unit, hypothesis and control."""
    alignment = tables["alignment"]
    if alignment.empty:
        return None, pd.DataFrame()
    shown = alignment.merge(tables["units"][["family", "step", "n_parameters"]], left_on="unit", right_index=True)
    shown = _ordered(shown, "space", SPACE_FILES)
    table = shown.pivot_table(index=["space", "unit"], columns=["hypothesis", "controlled"], values="statistic",
                              sort=False)
    head, rest = _headline_split(shown[shown.hypothesis == "phenomenon"])
    fig = _headline_and_rest([(head, f"Phenomenon alignment: {_space_label(HEADLINE)} (headline)"),
                              (rest, "Phenomenon alignment: secondary views")],
                             "step", "statistic", stepx=True, reference=0)
    return fig, table


def _headline_split(rows: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows of the headline space (one series per control) and of the other spaces (one series per
    space and control), for the two panels of :func:`_headline_and_rest`."""
    head = rows[rows.space == HEADLINE].assign(series=lambda f: _series(f, lambda g: g.controlled.map(_controlled)))
    rest = rows[rows.space != HEADLINE].assign(series=lambda f: _series(
        f, lambda g: g.space.map(_space_label), lambda g: g.controlled.map(_controlled)))
    return head, rest


def baseline_figure(tables: Tables) -> tuple[Figure | None, pd.DataFrame]:
    """Trained-minus-step-0 phenomenon alignment with its 95 % CI per family and control: the
    headline space on the left, the other spaces on the right; the table: every row, headline first."""
    baseline = tables["baseline"]
    if baseline.empty:
        return None, baseline
    baseline = _ordered(baseline, "space", SPACE_FILES)
    head, rest = _headline_split(baseline[baseline.hypothesis == "phenomenon"])
    fig = _headline_and_rest([(head, f"Trained − step 0: {_space_label(HEADLINE)} (95% CI)"),
                              (rest, "Trained − step 0: secondary views")],
                             "step", "difference", stepx=True, reference=0)
    return fig, baseline


def generalisation_figure(tables: Tables) -> tuple[Figure | None, pd.DataFrame]:
    """Generalisation index (same phenomenon, same field, other fields) over training: the headline
    margin transfer space on the left, the accuracy transfer space (secondary) on the right."""
    gen = tables["generalisation"]
    if gen.empty:
        return None, gen
    gen = gen.assign(space=gen.get("space", SECONDARY))  # tables written before: accuracy
    gen = _ordered(gen, "space", SPACE_FILES)
    long = tables["units"][["family", "step", "n_parameters"]].join(gen, how="inner").reset_index().melt(
        id_vars=["unit", "family", "step", "n_parameters", "space"],
        value_vars=["same_phenomenon", "same_field", "other_field"], var_name="reach", value_name="index")
    long = long.assign(series=lambda f: _series(f, "reach"))
    fig = _headline_and_rest([(long[long.space == HEADLINE], f"Generalisation index: {_space_label(HEADLINE)}"),
                              (long[long.space != HEADLINE], f"Generalisation index: {_space_label(SECONDARY)}")],
                             "step", "index", stepx=True, reference=0)
    return fig, gen


def sharing_figure(tables: Tables) -> tuple[Figure | None, pd.DataFrame]:
    """Within- minus across-phenomenon subnetwork overlap over training, per family (95% CI over
    task pairs): the headline scope, non-embedding parameters, on the left; the embedding
    (``embed_in``) and output (``embed_out``) matrices and all parameters on the right; the table:
    every row, headline scope first."""
    sharing = tables["sharing"]
    if sharing.empty:
        return None, sharing
    sharing = sharing.assign(scope=sharing.get("scope", ALL_PARAMETERS))
    sharing = _ordered(sharing, "scope", SCOPES)
    headline = headline_scope(sharing["scope"])
    share = tables["units"][["family", "step"]].join(sharing, how="inner").reset_index()
    share = share.rename(columns={"difference_ci_low": "ci_low", "difference_ci_high": "ci_high"})
    head = share[share.scope == headline].assign(series=lambda f: f.family.astype(str))
    rest = share[share.scope != headline].assign(series=lambda f: f.family.astype(str) + " · " + f.scope)
    fig = _headline_and_rest([(head, f"Subnetwork overlap ({headline}): within − across phenomena"),
                              (rest, "Reported apart: embedding and output matrices; all parameters")],
                             "step", "difference", stepx=True, reference=0)
    return fig, sharing


def module_sharing_figure(tables: Tables) -> tuple[Figure | None, pd.DataFrame]:
    """Heatmap of ``same phenomenon − other field`` overlap per module (rows: the non-embedding
    whole, each non-embedding module, then the embedding and output matrices below a line) and
    unit (columns)."""
    modules = tables["sharing_modules"]
    if modules.empty:
        return None, modules
    column = "module" if "module" in modules else "space"  # tables written before the scopes: "space"
    mod = modules.assign(excess=modules.same_phenomenon - modules.other_field)
    grid = mod.pivot_table(index=column, columns="unit", values="excess", sort=False)
    fig, ax = plt.subplots(figsize=(1.2 * grid.shape[1] + 3, 0.3 * grid.shape[0] + 2))
    sns.heatmap(grid, cmap="RdBu_r", center=0, ax=ax, cbar_kws={"label": "same phenomenon − other field"})
    rows = list(grid.index)
    for cut in ([1] if rows[:1] == [NON_EMBEDDING] else []) + [
            i for i in range(1, len(rows)) if rows[i] in (EMBEDDING, OUTPUT) and rows[i - 1] not in (EMBEDDING, OUTPUT)]:
        ax.axhline(cut, color="black", linewidth=1.5)
    ax.set_title("Where subnetworks of one phenomenon overlap (per module)")
    return fig, grid


def stability_figure(tables: Tables) -> tuple[Figure | None, pd.DataFrame]:
    """Agreement of each checkpoint's space with the final checkpoint's, per family: the headline
    margin transfer space on the left, the other spaces on the right."""
    stab = tables["stability"]
    if stab.empty:
        return None, stab
    stab = _ordered(stab, "space", SPACE_FILES)
    head = stab[stab.space == HEADLINE].assign(series=lambda f: f.family.astype(str))
    rest = stab[stab.space != HEADLINE].assign(series=lambda f: f.family.astype(str) + " · " + f.space.map(_space_label))
    fig = _headline_and_rest([(head, f"Agreement with the final checkpoint: {_space_label(HEADLINE)}"),
                              (rest, "Agreement with the final checkpoint: secondary views")],
                             "step", "rho_final", stepx=True, reference=0)
    return fig, stab
