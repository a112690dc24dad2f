"""Executing notebooks: one notebook with papermill, one unit's pending notebooks, and their outcome.

:func:`execute_notebook` runs one notebook into its executed copy, atomically: papermill writes
the hidden ``.<name>.running.ipynb``, renamed to ``<name>.ipynb`` on success and to
``<name>.failed.ipynb`` on failure, so killing the runner at any moment loses no finished
notebook. :func:`execute_unit` runs the pending notebooks of one :class:`~.plan.Unit` in order and
keeps ``unit.json`` up to date (the task a Dask worker runs). A failure is a :class:`Failure`:
where (unit, notebook, cell, the cell's first line) and what (exception name and value).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..results import atomic_write_json, to_jsonable
from .plan import Unit
from .resume import UNIT_RECORD, clean_changed, pending_notebooks, read_record, snapshot

__all__ = ["Failure", "UnitResult", "RunSummary", "environment", "execute_notebook", "failure_of", "now",
           "execute_unit"]


@dataclass
class Failure:
    """A notebook that failed: where (unit, notebook, cell index in the executed copy, which
    includes papermill's injected-parameters cell; first line of the cell's source) and what
    (exception name and value)."""

    unit: str
    notebook: str
    cell: int | None
    ename: str
    evalue: str
    path: str | None = None
    source: str = ""

    def describe(self) -> str:
        where = f"cell {self.cell}" if self.cell is not None else "before any cell"
        if self.source:
            where += f" ({self.source})"
        text = f"{self.unit} {self.notebook}: {where}: {self.ename}: {self.evalue}"
        return text + (f"\n    executed copy: {self.path}" if self.path else "")


@dataclass
class UnitResult:
    """What :func:`execute_unit` did: per executed notebook ``(stem, status, seconds)``, the
    failure if any, and the worker (``host:pid``) that ran it."""

    unit: str
    notebooks: list[tuple[str, str, float]]
    failure: Failure | None
    worker: str


@dataclass
class RunSummary:
    """Outcome of :func:`~taskspace_utils.pipeline.runner.run`: units executed, skipped (complete) and
    failed, and the report."""

    executed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    report: Path | None = None

    @property
    def exit_code(self) -> int:
        return 1 if self.failures else 0


@contextlib.contextmanager
def environment(env: dict[str, str]):
    """Set environment variables (inherited by the kernels papermill starts), then restore them."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update({k: str(v) for k, v in env.items()})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def execute_notebook(source: str | os.PathLike, target: str | os.PathLike, parameters: dict, *, cwd: str | os.PathLike,
                     kernel: str = "python3", execution_timeout: int | None = None, label: str | None = None,
                     on_output: Callable[[str], None] | None = None) -> Path:
    """Execute ``source`` with papermill into ``target``, atomically.

    Papermill writes to the hidden ``.<stem>.running.ipynb`` beside ``target``; on success it is
    renamed to ``target`` (a stale ``<stem>.failed.ipynb`` is removed), on failure to
    ``<stem>.failed.ipynb`` and the exception (``PapermillExecutionError`` for a cell that
    raised) propagates. The kernel runs over IPC sockets (:mod:`.progress`); with ``label``,
    cell progress is shown on stdout (:class:`~.progress.CellReporter`); ``on_output(line)``
    receives the kernel's output lines as they come.
    """
    import papermill as pm

    from .progress import CellReporter, register_engine

    # papermill warns about parameters its line parser misses (a comment holding "="); the
    # runner passes only declared parameters (comments cut off first), so these warnings are noise.
    logging.getLogger("papermill").setLevel(logging.ERROR)
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    running = target.with_name(f".{target.stem}.running.ipynb")
    failed = target.with_name(f"{target.stem}.failed.ipynb")
    reporter = CellReporter(label) if label else None
    if on_output is not None and reporter is not None:
        forward = on_output

        def on_output(line: str) -> None:  # the output line replaces the updating cell line
            reporter.clear()
            forward(line)
    try:
        pm.execute_notebook(str(source), str(running), parameters=to_jsonable(parameters), kernel_name=kernel,
                            cwd=str(cwd), progress_bar=False, log_output=False, execution_timeout=execution_timeout,
                            engine_name=register_engine(), on_cell=reporter.cell if reporter else None,
                            on_output=on_output)
    except BaseException:
        if running.exists():
            os.replace(running, failed)
        raise
    finally:
        if reporter:
            reporter.close()
    os.replace(running, target)
    with contextlib.suppress(FileNotFoundError):
        failed.unlink()
    return target


