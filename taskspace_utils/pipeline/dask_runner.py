"""The Dask executor: one task per unit, with progress as it happens.

Each unit runs as one task, :func:`execute_unit_reporting` (:func:`~.execution.execute_unit` that
also publishes Dask events on the topic :data:`TOPIC` from the worker: ``start`` before the unit's
first notebook, ``notebook`` after each). The runner subscribes to that topic and to the
scheduler's ``all`` topic, so it prints

- a progress line per notebook as soon as it finishes (not when the whole unit returns);
- ``dask: worker <address> lost while running <units>; rescheduled`` when the scheduler removes a
  worker that was processing units (the scheduler retries them elsewhere);
- ``dask: <unit> started on <worker address> (<host>:<pid>)`` as a unit starts, and ``restarted
  on ...`` when it starts a second time.

A notebook is counted once (:class:`~.runner.Progress` ignores repeats), so a result that arrives
before its events counts its notebooks then, and the late events are ignored.
"""

from __future__ import annotations

import time
from typing import Callable

from .execution import Failure, RunSummary, UnitResult, execute_unit
from .plan import Plan
from .profiles import PlanError

__all__ = ["TOPIC", "execute_unit_reporting", "run_dask"]

TOPIC = "taskspace-progress"


def _publish(message: dict) -> None:
    from distributed import get_worker

    try:
        get_worker().log_event(TOPIC, message)
    except ValueError:  # not inside a worker (called directly): nothing to publish to
        pass


def execute_unit_reporting(unit, notebooks, **kwargs) -> UnitResult:
    """:func:`~.execution.execute_unit` on a Dask worker, publishing its start and each finished
    notebook as events on :data:`TOPIC` (cell progress goes to the worker's own log)."""
    return execute_unit(
        unit, notebooks, cell_progress=True, **kwargs,
        on_start=lambda name, process: _publish({"event": "start", "unit": name, "process": process}),
        on_notebook=lambda name, stem, status, seconds: _publish(
            {"event": "notebook", "unit": name, "stem": stem, "status": status, "seconds": seconds}))


def run_dask(plan: Plan, units, fail_fast: bool, progress, summary: RunSummary, scheduler: str | None, workers: int,
             collect: Callable[[UnitResult, RunSummary, Callable[[str], None]], None]) -> None:
    """Execute ``units`` as one Dask task each, on ``scheduler`` or a ``LocalCluster`` of ``workers``;
    ``collect(result, summary, log)`` records each unit's outcome."""
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise PlanError("--executor dask needs the 'distributed' package: pip install 'dask[distributed]'") from None
    log = progress.log
    cluster = None
    if scheduler:
        client = Client(scheduler)
    else:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(cluster)
    starts: dict[str, str] = {}
    keys: dict[str, str] = {}

    def on_progress(event) -> None:
        message = event[1]
        if message.get("event") == "start":  # Dask adds the worker's address as "worker"
            unit, worker = message["unit"], f"{message.get('worker', '?')} ({message['process']})"
            if unit in starts:
                log(f"dask: {unit} restarted on {worker}, was on {starts[unit]}; finished notebooks are kept")
            else:
                log(f"dask: {unit} started on {worker}")
            starts[unit] = worker
        elif message.get("event") == "notebook":
            progress.finished(message["unit"], message["stem"], message["status"], float(message["seconds"]))

    def on_cluster(event) -> None:
        message = event[1]
        if message.get("action") != "remove-worker":
            return
        lost = sorted(keys[str(k)] for k in message.get("processing-tasks", {}) if str(k) in keys)
        if lost:
            log(f"dask: worker {message.get('worker', '?')} lost while running {', '.join(lost)}; "
                "the scheduler reschedules them")
        elif not message.get("expected"):
            log(f"dask: worker {message.get('worker', '?')} lost (no unit was running on it)")

    try:
        client.subscribe_topic(TOPIC, on_progress)
        client.subscribe_topic("all", on_cluster)
        futures = {}
        for unit in units:
            key = f"unit-{unit.name}-{time.time_ns()}"
            keys[key] = unit.name
            future = client.submit(execute_unit_reporting, unit, plan.notebooks, cwd=plan.notebooks_dir,
                                   kernel=plan.kernel, execution_timeout=plan.execution_timeout, env=plan.env,
                                   pure=False, key=key)
            futures[future] = unit
        for future in as_completed(list(futures)):
            unit = futures[future]
            try:
                result = future.result()
            except Exception as err:  # noqa: BLE001 - a worker died too often or could not run the task
                result = UnitResult(unit.name, [], Failure(unit.name, "<worker>", None, type(err).__name__, str(err)), "")
            for stem, status, seconds in result.notebooks:  # those whose events have not arrived yet
                progress.finished(result.unit, stem, status, seconds)
            collect(result, summary, log)
            if result.failure and fail_fast:
                for other in futures:
                    other.cancel()
                return
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
