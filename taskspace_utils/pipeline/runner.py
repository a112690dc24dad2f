"""Running a plan: suite build, pending units on a local or Dask executor, progress, comparison.

:func:`run` builds the missing suite sizes (``00_*`` into the run folder), fixes the units'
revisions and hashes, writes ``<run>/plan.json``, skips the complete units, executes the
others with :func:`~taskspace_utils.pipeline.execution.execute_unit` (``executor="local"``: one
after another in this process; ``"dask"``: one task per unit on a Dask cluster), and finally the
comparison (:func:`~taskspace_utils.pipeline.report.run_comparison`).

Progress is one line per finished notebook (:class:`Progress`, counted and timed by tqdm; under
Dask as each notebook finishes on its worker, :mod:`.dask_runner`)::

    [k/N] <unit> <notebook> <status> <its time> | elapsed <since the start> | eta <remaining>

Times are tqdm's ``[h:]mm:ss``. The estimate of the remaining time is tqdm's: the notebooks still
to run times the mean wall time per finished notebook so far (``smoothing=0``), so parallel Dask
workers are accounted for; ``?`` before the first one finishes. A failed notebook drops the rest
of its unit from the count (they will not run). While a notebook runs, its cells are shown
(``<unit> <notebook>: cell i/n, elapsed``; one updating line on a terminal, else a line at least
every 30 s: :class:`~.progress.CellReporter`), and the suite build streams the kernel's output
(``suite | pre-train tiny-m: step 300/1000, loss 4.1, 2,400 tokens/s, eta 05:12`` every 30 s).
"""

from __future__ import annotations

import io
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from ..results import atomic_write_json
from .dask_runner import run_dask
from .execution import (
    Failure,
    RunSummary,
    UnitResult,
    environment,
    execute_notebook,
    execute_unit,
    failure_of,
    now,
)
from .plan import Plan
from .preflight import check_before_run
from .profiles import PlanError
from .report import run_comparison
from .resume import pending_notebooks
from .revisions import resolve_revisions

__all__ = ["Progress", "run"]


class Progress:
    """One log line per finished notebook (see the module docstring), counted by a tqdm meter.

    ``remaining``: the ``(unit, stem)`` pairs to run, in order. The tqdm instance draws nothing
    (its output goes to a discarded buffer); each line is its meter, passed to ``log``. A notebook
    is counted once (a repeated report is ignored); calls may come from several threads.
    """

    BAR_FORMAT = "[{n_fmt}/{total_fmt}] {desc} | elapsed {elapsed} | eta {remaining}"

    def __init__(self, remaining: list[tuple[str, str]], log: Callable[[str], None]):
        self.remaining = list(remaining)
        self.log = log
        self.bar = tqdm(total=len(remaining), bar_format=self.BAR_FORMAT, smoothing=0, mininterval=0,
                        file=io.StringIO(), leave=False)
        self.counted: set[tuple[str, str]] = set()
        self.lock = threading.Lock()

    def finished(self, unit: str, stem: str, status: str, seconds: float) -> None:
        """Count notebook ``stem`` of ``unit`` as done (``status`` ``ok`` or ``failed``, after
        ``seconds``) and log its line."""
        with self.lock:
            if (unit, stem) in self.counted:
                return
            self.counted.add((unit, stem))
            if (unit, stem) in self.remaining:
                self.remaining.remove((unit, stem))
            if status != "ok":  # the rest of a failed unit will not run
                dropped = [(u, s) for u, s in self.remaining if u == unit]
                self.remaining = [(u, s) for u, s in self.remaining if u != unit]
                self.bar.total -= len(dropped)
            self.bar.set_description_str(f"{unit} {stem} {status} {tqdm.format_interval(seconds)}", refresh=False)
            self.bar.update(1)
            self.log(str(self.bar))

    def close(self) -> None:
        self.bar.close()


def check_suite_settings(suite) -> None:
    """Refuse (:class:`PlanError`) a suite size recorded with other settings than the current code
    would build it with (e.g. an earlier step budget): it would count as built but is another
    model. Raised before any build or notebook, naming the settings and what to do."""
    from ..models import default_device
    from ..suite import default_config
    from ..suite.records import settings_differ

    device = suite.device or str(default_device())
    for size in suite.sizes:
        differ = settings_differ(size, suite.suite_dir, default_config(size, smoke=suite.smoke, device=device))
        if differ:
            raise PlanError(f"suite size {size} in {suite.suite_dir} was built with other settings than this code "
                            f"builds (differs in: {', '.join(differ)}); delete {suite.suite_dir / size} to rebuild "
                            "it, or set TASKSPACE_SUITE_DIR (or the profile's suite.dir) to another folder")


