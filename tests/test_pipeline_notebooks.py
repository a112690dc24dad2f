"""Tests of taskspace_utils.pipeline.notebooks: declared parameters (papermill's parser)."""

from __future__ import annotations

import ast

import nbformat
import pytest
from pipeline_workspace import REPO, write_synthetic_notebooks

from taskspace_utils import pipeline


def test_declared_parameters(tmp_path):
    notebooks = write_synthetic_notebooks(tmp_path)
    assert pipeline.declared_parameters(notebooks / "02_gradient_extraction.ipynb") == [
        "model", "out_dir", "smoke", "seed", "scale", "counter"]


def _ast_declared_parameters(path) -> list[str] | None:
    """The reading the runner used before papermill's parser (kept here as the reference): names
    assigned at top level in the first code cell tagged ``parameters``, parsed with :mod:`ast`."""
    cell = next((c for c in nbformat.read(str(path), as_version=4).cells
                 if c.cell_type == "code" and "parameters" in c.get("metadata", {}).get("tags", [])), None)
    if cell is None:
        return None
    names = []
    for node in ast.parse(cell.source).body:
        targets = (node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign)
                   else [])
        names += [t.id for t in targets if isinstance(t, ast.Name) and t.id not in names]
    return names


KIT_NOTEBOOKS = sorted([*(REPO / "notebooks").glob("*.ipynb"), *(REPO / "notebooks" / "assignments").glob("*.ipynb")])


@pytest.mark.parametrize("path", KIT_NOTEBOOKS, ids=lambda p: p.name)
def test_declared_parameters_of_the_kit_notebooks_match_the_ast_reading(path):
    """Every notebook of notebooks/ and notebooks/assignments/: papermill's parser (comments cut
    off) gives the same names, in the same order, as the ast reading the runner used before."""
    assert pipeline.declared_parameters(path) == _ast_declared_parameters(path)


def test_declared_parameters_cut_comments_and_read_multiline_values(tmp_path):
    notebook = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell('# header = comment\ntasks = None  # None = all\nnames = [  # a = b\n'
                                     '    "x#y",  # c = d\n]\nk: float = 0.5\nlabel = "a # b"\n')
    cell.metadata["tags"] = ["parameters"]
    notebook.cells = [nbformat.v4.new_code_cell("x = 1"), cell]
    nbformat.write(notebook, str(tmp_path / "01_x.ipynb"))
    assert pipeline.declared_parameters(tmp_path / "01_x.ipynb") == ["tasks", "names", "k", "label"]
    notebook.cells = notebook.cells[:1]
    nbformat.write(notebook, str(tmp_path / "02_y.ipynb"))
    assert pipeline.declared_parameters(tmp_path / "02_y.ipynb") is None
