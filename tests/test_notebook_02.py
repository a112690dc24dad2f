"""Smoke run of notebooks/02_gradient_extraction.ipynb (papermill) on the tiny test model."""

from __future__ import annotations

import json

import nbformat
import numpy as np
import pandas as pd
import pytest
from conftest import NOTEBOOKS, run_notebook
from safetensors import safe_open

TASKS = ["anaphor_gender_agreement", "npi_present_1", "wh_island"]


def test_notebook_is_committed_without_outputs_and_has_parameters():
    nb = nbformat.read(NOTEBOOKS / "02_gradient_extraction.ipynb", as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and "smoke = False" in tagged[0].source
    for name in ("model", "tasks", "n_train", "seed", "variant", "k", "out_dir"):
        assert f"\n{name} = " in "\n" + tagged[0].source, name
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")


@pytest.mark.parametrize("variant", ["critical"])
def test_notebook_02_smoke(tiny_model_dir, tmp_path, variant):
    out = tmp_path / "run"
    run_notebook("02_gradient_extraction.ipynb", tmp_path / "executed", model=str(tiny_model_dir), tasks=TASKS,
                 n_train=4, seed=0, variant=variant, k=0.05, out_dir=str(out), smoke=True)
    run = out / f"gradients_{variant}"
    config = json.loads((run / "config.json").read_text())
    assert config["variant"] == variant and config["n_train"] == 4 and config["k"] == 0.05
    for task in TASKS:
        with safe_open(str(run / "differentials" / f"{task}.safetensors"), framework="pt") as handle:
            meta = {k: json.loads(v) for k, v in handle.metadata().items()}
            assert meta["task"] == task and meta["stats"]["n_pairs"] + meta["stats"]["n_excluded"] == 4
            assert "lm_head.weight" in handle.keys()
    stats = pd.read_parquet(run / "differential_stats.parquet")
    assert sorted(stats.index) == TASKS
    assert (stats["consistency"] > 0).all() and (stats["consistency"] <= 1 + 1e-6).all()
    space = pd.read_csv(run / "task_space_gradient.csv", index_col=0)
    assert space.shape == (3, 3) and np.allclose(np.diag(space), 1) and np.allclose(space, space.T)
    overlap = pd.read_csv(run / "mask_overlap.csv", index_col=0)
    assert np.allclose(np.diag(overlap), 1) and ((overlap >= 0) & (overlap <= 1)).all().all()
    modules = pd.read_parquet(run / "task_space_gradient_modules.parquet")
    assert {"embed", "layer0.attention", "layer1.mlp", "final_norm", "head"} <= set(modules["module"])
    for figure in ("reliability", "gradient_space", "module_sharing", "gradient_space_embed", "mask_overlap"):
        assert (run / "figures" / f"{figure}.png").stat().st_size > 5000, figure
