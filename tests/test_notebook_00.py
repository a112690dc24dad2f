"""Test for notebooks/00_pretrain_suite.ipynb: it builds and evaluates a smoke suite through papermill."""

from __future__ import annotations

from taskspace_utils.suite import is_built

from conftest import run_notebook


def test_notebook_builds_and_evaluates_a_smoke_suite(tmp_path):
    import nbformat

    suite = tmp_path / "suite"
    out = run_notebook("00_pretrain_suite.ipynb", tmp_path / "out", smoke=True, suite_dir=str(suite),
                       sizes=["tiny-s"], blimp_pairs_per_task=4, blimp_tasks=3)
    assert is_built("tiny-s", suite)
    nb = nbformat.read(out, as_version=4)
    text = "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
                   for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "blimp_mean" in text and "validation_loss" in text  # the figure cells ran (papermill raises on errors)