def _build_suite(plan: Plan, log: Callable[[str], None]) -> Failure | None:
    """Build the missing suite sizes: execute ``00_*`` into the run folder (or call
    :func:`taskspace_utils.suite.build_suite` when there is no such notebook), after
    :func:`check_suite_settings`."""
    suite = plan.suite
    check_suite_settings(suite)
    missing = suite.missing()
    if not missing:
        log(f"suite: {', '.join(suite.sizes)} built in {suite.suite_dir}")
        return None
    log(f"suite: building {', '.join(missing)} in {suite.suite_dir}")
    start = time.monotonic()
    try:
        if suite.job is not None:
            target = plan.run_dir / f"{suite.job.name}.ipynb"
            execute_notebook(plan.notebooks[suite.job.name], target, suite.job.parameters, cwd=plan.notebooks_dir,
                             kernel=plan.kernel, execution_timeout=plan.execution_timeout,
                             label=f"suite {suite.job.name}", on_output=lambda line: log(f"suite | {line}"))
        else:
            from ..suite import build_suite

            build_suite(missing, suite_dir=suite.suite_dir, smoke=suite.smoke, device=suite.device)
    except Exception as err:  # noqa: BLE001
        name = suite.job.name if suite.job else "build_suite"
        return failure_of(err, "suite", name, plan.run_dir / f"{name}.failed.ipynb")
    still = suite.missing()
    if still:
        return Failure("suite", suite.job.name if suite.job else "build_suite", None, "SuiteNotBuilt",
                       f"after the build, {', '.join(still)} has no suite.json in {suite.suite_dir}")
    log(f"suite: built in {tqdm.format_interval(time.monotonic() - start)}")
    return None


def _run_local(plan: Plan, units, fail_fast: bool, progress: Progress, summary: RunSummary) -> None:
    """Execute ``units`` one after another in this process."""
    for unit in units:
        result = execute_unit(unit, plan.notebooks, cwd=plan.notebooks_dir, kernel=plan.kernel,
                              execution_timeout=plan.execution_timeout, env=plan.env, on_notebook=progress.finished)
        _collect(result, summary, progress.log)
        if result.failure and fail_fast:
            return


def _collect(result: UnitResult, summary: RunSummary, log: Callable[[str], None]) -> None:
    summary.executed.append(result.unit)
    if result.failure:
        summary.failures.append(result.failure)
        log(f"FAILED {result.failure.describe()}")


def run(plan: Plan, *, executor: str = "local", scheduler: str | None = None, workers: int = 2,
        fail_fast: bool = False, log: Callable[[str], None] = print) -> RunSummary:
    """Execute ``plan``: suite build if needed, pending units, comparison; return a summary.

    ``executor="local"`` runs the units one after another in this process (one kernel at a
    time); ``"dask"`` submits one task per unit (:func:`~.execution.execute_unit`) to the Dask scheduler at
    ``scheduler`` or, without one, to a ``LocalCluster`` of ``workers`` single-threaded worker
    processes; the workers must see the run folder, the notebooks and the suite (a shared file
    system). Failures are reported and the other units go on unless ``fail_fast``. Before anything is
    written, :func:`~.preflight.check_before_run` raises :class:`PlanError` for a device or model
    this machine lacks (with a remote ``scheduler``: for a scheduler that does not answer).
    """
    if executor not in ("local", "dask"):
        raise PlanError(f"--executor {executor!r}: expected local or dask")
    for line in check_before_run(plan, executor, scheduler):
        log(f"run_all: {line}")
    summary = RunSummary()
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    with environment(plan.env):
        if plan.suite is not None:
            failure = _build_suite(plan, log)
            if failure:
                summary.failures.append(failure)
                log(f"FAILED {failure.describe()}")
                return summary
        resolve_revisions(plan)
        atomic_write_json(plan.run_dir / "plan.json", _plan_record(plan))
        todo = []
        for unit in plan.units:
            pending = pending_notebooks(unit)
            if pending:
                todo.append((unit, pending))
            else:
                summary.skipped.append(unit.name)
                log(f"[skip] {unit.name} complete")
        remaining = [(unit.name, stem) for unit, pending in todo for stem in pending]
        progress = Progress(remaining, log)
        units = [unit for unit, _ in todo]
        try:
            if units:
                if executor == "local":
                    _run_local(plan, units, fail_fast, progress, summary)
                else:
                    run_dask(plan, units, fail_fast, progress, summary, scheduler, workers, _collect)
        finally:
            progress.close()
        if summary.failures and fail_fast:
            return summary
        run_comparison(plan, summary, log)
    return summary


def code_version(folder) -> str | None:
    """``git describe --always --dirty`` of the repository holding ``folder`` (the commit, with
    ``-dirty`` when the working tree has changes); ``None`` outside a git checkout or without git."""
    try:
        done = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"], cwd=folder,
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def _plan_record(plan: Plan) -> dict:
    """The content of ``<run>/plan.json``: the command and code version that made the run, and the
    resolved units with their notebooks' hashes and parameters."""
    return {"profile": plan.profile, "written": now(), "notebooks_dir": str(plan.notebooks_dir),
            "command": " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).name, *sys.argv[1:]]),
            "commit": code_version(plan.notebooks_dir),
            "suite": None if plan.suite is None else {"sizes": plan.suite.sizes, "dir": str(plan.suite.suite_dir),
                                                      "smoke": plan.suite.smoke},
            "units": {u.name: {"model": u.spec, "requested": f"{u.model}@{u.revision}",
                               "notebooks": {j.name: {"hash": j.hash, "parameters": j.parameters} for j in u.jobs}}
                      for u in plan.units},
            "comparison": [j.name for j in plan.comparison]}
