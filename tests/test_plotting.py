"""Tests for taskspace_utils.plotting: figures have the axes, colours and data they should."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.colors as mcolors  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from taskspace_utils import plotting as pl  # noqa: E402
from taskspace_utils import spaces as sp  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture
def meta():
    """Six tasks: two BLiMP phenomena in two fields, plus one unknown phenomenon."""
    return pd.DataFrame(
        {
            "phenomenon": ["island_effects", "island_effects", "anaphor_agreement", "anaphor_agreement",
                           "npi_licensing", "my_phenomenon"],
            "field": ["syntax", "syntax", "morphology", "morphology", "semantics", "syntax"],
        },
        index=["wh_island", "adjunct_island", "anaphor_gender", "anaphor_number", "npi_1", "mine"],
    )  # fmt: skip


@pytest.fixture
def space(meta):
    rng = np.random.default_rng(0)
    hyp = sp.hypothesis_space(meta, "phenomenon").to_numpy()
    values = hyp + 0.3 * rng.normal(size=hyp.shape)
    return pd.DataFrame(values, index=meta.index[::-1], columns=meta.index[::-1])


def test_phenomenon_palette_is_stable_and_distinct(meta):
    full = pl.phenomenon_palette()
    assert list(full["phenomenon"]) == list(pl.PHENOMENA) and list(full["field"]) == list(pl.FIELDS)
    assert len(set(full["phenomenon"].values())) == 13 and len(set(full["field"].values())) == 4
    sub = pl.phenomenon_palette(meta)
    for name in ("island_effects", "anaphor_agreement", "npi_licensing"):
        assert sub["phenomenon"][name] == full["phenomenon"][name]
    assert list(sub["phenomenon"])[-1] == "my_phenomenon"
    assert sub["phenomenon"]["my_phenomenon"] not in full["phenomenon"].values()


def test_order_tasks_by_field_then_phenomenon(meta):
    order = pl.order_tasks(list(meta.index), meta)
    assert order == ["anaphor_gender", "anaphor_number", "adjunct_island", "wh_island", "mine", "npi_1"]


def test_plot_space_clustered(space, meta):
    grid = pl.plot_space(space, meta, title="transfer")
    fig = grid.figure
    # heatmap, colour bar, two dendrograms, row and column colour strips
    assert len(fig.axes) == 6
    assert [t.get_text() for t in grid.ax_row_colors.get_xticklabels()] == ["phenomenon", "field"]
    assert [t.get_text() for t in grid.ax_col_colors.get_yticklabels()] == ["phenomenon", "field"]
    assert len(fig.legends) == 2
    assert {t.get_text() for t in fig.legends[0].get_texts()} == set(meta["phenomenon"])
    assert {t.get_text() for t in fig.legends[1].get_texts()} == set(meta["field"])
    mesh = grid.ax_heatmap.collections[0]
    # diverging RdBu_r centred at 0: the value 0 gets the colour map's middle colour
    middle = matplotlib.colormaps["RdBu_r"](0.5)
    np.testing.assert_allclose(mesh.cmap(mesh.norm(0.0)), middle, atol=0.02)
    assert mesh.norm.vmin < 0 < mesh.norm.vmax
    assert fig._suptitle.get_text() == "transfer"
    # the heatmap shows the space, reordered by the clustering
    rows = [t.get_text() for t in grid.ax_heatmap.get_yticklabels()]
    cols = [t.get_text() for t in grid.ax_heatmap.get_xticklabels()]
    shown = np.asarray(mesh.get_array()).reshape(len(rows), len(cols))
    np.testing.assert_allclose(shown, space.loc[rows, cols].to_numpy())


def test_plot_space_unclustered_keeps_metadata_order_and_masks_nan(space, meta):
    with_nan = space.copy()
    with_nan.loc["mine", "npi_1"] = np.nan
    grid = pl.plot_space(with_nan.abs(), meta, cluster=False)
    rows = [t.get_text() for t in grid.ax_heatmap.get_yticklabels()]
    assert rows == pl.order_tasks(list(meta.index), meta)
    mesh = grid.ax_heatmap.collections[0]
    assert mesh.cmap.name == "viridis"  # no negative entries
    data = mesh.get_array()
    assert np.ma.count_masked(data) == 1


def test_plot_dendrogram_labels_coloured_by_phenomenon(space, meta):
    fig = pl.plot_dendrogram(space, meta)
    (ax,) = fig.axes
    palette = pl.phenomenon_palette(meta)["phenomenon"]
    labels = ax.get_yticklabels()
    assert sorted(t.get_text() for t in labels) == sorted(meta.index)
    for label in labels:
        expected = palette[meta.at[label.get_text(), "phenomenon"]]
        assert mcolors.to_hex(label.get_color()) == mcolors.to_hex(expected)


def test_plot_mds_points_colours_and_markers(space, meta):
    fig = pl.plot_mds(space, meta, annotate=True)
    (ax,) = fig.axes
    offsets = np.vstack([c.get_offsets() for c in ax.collections])
    assert len(offsets) == len(meta)
    coords = sp.embed_mds(sp.task_distances(space))
    np.testing.assert_allclose(np.sort(offsets[:, 0]), np.sort(coords["mds1"].to_numpy()))
    assert len(ax.texts) == len(meta)
    assert len([a for a in ax.get_children() if isinstance(a, matplotlib.legend.Legend)]) == 2


def test_transfer_profile_relations(space, meta):
    prof = pl.transfer_profile(space, "wh_island", meta).set_index("task")
    assert prof.loc["wh_island", "relation"] == "self"
    assert prof.loc["adjunct_island", "relation"] == "same phenomenon"
    assert prof.loc["mine", "relation"] == "same field"
    assert prof.loc["npi_1", "relation"] == "other"
    np.testing.assert_allclose(prof.loc[list(space.columns), "value"], space.loc["wh_island"].to_numpy())
    received = pl.transfer_profile(space, "wh_island", meta, direction="from").set_index("task")
    np.testing.assert_allclose(received.loc[list(space.index), "value"], space["wh_island"].to_numpy())
    phen = pl.transfer_profile(space, "island_effects", meta).set_index("task")
    expected = space.loc[["wh_island", "adjunct_island"]].mean()
    np.testing.assert_allclose(phen.loc[list(expected.index), "value"], expected.to_numpy())
    assert set(phen.index[phen["relation"] == "self"]) == {"wh_island", "adjunct_island"}
    with pytest.raises(ValueError, match="neither a task"):
        pl.transfer_profile(space, "nonsense", meta)


def test_plot_transfer_bars_heights_and_colours(space, meta):
    fig = pl.plot_transfer_bars(space, "anaphor_gender", meta)
    (ax,) = fig.axes
    prof = pl.transfer_profile(space, "anaphor_gender", meta)
    heights = [p.get_height() for p in ax.patches]
    np.testing.assert_allclose(heights, prof["value"])
    colours = [mcolors.to_hex(p.get_facecolor()) for p in ax.patches]
    assert colours == [pl.RELATION_COLOURS[r] for r in prof["relation"]]
    assert [t.get_text() for t in ax.get_xticklabels()] == list(prof["task"])


def test_plot_alignment_error_bars_and_stars():
    results = pd.DataFrame({
        "hypothesis": ["phenomenon", "field", "phenomenon", "field"],
        "model": ["trained", "trained", "init", "init"],
        "statistic": [0.23, 0.10, 0.18, 0.01],
        "ci_low": [0.15, 0.02, 0.10, -0.08],
        "ci_high": [0.30, 0.18, 0.25, 0.09],
        "p_value": [0.001, 0.03, 0.001, 0.6],
    })  # fmt: skip
    fig = pl.plot_alignment(results, hue="model")
    (ax,) = fig.axes
    assert len(ax.containers) == 2  # one error-bar container per model
    assert sum(t.get_text() == "*" for t in ax.texts) == 3
    assert [t.get_text() for t in ax.get_xticklabels()] == ["phenomenon", "field"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["trained", "init"]
    with pytest.raises(ValueError, match="no column 'model_name'"):
        pl.plot_alignment(results, hue="model_name")


def test_plot_tradeoff_points_and_labels():
    frame = pd.DataFrame({"gain": [0.1, 0.3, -0.2], "damage": [1.0, 2.0, 0.5], "lr": ["a", "b", "a"],
                          "run": ["r1", "r2", "r3"]})  # fmt: skip
    fig = pl.plot_tradeoff(frame, "damage", "gain", hue="lr", label="run")
    (ax,) = fig.axes
    offsets = np.vstack([c.get_offsets() for c in ax.collections])
    assert sorted(map(tuple, offsets)) == sorted(zip(frame["damage"], frame["gain"]))
    assert [t.get_text() for t in ax.texts] == ["r1", "r2", "r3"]
