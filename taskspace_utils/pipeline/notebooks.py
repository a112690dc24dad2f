"""The notebooks folder: which notebooks a run executes, their stage numbers and declared parameters.

A runnable notebook is ``NN_name.ipynb`` (two digits, an underscore, a name). Its two-digit number
says its role: ``00`` builds the offline suite (:data:`SUITE_NUMBER`), ``01`` ... ``04`` run per
unit, ``05`` and above (:data:`FIRST_COMPARISON_NUMBER`) run once over all units. A notebook is
named on the command line and in profiles by its stem or its two-digit prefix
(:func:`notebook_key`). Only the parameters a notebook declares in its ``parameters`` cell are
passed to it (:func:`declared_parameters`).
"""

from __future__ import annotations

import ast
import json
import os
import re
from pathlib import Path

from .profiles import PlanError

__all__ = ["NOTEBOOK_PATTERN", "SUITE_NUMBER", "FIRST_COMPARISON_NUMBER", "discover_notebooks", "stage_number",
           "notebook_key", "declared_parameters", "read_cells"]

#: Notebook files the runner executes: two digits, an underscore, a name.
NOTEBOOK_PATTERN = re.compile(r"^(?P<number>\d\d)_[A-Za-z0-9_-]+$")
#: Two-digit numbers of the stages: the suite build, and the first run-level (comparison) notebook.
SUITE_NUMBER, FIRST_COMPARISON_NUMBER = 0, 5


def discover_notebooks(folder: str | os.PathLike) -> dict[str, Path]:
    """``{stem: path}`` of ``folder/[0-9][0-9]_*.ipynb``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PlanError(f"notebooks folder {folder} does not exist")
    found = {}
    for path in sorted(folder.glob("[0-9][0-9]_*.ipynb")):
        if NOTEBOOK_PATTERN.match(path.stem):
            found[path.stem] = path
    return found


def stage_number(stem: str) -> int:
    """The stage number of a notebook stem (``"02_gradient_extraction"`` -> 2)."""
    return int(stem[:2])


def notebook_key(key: str, notebooks: dict[str, Path], what: str) -> str | None:
    """Map a stem or two-digit prefix to a discovered stem; ``None`` if well-formed but absent.

    YAML reads a bare ``02:`` key as the integer 2, so integers are read as two-digit prefixes."""
    key = f"{key:02d}" if isinstance(key, int) and not isinstance(key, bool) else str(key).strip()
    if not re.fullmatch(r"\d\d(_[A-Za-z0-9_-]+)?", key):
        raise PlanError(f"{what}: {key!r} is not a notebook name (expected a stem such as "
                        f"'02_gradient_extraction' or its prefix '02')")
    by_number = [s for s in notebooks if s[:2] == key[:2]]
    if len(key) == 2:
        return by_number[0] if by_number else None
    if key in notebooks:
        return key
    if by_number:
        raise PlanError(f"{what}: notebook {key!r} does not exist; notebook {key[:2]} is {by_number[0]!r}")
    return None


def read_cells(path: str | os.PathLike) -> list[dict]:
    """The cells of a notebook file as plain dicts, ``source`` joined into one string.

    Read as JSON rather than with :mod:`nbformat`: importing nbformat (and papermill, which imports
    it) takes 1-3 s, and the plan is checked before any of that is needed. The joined source is
    what ``nbformat.read(path, as_version=4)`` gives for the kit's (v4) notebooks."""
    with open(path, encoding="utf-8") as handle:
        notebook = json.load(handle)
    if int(notebook.get("nbformat", 4)) != 4:
        raise PlanError(f"{path}: nbformat {notebook.get('nbformat')} notebooks are not supported (expected 4)")
    cells = []
    for cell in notebook.get("cells", []):
        source = cell.get("source", "")
        cells.append({**cell, "source": "".join(source) if isinstance(source, list) else str(source)})
    return cells


def declared_parameters(path: str | os.PathLike) -> list[str] | None:
    """Names of the parameters declared in the notebook's ``parameters`` cell, in order (``None``:
    no such cell; then everything is passed).

    The names assigned at top level of the first code cell tagged ``parameters`` (``name = value``
    or ``name: type = value``; a value may span lines), read with :mod:`ast`. A cell that does not
    parse falls back to papermill's line parser (:meth:`papermill.translators.PythonTranslator.inspect`).
    """
    cell = next((c for c in read_cells(path) if c.get("cell_type") == "code"
                 and "parameters" in (c.get("metadata") or {}).get("tags", [])), None)
    if cell is None:
        return None
    try:
        body = ast.parse(cell["source"]).body
    except SyntaxError:
        from papermill.translators import PythonTranslator

        return list(dict.fromkeys(p.name for p in PythonTranslator.inspect({"source": cell["source"]})))
    names: list[str] = []
    for node in body:
        targets = (node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign)
                   else [])
        for target in targets:
            for name in ([target] if isinstance(target, ast.Name) else []):
                if name.id not in names:
                    names.append(name.id)
    return names
