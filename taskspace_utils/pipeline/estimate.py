"""A rough estimate of a plan's time and disk per unit, for ``run_all.py --dry-run``.

How it is made. A notebook's time is what it took in a measured smoke run (start-up: kernel,
imports, model load, figures) plus work proportional to ``parameters x pair passes``
(:func:`work`) beyond that run's::

    seconds(N) = ref_seconds(N) + RATE_S * (parameters * work(N) - ref_parameters * ref_work(N))

The reference (:data:`REFERENCE`) is the ``unit.json`` record of ``tiny-m@step12`` in a smoke run
(``run_all.py --profile smoke``, 2026-11-28, 2-core machine at load ~3.5; 44,672 parameters, 3
tasks, the notebooks' smoke caps). :data:`RATE_S` is calibrated on the quick profile: 12.7 min for
its 01, 02 and 04 on six units and 03 on one (16.6 min measured with 03 on every unit, less the
3.9 min 03 took on five of them; ``profiles.yaml``; idle 2-core machine). Pair passes per notebook: 01 scores ``tasks x pairs scored``;
02 back-propagates ``tasks x n_train`` (x3: forward + backward); 03 tunes ``targets x 4 controls x
steps x batch_size`` (x3) and evaluates ``watched x n_test x 4``; 04 tunes ``tasks x steps x
batch_size`` (x3) and evaluates ``tasks^2 x n_test``, times the probes (1 + step-0 baseline +
second seed). Disk: the executed notebook and figures as in the reference, plus 02's task
differentials (``8 bytes x top_k x parameters x tasks`` for the default summary files; ``4 bytes x
parameters x tasks`` with ``store="full"``) and 04's sparse deltas (``12 bytes x k x
parameters x tasks`` per probe). A notebook already recorded in the unit's ``unit.json`` with its
time is shown as measured. Expect a factor of 2-3 either way (machines differ 1.5x; the reference
is dominated by start-up); the suite build is estimated from the measured seconds per step.
"""

from __future__ import annotations

import re

from tqdm import tqdm

from ..layout import SUITE_NAME_PATTERN
from .plan import Plan, Unit
from .resume import UNIT_RECORD, read_record

__all__ = ["RATE_S", "REFERENCE", "SUITE_PARAMETERS", "work", "estimate_unit", "describe_estimate"]

#: Seconds per parameter x pair pass (see the module docstring).
RATE_S = 2.16e-10
#: ``{stem prefix: (seconds, bytes written incl. the executed copy)}`` of the reference unit.
REFERENCE = {"01": (7.48, 155_210), "02": (12.06, 1_451_649), "03": (21.59, 332_498), "04": (12.06, 1_029_061),
             "05": (6.94, 901_433)}
#: The reference's model size and parameters (smoke caps applied, see :func:`work`).
REFERENCE_PARAMETERS = 44_672
REFERENCE_PARAMS = {"tasks": 3, "smoke": True}
#: Parameters of the suite sizes before they are built (``suite/config.py``; smoke configs 44,672).
SUITE_PARAMETERS = {"tiny-s": 2_900_000, "tiny-m": 4_900_000, "tiny-l": 8_100_000}
#: Measured seconds per training step of the suite sizes on 2 idle cores (``suite/config.py``: the
#: earlier build, checkpoints included), and the steps every size and seed trains
#: (``suite.config.SUITE_STEPS``; kept here as a number so that planning imports no torch).
SUITE_STEP_S = {"tiny-s": (0.243, 1000), "tiny-m": (0.314, 1000), "tiny-l": (0.462, 1000)}


def _base_size(model: str) -> str:
    """``tiny-s-seed2`` -> ``tiny-s`` (an extra seed has its size's shape and budget)."""
    match = SUITE_NAME_PATTERN.match(model)
    return match["base"] if match else model


def _count(params: dict, name: str, default: int, smoke_cap: int | None = None) -> int:
    value = params.get(name, default)
    value = default if value is None else int(value)
    return min(value, smoke_cap) if params.get("smoke") and smoke_cap is not None else value


def work(stem: str, params: dict, n_tasks: int) -> float:
    """Pair passes of notebook ``stem`` under ``params`` with ``n_tasks`` tasks (module docstring)."""
    tasks = len(params["tasks"]) if isinstance(params.get("tasks"), list) else n_tasks
    if stem.startswith("01"):
        return tasks * _count(params, "score_pairs_per_task", 1000, 20)
    if stem.startswith("02"):
        return 3 * tasks * _count(params, "n_train", 100, 4)
    if stem.startswith("03"):
        targets = len(params["tasks"]) if isinstance(params.get("tasks"), list) else 5
        watched = targets if params.get("smoke") else (len(params["watch_tasks"]) if params.get("watch_tasks")
                                                       else n_tasks)
        return 4 * (3 * targets * _count(params, "steps", 50) * _count(params, "batch_size", 16)
                    + watched * _count(params, "n_test", 100, 5))
    if stem.startswith("04"):
        probes = 1 + (params.get("baseline_model", "step0") is not None) + (params.get("seed2", 1) is not None)
        steps, batch = _count(params, "steps", 50, 2), _count(params, "batch_size", 16)  # FTGDConfig defaults
        return probes * (3 * tasks * steps * batch + tasks * tasks * _count(params, "n_test", 100, 4))
    return 1.0