def failure_of(err: BaseException, unit: str, notebook: str, path: Path | None) -> Failure:
    """The :class:`Failure` of ``err`` raised by ``notebook`` of ``unit``; ``path``: its failed copy.

    A cell that raised (``PapermillExecutionError``) gives its index and first line; any other
    error the first line of its message (and ``path`` only when the copy exists)."""
    from papermill.exceptions import PapermillExecutionError

    if isinstance(err, PapermillExecutionError):
        first = next((line.strip() for line in str(err.source or "").splitlines() if line.strip()), "")
        first = first if len(first) <= 60 else first[:57] + "..."
        return Failure(unit, notebook, err.cell_index, err.ename, str(err.evalue), str(path) if path else None, first)
    return Failure(unit, notebook, None, type(err).__name__, str(err).strip().splitlines()[0] if str(err).strip() else "",
                   str(path) if path and path.exists() else None)


def now() -> str:
    """The current UTC time, ISO 8601 to the second (the records' ``started``/``finished``)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def execute_unit(unit: Unit, notebooks: dict[str, Path], *, cwd: str | os.PathLike, kernel: str = "python3",
                 execution_timeout: int | None = None, env: dict[str, str] | None = None,
                 on_notebook: Callable[[str, str, str, float], None] | None = None,
                 on_start: Callable[[str, str], None] | None = None, cell_progress: bool = True) -> UnitResult:
    """Execute the pending notebooks of ``unit`` (:func:`pending_notebooks`) in order.

    ``unit.json`` is rewritten atomically before each notebook (status ``running`` with the list
    of files present, so a kill can be cleaned up) and after it (``ok`` or ``failed``, seconds,
    parameters, the files it created and changed). The unit stops at the first failure.
    ``on_notebook(unit, stem, status, seconds)`` is called after each notebook, ``on_start(unit,
    worker)`` once before the first; ``cell_progress`` shows each notebook's cells on stdout
    (:class:`~.progress.CellReporter`). Runs in a Dask worker as is (everything it needs is in its
    arguments).
    """
    folder = unit.out_dir
    folder.mkdir(parents=True, exist_ok=True)
    stems = [j.name for j in unit.jobs]
    worker = f"{socket.gethostname()}:{os.getpid()}"
    done: list[tuple[str, str, float]] = []
    failure = None
    if on_start:
        on_start(unit.name, worker)
    with environment(env or {}):
        record = read_record(folder, UNIT_RECORD)
        pending = pending_notebooks(unit, record)
        clean_changed(unit, record, pending)
        record = {**record, "unit": unit.name, "model": unit.spec, "requested": f"{unit.model}@{unit.revision}",
                  "fingerprint": unit.fingerprint, "notebooks": record.get("notebooks", {}), "complete": False}
        for job in unit.jobs:
            if job.name not in pending:
                continue
            before = snapshot(folder, stems)
            record["notebooks"][job.name] = {"hash": job.hash, "status": "running", "started": now(),
                                             "before": sorted(before), "worker": worker}
            atomic_write_json(folder / UNIT_RECORD, record)
            start = time.monotonic()
            try:
                execute_notebook(notebooks[job.name], folder / f"{job.name}.ipynb", job.parameters, cwd=cwd,
                                 kernel=kernel, execution_timeout=execution_timeout,
                                 label=f"{unit.name} {job.name}" if cell_progress else None)
                status = "ok"
            except Exception as err:  # noqa: BLE001 - every failure is reported, the run goes on
                failure = failure_of(err, unit.name, job.name, folder / f"{job.name}.failed.ipynb")
                status = "failed"
            seconds = time.monotonic() - start
            after = snapshot(folder, stems)
            entry = {"hash": job.hash, "status": status, "seconds": round(seconds, 2), "finished": now(),
                     "parameters": to_jsonable(job.parameters), "worker": worker,
                     "new_outputs": sorted(set(after) - set(before)),
                     "changed_outputs": sorted(p for p in before if p in after and after[p] != before[p])}
            if failure:
                entry["error"] = dataclasses.asdict(failure)
            record["notebooks"][job.name] = entry
            record["complete"] = failure is None and not pending_notebooks(unit, record)
            atomic_write_json(folder / UNIT_RECORD, record)
            done.append((job.name, status, seconds))
            if on_notebook:
                on_notebook(unit.name, job.name, status, seconds)
            if failure:
                break
        if not pending:
            record["complete"] = True
            atomic_write_json(folder / UNIT_RECORD, record)
    return UnitResult(unit=unit.name, notebooks=done, failure=failure, worker=worker)
