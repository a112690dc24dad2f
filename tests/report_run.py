"""A synthetic run folder for the report tests (tests/test_reporting_*.py, tests/test_pipeline_report.py):
four units (``tiny-a`` at steps 0, 10, 100 and ``tiny-b`` at step 100) over eight BLiMP tasks of four
phenomena, with the files notebooks 01, 02 and 04 write (pairs, model info, BLiMP accuracy, the
transfer, margin-transfer and gradient spaces, subnetwork overlap whole-model and per module),
placeholder executed notebooks, and the comparison tables of :func:`compare_units` (as notebook 05
writes them). No model is needed."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd

from taskspace_utils import comparison as cmp
from taskspace_utils.data import load_blimp, split_pairs, task_metadata
from taskspace_utils.gradients import modules_to_long

TASKS = ["anaphor_gender_agreement", "anaphor_number_agreement", "determiner_noun_agreement_1",
         "determiner_noun_agreement_2", "wh_island", "adjunct_island", "npi_present_1", "npi_present_2"]
UNITS = [("tiny-a", 0, 1000), ("tiny-a", 10, 1000), ("tiny-a", 100, 1000), ("tiny-b", 100, 3000)]
MODULES = ("embed", "layer0.attention", "layer0.mlp", "head")
STAGES = ("01_build_data", "02_gradient_extraction", "04_similarity_probing")


def _space(rng, meta, strength, symmetric=False):
    phen = meta.loc[TASKS, "phenomenon"].to_numpy()
    values = strength * (phen[:, None] == phen[None, :]) + rng.normal(0, 1, (len(TASKS), len(TASKS)))
    values = (values + values.T) / 2 if symmetric else values
    return pd.DataFrame(values, index=TASKS, columns=TASKS)


def _notebook(path: Path, title: str) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {title}"), nbformat.v4.new_code_cell("x = 1  # a code cell")]
    nbformat.write(nb, str(path))


def accuracy_of(step: int) -> np.ndarray:
    """The per-task BLiMP accuracy written for a unit at ``step``."""
    return np.linspace(0.5, 0.5 + step / 400, len(TASKS))


def make_run(root: Path, compare: bool = True) -> Path:
    """Write the synthetic run into ``root`` (see the module docstring) and return it."""
    pairs = split_pairs(load_blimp(tasks=TASKS), 4, 4, 0)
    meta = task_metadata(pairs)
    rng = np.random.default_rng(0)
    for family, step, n in UNITS:
        folder = root / f"{family}@step{step}"
        (folder / "data").mkdir(parents=True)
        pairs.to_parquet(folder / "data" / "pairs.parquet")
        (folder / "data" / "model_info.json").write_text(json.dumps(
            {"spec": f"{family}@step{step}", "family": family, "revision": f"step{step}", "step": step,
             "source": "suite", "n_parameters": n, "n_non_embedding_parameters": n // 2}))
        pd.DataFrame({"task": TASKS, "accuracy": accuracy_of(step), "ties": 0}).to_csv(
            folder / "data" / "eval_blimp.csv", index=False)
        strength = step / 50
        (folder / "probing").mkdir()
        _space(rng, meta, strength).to_csv(folder / "probing" / "task_space_transfer.csv")
        _space(rng, meta, strength).to_csv(folder / "probing" / "task_space_transfer_margin.csv")
        grad = folder / "gradients_sentence"
        grad.mkdir()
        _space(rng, meta, strength, symmetric=True).to_csv(grad / "task_space_gradient.csv")
        overlap = np.abs(_space(rng, meta, strength, symmetric=True).to_numpy()) / 10
        np.fill_diagonal(overlap, 1.0)
        pd.DataFrame(overlap, index=TASKS, columns=TASKS).to_csv(grad / "mask_overlap.csv")
        per_module = {}
        for module in MODULES:
            m = np.abs(_space(rng, meta, strength, symmetric=True).to_numpy()) / 10
            np.fill_diagonal(m, 1.0)
            per_module[module] = pd.DataFrame(m, index=TASKS, columns=TASKS)
        modules_to_long(per_module).to_parquet(grad / "mask_overlap_modules.parquet", index=False)
        for stage in STAGES:
            _notebook(folder / f"{stage}.ipynb", stage)
    (root / "plan.json").write_text(json.dumps({"profile": "synthetic", "units": []}))
    if compare:
        _notebook(root / "05_scale_and_checkpoints.ipynb", "05")
        cmp.compare_units(root, config=cmp.ComparisonConfig(n_permutations=19, n_boot=20))
    return root
