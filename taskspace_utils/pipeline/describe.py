"""The dry run: the text ``run_all.py --dry-run`` prints for a plan, without executing anything.

It lists the notebooks with their roles, the suite state, every unit with what is pending (suite
units are resolved when their sizes are built, so their hashes can be compared with the unit
records), the parameters each notebook gets, the comparison, the planning notes, the checks made
while planning (:mod:`.validate`, :mod:`.parameters`) and an estimate of time and disk per unit
(:mod:`.estimate`).
"""

from __future__ import annotations

import json

from ..results import to_jsonable
from .estimate import describe_estimate
from .notebooks import FIRST_COMPARISON_NUMBER, SUITE_NUMBER, stage_number
from .plan import Plan
from .report import REPORT
from .resume import pending_notebooks
from .revisions import resolve_revisions
from .validate import source_tasks

__all__ = ["describe_plan"]


def describe_plan(plan: Plan) -> str:
    """The text ``--dry-run`` prints: notebooks, suite state, units with what is pending, and the
    parameters of each notebook (``model``/``out_dir`` differ per unit and are shown as ``<unit>``).

    Suite units are resolved when their sizes are built; otherwise their revisions are shown as
    requested (resolved after the build).
    """
    lines = [f"profile {plan.profile}: {plan.description}".rstrip(": "), f"run folder: {plan.run_dir}",
             f"notebooks ({plan.notebooks_dir}):"]
    for stem in plan.notebooks:
        number = stage_number(stem)
        role = ("suite build" if number == SUITE_NUMBER else
                "comparison" if number >= FIRST_COMPARISON_NUMBER else "per unit")
        lines.append(f"  {stem} ({role})")
    if not plan.notebooks:
        lines.append("  (none)")
    if plan.suite is not None:
        missing = plan.suite.missing()
        how = f"by {plan.suite.job.name}" if plan.suite.job else "by suite.build_suite (no 00_* notebook)"
        state = (f"to build {', '.join(missing)} {how}" + (" (smoke configs)" if plan.suite.smoke else "")
                 if missing else "all built")
        lines.append(f"suite: {', '.join(plan.suite.sizes)} in {plan.suite.suite_dir}: {state}")
    resolvable = plan.suite is None or not plan.suite.missing()
    if resolvable:
        resolve_revisions(plan)
    lines.append(f"units ({len(plan.units)}):")
    for unit in plan.units:
        everything = [j.name for j in unit.jobs] == list(plan.unit_notebooks)
        every = "all" if everything else "all of " + ", ".join(j.name[:2] for j in unit.jobs)
        if unit.resolved:
            pending = pending_notebooks(unit)
            state = ("complete" if not pending else
                     f"to run: {', '.join(pending)}" if len(pending) < len(unit.jobs) else f"to run: {every}")
            if not unit.jobs:
                state = "no notebook selected"
            lines.append(f"  {unit.name:<36} {state}   (model {unit.spec})")
        else:
            lines.append(f"  {unit.name:<36} to run: {every}   (revision resolved after the suite build)")
    lines.append("parameters:")
    if plan.suite is not None and plan.suite.job is not None:
        lines.append(f"  {plan.suite.job.name}: {json.dumps(to_jsonable(plan.suite.job.parameters))}")
    jobs = {j.name: j for u in plan.units for j in u.jobs}
    for job in [*jobs.values(), *plan.comparison]:
        shown = {k: ("<unit>" if k in ("model", "out_dir") else "<run>" if k in ("run_dir", "units") else v)
                 for k, v in job.parameters.items()}
        lines.append(f"  {job.name}: {json.dumps(to_jsonable(shown))}")
        if plan.dropped.get(job.name):
            lines.append(f"    (not declared by the notebook, not passed: {', '.join(plan.dropped[job.name])})")
    if not plan.comparison:
        lines.append("comparison: none (no 05_* notebook, or not selected): no report")
    else:
        lines.append(f"comparison: {', '.join(j.name for j in plan.comparison)} over all complete units -> "
                     f"{plan.run_dir / REPORT}")
    lines += [f"note: {n}" for n in plan.notes]
    lines.append("checks passed:")
    lines += [f"  {c}" for c in plan.checks]
    lines += describe_estimate(plan, len(source_tasks(plan.data_source, "data")))
    return "\n".join(lines)
