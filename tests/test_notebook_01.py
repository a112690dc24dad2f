"""Notebook 01 executed end to end through papermill with its smallest parameters."""

import json

import pandas as pd

from conftest import run_notebook


def test_build_data_notebook_smoke(tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    run_notebook("01_build_data.ipynb", tmp_path / "nb", model=str(tiny_model_dir), out_dir=str(out), smoke=True)
    pairs = pd.read_parquet(out / "data" / "pairs.parquet")
    assert pairs.task.nunique() == 3 and set(pairs.split) == {"train", "test"}
    assert (pairs.groupby(["task", "split"]).size() == 5).all()
    assert {"prefix_len", "single_substitution"} <= set(pairs.columns)
    config = json.loads((out / "data" / "config.json").read_text())
    assert config["n_train"] == 5 and config["seed"] == 0
    acc = pd.read_csv(out / "data" / "eval_blimp.csv", index_col="task")
    assert len(acc) == 3 and (acc.n_pairs == 20).all() and acc.accuracy.between(0, 1).all()
    info = json.loads((out / "data" / "model_info.json").read_text())
    assert info["source"] == "local" and info["n_parameters"] > info["n_non_embedding_parameters"] > 0
