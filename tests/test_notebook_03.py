"""Smoke run of notebooks/03_ftgd.ipynb on the tiny test model (2 tasks, 4 pairs, 2 steps)."""

from __future__ import annotations

import pandas as pd

from conftest import run_notebook
from taskspace_utils.ftgd import CONTROLS

TASKS = ["anaphor_gender_agreement", "npi_present_1"]


def test_notebook_03_smoke(tmp_path, tiny_model_dir):
    out_dir = tmp_path / "out"
    run_notebook("03_ftgd.ipynb", tmp_path / "executed", model=str(tiny_model_dir), tasks=TASKS,
                 n_train=4, n_test=4, steps=2, batch_size=2, out_dir=str(out_dir), smoke=True)
    table = pd.read_csv(out_dir / "ftgd" / "controls.csv")
    assert sorted(table["task"].unique()) == sorted(TASKS)
    assert set(table["control"]) == set(CONTROLS) and len(table) == len(TASKS) * len(CONTROLS)
    assert table[["target_gain", "ppl_change", "n_changed"]].notna().all().all()
    changed = table.pivot(index="task", columns="control", values="n_changed")
    assert (changed["ftgd"] < changed["all_params"]).all() and (changed["random_mask"] <= changed["ftgd"].max()).all()
    means = pd.read_csv(out_dir / "ftgd" / "controls_mean.csv", index_col=0)
    assert list(means.index) == list(CONTROLS)
    for figure in ("tradeoff.png", "loss_curve.png", "side_effects.png"):
        assert (out_dir / "ftgd" / "figures" / figure).stat().st_size > 1000
    assert (out_dir / "ftgd" / "config.json").exists()
