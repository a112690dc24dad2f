"""Which weights each unit runs: model specs, suite revisions and weight fingerprints.

Runs after the suite build (suite models need their ``suite.json``). A suite revision ``final``,
``mid``, ``early`` or ``stepN`` becomes a saved step (:func:`resolve_suite_revision`), so
``tiny-m@mid`` runs as ``tiny-m@step500``; a hub model keeps its revision; a local folder is
its resolved path. The *fingerprint* names the weights in the resume hashes: ``suite:<hash of
suite.json>:step<N>``, ``hub:<name@revision>``, ``local:<hash of the files' names, sizes and
mtimes>``. :func:`resolve_revisions` also chains the resume hashes of every unit's notebooks
(:func:`taskspace_utils.pipeline.resume.notebook_hash`).
"""

from __future__ import annotations

import re
from pathlib import Path

from ..results import config_hash, read_json
from .plan import Plan
from .profiles import PlanError
from .resume import notebook_hash

__all__ = ["resolve_suite_revision", "resolve_revisions"]


def resolve_suite_revision(revision: str | None, record: dict) -> int:
    """The saved step of a suite size that ``revision`` names, from its ``suite.json`` record.

    ``final`` (or ``None``): ``final_step``; ``mid``: the saved step nearest ``final_step / 2``;
    ``early``: the saved step nearest ``final_step / 16``; ``stepN``: ``N``, which must be saved.
    Ties go to the smaller step. E.g. steps ``[0, 1, 4, 16, 64, 256, 500, 1000, 1500]``: final
    1500, mid 500 (750 is 250 from both 500 and 1000), early 64 (nearest 93.75).
    """
    steps = sorted(int(s) for s in record["steps"])
    final = int(record["final_step"])
    if revision in (None, "final"):
        return final
    if revision in ("mid", "early"):
        target = final / (2 if revision == "mid" else 16)
        return min(steps, key=lambda s: (abs(s - target), s))
    match = re.fullmatch(r"step(\d+)", str(revision))
    if not match:
        raise PlanError(f"suite revision {revision!r}: expected stepN, final, mid or early")
    step = int(match.group(1))
    if step not in steps:
        raise PlanError(f"suite model {record.get('size', '')!r} has no checkpoint at step {step}; saved steps: {steps}")
    return step


def _fingerprint_local(folder: Path) -> str:
    files = sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
                   for p in folder.rglob("*") if p.is_file())
    return "local:" + config_hash(files)


def resolve_revisions(plan: Plan) -> Plan:
    """Fix every unit's model spec and weights fingerprint, and the hashes of its notebooks.

    Suite models need their size built (``suite.json``); symbolic revisions become ``stepN``
    (:func:`resolve_suite_revision`), and units that resolve to the same folder are merged (noted
    in ``plan.notes``). Hashes chain through all per-unit notebooks, selected or not.
    """
    resolved, seen = [], set()
    for unit in plan.units:
        if unit.kind == "suite":
            record_path = plan.suite.suite_dir / unit.model / "suite.json"
            if not record_path.exists():
                raise PlanError(f"suite model {unit.model!r} is not built in {plan.suite.suite_dir}")
            record = read_json(record_path)
            step = resolve_suite_revision(unit.revision, record)
            unit.spec = f"{unit.model}@step{step}"
            unit.fingerprint = f"suite:{config_hash(record)}:step{step}"
        elif unit.kind == "hub":
            unit.spec = f"{unit.model}@{unit.revision}" if unit.revision else unit.model
            unit.fingerprint = f"hub:{unit.spec}"
        else:
            folder = Path(unit.model).expanduser().resolve()
            unit.spec = str(folder)
            unit.fingerprint = _fingerprint_local(folder)
        if unit.name in seen:
            plan.notes.append(f"{unit.model}@{unit.revision} is {unit.name}, already planned: run once")
            continue
        seen.add(unit.name)
        previous = ""
        by_name = {job.name: job for job in unit.jobs}
        for stem in plan.unit_notebooks:
            job = by_name.get(stem)
            previous = notebook_hash(stem, plan.notebooks[stem], unit.chain.get(stem, {}), unit.fingerprint, previous)
            if job:
                job.hash = previous
                job.parameters = {**job.parameters, "model": unit.spec, "out_dir": str(unit.out_dir)}
        resolved.append(unit)
    plan.units = resolved
    return plan
