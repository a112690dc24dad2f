"""Tests for taskspace_utils.comparison.figures: trend lines and bands, and the training-step axis
(log from step 1, step 0 marked apart, no negative tick label)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from taskspace_utils.comparison import figures as cf  # noqa: E402

SUITE_STEPS = [0, 1, 4, 16, 64, 256, 500, 800]  # the offline suite's checkpoints (tiny-s)
PYTHIA_STEPS = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 3000, 143000]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _labels(ax, which="major"):
    ax.figure.canvas.draw()
    ticks = ax.get_xticklabels(minor=which == "minor")
    return [t.get_text() for t in ticks if t.get_text()]


def _trend_lines(ax):
    return [line for line in ax.lines if line.get_marker() == "o"]


def test_plot_trend_lines_and_bands():
    frame = pd.DataFrame({"step": [0, 10, 100, 0, 10, 100], "rho": [0.1, 0.2, 0.3, 0.0, 0.1, 0.4],
                          "ci_low": [0.0, 0.1, 0.2, -0.1, 0.0, 0.3], "ci_high": [0.2, 0.3, 0.4, 0.1, 0.2, 0.5],
                          "model": ["a"] * 3 + ["b"] * 3})
    fig = cf.plot_trend(frame, "step", "rho", hue="model", stepx=True, reference=0)
    ax = fig.axes[0]
    lines = _trend_lines(ax)
    assert len(lines) == 2
    assert len(ax.collections) == 2  # two CI bands
    zero_at, first, _ = cf.step_axis_limits(frame["step"])
    assert first == 10 and zero_at == pytest.approx(10 / 10 ** 0.6)
    assert list(lines[0].get_xdata()) == pytest.approx([zero_at, 10, 100])
    assert list(lines[1].get_ydata()) == [0.0, 0.1, 0.4]
    with pytest.raises(ValueError, match="no column 'nope'"):
        cf.plot_trend(frame, "nope", "rho")


@pytest.mark.parametrize("steps", [SUITE_STEPS, PYTHIA_STEPS])
def test_step_axis_starts_at_step_1_with_0_apart_and_no_negative_label(steps):
    frame = pd.DataFrame({"step": steps, "y": np.linspace(0, 1, len(steps))})
    fig = cf.plot_trend(frame, "step", "y", stepx=True)
    ax = fig.axes[0]
    labels = _labels(ax)
    assert not any(label.startswith(("-", "−")) for label in labels), labels
    decades = [10 ** k for k in range(int(np.log10(max(steps) * 10 ** 0.2)) + 1)]
    assert labels == ["0"] + [f"{d:,}" for d in decades]
    assert ax.get_xscale() == "log"
    left, right = ax.get_xlim()
    ticks = ax.get_xticks()
    assert left < ticks[0] < 1 == ticks[1]  # step 0 left of the first decade, at its own tick
    assert right >= max(steps) * 10 ** 0.2 * 0.999  # room right of the final checkpoint
    # the last two checkpoints are apart on screen (symlog put them within a few pixels of the edge)
    px = ax.transData.transform(np.c_[steps[-2:], [0, 0]])[:, 0]
    edge = ax.transAxes.transform([[1, 0]])[0, 0]
    assert px[1] - px[0] > 5 and edge - px[1] > 5
    # the broken-axis marker: two short strokes between step 0 and step 1, below and above the axis
    marks = [line for line in ax.lines if line.get_marker() in ("None", "", None) and len(line.get_xdata()) == 2]
    assert len(marks) == 2 and all(ticks[0] < min(m.get_xdata()) < max(m.get_xdata()) < 1 for m in marks)


def test_step_axis_without_step_0_and_with_only_step_0():
    fig = cf.plot_trend(pd.DataFrame({"step": [10, 100, 1000], "y": [1, 2, 3]}), "step", "y", stepx=True)
    assert _labels(fig.axes[0]) == ["10", "100", "1,000"]
    fig = cf.plot_trend(pd.DataFrame({"step": [0, 0], "y": [1, 2], "g": ["a", "b"]}), "step", "y", hue="g",
                        stepx=True)
    ax = fig.axes[0]
    assert _labels(ax) == ["0"] and np.isfinite(ax.get_xlim()).all()
    with pytest.raises(ValueError, match="steps"):
        cf.step_axis_limits([0, -1, 10])


def test_every_figure_of_the_comparison_has_no_negative_step_label():
    units = pd.DataFrame({"family": ["s"] * 4, "step": [0, 1, 16, 800], "n_parameters": [10] * 4,
                          "is_final": [False, False, False, True]},
                         index=pd.Index(["s@0", "s@1", "s@16", "s@800"], name="unit"))
    acc = pd.DataFrame({"blimp_accuracy": [0.5, 0.52, 0.55, 0.6], "n_tasks": 3, "ties": 0}, index=units.index)
    stab = pd.DataFrame({"family": "s", "unit": units.index[:3], "step": [0, 1, 16], "space": "transfer_margin",
                         "rho_next": [0.1, 0.5, 0.8], "rho_final": [0.0, 0.4, 0.9]})
    tables = {"units": units, "accuracy": acc, "stability": stab}
    fig, table = cf.accuracy_figure(tables)
    assert list(table["blimp_accuracy"]) == [0.5, 0.52, 0.55, 0.6]
    step_ax = fig.axes[1]
    assert _labels(step_ax) == ["0", "1", "10", "100", "1,000"]
    fig, _ = cf.stability_figure(tables)
    assert _labels(fig.axes[0]) == ["0", "1", "10"]
    assert [list(line.get_ydata()) for line in _trend_lines(fig.axes[0])] == [[0.0, 0.4, 0.9]]
