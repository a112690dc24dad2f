"""Batch reruns of the notebooks with papermill: plans, resumable units, local and Dask executors.

``run_all.py`` is a thin command line over this module. A *run* executes the numbered notebooks
of ``notebooks/`` headlessly for every model x revision of a *profile* (``profiles.yaml``):

=====================  ====================================================================
``00_*``               the offline-suite build: once per run, only when a suite model of the
                       profile is not built yet (executed into ``<run>/00_*.ipynb``)
``01_*`` ... ``04_*``  per *unit* (one model at one revision), in order, into
                       ``<run>/<unit>/``; the unit folder is the notebooks' ``out_dir``
``05_*`` and above     once over all complete units (``run_dir``, ``units``); the first one
                       is rendered to ``<run>/report.html`` with nbconvert
=====================  ====================================================================

Only notebooks that exist are run (:func:`discover_notebooks`), so a run works with fewer.

Resuming. Each unit folder holds ``unit.json`` (written atomically after every notebook) with,
per notebook, the parameters, a *hash* and the files the notebook created. The hash of notebook
``N`` covers its code cells, its parameters (``out_dir`` left out, so a moved run folder stays
valid), the identity of the model weights (the suite record, the hub revision or the local
files) and the hash of notebook ``N-1``; so a changed parameter of ``N`` reruns ``N`` and every
notebook after it in that unit, and nothing else. A notebook counts as done when its record has
status ``ok`` and the current hash, its executed copy exists and its recorded outputs exist.
Before a notebook with a *changed* hash reruns, the files it created last time are deleted (so a
stage's own ``ensure_run_config`` never sees a stale config); after a failure or a kill with an
unchanged hash they are kept, so a notebook that saves in chunks resumes. Executed notebooks are
written to a hidden ``.<name>.running.ipynb`` and renamed on success; a failed execution is kept
as ``<name>.failed.ipynb``. Killing the runner at any moment loses no finished notebook.

Public functions
----------------
- :func:`load_profiles`, :func:`build_plan` (with :class:`Overrides`): profile file -> :class:`Plan`.
- :func:`describe_plan`: the text of ``--dry-run``.
- :func:`run`: build the suite if needed, execute the pending units (``executor="local"`` or
  ``"dask"``), then the comparison; returns a :class:`RunSummary`.
- :func:`execute_unit`: execute the pending notebooks of one :class:`Unit` (the task a Dask
  worker runs).
- :func:`resolve_revisions`, :func:`pending_notebooks`, :func:`discover_notebooks`,
  :func:`parse_set`.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import datetime as _dt
import hashlib
import json
import logging
import os
import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

from .results import atomic_write_json, atomic_write_text, config_hash, read_json, to_jsonable

__all__ = [
    "PlanError",
    "Overrides",
    "NotebookJob",
    "Unit",
    "SuiteBuild",
    "Plan",
    "Failure",
    "UnitResult",
    "RunSummary",
    "discover_notebooks",
    "declared_parameters",
    "load_profiles",
    "parse_set",
    "build_plan",
    "resolve_revisions",
    "resolve_suite_revision",
    "pending_notebooks",
    "describe_plan",
    "execute_notebook",
    "execute_unit",
    "run",
    "format_duration",
]

#: Notebook files the runner executes: two digits, an underscore, a name.
NOTEBOOK_PATTERN = re.compile(r"^(?P<number>\d\d)_[A-Za-z0-9_-]+$")
#: Two-digit numbers of the stages: the suite build, and the first run-level (comparison) notebook.
SUITE_NUMBER, FIRST_COMPARISON_NUMBER = 0, 5
#: Parameters set by the runner itself (a profile cannot set them).
RUNNER_PARAMETERS = ("model", "out_dir", "run_dir", "units")
#: Symbolic revisions of suite models, resolved from ``suite.json`` by :func:`resolve_suite_revision`.
SYMBOLIC_REVISIONS = ("final", "mid", "early")
UNIT_RECORD = "unit.json"
RUN_RECORD = "run.json"
REPORT = "report.html"


class PlanError(ValueError):
    """A profile, override or notebook selection that cannot be planned (the message names it)."""


# ------------------------------------------------------------------------------- dataclasses
@dataclass
class Overrides:
    """Command-line changes applied on top of a profile (``None``: keep the profile's value).

    Attributes
    ----------
    models: model specs replacing the profile's list (``name`` or ``name@revision``).
    revisions: revisions replacing every model's revisions.
    sizes: keep only models whose name is a size in this list (``tiny-s``, or the suffix after the
        last ``-``: ``70m`` matches ``EleutherAI/pythia-70m``).
    tasks: task names, or ``["all"]`` (passed as ``tasks=None``, the notebooks' "all tasks");
        sets ``tasks`` of every notebook (common and per-notebook).
    device: ``"cpu"``, ``"cuda"``; sets ``device`` of every notebook and of the suite build.
    notebooks: per-unit notebooks to run (stems or two-digit prefixes); the comparison runs only
        when selected too; the suite build runs whenever the suite is missing.
    sets: ``(notebook key or "all", parameter, value)`` triples from ``--set``.
    """

    models: list[str] | None = None
    revisions: list[str] | None = None
    sizes: list[str] | None = None
    tasks: list[str] | None = None
    device: str | None = None
    notebooks: list[str] | None = None
    sets: list[tuple[str, str, Any]] = field(default_factory=list)


@dataclass
class NotebookJob:
    """One notebook to execute: file stem, papermill parameters, and the resume hash.

    ``parameters`` hold what is passed (filtered to what the notebook declares, runner
    parameters always included); ``hash`` is set by :func:`resolve_revisions` (per unit) or
    :func:`run` (comparison).
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
    ``00_*`` notebook (``None``: :func:`taskspace_utils.pretrain.build_suite` is called instead).
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
    """Outcome of :func:`run`: units executed, skipped (complete) and failed, and the report."""

    executed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    report: Path | None = None

    @property
    def exit_code(self) -> int:
        return 1 if self.failures else 0


# ---------------------------------------------------------------------------- notebooks
def discover_notebooks(folder: str | os.PathLike) -> dict[str, Path]:
    """``{stem: path}`` of ``folder/[0-9][0-9]_*.ipynb``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PlanError(f"notebooks folder {folder} does not exist")
    found = {}
    for path in sorted(folder.glob("[0-9][0-9]_*.ipynb")):
        if NOTEBOOK_PATTERN.match(path.stem):
            found[path.stem] = path
    return found


def _number(stem: str) -> int:
    return int(stem[:2])


def _parameters_cell(path: Path):
    import nbformat

    notebook = nbformat.read(str(path), as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            return notebook, cell
    return notebook, None


def declared_parameters(path: str | os.PathLike) -> list[str] | None:
    """Names assigned at top level in the notebook's ``parameters`` cell (``None``: no such cell).

    Parsed with :mod:`ast` (``x = 1``, ``x: int = 1``, ``a = b = 1``); a cell that is not plain
    Python falls back to papermill's line-based parser.
    """
    _, cell = _parameters_cell(Path(path))
    if cell is None:
        return None
    try:
        tree = ast.parse(cell.source)
    except SyntaxError:
        from papermill.translators import papermill_translators

        translator = papermill_translators.find_translator("python3", "python")
        return [p.name for p in translator.inspect(cell)]
    names = []
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        names += [t.id for t in targets if isinstance(t, ast.Name) and t.id not in names]
    return names


def _code_hash(path: Path) -> str:
    """SHA-256 (12 hex) of the code cells' sources: outputs and metadata do not count."""
    import nbformat

    notebook = nbformat.read(str(path), as_version=4)
    text = "\n\x00".join(c.source for c in notebook.cells if c.cell_type == "code")
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def _notebook_key(key: str, notebooks: dict[str, Path], what: str) -> str | None:
    """Map a stem or two-digit prefix to a discovered stem; ``None`` if well-formed but absent.

    YAML reads a bare ``02:`` key as the integer 2, so integers are read as two-digit prefixes."""
    key = f"{key:02d}" if isinstance(key, int) and not isinstance(key, bool) else str(key).strip()
    if not re.fullmatch(r"\d\d(_[A-Za-z0-9_-]+)?", key):
        raise PlanError(f"{what}: {key!r} is not a notebook name (expected a stem such as "
                        f"'02_gradient_extraction' or its prefix '02')")
    by_number = [s for s in notebooks if s[:2] == key[:2]]
    if len(key) == 2:
        return by_number[0] if by_number else None
    if key in notebooks:
        return key
    if by_number:
        raise PlanError(f"{what}: notebook {key!r} does not exist; notebook {key[:2]} is {by_number[0]!r}")
    return None


# ------------------------------------------------------------------------------- profiles
def load_profiles(path: str | os.PathLike) -> dict:
    """Read the profile file: ``{"defaults": {...}, "profiles": {name: {...}}}`` (``anchors`` is
    allowed for YAML anchors and otherwise ignored). Raises :class:`PlanError` on a malformed file."""
    path = Path(path)
    if not path.exists():
        raise PlanError(f"profile file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise PlanError(f"{path}: invalid YAML: {err}") from None
    if not isinstance(data, dict) or not isinstance(data.get("profiles"), dict):
        raise PlanError(f"{path}: expected a mapping with a 'profiles' mapping")
    unknown = set(data) - {"defaults", "profiles", "anchors"}
    if unknown:
        raise PlanError(f"{path}: unknown top-level keys {sorted(unknown)} (expected defaults, profiles, anchors)")
    allowed = {"description", "models", "revisions", "suite", "params", "notebooks", "kernel", "execution_timeout"}
    for name, profile in [("defaults", data.get("defaults") or {}), *data["profiles"].items()]:
        if not isinstance(profile, dict):
            raise PlanError(f"{path}: profile {name!r} must be a mapping")
        bad = set(profile) - allowed
        if bad:
            raise PlanError(f"{path}: profile {name!r} has unknown keys {sorted(bad)}; allowed: {sorted(allowed)}")
    return data


def parse_set(text: str) -> tuple[str, str, Any]:
    """``"02.n_train=64"`` -> ``("02", "n_train", 64)``; values are read as YAML (``true``,
    ``null``, ``[a, b]``, numbers); ``all.seed=1`` sets every notebook."""
    match = re.fullmatch(r"\s*([A-Za-z0-9_-]+)\.([A-Za-z_][A-Za-z0-9_]*)\s*=(.*)", str(text), re.S)
    if not match:
        raise PlanError(f"--set {text!r}: expected NOTEBOOK.param=value, e.g. 02_gradient_extraction.n_train=64")
    key, param, raw = match.groups()
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw.strip()
    return key, param, value


def _split_entry(entry, profile_name: str) -> tuple[str, list | None, list | None]:
    """``(name, revisions or None, notebooks or None)`` of a profile's model entry."""
    if isinstance(entry, str):
        name, at, revision = entry.partition("@")
        return name, ([revision] if at else None), None
    if isinstance(entry, dict) and "model" in entry:
        unknown = set(entry) - {"model", "revisions", "notebooks"}
        if unknown:
            raise PlanError(f"profile {profile_name!r}: model entry {entry['model']!r} has unknown key(s) "
                            f"{sorted(unknown)} (allowed: model, revisions, notebooks)")
        revisions, notebooks = entry.get("revisions"), entry.get("notebooks")
        if revisions is not None and not isinstance(revisions, list):
            raise PlanError(f"profile {profile_name!r}: revisions of {entry['model']!r} must be a list")
        if notebooks is not None and (not isinstance(notebooks, list) or not notebooks):
            raise PlanError(f"profile {profile_name!r}: notebooks of {entry['model']!r} must be a non-empty list")
        return str(entry["model"]), revisions, (list(notebooks) if notebooks is not None else None)
    raise PlanError(f"profile {profile_name!r}: model entry {entry!r} must be 'name[@revision]' or "
                    "{model: name, revisions: [...], notebooks: [...]}")


def _model_kind(name: str) -> str:
    from .models import SUITE_NAME_PATTERN

    if Path(name).expanduser().is_dir():
        return "local"
    if SUITE_NAME_PATTERN.match(name):
        return "suite"
    return "hub"


def _matches_size(name: str, size: str) -> bool:
    base = name.rstrip("/").rpartition("/")[2]
    return size in (name, base) or base.endswith("-" + size)


def _merge(*dicts) -> dict:
    out = {}
    for d in dicts:
        out.update(d or {})
    return out


class _Parameters:
    """Merged parameters of each notebook (see :func:`build_plan`), filtered to what it declares."""

    def __init__(self, profile: dict, name: str, notebooks: dict[str, Path], overrides: Overrides, notes: list[str]):
        self.notebooks, self.dropped = notebooks, {}
        self.common = dict(profile["params"])
        self.per_notebook: dict[str, dict] = {}
        for key, params in profile["notebooks"].items():
            stem = _notebook_key(key, notebooks, f"profile {name!r}, notebooks")
            if stem is None:
                notes.append(f"profile parameters for {key} are not used: no such notebook")
                continue
            if not isinstance(params, dict):
                raise PlanError(f"profile {name!r}: parameters of notebook {key} must be a mapping")
            self.per_notebook[stem] = {**self.per_notebook.get(stem, {}), **params}
        for owned in RUNNER_PARAMETERS:
            if owned in self.common or any(owned in p for p in self.per_notebook.values()):
                raise PlanError(f"profile {name!r}: parameter {owned!r} is set by the runner, not by profiles")
        for param, value in (("tasks", overrides.tasks), ("device", overrides.device)):
            if value is None:
                continue
            if param == "tasks":
                value = None if [t.lower() for t in value] == ["all"] else list(value)
            self.common[param] = value
            for params in self.per_notebook.values():
                params.pop(param, None)
        self.explicit: dict[str, dict] = {}
        for key, param, value in overrides.sets:
            if param in RUNNER_PARAMETERS:
                raise PlanError(f"--set {key}.{param}: {param!r} is set by the runner")
            if key.lower() in ("all", "*"):
                self.explicit.setdefault("*", {})[param] = value
                continue
            stem = _notebook_key(key, notebooks, f"--set {key}.{param}")
            if stem is None:
                raise PlanError(f"--set {key}.{param}: unknown notebook {key!r}; notebooks: {', '.join(notebooks)}")
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
                    raise PlanError(f"--set {stem}.{param}: notebook {stem} has no parameter {param!r} "
                                    f"(declared: {', '.join(declared)})")
            dropped = sorted(p for p in wanted if p not in declared)
            if dropped:
                self.dropped[stem] = dropped
            wanted = {k: v for k, v in wanted.items() if k in declared}
        return {**wanted, **runner}


def _expand_models(profile: dict, name: str, overrides: Overrides) -> list[tuple[str, str, str | None, list | None]]:
    """``(model, kind, revision, notebooks)`` of every unit, in order, after ``--models``,
    ``--sizes`` and ``--revisions``; suite models without revisions get ``final``, hub and local
    ones ``None``. ``notebooks`` is the entry's own selection of per-unit notebooks (``None``: all);
    a unit listed by two entries runs the union of their selections."""
    entries = [_split_entry(e, name) for e in (overrides.models or profile.get("models") or [])]
    if not entries:
        raise PlanError(f"profile {name!r} lists no models")
    if overrides.sizes:
        kept = [e for e in entries if any(_matches_size(e[0], s) for s in overrides.sizes)]
        if not kept:
            raise PlanError(f"--sizes {','.join(overrides.sizes)} matches no model of profile {name!r} "
                            f"(models: {', '.join(e[0] for e in entries)})")
        entries = kept
    default_revisions = profile.get("revisions")
    triples: list[tuple[str, str, str | None]] = []
    selections: dict[tuple[str, str, str | None], list | None] = {}
    for model, revisions, notebooks in entries:
        kind = _model_kind(model)
        if overrides.revisions:
            revisions = list(overrides.revisions)
        elif revisions is None:
            revisions = list(default_revisions) if default_revisions else (["final"] if kind == "suite" else [None])
        for revision in revisions:
            revision = None if revision is None else str(revision)
            if kind != "suite" and revision in SYMBOLIC_REVISIONS:
                raise PlanError(f"profile {name!r}: revision {revision!r} of {model!r} is symbolic; symbolic "
                                "revisions (final, mid, early) are for offline-suite models only")
            if kind == "local" and revision is not None:
                raise PlanError(f"profile {name!r}: {model!r} is a local folder; it takes no revision")
            if kind == "suite" and not (revision in SYMBOLIC_REVISIONS or re.fullmatch(r"step\d+", revision or "")):
                raise PlanError(f"profile {name!r}: revision {revision!r} of suite model {model!r}: expected "
                                "stepN, final, mid or early")
            key = (model, kind, revision)
            if key not in triples:
                triples.append(key)
                selections[key] = None if notebooks is None else list(notebooks)
            elif selections[key] is not None:
                selections[key] = None if notebooks is None else list(dict.fromkeys(selections[key] + notebooks))
    return [(*key, selections[key]) for key in triples]


def _plan_suite(settings: dict, name: str, sizes: list[str], run_dir: Path, device, job_of) -> SuiteBuild:
    """The :class:`SuiteBuild` of ``sizes``; ``job_of(runner, extra)`` makes the ``00_*`` job (or
    returns ``None`` when there is no such notebook)."""
    from .models import suite_root
    from .pretrain import SUITE_SIZES

    bad = set(settings) - {"dir", "smoke", "params"}
    if bad:
        raise PlanError(f"profile {name!r}: suite has unknown keys {sorted(bad)} (dir, smoke, params)")
    where = settings.get("dir")
    suite_dir = (suite_root() if where is None else run_dir / "suite" if where == "run"
                 else Path(str(where)).expanduser()).resolve()
    unknown = [s for s in sizes if s not in SUITE_SIZES and not (suite_dir / s / "suite.json").exists()]
    if unknown:
        raise PlanError(f"profile {name!r}: {', '.join(unknown)} is not an offline-suite size "
                        f"({', '.join(SUITE_SIZES)}) and is not built in {suite_dir}")
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
    revisions stay symbolic until :func:`resolve_revisions` (after the suite build).
    """
    overrides = overrides or Overrides()
    all_profiles = profiles["profiles"]
    if name not in all_profiles:
        raise PlanError(f"unknown profile {name!r}; profiles: {', '.join(all_profiles)}")
    defaults = profiles.get("defaults") or {}
    profile = {**defaults, **(all_profiles[name] or {})}
    for key in ("params", "notebooks", "suite"):
        profile[key] = {**(defaults.get(key) or {}), **(all_profiles[name].get(key) or {})}
    notebooks_dir = Path(notebooks_dir).resolve()
    notebooks = discover_notebooks(notebooks_dir)
    run_dir = Path(out_dir if out_dir is not None else Path("runs") / name).resolve()
    notes: list[str] = []
    parameters = _Parameters(profile, name, notebooks, overrides, notes)

    unit_stems = [s for s in notebooks if SUITE_NUMBER < _number(s) < FIRST_COMPARISON_NUMBER]
    selected = None
    if overrides.notebooks:
        selected = []
        for key in overrides.notebooks:
            stem = _notebook_key(key, notebooks, "--notebooks")
            if stem is None:
                raise PlanError(f"--notebooks: unknown notebook {key!r}; notebooks: {', '.join(notebooks)}")
            selected.append(stem)

    units = []
    for model, kind, revision, entry_notebooks in _expand_models(profile, name, overrides):
        chain = {stem: parameters.of(stem, {"model": "", "out_dir": ""}) for stem in unit_stems}
        own = None
        if entry_notebooks is not None:
            own = []
            for key in entry_notebooks:
                stem = _notebook_key(key, notebooks, f"notebooks of model {model!r}")
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

    suite, env = None, {}
    sizes = list(dict.fromkeys(u.model for u in units if u.kind == "suite"))
    if sizes:
        suite_stems = [s for s in notebooks if _number(s) == SUITE_NUMBER]

        def job_of(runner, extra):
            return NotebookJob(suite_stems[0], parameters.of(suite_stems[0], runner, extra)) if suite_stems else None

        suite = _plan_suite(profile["suite"], name, sizes, run_dir, parameters.common.get("device"), job_of)
        env["TASKSPACE_SUITE_DIR"] = str(suite.suite_dir)

    comparison = [NotebookJob(stem, parameters.of(stem, {"run_dir": "", "units": []})) for stem in notebooks
                  if _number(stem) >= FIRST_COMPARISON_NUMBER and (selected is None or stem in selected)]
    return Plan(profile=name, description=str(profile.get("description") or ""), run_dir=run_dir,
                notebooks_dir=notebooks_dir, notebooks=notebooks, suite=suite, units=units,
                comparison=comparison, unit_notebooks=unit_stems, kernel=str(profile.get("kernel") or "python3"),
                execution_timeout=profile.get("execution_timeout"), env=env, dropped=parameters.dropped, notes=notes)


# ----------------------------------------------------------------------------- revisions
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
            params = {k: v for k, v in unit.chain.get(stem, {}).items() if k not in ("model", "out_dir")}
            previous = config_hash({"notebook": stem, "code": _code_hash(plan.notebooks[stem]),
                                    "parameters": params, "model": unit.fingerprint, "previous": previous})
            if job:
                job.hash = previous
                job.parameters = {**job.parameters, "model": unit.spec, "out_dir": str(unit.out_dir)}
        resolved.append(unit)
    plan.units = resolved
    return plan


# ------------------------------------------------------------------------------ unit state
def _read_record(folder: Path, name: str) -> dict:
    path = Path(folder) / name
    if not path.exists():
        return {}
    try:
        return read_json(path)
    except ValueError:
        return {}  # unreadable record: everything reruns


def _outputs_exist(folder: Path, entry: dict) -> bool:
    return all((folder / rel).exists() for rel in entry.get("new_outputs", []) + entry.get("changed_outputs", []))


def pending_notebooks(unit: Unit, record: dict | None = None) -> list[str]:
    """Stems of the unit's notebooks to execute: the first one not done and all after it.

    Done: ``unit.json`` records status ``ok`` with the current hash, the executed copy
    ``<stem>.ipynb`` exists and so do the files the notebook created or changed.
    """
    folder = unit.out_dir
    record = _read_record(folder, UNIT_RECORD) if record is None else record
    entries = record.get("notebooks", {})
    for i, job in enumerate(unit.jobs):
        entry = entries.get(job.name, {})
        done = (entry.get("status") == "ok" and entry.get("hash") == job.hash
                and (folder / f"{job.name}.ipynb").exists() and _outputs_exist(folder, entry))
        if not done:
            return [j.name for j in unit.jobs[i:]]
    return []


def _is_runner_file(rel: Path, stems: Iterable[str]) -> bool:
    if any(part.startswith(".") for part in rel.parts):
        return True
    if len(rel.parts) == 1:
        name = rel.name
        return name == UNIT_RECORD or any(name in (f"{s}.ipynb", f"{s}.failed.ipynb") for s in stems)
    return False


def _snapshot(folder: Path, stems: Iterable[str]) -> dict[str, list[int]]:
    """``{relative path: [size, mtime_ns]}`` of the files in ``folder`` that notebooks wrote."""
    stems = list(stems)
    out = {}
    if folder.is_dir():
        for path in folder.rglob("*"):
            rel = path.relative_to(folder)
            if path.is_file() and not _is_runner_file(rel, stems):
                stat = path.stat()
                out[str(rel)] = [stat.st_size, stat.st_mtime_ns]
    return out


def _remove_outputs(folder: Path, relpaths: Iterable[str]) -> None:
    """Delete files (inside ``folder`` only) and the folders they leave empty."""
    root = folder.resolve()
    for rel in relpaths:
        path = (folder / rel).resolve()
        if root not in path.parents:
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        parent = path.parent
        while parent != root and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent


def _clean_changed(unit: Unit, record: dict, pending: list[str]) -> None:
    """Before rerunning, delete the files created by pending notebooks whose hash changed."""
    folder = unit.out_dir
    hashes = {j.name: j.hash for j in unit.jobs}
    stems = [j.name for j in unit.jobs]
    for stem in pending:
        entry = record.get("notebooks", {}).get(stem)
        if not entry or entry.get("hash") == hashes[stem]:
            continue
        if entry.get("status") == "running":
            before = set(entry.get("before", []))
            created = [rel for rel in _snapshot(folder, stems) if rel not in before]
        else:
            created = entry.get("new_outputs", [])
        _remove_outputs(folder, created)
        for suffix in (".ipynb", ".failed.ipynb"):
            with contextlib.suppress(FileNotFoundError):
                (folder / f"{stem}{suffix}").unlink()


# ------------------------------------------------------------------------------ execution
@contextlib.contextmanager
def _environment(env: dict[str, str]):
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
                     kernel: str = "python3", execution_timeout: int | None = None) -> Path:
    """Execute ``source`` with papermill into ``target``, atomically.

    Papermill writes to the hidden ``.<stem>.running.ipynb`` beside ``target``; on success it is
    renamed to ``target`` (a stale ``<stem>.failed.ipynb`` is removed), on failure to
    ``<stem>.failed.ipynb`` and the exception (``PapermillExecutionError`` for a cell that
    raised) propagates.
    """
    import papermill as pm

    # papermill warns about parameters its line parser misses (a comment holding "="); the
    # runner passes only declared parameters (read with ast), so these warnings are noise.
    logging.getLogger("papermill").setLevel(logging.ERROR)
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    running = target.with_name(f".{target.stem}.running.ipynb")
    failed = target.with_name(f"{target.stem}.failed.ipynb")
    try:
        pm.execute_notebook(str(source), str(running), parameters=to_jsonable(parameters), kernel_name=kernel,
                            cwd=str(cwd), progress_bar=False, log_output=False, execution_timeout=execution_timeout)
    except BaseException:
        if running.exists():
            os.replace(running, failed)
        raise
    os.replace(running, target)
    with contextlib.suppress(FileNotFoundError):
        failed.unlink()
    return target


def _failure_of(err: BaseException, unit: str, notebook: str, path: Path | None) -> Failure:
    from papermill.exceptions import PapermillExecutionError

    if isinstance(err, PapermillExecutionError):
        first = next((line.strip() for line in str(err.source or "").splitlines() if line.strip()), "")
        first = first if len(first) <= 60 else first[:57] + "..."
        return Failure(unit, notebook, err.cell_index, err.ename, str(err.evalue), str(path) if path else None, first)
    return Failure(unit, notebook, None, type(err).__name__, str(err).strip().splitlines()[0] if str(err).strip() else "",
                   str(path) if path and path.exists() else None)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def execute_unit(unit: Unit, notebooks: dict[str, Path], *, cwd: str | os.PathLike, kernel: str = "python3",
                 execution_timeout: int | None = None, env: dict[str, str] | None = None,
                 on_notebook: Callable[[str, str, str, float], None] | None = None) -> UnitResult:
    """Execute the pending notebooks of ``unit`` (:func:`pending_notebooks`) in order.

    ``unit.json`` is rewritten atomically before each notebook (status ``running`` with the list
    of files present, so a kill can be cleaned up) and after it (``ok`` or ``failed``, seconds,
    parameters, the files it created and changed). The unit stops at the first failure.
    ``on_notebook(unit, stem, status, seconds)`` is called after each notebook. Runs in a Dask
    worker as is (everything it needs is in its arguments).
    """
    folder = unit.out_dir
    folder.mkdir(parents=True, exist_ok=True)
    stems = [j.name for j in unit.jobs]
    worker = f"{socket.gethostname()}:{os.getpid()}"
    done: list[tuple[str, str, float]] = []
    failure = None
    with _environment(env or {}):
        record = _read_record(folder, UNIT_RECORD)
        pending = pending_notebooks(unit, record)
        _clean_changed(unit, record, pending)
        record = {**record, "unit": unit.name, "model": unit.spec, "requested": f"{unit.model}@{unit.revision}",
                  "fingerprint": unit.fingerprint, "notebooks": record.get("notebooks", {}), "complete": False}
        for job in unit.jobs:
            if job.name not in pending:
                continue
            before = _snapshot(folder, stems)
            record["notebooks"][job.name] = {"hash": job.hash, "status": "running", "started": _now(),
                                             "before": sorted(before), "worker": worker}
            atomic_write_json(folder / UNIT_RECORD, record)
            start = time.monotonic()
            try:
                execute_notebook(notebooks[job.name], folder / f"{job.name}.ipynb", job.parameters, cwd=cwd,
                                 kernel=kernel, execution_timeout=execution_timeout)
                status = "ok"
            except Exception as err:  # noqa: BLE001 - every failure is reported, the run goes on
                failure = _failure_of(err, unit.name, job.name, folder / f"{job.name}.failed.ipynb")
                status = "failed"
            seconds = time.monotonic() - start
            after = _snapshot(folder, stems)
            entry = {"hash": job.hash, "status": status, "seconds": round(seconds, 2), "finished": _now(),
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


# -------------------------------------------------------------------------------- progress
def format_duration(seconds: float) -> str:
    """``41.2s``, ``5m10s``, ``1h05m``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class _Progress:
    """One line per finished notebook: ``[k/N] unit notebook status time | elapsed | eta``.

    The estimate of the remaining time sums, over the notebooks still to run, the mean duration
    of the finished executions of the same notebook (of all notebooks when none finished yet),
    divided by the number of parallel workers.
    """

    def __init__(self, remaining: list[tuple[str, str]], parallel: int, log: Callable[[str], None]):
        self.total = len(remaining)
        self.remaining = list(remaining)
        self.parallel = max(1, parallel)
        self.log = log
        self.start = time.monotonic()
        self.durations: dict[str, list[float]] = {}
        self.count = 0

    def eta(self) -> float | None:
        every = [d for ds in self.durations.values() for d in ds]
        if not every:
            return None
        overall = sum(every) / len(every)
        mean = {k: sum(v) / len(v) for k, v in self.durations.items()}
        return sum(mean.get(stem, overall) for _, stem in self.remaining) / self.parallel

    def finished(self, unit: str, stem: str, status: str, seconds: float) -> None:
        self.count += 1
        with contextlib.suppress(ValueError):
            self.remaining.remove((unit, stem))
        if status == "ok":
            self.durations.setdefault(stem, []).append(seconds)
        else:  # the rest of a failed unit will not run
            self.remaining = [(u, s) for u, s in self.remaining if u != unit]
        eta = self.eta()
        eta_text = "?" if eta is None else f"~{format_duration(eta)}" if self.remaining else "0s"
        self.log(f"[{self.count}/{self.total}] {unit} {stem} {status} {format_duration(seconds)} | "
                 f"elapsed {format_duration(time.monotonic() - self.start)} | eta {eta_text}")


# ------------------------------------------------------------------------------------- run
def _build_suite(plan: Plan, log: Callable[[str], None]) -> Failure | None:
    """Build the missing suite sizes: execute ``00_*`` into the run folder (or call
    :func:`taskspace_utils.pretrain.build_suite` when there is no such notebook)."""
    suite = plan.suite
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
                             kernel=plan.kernel, execution_timeout=plan.execution_timeout)
        else:
            from .pretrain import build_suite

            build_suite(missing, suite_dir=suite.suite_dir, smoke=suite.smoke, device=suite.device)
    except Exception as err:  # noqa: BLE001
        name = suite.job.name if suite.job else "build_suite"
        return _failure_of(err, "suite", name, plan.run_dir / f"{name}.failed.ipynb")
    still = suite.missing()
    if still:
        return Failure("suite", suite.job.name if suite.job else "build_suite", None, "SuiteNotBuilt",
                       f"after the build, {', '.join(still)} has no suite.json in {suite.suite_dir}")
    log(f"suite: built in {format_duration(time.monotonic() - start)}")
    return None


def _run_local(plan, units, fail_fast, progress, summary):
    for unit in units:
        result = execute_unit(unit, plan.notebooks, cwd=plan.notebooks_dir, kernel=plan.kernel,
                              execution_timeout=plan.execution_timeout, env=plan.env, on_notebook=progress.finished)
        _collect(result, summary, progress.log)
        if result.failure and fail_fast:
            return


def _run_dask(plan, units, fail_fast, progress, summary, scheduler, workers):
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise PlanError("--executor dask needs the 'distributed' package: pip install 'dask[distributed]'") from None
    cluster = None
    if scheduler:
        client = Client(scheduler)
    else:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(cluster)
    try:
        progress.parallel = max(1, len(client.scheduler_info().get("workers", {})))
        futures = {}
        for unit in units:
            future = client.submit(execute_unit, unit, plan.notebooks, cwd=plan.notebooks_dir, kernel=plan.kernel,
                                   execution_timeout=plan.execution_timeout, env=plan.env, pure=False,
                                   key=f"unit-{unit.name}-{time.time_ns()}")
            futures[future] = unit
        pending = as_completed(list(futures))
        for future in pending:
            unit = futures[future]
            try:
                result = future.result()
            except Exception as err:  # noqa: BLE001 - a worker died or could not run the task
                result = UnitResult(unit.name, [], Failure(unit.name, "<worker>", None, type(err).__name__, str(err)), "")
            for stem, status, seconds in result.notebooks:
                progress.finished(result.unit, stem, status, seconds)
            _collect(result, summary, progress.log)
            if result.failure and fail_fast:
                for other in futures:
                    other.cancel()
                return
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _collect(result: UnitResult, summary: RunSummary, log) -> None:
    summary.executed.append(result.unit)
    if result.failure:
        summary.failures.append(result.failure)
        log(f"FAILED {result.failure.describe()}")


def _run_comparison(plan: Plan, summary: RunSummary, log) -> None:
    """Execute the run-level notebooks over the complete units; HTML report of the first one."""
    if not plan.comparison:
        absent = not any(_number(s) >= FIRST_COMPARISON_NUMBER for s in plan.notebooks)
        log("comparison: no 05_* notebook in " + str(plan.notebooks_dir) + ": skipped (no report)" if absent
            else "comparison: not selected (--notebooks)")
        return
    complete = [u for u in plan.units if not pending_notebooks(u)]
    if not complete:
        log("comparison: no complete unit: skipped")
        return
    record = _read_record(plan.run_dir, RUN_RECORD)
    entries = record.setdefault("comparison", {})
    for index, job in enumerate(plan.comparison):
        job.parameters = {**job.parameters, "run_dir": str(plan.run_dir), "units": [u.name for u in complete]}
        unit_hashes = {u.name: u.jobs[-1].hash if u.jobs else u.fingerprint for u in complete}
        shown = {k: v for k, v in job.parameters.items() if k != "run_dir"}
        job.hash = config_hash({"notebook": job.name, "code": _code_hash(plan.notebooks[job.name]),
                                "parameters": shown, "units": unit_hashes})
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
                             kernel=plan.kernel, execution_timeout=plan.execution_timeout)
            _write_html(target, html)
        except Exception as err:  # noqa: BLE001
            failure = _failure_of(err, "comparison", job.name, plan.run_dir / f"{job.name}.failed.ipynb")
            summary.failures.append(failure)
            entries[job.name] = {"hash": job.hash, "status": "failed", "finished": _now(),
                                 "error": dataclasses.asdict(failure)}
            atomic_write_json(plan.run_dir / RUN_RECORD, record)
            log(f"FAILED {failure.describe()}")
            continue
        entries[job.name] = {"hash": job.hash, "status": "ok", "finished": _now(), "units": list(unit_hashes),
                             "seconds": round(time.monotonic() - start, 2)}
        atomic_write_json(plan.run_dir / RUN_RECORD, record)
        if index == 0:
            summary.report = html
        log(f"comparison: {job.name} ok {format_duration(time.monotonic() - start)} (units: {len(complete)}) -> {html}")


def _write_html(notebook: Path, html: Path) -> None:
    """Render an executed notebook to a standalone HTML file (nbconvert), atomically."""
    import nbformat
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nbformat.read(str(notebook), as_version=4))
    atomic_write_text(html, body)


