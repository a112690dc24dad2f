"""Resuming a run: the resume hashes, the per-unit record, what is pending, and what to clean.

Each unit folder holds ``unit.json`` (:data:`UNIT_RECORD`, written atomically after every
notebook) with, per notebook, the parameters, a *hash* and the files the notebook created. The
hash of per-unit notebook ``N`` (:func:`notebook_hash`) is::

    config_hash({"notebook": stem, "code": code_hash(N), "parameters": parameters of N without
                 model/out_dir, "model": weights fingerprint, "previous": hash of N-1 ("" for the first)})

(:func:`taskspace_utils.results.config_hash`: SHA-256 of the canonical JSON, 12 hex digits). The
code hash covers the code cells' sources only; ``out_dir`` is left out, so a moved run folder
stays valid; the fingerprint is the identity of the model weights (the suite record, the hub
revision or the local files; :func:`taskspace_utils.pipeline.revisions.resolve_revisions`). So a
changed parameter of ``N`` reruns ``N`` and every notebook after it in that unit, and nothing else.
A comparison notebook's hash (:func:`comparison_hash`) covers its code, its parameters without
``run_dir`` and the last hash of every complete unit; it is kept in ``run.json`` (:data:`RUN_RECORD`).
These inputs must not change: a run folder made earlier resumes only while they are the same.

A notebook counts as done (:func:`pending_notebooks`) when its record has status ``ok`` and the
current hash, its executed copy exists and its recorded outputs exist. Before a notebook with a
*changed* hash reruns, the files it created last time are deleted (:func:`clean_changed`, so a
stage's own ``ensure_run_config`` never sees a stale config); after a failure or a kill with an
unchanged hash they are kept, so a notebook that saves in chunks resumes.
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path
from typing import Iterable

from ..results import config_hash, read_json
from .plan import Unit

__all__ = ["UNIT_RECORD", "RUN_RECORD", "code_hash", "notebook_hash", "comparison_hash", "read_record",
           "pending_notebooks", "snapshot", "clean_changed"]

UNIT_RECORD = "unit.json"
RUN_RECORD = "run.json"


def code_hash(path: Path) -> str:
    """SHA-256 (12 hex) of the code cells' sources: outputs and metadata do not count."""
    from .notebooks import read_cells

    text = "\n\x00".join(c["source"] for c in read_cells(path) if c.get("cell_type") == "code")
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def notebook_hash(stem: str, path: Path, parameters: dict, fingerprint: str, previous: str) -> str:
    """Resume hash of per-unit notebook ``stem`` (see the module docstring); ``parameters`` as
    planned (``model``/``out_dir`` are dropped here), ``previous``: the hash of the notebook before."""
    params = {k: v for k, v in parameters.items() if k not in ("model", "out_dir")}
    return config_hash({"notebook": stem, "code": code_hash(path), "parameters": params, "model": fingerprint,
                        "previous": previous})


def comparison_hash(stem: str, path: Path, parameters: dict, unit_hashes: dict[str, str]) -> str:
    """Resume hash of run-level notebook ``stem``: code, parameters but ``run_dir``, and
    ``{unit: hash of its last notebook}`` of the complete units it compares."""
    shown = {k: v for k, v in parameters.items() if k != "run_dir"}
    return config_hash({"notebook": stem, "code": code_hash(path), "parameters": shown, "units": unit_hashes})


def read_record(folder: Path, name: str) -> dict:
    """The JSON record ``folder / name`` (``unit.json``, ``run.json``); ``{}`` when absent or unreadable."""
    path = Path(folder) / name
    if not path.exists():
        return {}
    try:
        return read_json(path)
    except ValueError:
        return {}  # unreadable record: everything reruns


def _outputs_exist(folder: Path, entry: dict) -> bool:
    return all((folder / rel).exists() for rel in entry.get("new_outputs", []) + entry.get("changed_outputs", []))


def pending_notebooks(unit: Unit, record: dict | None = None) -> list[str]:
    """Stems of the unit's notebooks to execute: the first one not done and all after it.

    Done: ``unit.json`` records status ``ok`` with the current hash, the executed copy
    ``<stem>.ipynb`` exists and so do the files the notebook created or changed.
    """
    folder = unit.out_dir
    record = read_record(folder, UNIT_RECORD) if record is None else record
    entries = record.get("notebooks", {})
    for i, job in enumerate(unit.jobs):
        entry = entries.get(job.name, {})
        done = (entry.get("status") == "ok" and entry.get("hash") == job.hash
                and (folder / f"{job.name}.ipynb").exists() and _outputs_exist(folder, entry))
        if not done:
            return [j.name for j in unit.jobs[i:]]
    return []


def _is_runner_file(rel: Path, stems: Iterable[str]) -> bool:
    if any(part.startswith(".") for part in rel.parts):
        return True
    if len(rel.parts) == 1:
        name = rel.name
        return name == UNIT_RECORD or any(name in (f"{s}.ipynb", f"{s}.failed.ipynb") for s in stems)
    return False


def snapshot(folder: Path, stems: Iterable[str]) -> dict[str, list[int]]:
    """``{relative path: [size, mtime_ns]}`` of the files in ``folder`` that notebooks wrote."""
    stems = list(stems)
    out = {}
    if folder.is_dir():
        for path in folder.rglob("*"):
            rel = path.relative_to(folder)
            if path.is_file() and not _is_runner_file(rel, stems):
                stat = path.stat()
                out[str(rel)] = [stat.st_size, stat.st_mtime_ns]
    return out


def _remove_outputs(folder: Path, relpaths: Iterable[str]) -> None:
    """Delete files (inside ``folder`` only) and the folders they leave empty."""
    root = folder.resolve()
    for rel in relpaths:
        path = (folder / rel).resolve()
        if root not in path.parents:
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        parent = path.parent
        while parent != root and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent


def clean_changed(unit: Unit, record: dict, pending: list[str]) -> None:
    """Before rerunning, delete the files created by pending notebooks whose hash changed."""
    folder = unit.out_dir
    hashes = {j.name: j.hash for j in unit.jobs}
    stems = [j.name for j in unit.jobs]
    for stem in pending:
        entry = record.get("notebooks", {}).get(stem)
        if not entry or entry.get("hash") == hashes[stem]:
            continue
        if entry.get("status") == "running":
            before = set(entry.get("before", []))
            created = [rel for rel in snapshot(folder, stems) if rel not in before]
        else:
            created = entry.get("new_outputs", [])
        _remove_outputs(folder, created)
        for suffix in (".ipynb", ".failed.ipynb"):
            with contextlib.suppress(FileNotFoundError):
                (folder / f"{stem}{suffix}").unlink()