def model_parameters(unit: Unit, plan: Plan) -> int | None:
    """Parameters of a unit's model: the built suite record, the suite config, or the hub name's
    size suffix (``pythia-160m``); ``None`` when unknown."""
    if unit.kind == "suite" and plan.suite is not None:
        from ..results import read_json

        record = plan.suite.suite_dir / unit.model / "suite.json"
        if record.exists() and read_json(record).get("params"):
            return int(read_json(record)["params"])
        return REFERENCE_PARAMETERS if plan.suite.smoke else SUITE_PARAMETERS.get(_base_size(unit.model))
    match = re.search(r"-(\d+(?:\.\d+)?)([mb])(?:-|$)", unit.model.lower())
    if match:
        return int(float(match.group(1)) * (1e6 if match.group(2) == "m" else 1e9))
    return None


def estimate_unit(unit: Unit, plan: Plan, n_tasks: int) -> dict[str, tuple[float, int, bool]]:
    """``{stem: (seconds, bytes, measured)}`` of the unit's notebooks (empty when the size is unknown);
    ``n_tasks``: the data's tasks, unless the unit's first notebook names its tasks."""
    n_params = model_parameters(unit, plan)
    recorded = read_record(unit.out_dir, UNIT_RECORD).get("notebooks", {}) if unit.resolved else {}
    first = unit.chain.get(next(iter(unit.chain), ""), {}) if unit.chain else {}
    if isinstance(first.get("tasks"), list):  # later notebooks read the tasks 01 saved
        n_tasks = len(first["tasks"])
    out = {}
    for job in unit.jobs:
        entry = recorded.get(job.name, {})
        ref_seconds, ref_bytes = REFERENCE.get(job.name[:2], (REFERENCE["05"][0], 0))
        if entry.get("seconds"):
            out[job.name] = (float(entry["seconds"]), ref_bytes, True)
            continue
        if n_params is None:
            continue
        extra = (n_params * work(job.name, job.parameters, n_tasks)
                 - REFERENCE_PARAMETERS * work(job.name, REFERENCE_PARAMS, 3))
        seconds = ref_seconds + RATE_S * max(extra, 0.0)
        tasks = len(job.parameters["tasks"]) if isinstance(job.parameters.get("tasks"), list) else n_tasks
        size = ref_bytes
        if job.name.startswith("02"):  # the top_k (default k) entries of each D_t: value + int32 index
            top_k = float(job.parameters.get("top_k") or job.parameters.get("k", 0.01))
            full = job.parameters.get("store", "summary") == "full"
            size += int((4 * n_params if full else 8 * top_k * n_params) * tasks)
        if job.name.startswith("04"):
            probes = 1 + (job.parameters.get("baseline_model", "step0") is not None) + \
                (job.parameters.get("seed2", 1) is not None)
            size += int(12 * float(job.parameters.get("k", 0.01)) * n_params * tasks * probes)
        out[job.name] = (seconds, size, False)
    return out


def _bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def describe_estimate(plan: Plan, n_tasks: int) -> list[str]:
    """The dry run's estimate lines: the suite build, one line per unit, the total."""
    device = str(plan.units[0].jobs[0].parameters.get("device") or "") if plan.units and plan.units[0].jobs else ""
    where = "; CPU times: a GPU run takes far less" if device.startswith("cuda") else ""
    lines, total_s, total_b = [f"estimate (rough, see taskspace_utils.pipeline.estimate; a factor 2-3 either way{where}):"], 0.0, 0
    if plan.suite is not None and plan.suite.missing():
        seconds = 25.0 if plan.suite.smoke else sum(
            rate * steps for rate, steps in (SUITE_STEP_S.get(_base_size(s), (0.5, 1000)) for s in plan.suite.missing()))
        total_s += seconds
        lines.append(f"  suite build ({', '.join(plan.suite.missing())}): {tqdm.format_interval(seconds)}")
    for unit in plan.units:
        per = estimate_unit(unit, plan, n_tasks)
        if len(per) < len(unit.jobs):
            lines.append(f"  {unit.name:<36} unknown (model size unknown)")
            continue
        seconds, size = sum(v[0] for v in per.values()), sum(v[1] for v in per.values())
        total_s, total_b = total_s + seconds, total_b + size
        shown = ", ".join(f"{s[:2]} {tqdm.format_interval(v[0])}{'*' if v[2] else ''}" for s, v in per.items())
        lines.append(f"  {unit.name:<36} {tqdm.format_interval(seconds)}, {_bytes(size)}   ({shown})")
    if plan.comparison:
        seconds, size = REFERENCE["05"]
        total_s, total_b = total_s + seconds * len(plan.comparison), total_b + size
    lines.append(f"  total: {tqdm.format_interval(total_s)}, {_bytes(total_b)} (* measured in this run folder)")
    return lines