def run(plan: Plan, *, executor: str = "local", scheduler: str | None = None, workers: int = 2,
        fail_fast: bool = False, log: Callable[[str], None] = print) -> RunSummary:
    """Execute ``plan``: suite build if needed, pending units, comparison; return a summary.

    ``executor="local"`` runs the units one after another in this process (one kernel at a
    time); ``"dask"`` submits one task per unit (:func:`execute_unit`) to the Dask scheduler at
    ``scheduler`` or, without one, to a ``LocalCluster`` of ``workers`` single-threaded worker
    processes; the workers must see the run folder, the notebooks and the suite (a shared file
    system). Failures are reported and the other units go on unless ``fail_fast``.
    """
    if executor not in ("local", "dask"):
        raise PlanError(f"--executor {executor!r}: expected local or dask")
    summary = RunSummary()
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    with _environment(plan.env):
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
        progress = _Progress(remaining, workers if executor == "dask" else 1, log)
        units = [unit for unit, _ in todo]
        if units:
            if executor == "local":
                _run_local(plan, units, fail_fast, progress, summary)
            else:
                _run_dask(plan, units, fail_fast, progress, summary, scheduler, workers)
        if summary.failures and fail_fast:
            return summary
        _run_comparison(plan, summary, log)
    return summary


def _plan_record(plan: Plan) -> dict:
    return {"profile": plan.profile, "written": _now(), "notebooks_dir": str(plan.notebooks_dir),
            "suite": None if plan.suite is None else {"sizes": plan.suite.sizes, "dir": str(plan.suite.suite_dir),
                                                      "smoke": plan.suite.smoke},
            "units": {u.name: {"model": u.spec, "requested": f"{u.model}@{u.revision}",
                               "notebooks": {j.name: {"hash": j.hash, "parameters": j.parameters} for j in u.jobs}}
                      for u in plan.units},
            "comparison": [j.name for j in plan.comparison]}


# --------------------------------------------------------------------------------- dry run
def describe_plan(plan: Plan) -> str:
    """The text ``--dry-run`` prints: notebooks, suite state, units with what is pending, and the
    parameters of each notebook (``model``/``out_dir`` differ per unit and are shown as ``<unit>``).

    Suite units are resolved when their sizes are built; otherwise their revisions are shown as
    requested (resolved after the build).
    """
    lines = [f"profile {plan.profile}: {plan.description}".rstrip(": "), f"run folder: {plan.run_dir}",
             f"notebooks ({plan.notebooks_dir}):"]
    for stem in plan.notebooks:
        number = _number(stem)
        role = ("suite build" if number == SUITE_NUMBER else
                "comparison" if number >= FIRST_COMPARISON_NUMBER else "per unit")
        lines.append(f"  {stem} ({role})")
    if not plan.notebooks:
        lines.append("  (none)")
    if plan.suite is not None:
        missing = plan.suite.missing()
        how = f"by {plan.suite.job.name}" if plan.suite.job else "by pretrain.build_suite (no 00_* notebook)"
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
    return "\n".join(lines)
