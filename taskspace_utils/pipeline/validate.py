"""Checks of a plan's inputs before any work: model specs, data sources, task names, parameter values.

Every check raises :class:`~.profiles.PlanError` with one message that names the argument (``--tasks``,
``--set 02_gradient_extraction.n_train``, ``--data``, ``profile 'quick': models``) and, where a name
is wrong, the nearest valid names (:func:`did_you_mean`, :func:`difflib.get_close_matches`). The
checks import neither torch nor transformers, so a bad command line fails in well under a second
(the suite sizes, the suite name pattern and :func:`suite_root` come from the torch-free
:mod:`taskspace_utils.layout`).

- :func:`model_kind`: ``local`` (an existing folder), ``suite`` (``tiny-*``) or ``hub`` (a
  syntactically valid hub name: segments of letters, digits, ``_ . -``, at most one ``/``, no
  ``--`` or ``..``, at most 96 characters each); a path that does not exist, a malformed name and
  a near miss of a suite size (``tiny_m``) are errors.
- :func:`source_tasks`: the task names of a data source: BLiMP's from the file names in
  ``data/blimp`` (no file is read), a user's CSV/JSONL from :func:`taskspace_utils.data.load_pairs`
  (so its errors, with file and line, come before any work).
- :func:`check_tasks`: task names against a source's.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path

from ..layout import SUITE_NAME_PATTERN, SUITE_SIZES, suite_root
from .profiles import PlanError

__all__ = ["SUITE_SIZES", "SUITE_NAME_PATTERN", "HUB_NAME_PATTERN", "suite_root", "did_you_mean", "model_kind",
           "check_revision", "source_tasks", "check_tasks", "resolve_data_source"]

_SEGMENT = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
#: Hub repository ids: ``name`` or ``owner/name``, no ``--`` or ``..`` (the hub's own rules).
HUB_NAME_PATTERN = re.compile(rf"^(?!.*(--|\.\.)){_SEGMENT}(/{_SEGMENT})?$")
_REVISION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")
_CACHE: dict[str, list[str]] = {}


def did_you_mean(word: str, options, n: int = 3) -> str:
    """`` (did you mean 'a' or 'b'?)`` with the nearest of ``options`` (difflib ratio >= 0.6),
    else ``""``."""
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=n, cutoff=0.6)
    if not close:
        return ""
    return " (did you mean " + " or ".join(repr(c) for c in close) + "?)"


def model_kind(name: str, what: str) -> str:
    """``"local"``, ``"suite"`` or ``"hub"`` for model ``name`` (see the module docstring);
    :class:`PlanError` naming ``what`` for a missing folder or a malformed name."""
    text = str(name).strip()
    if text and Path(text).expanduser().is_dir():
        return "local"
    if text.startswith(("/", "./", "../", "~")) or os.sep in text.rstrip("/").split("/", 1)[-1]:
        raise PlanError(f"{what}: model {text!r} looks like a local folder, but there is no such folder")
    if SUITE_NAME_PATTERN.match(text):
        return "suite"
    if not HUB_NAME_PATTERN.match(text):
        raise PlanError(f"{what}: model {text!r} is neither an offline-suite size ({', '.join(SUITE_SIZES)}), "
                        "an existing local folder, nor a hub name (owner/name: letters, digits, '_', '.', '-')"
                        + did_you_mean(text, SUITE_SIZES))
    if "/" not in text and difflib.get_close_matches(text, SUITE_SIZES, n=1, cutoff=0.75):
        raise PlanError(f"{what}: model {text!r} is not an offline-suite size ({', '.join(SUITE_SIZES)})"
                        + did_you_mean(text, SUITE_SIZES))
    return "hub"


def check_revision(model: str, revision: str, what: str) -> None:
    """A hub revision must be a branch, tag or commit name (letters, digits, ``_ . - /``)."""
    if not _REVISION_PATTERN.match(revision):
        raise PlanError(f"{what}: revision {revision!r} of {model!r} is not a valid branch, tag or commit name")


def resolve_data_source(source, base: str | os.PathLike | None = None) -> str:
    """``"blimp"``, or the absolute path of a pairs file or folder (relative to ``base``, default the
    current folder): the kernels run in the notebooks folder, so a relative path would not be found."""
    text = str(source).strip()
    if text == "blimp":
        return text
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = Path(base or os.getcwd()) / path
    return str(path.resolve())


def source_tasks(source: str, what: str) -> list[str]:
    """The task names of data source ``source`` (``"blimp"`` or a pairs path), in file order;
    :class:`PlanError` naming ``what`` when the source cannot be read (file and line inside)."""
    key = str(source)
    if key in _CACHE:
        return _CACHE[key]
    if key == "blimp":
        from ..data import BLIMP_DIR, name_stem

        tasks = sorted(name_stem(p) for p in BLIMP_DIR.iterdir() if p.name.endswith((".jsonl", ".jsonl.gz")))
        if not tasks:
            raise PlanError(f"{what}: the BLiMP folder {BLIMP_DIR} holds no task files")
    else:
        path = Path(key)
        if not path.exists():
            near = did_you_mean(path.name, [p.name for p in path.parent.iterdir()] if path.parent.is_dir() else [])
            raise PlanError(f"{what}: {key}: no such file or folder of minimal pairs{near}")
        from ..data import load_pairs

        try:
            pairs = load_pairs(path)
        except (ValueError, KeyError, OSError) as err:
            text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
            raise PlanError(f"{what}: {text if key in text else f'{key}: {text}'}") from None
        tasks = list(dict.fromkeys(pairs["task"].astype(str)))
    _CACHE[key] = tasks
    return tasks


def check_tasks(values, known: list[str], what: str, source: str) -> None:
    """Every name in ``values`` must be one of ``known`` (the tasks of ``source``)."""
    unknown = [t for t in values if t not in known]
    if not unknown:
        return
    where = "BLiMP (data/blimp)" if source == "blimp" else source
    parts = [f"{t!r}{did_you_mean(t, known)}" for t in unknown]
    shown = ", ".join(known[:8]) + (f", ... ({len(known)} in all)" if len(known) > 8 else "")
    raise PlanError(f"{what}: unknown task{'s' if len(unknown) > 1 else ''} {', '.join(parts)} in {where}; "
                    f"tasks: {shown}")
