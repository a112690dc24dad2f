"""The profile file (``profiles.yaml``) and the command-line overrides applied on top of it.

The schema is documented at the top of ``profiles.yaml``; :func:`load_profiles` checks its keys
(top level ``defaults``, ``profiles``, ``anchors``; per profile :data:`PROFILE_KEYS`) and
:func:`expand_models` its model entries (``name``, ``name@revision`` or ``{model, revisions,
notebooks}``). ``defaults`` is merged under every profile (``params``, ``notebooks`` and
``suite`` key by key, by :func:`taskspace_utils.pipeline.plan.build_plan`).

Model kinds: a folder that exists is ``local`` (no revision), a suite name (``tiny-m``) is
``suite`` (revisions ``stepN`` or the symbolic ``final``/``mid``/``early``, default ``final``),
anything else is a ``hub`` name (any revision, default none); malformed names are refused
(:func:`taskspace_utils.pipeline.validate.model_kind`). ``--set NOTEBOOK.param=value`` values are
read as YAML (:func:`parse_set`); what each parameter accepts is the table of :mod:`.parameters`.
A profile's ``data`` (a pairs file or folder) is resolved relative to the profile file.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["PlanError", "Overrides", "load_profiles", "parse_set", "expand_models", "SYMBOLIC_REVISIONS"]

#: Symbolic revisions of suite models, resolved from ``suite.json`` by
#: :func:`taskspace_utils.pipeline.revisions.resolve_suite_revision`.
SYMBOLIC_REVISIONS = ("final", "mid", "early")
#: Keys a profile (and ``defaults``) may hold.
PROFILE_KEYS = {"description", "models", "revisions", "suite", "params", "notebooks", "kernel", "execution_timeout",
                "data"}


class PlanError(ValueError):
    """A profile, override or notebook selection that cannot be planned (the message names it)."""


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
    data: ``"blimp"`` or a path to the user's minimal pairs (CSV/JSONL file or folder): passed as
        ``data_source`` to every notebook that declares it, with the file's tasks as ``tasks``
        (unless ``tasks`` is given too); overrides the profile's ``data`` key.
    """

    models: list[str] | None = None
    revisions: list[str] | None = None
    sizes: list[str] | None = None
    tasks: list[str] | None = None
    device: str | None = None
    notebooks: list[str] | None = None
    sets: list[tuple[str, str, Any]] = field(default_factory=list)
    data: str | None = None


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
    from .validate import did_you_mean, resolve_data_source

    allowed = PROFILE_KEYS
    for name, profile in [("defaults", data.get("defaults") or {}), *data["profiles"].items()]:
        if not isinstance(profile, dict):
            raise PlanError(f"{path}: profile {name!r} must be a mapping")
        bad = set(profile) - allowed
        if bad:
            hints = "".join(did_you_mean(b, allowed) for b in sorted(bad))
            raise PlanError(f"{path}: profile {name!r} has unknown keys {sorted(bad)}{hints}; allowed: {sorted(allowed)}")
        if profile.get("data") is not None:  # relative to the profile file, like its other paths
            profile["data"] = resolve_data_source(profile["data"], base=path.parent)
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


def _model_kind(name: str, what: str) -> str:
    from .validate import model_kind

    return model_kind(name, what)


def _matches_size(name: str, size: str) -> bool:
    base = name.rstrip("/").rpartition("/")[2]
    return size in (name, base) or base.endswith("-" + size)


def expand_models(profile: dict, name: str, overrides: Overrides) -> list[tuple[str, str, str | None, list | None]]:
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
        kind = _model_kind(model, "--models" if overrides.models else f"profile {name!r}: models")
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
            if kind == "hub" and revision is not None:
                from .validate import check_revision

                check_revision(model, revision, "--revisions" if overrides.revisions else f"profile {name!r}")
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
