"""The plan of a run: which notebooks run for which units, with which parameters.

:func:`build_plan` expands one profile (with command-line :class:`Overrides`) over the notebooks
found in a folder into a :class:`Plan`: the suite build (``00_*``, when a unit uses a suite
model), one :class:`Unit` per model x revision with its per-unit notebooks (``01_*`` ... ``04_*``)
and the run-level comparison (``05_*`` and above). Parameters of a notebook, later ones winning::

    defaults.params < profile.params < profile.notebooks[N] < --tasks/--device < suite.params (00 only)
        < --set all.* < --set N.*

filtered to the parameters the notebook declares and checked (:mod:`.parameters`: types and
ranges; task names against the data source, :mod:`.validate`), then the runner's own (:data:`RUNNER_PARAMETERS`:
``model``/``out_dir`` per unit, ``run_dir``/``units`` for the comparison). Suite revisions stay
symbolic until :func:`taskspace_utils.pipeline.revisions.resolve_revisions` (after the suite build).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..layout import SUITE_MODELS, SUITE_SEEDS, is_suite_model
from .kernel_env import kernel_environment
from .notebooks import (
    FIRST_COMPARISON_NUMBER,
    SUITE_NUMBER,
    declared_parameters,
    discover_notebooks,
    notebook_key,
    stage_number,
)
from .parameters import check_value
from .profiles import Overrides, PlanError, expand_models
from .validate import (
    SUITE_SIZES,
    check_tasks,
    did_you_mean,
    resolve_data_source,
    source_tasks,
    suite_root,
)

__all__ = ["RUNNER_PARAMETERS", "NotebookJob", "Unit", "SuiteBuild", "Plan", "build_plan"]

#: Parameters set by the runner itself (a profile cannot set them).
RUNNER_PARAMETERS = ("model", "out_dir", "run_dir", "units")


@dataclass
class NotebookJob:
    """One notebook to execute: file stem, papermill parameters, and the resume hash.

    ``parameters`` hold what is passed (filtered to what the notebook declares, runner
    parameters always included); ``hash`` is set by
    :func:`~taskspace_utils.pipeline.revisions.resolve_revisions` (per unit) or
    :func:`~taskspace_utils.pipeline.report.run_comparison` (comparison).
    """

    name: str
    parameters: dict
    hash: str = ""


@dataclass
class Unit:
    """One model at one revision: the per-unit notebooks run in order into ``run_dir / name``.

    Attributes
    ----------
    model: requested model name (suite size, hub name or local folder).
    kind: ``"suite"``, ``"hub"`` or ``"local"``.
    revision: requested revision, possibly symbolic (``final``, ``mid``, ``early``) or ``None``.
    jobs: the selected notebooks of the unit, in order (those executed).
    run_dir: the run folder.
    chain: parameters of *every* per-unit notebook, selected or not, ``{stem: parameters}``:
        the resume hashes chain through all of them, so ``--notebooks`` never changes a hash.
    spec: the model spec passed as ``model`` (``tiny-m@step500``); set once resolved.
    fingerprint: identity of the weights (hash of the suite record, hub revision or local files).
    """

    model: str
    kind: str
    revision: str | None
    jobs: list[NotebookJob]
    run_dir: Path
    chain: dict[str, dict] = field(default_factory=dict)
    spec: str = ""
    fingerprint: str = ""

    @property
    def resolved(self) -> bool:
        return bool(self.spec)

    @property
    def name(self) -> str:
        """Folder name: ``tiny-m@step500``, ``EleutherAI--pythia-160m@step3000``, ``folder``."""
        if self.kind == "local":
            base = Path(self.model).name
            return base
        base = self.model.replace("/", "--")
        revision = self.spec.rpartition("@")[2] if "@" in self.spec else self.revision
        return f"{base}@{revision}" if revision else base

    @property
    def out_dir(self) -> Path:
        return Path(self.run_dir) / self.name


@dataclass
class SuiteBuild:
    """The offline-suite sizes the units need and where they live.

    ``suite_dir`` is given to the kernels as ``TASKSPACE_SUITE_DIR``; ``job`` is the
    ``00_*`` notebook (``None``: :func:`taskspace_utils.suite.build_suite` is called instead).
    """

    sizes: list[str]
    suite_dir: Path
    smoke: bool
    device: str | None
    job: NotebookJob | None

    def missing(self) -> list[str]:
        """Sizes without ``suite.json`` (not built or interrupted)."""
        return [s for s in self.sizes if not (self.suite_dir / s / "suite.json").exists()]


@dataclass
class Plan:
    """Everything a run executes, built by :func:`build_plan` from a profile and overrides.

    Attributes
    ----------
    profile, description: the profile's name and description.
    run_dir: output folder; notebooks_dir: folder of the source notebooks (kernels' cwd).
    notebooks: discovered notebooks, ``{stem: path}``.
    suite: the suite build, or ``None`` when no unit uses a suite model.
    units: model x revision units, in order.
    comparison: run-level notebooks (``05_*`` and above) to execute after the units.
    unit_notebooks: stems of all per-unit notebooks (selected or not; they chain the hashes).
    kernel, execution_timeout: Jupyter kernel name and per-cell timeout (seconds or ``None``).
    env: environment variables for the kernels (``TASKSPACE_SUITE_DIR``).
    dropped: ``{stem: [parameter, ...]}`` profile parameters a notebook does not declare.
    notes: remarks for the dry run (absent notebooks named in the profile, ...).
    checks: what was validated while planning, one line each (shown by the dry run).
    data_source: ``"blimp"`` or the user's pairs (``--data`` or the profile's ``data``).
    """

    profile: str
    description: str
    run_dir: Path
    notebooks_dir: Path
    notebooks: dict[str, Path]
    suite: SuiteBuild | None
    units: list[Unit]
    comparison: list[NotebookJob]
    unit_notebooks: list[str]
    kernel: str = "python3"
    execution_timeout: int | None = None
    env: dict[str, str] = field(default_factory=dict)
    dropped: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)
    data_source: str = "blimp"


def _merge(*dicts) -> dict:
    out = {}
    for d in dicts:
        out.update(d or {})
    return out


class _Parameters:
    """Merged parameters of each notebook (see :func:`build_plan`), filtered to what it declares."""

    def __init__(self, profile: dict, name: str, notebooks: dict[str, Path], overrides: Overrides, notes: list[str]):
        self.notebooks, self.dropped, self.name = notebooks, {}, name
        self.checked = 0
        self.common = dict(profile["params"])
        self.cli: dict[str, str] = {}  # parameter -> the argument that set it for every notebook
        self.per_notebook: dict[str, dict] = {}
        for key, params in profile["notebooks"].items():
            stem = notebook_key(key, notebooks, f"profile {name!r}, notebooks")
            if stem is None:
                notes.append(f"profile parameters for {key} are not used: no such notebook")
                continue
            if not isinstance(params, dict):
                raise PlanError(f"profile {name!r}: parameters of notebook {key} must be a mapping")
            self.per_notebook[stem] = {**self.per_notebook.get(stem, {}), **params}
        for owned in RUNNER_PARAMETERS:
            if owned in self.common or any(owned in p for p in self.per_notebook.values()):
                raise PlanError(f"profile {name!r}: parameter {owned!r} is set by the runner, not by profiles")
        data = overrides.data if overrides.data is not None else profile.get("data")
        self.data_label = "--data" if overrides.data is not None else f"profile {name!r}: data"
        self.data_source = "blimp" if data is None else resolve_data_source(data)
        tasks = overrides.tasks
        if data is not None:
            self.common["data_source"] = self.data_source
            self.cli["data_source"] = self.data_label
            for params in self.per_notebook.values():
                params.pop("data_source", None)
                params.pop("watch_tasks", None)  # the profile's watch list names the profile's data's tasks
            if tasks is None and self.data_source != "blimp":  # the file's tasks for every notebook
                tasks = source_tasks(self.data_source, self.data_label)
                self.cli["tasks"] = f"{self.data_label} (the tasks of the file)"
        for param, value in (("tasks", tasks), ("device", overrides.device)):
            if value is None:
                continue
            if param == "tasks":
                value = None if [t.lower() for t in value] == ["all"] else list(value)
            self.common[param] = value
            self.cli.setdefault(param, f"--{param}")
            for params in self.per_notebook.values():
                params.pop(param, None)
        self.explicit: dict[str, dict] = {}
        for key, param, value in overrides.sets:
            if param in RUNNER_PARAMETERS:
                raise PlanError(f"--set {key}.{param}: {param!r} is set by the runner")
            if key.lower() in ("all", "*"):
                self.explicit.setdefault("*", {})[param] = value
                continue
            stem = notebook_key(key, notebooks, f"--set {key}.{param}")
            if stem is None:
                raise PlanError(f"--set {key}.{param}: unknown notebook {key!r}; notebooks: {', '.join(notebooks)}"
                                + did_you_mean(key, [s[:2] for s in notebooks]))
            self.explicit.setdefault(stem, {})[param] = value

    def of(self, stem: str, runner: dict, extra: dict | None = None) -> dict:
        """Parameters of notebook ``stem``: common < per notebook < ``extra`` < ``--set``, filtered to
        the declared ones, then ``runner`` (always passed)."""
        explicit = self.explicit.get(stem) or {}
        wanted = _merge(self.common, self.per_notebook.get(stem), extra, self.explicit.get("*"), explicit)
        declared = declared_parameters(self.notebooks[stem])
        if declared is not None:
            for param in explicit:
                if param not in declared:
                    raise PlanError(f"--set {stem}.{param}: notebook {stem} has no parameter {param!r}"
                                    f"{did_you_mean(param, declared)} (declared: {', '.join(declared)})")
            dropped = sorted(p for p in wanted if p not in declared)
            if dropped:
                self.dropped[stem] = dropped
            wanted = {k: v for k, v in wanted.items() if k in declared}
        self.check(stem, wanted, extra)
        return {**wanted, **runner}

    def origin(self, stem: str, param: str, extra: dict | None) -> str:
        """Which argument or profile key set ``param`` of notebook ``stem`` (for error messages)."""
        if param in self.explicit.get(stem, {}):
            return f"--set {stem}.{param}"
        if param in self.explicit.get("*", {}):
            return f"--set all.{param}"
        if extra and param in extra:
            return f"profile {self.name!r}: suite.params.{param}"
        if param in self.per_notebook.get(stem, {}):
            return f"profile {self.name!r}: notebooks.{stem}.{param}"
        return self.cli.get(param, f"profile {self.name!r}: params.{param} (for {stem})")

    def check(self, stem: str, wanted: dict, extra: dict | None) -> None:
        """Each value against :mod:`.parameters`; ``tasks``/``watch_tasks`` against the data source."""
        for param, value in wanted.items():
            problem = check_value(stem, param, value)
            if problem:
                raise PlanError(f"{self.origin(stem, param, extra)}: {problem}")
            self.checked += 1
        source = str(wanted.get("data_source", self.data_source))
        for param in ("tasks", "watch_tasks"):
            if isinstance(wanted.get(param), list):
                label = self.origin(stem, "data_source", extra) if "data_source" in wanted else self.data_label
                known = source_tasks(source, label if source != "blimp" else "BLiMP")
                check_tasks(wanted[param], known, self.origin(stem, param, extra), source)


def _plan_suite(settings: dict, name: str, sizes: list[str], run_dir: Path, device, job_of) -> SuiteBuild:
    """The :class:`SuiteBuild` of ``sizes``; ``job_of(runner, extra)`` makes the ``00_*`` job (or
    returns ``None`` when there is no such notebook)."""
    bad = set(settings) - {"dir", "smoke", "params"}
    if bad:
        raise PlanError(f"profile {name!r}: suite has unknown keys {sorted(bad)} (dir, smoke, params)")
    where = settings.get("dir")
    suite_dir = (suite_root() if where is None else run_dir / "suite" if where == "run"
                 else Path(str(where)).expanduser()).resolve()
    unknown = [s for s in sizes if not is_suite_model(s) and not (suite_dir / s / "suite.json").exists()]
    if unknown:
        raise PlanError(f"profile {name!r}: {', '.join(unknown)} is not an offline-suite size "
                        f"({', '.join(SUITE_SIZES)}, or a size with -seedK such as {SUITE_SEEDS[0]}) and is not "
                        f"built in {suite_dir}" + did_you_mean(unknown[0], SUITE_MODELS))
    smoke = bool(settings.get("smoke", False))
    runner = {"sizes": sizes, "suite_dir": str(suite_dir), "smoke": smoke, "device": device}
    return SuiteBuild(sizes=sizes, suite_dir=suite_dir, smoke=smoke, device=device,
                      job=job_of(runner, settings.get("params")))


def build_plan(profiles: dict, name: str, *, notebooks_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None,
               overrides: Overrides | None = None) -> Plan:
    """Expand profile ``name`` (with ``overrides``) into a :class:`Plan` over the notebooks found in
    ``notebooks_dir``; the run folder defaults to ``runs/<name>``.

    Parameters of per-unit notebook ``N``, later ones winning: ``defaults.params``,
    ``profile.params``, ``profile.notebooks[N]``, ``--tasks``/``--device``, ``--set``, then
    ``model`` and ``out_dir``. Only the parameters the notebook declares are passed (the others
    are listed in ``Plan.dropped``); a ``--set`` of an undeclared parameter is an error. Suite
    revisions stay symbolic until :func:`~taskspace_utils.pipeline.revisions.resolve_revisions` (after the
    suite build).
    """
    overrides = overrides or Overrides()
    all_profiles = profiles["profiles"]
    if name not in all_profiles:
        raise PlanError(f"--profile: unknown profile {name!r}{did_you_mean(name, all_profiles)}; "
                        f"profiles: {', '.join(all_profiles)}")
    defaults = profiles.get("defaults") or {}
    profile = {**defaults, **(all_profiles[name] or {})}
    for key in ("params", "notebooks", "suite"):
        profile[key] = {**(defaults.get(key) or {}), **(all_profiles[name].get(key) or {})}
    notebooks_dir = Path(notebooks_dir).resolve()
    notebooks = discover_notebooks(notebooks_dir)
    run_dir = Path(out_dir if out_dir is not None else Path("runs") / name).resolve()
    notes: list[str] = []
    parameters = _Parameters(profile, name, notebooks, overrides, notes)

    unit_stems = [s for s in notebooks if SUITE_NUMBER < stage_number(s) < FIRST_COMPARISON_NUMBER]
    selected = None
    if overrides.notebooks:
        selected = []
        for key in overrides.notebooks:
            stem = notebook_key(key, notebooks, "--notebooks")
            if stem is None:
                raise PlanError(f"--notebooks: unknown notebook {key!r}; notebooks: {', '.join(notebooks)}"
                                + did_you_mean(key, [s[:2] for s in notebooks]))
            selected.append(stem)

    units = []
    for model, kind, revision, entry_notebooks in expand_models(profile, name, overrides):
        chain = {stem: parameters.of(stem, {"model": "", "out_dir": ""}) for stem in unit_stems}
        own = None
        if entry_notebooks is not None:
            own = []
            for key in entry_notebooks:
                stem = notebook_key(key, notebooks, f"notebooks of model {model!r}")
                if stem is None:  # well-formed but not in the notebooks folder: noted, like absent `notebooks:` keys
                    shown = f"{key:02d}" if isinstance(key, int) and not isinstance(key, bool) else str(key)
                    note = f"notebooks of {model!r}: {shown} is not in {notebooks_dir}; ignored"
                    if note not in notes:
                        notes.append(note)
                    continue
                if stem not in unit_stems:
                    raise PlanError(f"profile {name!r}: notebooks of {model!r}: {key!r} is not a per-unit notebook "
                                    f"({', '.join(unit_stems)})")
                own.append(stem)
        jobs = [NotebookJob(stem, chain[stem]) for stem in unit_stems
                if (selected is None or stem in selected) and (own is None or stem in own)]
        units.append(Unit(model=model, kind=kind, revision=revision, jobs=jobs, run_dir=run_dir, chain=chain))
    names = [u.name for u in units]
    if len(set(names)) != len(names):
        raise PlanError(f"profile {name!r}: two units share a folder name: {names}")

    suite, env = None, kernel_environment()
    sizes = list(dict.fromkeys(u.model for u in units if u.kind == "suite"))
    if sizes:
        suite_stems = [s for s in notebooks if stage_number(s) == SUITE_NUMBER]

        def job_of(runner, extra):
            return NotebookJob(suite_stems[0], parameters.of(suite_stems[0], runner, extra)) if suite_stems else None

        suite = _plan_suite(profile["suite"], name, sizes, run_dir, parameters.common.get("device"), job_of)
        env["TASKSPACE_SUITE_DIR"] = str(suite.suite_dir)

    comparison = [NotebookJob(stem, parameters.of(stem, {"run_dir": "", "units": []})) for stem in notebooks
                  if stage_number(stem) >= FIRST_COMPARISON_NUMBER and (selected is None or stem in selected)]
    kinds = sorted({u.kind for u in units})
    source = parameters.data_source
    checks = [f"models: {len(units)} unit(s) of {len({u.model for u in units})} model(s) ({', '.join(kinds)}) "
              "resolved (suite sizes, local folders, hub names)",
              f"data: {'BLiMP (data/blimp)' if source == 'blimp' else source}: "
              f"{len(source_tasks(source, parameters.data_label))} tasks",
              f"parameters: {parameters.checked} values checked (types, ranges, task names; "
              "taskspace_utils.pipeline.parameters.RULES)"]
    return Plan(profile=name, description=str(profile.get("description") or ""), run_dir=run_dir,
                notebooks_dir=notebooks_dir, notebooks=notebooks, suite=suite, units=units,
                comparison=comparison, unit_notebooks=unit_stems, kernel=str(profile.get("kernel") or "python3"),
                execution_timeout=profile.get("execution_timeout"), env=env, dropped=parameters.dropped, notes=notes,
                checks=checks, data_source=source)
