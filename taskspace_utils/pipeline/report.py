"""The run-level comparison: the ``05_*`` (and later) notebooks over all complete units, and the report.

After the units, each run-level notebook is executed once into ``<run>/<name>.ipynb`` with
``run_dir`` and ``units`` (the complete units, in plan order) and kept there as the interactive
view. After the first one, the report ``<run>/report.html`` (:data:`REPORT`) is written by
:func:`taskspace_utils.reporting.write_report` from the tables that notebook wrote to
``<run>/comparison/`` (a page without code, not a converted notebook); the later notebooks are
rendered to ``<run>/<name>.html`` with nbconvert. Each notebook's resume hash
(:func:`taskspace_utils.pipeline.resume.comparison_hash`) and status are kept in ``<run>/run.json``:
an up-to-date comparison is not executed again.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from ..results import atomic_write_json, atomic_write_text
from .execution import RunSummary, execute_notebook, failure_of, now
from .notebooks import FIRST_COMPARISON_NUMBER, stage_number
from .plan import Plan
from .resume import RUN_RECORD, comparison_hash, pending_notebooks, read_record

__all__ = ["REPORT", "run_comparison", "write_html"]

REPORT = "report.html"


def run_comparison(plan: Plan, summary: RunSummary, log: Callable[[str], None]) -> None:
    """Execute the run-level notebooks over the complete units; the report after the first one."""
    if not plan.comparison:
        absent = not any(stage_number(s) >= FIRST_COMPARISON_NUMBER for s in plan.notebooks)
        log("comparison: no 05_* notebook in " + str(plan.notebooks_dir) + ": skipped (no report)" if absent
            else "comparison: not selected (--notebooks)")
        return
    complete = [u for u in plan.units if not pending_notebooks(u)]
    if not complete:
        log("comparison: no complete unit: skipped")
        return
    record = read_record(plan.run_dir, RUN_RECORD)
    entries = record.setdefault("comparison", {})
    for index, job in enumerate(plan.comparison):
        job.parameters = {**job.parameters, "run_dir": str(plan.run_dir), "units": [u.name for u in complete]}
        unit_hashes = {u.name: u.jobs[-1].hash if u.jobs else u.fingerprint for u in complete}
        job.hash = comparison_hash(job.name, plan.notebooks[job.name], job.parameters, unit_hashes)
        target = plan.run_dir / f"{job.name}.ipynb"
        html = plan.run_dir / (REPORT if index == 0 else f"{job.name}.html")
        entry = entries.get(job.name, {})
        if entry.get("hash") == job.hash and entry.get("status") == "ok" and target.exists() and html.exists():
            log(f"comparison: {job.name} up to date (units: {len(complete)})")
            summary.report = html if index == 0 else summary.report
            continue
        start = time.monotonic()
        try:
            execute_notebook(plan.notebooks[job.name], target, job.parameters, cwd=plan.notebooks_dir,
                             kernel=plan.kernel, execution_timeout=plan.execution_timeout,
                             label=f"comparison {job.name}")
            if index == 0:
                from ..reporting import write_report  # matplotlib and scipy only when a report is written

                log(f"comparison: {job.name} executed; writing the report")
                write_report(plan.run_dir, units=[u.name for u in complete], path=html)
            else:
                write_html(target, html)
        except Exception as err:  # noqa: BLE001
            failure = failure_of(err, "comparison", job.name, plan.run_dir / f"{job.name}.failed.ipynb")
            summary.failures.append(failure)
            entries[job.name] = {"hash": job.hash, "status": "failed", "finished": now(),
                                 "error": dataclasses.asdict(failure)}
            atomic_write_json(plan.run_dir / RUN_RECORD, record)
            log(f"FAILED {failure.describe()}")
            continue
        entries[job.name] = {"hash": job.hash, "status": "ok", "finished": now(), "units": list(unit_hashes),
                             "seconds": round(time.monotonic() - start, 2)}
        atomic_write_json(plan.run_dir / RUN_RECORD, record)
        if index == 0:
            summary.report = html
        took = tqdm.format_interval(time.monotonic() - start)
        log(f"comparison: {job.name} ok {took} (units: {len(complete)}) -> {html}")


def write_html(notebook: Path, html: Path) -> None:
    """Render an executed notebook to a standalone HTML file (nbconvert), atomically."""
    import nbformat
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nbformat.read(str(notebook), as_version=4))
    atomic_write_text(html, body)
