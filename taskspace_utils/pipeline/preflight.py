"""Checks of a plan against the machine that runs it, before any build or notebook
(:func:`check_machine`): the devices the plan names exist here, and every hub or local model of a
unit can be loaded here (:func:`taskspace_utils.models.check_available`: a cached snapshot, or a
reachable hub that knows the name and revision). With a remote Dask scheduler the units run on its
workers' machines, so only the scheduler is checked here (:func:`check_scheduler`). Disk is only
warned about (:func:`disk_warning`): its estimate is rough.

Without them, ``--device cuda`` on a machine without a GPU failed inside the first kernel (or, with
suite models, as a suite "built with other settings", since a CUDA build trains longer), and a hub
model that is not cached, with no network, failed in cell 10 of its unit's first notebook after the
run folder and the unit's folder had been written; a scheduler address where none listens raised
distributed's traceback after 30 s, with ``plan.json`` written. The suite's own sizes are checked by
:func:`~.runner.check_suite_settings` (they may be built by the run itself).
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

from ..results import folder_bytes
from .plan import Plan
from .profiles import PlanError

__all__ = ["plan_devices", "check_device", "check_models", "check_machine", "check_scheduler", "disk_warning",
           "check_before_run"]


def plan_devices(plan: Plan) -> dict[str, str]:
    """``{device: where it is set}`` for every device a notebook or the suite build of ``plan`` is
    given (``None``, "pick CUDA when present", is left out)."""
    found: dict[str, str] = {}
    if plan.suite is not None and plan.suite.device:
        found.setdefault(str(plan.suite.device), "the suite build")
    jobs = [(unit.name, job) for unit in plan.units for job in unit.jobs] + [("run", job) for job in plan.comparison]
    for owner, job in jobs:
        device = job.parameters.get("device")
        if device:
            found.setdefault(str(device), f"notebook {job.name} of {owner}")
    return found


def check_device(device: str, where: str) -> None:
    """:class:`PlanError` unless ``device`` (``cpu``, ``cuda``, ``cuda:N``, ``mps``) exists here."""
    if str(device) == "cpu":  # no torch import: the dry run of a CPU plan stays light
        return
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}, no GPU visible"
            raise PlanError(f"device {device!r} ({where}): CUDA is not available on this machine (torch "
                            f"{torch.__version__}, {build}); use --device cpu, or run where a GPU is")
        if dev.index is not None and dev.index >= count:
            raise PlanError(f"device {device!r} ({where}): this machine has {count} CUDA device(s), "
                            f"cuda:0 to cuda:{count - 1}")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise PlanError(f"device {device!r} ({where}): Apple's MPS backend is not available on this machine")


def check_models(plan: Plan) -> None:
    """:class:`PlanError` naming the first unit whose hub or local model cannot be loaded here."""
    units = [unit for unit in plan.units if unit.kind != "suite"]
    if not units:  # no torch import (taskspace_utils.models) for a plan of suite models
        return
    from ..models import ModelNotAvailableError, check_available

    for unit in units:
        spec = f"{unit.model}@{unit.revision}" if unit.kind == "hub" and unit.revision else unit.model
        try:
            check_available(spec)
        except ModelNotAvailableError as err:
            raise PlanError(f"unit {unit.name}: {err}") from None


def check_machine(plan: Plan) -> None:
    """Devices, then models (:func:`check_device`, :func:`check_models`); the first problem raises."""
    for device, where in plan_devices(plan).items():
        check_device(device, where)
    check_models(plan)


def check_scheduler(address: str, timeout: float = 10.0) -> None:
    """:class:`PlanError` unless a TCP connection to the Dask scheduler at ``address`` (``tcp://`` or
    ``tls://``, or ``host:port``) opens within ``timeout`` seconds; other protocols are left to
    ``distributed``. A plain socket, since connecting a ``distributed.Client`` here would start the
    client machinery twice (the executor connects its own)."""
    from distributed.comm.addressing import get_address_host_port, parse_address

    scheme, _ = parse_address(address)
    if scheme not in ("tcp", "tls"):
        return
    try:
        host, port = get_address_host_port(address)
    except ValueError as err:
        raise PlanError(f"--scheduler {address!r}: expected tcp://host:port ({err})") from None
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as err:
        raise PlanError(f"--scheduler {address!r}: no Dask scheduler answers there ({err}); start one (`dask "
                        "scheduler`) or leave out --scheduler for a LocalCluster on this machine") from None


def disk_warning(plan: Plan) -> str | None:
    """A warning line when the run's estimated disk use exceeds the free space where it writes.

    The estimate is the dry run's (:func:`~.estimate.estimate_unit`, rough: a factor 2-3 either way),
    so it warns rather than refuses; what the run folder already holds counts as written (a resumed
    run needs only the rest). ``None`` when it fits or the sizes are unknown.
    """
    from .estimate import estimate_unit
    from .validate import source_tasks

    n_tasks = len(source_tasks(plan.data_source, "data"))
    needed = sum(size for unit in plan.units for _, size, _ in estimate_unit(unit, plan, n_tasks).values())
    written = folder_bytes(plan.run_dir)
    where = Path(plan.run_dir).resolve()
    while not where.exists():
        where = where.parent
    free = shutil.disk_usage(where).free
    if needed - written <= free:
        return None
    gb = 1e9
    return (f"disk: this run may write about {needed / gb:.1f} GB to {plan.run_dir} (rough estimate, a factor 2-3 either "
            f"way; {written / gb:.1f} GB there already) and {free / gb:.1f} GB are free on its file system; a notebook "
            "stops with an error when it is full (rerun to resume): free space, choose another --out, or run fewer "
            "--tasks (02.store=full, if set, is the largest part)")


def check_before_run(plan: Plan, executor: str = "local", scheduler: str | None = None) -> list[str]:
    """What :func:`~.runner.run` and the dry run check before any work: :func:`check_machine` when the
    kernels run on this machine (the local executor, or Dask without ``scheduler``), else
    :func:`check_scheduler`; :class:`PlanError` on the first problem. Returns the lines to show:
    that the workers check their own machines, and the :func:`disk_warning`."""
    lines = []
    if executor == "local" or scheduler is None:
        check_machine(plan)
    else:
        check_scheduler(scheduler)
        lines.append(f"devices and models are checked by the notebooks on the workers of {scheduler}, not here")
    warning = disk_warning(plan)
    return lines + ([f"warning: {warning}"] if warning else [])
