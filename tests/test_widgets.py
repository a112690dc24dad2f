"""Tests for taskspace_utils.widgets: explorers build and update headlessly."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from scipy import stats  # noqa: E402

from taskspace_utils import plotting as pl  # noqa: E402
from taskspace_utils import spaces as sp  # noqa: E402
from taskspace_utils import widgets as wd  # noqa: E402


@pytest.fixture
def meta():
    tasks = [f"t{p}_{k}" for p in range(4) for k in range(3)]
    return pd.DataFrame(
        {"phenomenon": [f"p{p}" for p in range(4) for _ in range(3)],
         "field": ["syntax" if p < 2 else "semantics" for p in range(4) for _ in range(3)]},
        index=tasks,
    )  # fmt: skip


@pytest.fixture
def spaces(meta):
    rng = np.random.default_rng(0)
    hyp = sp.hypothesis_space(meta, "phenomenon").to_numpy()
    trained = pd.DataFrame(hyp + rng.normal(size=hyp.shape), index=meta.index, columns=meta.index)
    init = pd.DataFrame(rng.normal(size=hyp.shape), index=meta.index, columns=meta.index)
    return {"trained": trained, "init": init.iloc[:6, :6]}


def _shown(output) -> bool:
    return len(output.outputs) == 1 and output.outputs[0]["data"]["image/png"].startswith("iVBOR")  # PNG magic


def test_transfer_explorer_draws_rows_and_columns(spaces, meta):
    explorer = wd.transfer_explorer(spaces, meta)
    assert _shown(explorer.output)
    explorer.key.value = "t1_2"
    explorer.update()
    top, bottom = explorer.figure.axes
    profile = pl.transfer_profile(spaces["trained"], "t1_2", meta)
    np.testing.assert_allclose([p.get_height() for p in top.patches], profile["value"])
    received = pl.transfer_profile(spaces["trained"], "t1_2", meta, direction="from")
    np.testing.assert_allclose([p.get_height() for p in bottom.patches], received["value"])
    assert not plt.get_fignums()  # rendered and closed: the inline backend will not repeat it
    explorer.key.value = "p3"  # a phenomenon: mean over its paradigms; callbacks run on change
    assert explorer.figure.axes[0].get_title() == "p3 -> evaluated tasks"
    assert _shown(explorer.output)


def test_transfer_explorer_task_missing_from_space(spaces, meta):
    explorer = wd.transfer_explorer(spaces, meta)
    explorer.key.value = "t3_0"
    explorer.space.value = "init"  # covers tasks t0_*, t1_* only
    assert "not in space init" in explorer.message.value
    assert explorer.output.outputs == () and explorer.figure is None
    explorer.key.value = "t0_1"
    assert explorer.message.value == "" and _shown(explorer.output)


def test_agreement_explorer_numbers(spaces, meta):
    hyps = sp.hypothesis_spaces(meta)
    field = hyps["field"]
    explorer = wd.agreement_explorer(spaces, meta, hyps, controls={"field": field}, n_permutations=99)
    assert explorer.a.value == "space: trained" and explorer.b.value == "hypothesis: phenomenon"
    trained, phen = spaces["trained"], hyps["phenomenon"]
    off = ~np.eye(12, dtype=bool)
    expected = stats.spearmanr(trained.to_numpy()[off], phen.to_numpy()[off]).statistic
    assert explorer.result.statistic == pytest.approx(expected)
    assert f"{expected:.3f}" in explorer.numbers.value and _shown(explorer.output)
    explorer.control.value = "field"
    partial = sp.compare_spaces(trained, phen, controls=[field], n_permutations=99)
    assert explorer.result.partial and explorer.result.statistic == pytest.approx(partial.statistic)
    assert explorer.result.p_value == pytest.approx(partial.p_value)
    title = explorer.figure.axes[0].get_title()
    assert title.startswith("partial spearman") and "control: field" in title  # the plot says what it shows
    explorer.control.value = "(none)"
    assert explorer.figure.axes[0].get_title().startswith("spearman")
    explorer.b.value = "space: init"  # two spaces: aligned on their 6 common tasks
    assert explorer.result.n_tasks == 6
    explorer.b.value = "hypothesis: paradigm"
    assert "cannot compare" in explorer.numbers.value and explorer.output.outputs == ()
