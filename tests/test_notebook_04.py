"""Smoke run of notebooks/04_similarity_probing.ipynb on tiny test models (3 tasks, 4 pairs, 2 steps):
the probed model, a differently initialised baseline model, and a second probing seed."""

from __future__ import annotations

import json

import pandas as pd

from conftest import build_tiny_model, run_notebook

TASKS = ["anaphor_gender_agreement", "anaphor_number_agreement", "npi_present_1"]


def test_notebook_04_smoke(tmp_path, tiny_model_dir, tiny_tokenizer):
    baseline_dir = tmp_path / "baseline_model"
    build_tiny_model(tiny_tokenizer, seed=1).save_pretrained(baseline_dir)
    tiny_tokenizer.save_pretrained(baseline_dir)
    out_dir = tmp_path / "out"
    out = out_dir / "probing"
    run_notebook("04_similarity_probing.ipynb", tmp_path / "executed", model=str(tiny_model_dir),
                 baseline_model=str(baseline_dir), tasks=TASKS, n_train=4, n_test=4, steps=2, seed2=1,
                 n_permutations=20, n_boot=20, out_dir=str(out_dir), smoke=True)
    for name in ("task_space_transfer.csv", "task_space_transfer_margin.csv", "task_space_transfer_predicted.csv",
                 "baseline/task_space_transfer_margin.csv", "seed1/task_space_transfer_margin.csv"):
        space = pd.read_csv(out / name, index_col=0)
        assert space.shape == (3, 3) and sorted(space.index) == sorted(TASKS) and space.notna().all().all(), name
    baseline = pd.read_csv(out / "eval_baseline.csv", index_col=0)
    assert sorted(baseline.index) == sorted(TASKS) and (baseline["n_pairs"] == 4).all()
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == str(tiny_model_dir) and config["probing"]["ftgd"]["steps"] == 2
    assert json.loads((out / "baseline" / "config.json").read_text())["model"] == str(baseline_dir)
    table = pd.read_csv(out / "alignment_table.csv")
    # the accuracy view of 4 smoke test pairs may be constant off the diagonal (then it has no alignment row)
    assert {"transfer (margin)", "transfer (margin) @ baseline"} <= set(table["space"])
    assert "phenomenon" in set(table["hypothesis"])
    raw = table[table["controlled"] == "none"]
    assert raw["p_value"].between(0, 1).all() and (table["controlled"] != "none").any()
    assert len(pd.read_csv(out / "alignment_trained_minus_baseline.csv")) == 2
    assert len(list((out / "rows").glob("*.json"))) == 3
    for figure in ("transfer_margin.png", "alignment.png", "first_order_prediction.png"):
        assert (out / "figures" / figure).stat().st_size > 1000
