"""The notebooks folder: which notebooks a run executes, their stage numbers and declared parameters.

A runnable notebook is ``NN_name.ipynb`` (two digits, an underscore, a name). Its two-digit number
says its role: ``00`` builds the offline suite (:data:`SUITE_NUMBER`), ``01`` ... ``04`` run per
unit, ``05`` and above (:data:`FIRST_COMPARISON_NUMBER`) run once over all units. A notebook is
named on the command line and in profiles by its stem or its two-digit prefix
(:func:`notebook_key`). Only the parameters a notebook declares in its ``parameters`` cell are
passed to it (:func:`declared_parameters`).
"""

from __future__ import annotations

import io
import os
import re
import tokenize
from pathlib import Path

from .profiles import PlanError

__all__ = ["NOTEBOOK_PATTERN", "SUITE_NUMBER", "FIRST_COMPARISON_NUMBER", "discover_notebooks", "stage_number",
           "notebook_key", "declared_parameters"]

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


def _without_comments(source: str) -> str:
    """``source`` with its ``#`` comments cut off (found by :mod:`tokenize`, so a ``#`` inside a
    string stays); unchanged when it does not tokenize."""
    lines = source.splitlines()
    try:
        comments = [t.start for t in tokenize.generate_tokens(io.StringIO(source).readline)
                    if t.type == tokenize.COMMENT]
    except (tokenize.TokenError, SyntaxError):
        return source
    for row, col in comments:
        lines[row - 1] = lines[row - 1][:col].rstrip()
    return "\n".join(lines)


def declared_parameters(path: str | os.PathLike) -> list[str] | None:
    """Names of the parameters declared in the notebook's ``parameters`` cell, in order (``None``:
    no such cell; then everything is passed).

    Read by papermill's own inspection (the parser behind :func:`papermill.inspect_notebook`, which
    also gives each parameter's type and default): one ``name = value`` or ``name: type = value``
    per line, values over several lines grouped. Papermill skips a line holding a second ``=``, and
    the kit's cells put ``=`` in comments (``tasks = None  # None = all tasks``), so the cell's
    comments are cut off first; :func:`papermill.inspect_notebook` itself reads only from a path,
    hence its parser is called on the cleaned cell. A chained ``a = b = 1`` or a string value
    holding ``=`` is not read by papermill (none in the kit's notebooks; tested against an
    :mod:`ast` reading of every notebook).
    """
    import nbformat
    from papermill.translators import PythonTranslator

    notebook = nbformat.read(str(path), as_version=4)
    cell = next((c for c in notebook.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])),
                None)
    if cell is None:
        return None
    return list(dict.fromkeys(p.name for p in PythonTranslator.inspect({"source": _without_comments(cell.source)})))
