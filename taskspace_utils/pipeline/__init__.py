"""Batch reruns of the notebooks with papermill: plans, resumable units, local and Dask executors.

``run_all.py`` is a thin command line over this package. A *run* executes the numbered notebooks
of ``notebooks/`` headlessly for every model x revision of a *profile* (``profiles.yaml``):

=====================  ====================================================================
``00_*``               the offline-suite build: once per run, only when a suite model of the
                       profile is not built yet (executed into ``<run>/00_*.ipynb``)
``01_*`` ... ``04_*``  per *unit* (one model at one revision), in order, into
                       ``<run>/<unit>/``; the unit folder is the notebooks' ``out_dir``
``05_*`` and above     once over all complete units (``run_dir``, ``units``); the first one
                       is rendered to ``<run>/report.html`` with nbconvert
=====================  ====================================================================

Only notebooks that exist are run (:func:`discover_notebooks`), so a run works with fewer. A
rerun resumes: finished notebooks with the same resume hash are skipped, a changed parameter
reruns the notebooks it affects (:mod:`.resume`).

Modules, in the order of a run
------------------------------
- :mod:`.profiles`: the profile file and the command-line :class:`Overrides` (:func:`load_profiles`,
  :func:`parse_set`; :class:`PlanError`).
- :mod:`.notebooks`: the notebooks folder (:func:`discover_notebooks`, :func:`declared_parameters`).
- :mod:`.plan`: profile + overrides -> :class:`Plan` of :class:`Unit` s (:func:`build_plan`).
- :mod:`.preflight`: the plan against this machine, before any work (:func:`check_before_run`: its
  devices exist, its hub and local models can be loaded, or a remote scheduler answers; disk).
- :mod:`.revisions`: model specs, suite revisions, weight fingerprints (:func:`resolve_revisions`,
  :func:`resolve_suite_revision`).
- :mod:`.resume`: resume hashes, ``unit.json``, :func:`pending_notebooks`, cleaning changed outputs.
- :mod:`.execution`: :func:`execute_notebook`, :func:`execute_unit` (the task a Dask worker runs).
- :mod:`.report`: the comparison notebooks over the complete units and the HTML report.
- :mod:`.runner`: :func:`run` (suite build, units on the local or Dask executor, progress lines,
  comparison) -> :class:`RunSummary`.
- :mod:`.describe`: :func:`describe_plan`, the text of ``--dry-run``.

Around them: :mod:`.parameters` (what each notebook parameter accepts: :data:`RULES`),
:mod:`.validate` (model specs, data sources and task names, checked while planning, with "did you
mean"), :mod:`.estimate` (time and disk per unit for the dry run), :mod:`.progress` (cell progress,
streamed kernel output, IPC kernels) and :mod:`.dask_runner` (the Dask executor's progress events).
"""

from __future__ import annotations

from .describe import describe_plan
from .execution import Failure, RunSummary, UnitResult, execute_notebook, execute_unit
from .estimate import describe_estimate
from .notebooks import (
    FIRST_COMPARISON_NUMBER,
    NOTEBOOK_PATTERN,
    SUITE_NUMBER,
    declared_parameters,
    discover_notebooks,
)
from .parameters import RULES, check_value
from .plan import RUNNER_PARAMETERS, NotebookJob, Plan, SuiteBuild, Unit, build_plan
from .preflight import check_before_run, check_machine, check_scheduler, disk_warning
from .profiles import SYMBOLIC_REVISIONS, Overrides, PlanError, load_profiles, parse_set
from .report import REPORT
from .resume import RUN_RECORD, UNIT_RECORD, pending_notebooks
from .revisions import resolve_revisions, resolve_suite_revision
from .runner import run
from .validate import did_you_mean, model_kind, source_tasks

__all__ = [
    "PlanError", "Overrides", "NotebookJob", "Unit", "SuiteBuild", "Plan", "Failure", "UnitResult", "RunSummary",
    "discover_notebooks", "declared_parameters", "load_profiles", "parse_set", "build_plan", "resolve_revisions",
    "resolve_suite_revision", "pending_notebooks", "describe_plan", "execute_notebook", "execute_unit", "run",
    "NOTEBOOK_PATTERN", "SUITE_NUMBER", "FIRST_COMPARISON_NUMBER", "RUNNER_PARAMETERS", "SYMBOLIC_REVISIONS",
    "UNIT_RECORD", "RUN_RECORD", "REPORT", "RULES", "check_value", "did_you_mean", "model_kind", "source_tasks",
    "describe_estimate", "check_machine", "check_scheduler", "disk_warning",
    "check_before_run",
]
