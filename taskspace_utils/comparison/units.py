"""Reading a run for the comparison: its units, their task spaces and pairs, and the settings.

A unit's files are named by :mod:`taskspace_utils.layout`: the transfer spaces in ``probing/``,
the gradient and mask-overlap spaces in the gradient stage's folder (``gradients_sentence/``, or
``probing/differentials/`` when notebook 04 computed the differentials itself:
:meth:`~taskspace_utils.layout.UnitLayout.differentials_source`), the pairs in ``data/``.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

from .. import spaces as sp
from ..layout import UnitLayout, run_layout, unit_layout
from ..task_data import load_task_data

__all__ = [
    "ComparisonConfig",
    "HEADLINE",
    "SECONDARY",
    "SPACE_FILES",
    "SPACE_LABELS",
    "check_space",
    "discover_units",
    "load_unit_spaces",
    "unit_pairs",
    "gradient_dir",
]

#: Task spaces a unit may hold, headline first: name -> file (transfer spaces in ``probing/``, the
#: gradient space in :func:`gradient_dir`). ``transfer_margin`` is ``T[t, u]`` in mean margin
#: ``log p(good) - log p(bad)`` (nats), ``transfer_accuracy`` the same in accuracy (written as
#: ``task_space_transfer.csv``: the file names are those notebook 04 has always written).
SPACE_FILES = {
    "transfer_margin": "task_space_transfer_margin.csv",
    "transfer_accuracy": "task_space_transfer.csv",
    "gradient": "task_space_gradient.csv",
}
#: The headline task space of every comparison table, figure and finding: margin transfer (a
#: continuous measure; the accuracy space moves in steps of ``1 / n_test`` pairs).
HEADLINE = "transfer_margin"
#: The secondary view of the same probe: accuracy transfer.
SECONDARY = "transfer_accuracy"
#: How tables, figures and the report name each space.
SPACE_LABELS = {
    "transfer_margin": "margin transfer",
    "transfer_accuracy": "accuracy transfer (secondary)",
    "gradient": "gradient",
}
#: The names these spaces had before (``transfer`` was the accuracy space), for tables written then.
LEGACY_SPACE_NAMES = {"transfer": "transfer_accuracy"}


def check_space(name: str) -> str:
    """``name`` when it is a key of :data:`SPACE_FILES`; else ``ValueError`` naming the keys (and
    the new name of a former one)."""
    if name in SPACE_FILES:
        return name
    hint = f" ({name!r} is now {LEGACY_SPACE_NAMES[name]!r})" if name in LEGACY_SPACE_NAMES else ""
    raise ValueError(f"space={name!r}: use one of {list(SPACE_FILES)}{hint}")


def gradient_dir(folder) -> Path:
    """The gradient-stage folder of a unit: notebook 02's ``gradients_sentence/`` when it ran,
    else notebook 04's ``probing/differentials/``."""
    return unit_layout(folder).differentials_source("sentence")


@dataclass
class ComparisonConfig:
    """Settings of the comparison stage (notebook ``05_scale_and_checkpoints``).

    Attributes:
        method: rank correlation for every comparison (``"spearman"``, ``"pearson"``, ``"kendall"``).
        n_permutations: label permutations per Mantel test (p resolution ``1/(n+1)``).
        n_boot: task-bootstrap replicates for confidence intervals (0: no CIs).
        ci: confidence level of the intervals.
        seed: seed of permutations and bootstraps.
        lexical_controls: also report alignment partialling out lexical overlap (critical words and
            vocabularies, :func:`taskspace_utils.spaces.lexical_spaces`).
        modules: also summarise subnetwork sharing per module (from the gradient stage's
            ``mask_overlap_modules.parquet``; its subnetwork size is that stage's ``k``).
    """

    method: str = "spearman"
    n_permutations: int = 1000
    n_boot: int = 200
    ci: float = 0.95
    seed: int = 0
    lexical_controls: bool = True
    modules: bool = True


def _attempt(what: str, fn, *args, **kwargs):
    """Run one statistic; if the data are too few for it (a ``ValueError`` from
    :mod:`taskspace_utils.spaces`, e.g. fewer than 2 within-group pairs in a 3-task smoke run),
    warn with the reason and return ``None`` so the other tables are still produced."""
    try:
        return fn(*args, **kwargs)
    except ValueError as err:
        warnings.warn(f"{what}: skipped ({err})", stacklevel=2)
        return None


def discover_units(run_dir, units: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per unit folder (index ``unit``) with its ``data/model_info.json`` fields, ``folder``,
    ``step_rank`` (order within its family) and ``is_final`` (largest step of the family).

    ``units``: folder names to use (default: every unit of :meth:`RunLayout.units`). A named unit
    without ``data/model_info.json`` raises, naming it."""
    run = run_layout(run_dir)
    if units is None:
        layouts = run.units()
    else:
        layouts = [run.unit(u) for u in units]
        missing = [u.root.name for u in layouts if not u.model_info.exists()]
        if missing:
            raise FileNotFoundError(f"{run.root}: units without data/model_info.json (notebook 01 not run?): {missing}")
    if not layouts:
        raise FileNotFoundError(f"{run.root}: no unit folders with data/model_info.json")
    rows = []
    for unit in layouts:
        info = json.loads(unit.model_info.read_text(encoding="utf-8"))
        rows.append({"unit": unit.root.name, "folder": str(unit.root), **info})
    table = pd.DataFrame(rows).set_index("unit")
    table["step"] = pd.to_numeric(table["step"], errors="coerce")
    table["step_rank"] = table.groupby("family")["step"].rank(method="dense")
    table["is_final"] = table["step"] == table.groupby("family")["step"].transform("max")
    return table.sort_values(["n_parameters", "step"] if "n_parameters" in table else ["family", "step"])


def _space_path(unit: UnitLayout, name: str) -> Path:
    folder = gradient_dir(unit.root) if name == "gradient" else unit.probing
    return folder / SPACE_FILES[name]


def load_unit_spaces(folder) -> dict[str, pd.DataFrame]:
    """The task spaces present in a unit folder, ``{name: tasks x tasks frame}`` in the order of
    :data:`SPACE_FILES` (the headline ``transfer_margin`` first), tasks as labels."""
    unit = unit_layout(folder)
    out = {}
    for name in SPACE_FILES:
        path = _space_path(unit, name)
        if path.exists():
            space = pd.read_csv(path, index_col=0)
            space.columns = space.columns.astype(str)
            out[name] = space
    return out


def unit_pairs(folder) -> pd.DataFrame:
    """The unit's task data (notebook 01's ``data/pairs.parquet``)."""
    return load_task_data(unit_layout(folder).data)


def hypotheses_for(metadata: pd.DataFrame, tasks: Sequence[str]) -> dict[str, pd.DataFrame]:
    """The phenomenon and field hypothesis spaces over ``tasks``."""
    hyps = sp.hypothesis_spaces(metadata.loc[list(tasks)])
    return {k: v for k, v in hyps.items() if k in ("phenomenon", "field")}


def lexical_controls(pairs: pd.DataFrame, config: ComparisonConfig, tokenizer=None) -> dict[str, pd.DataFrame] | None:
    """The lexical control spaces (critical words and vocabularies) of ``pairs``, or ``None`` when
    ``config.lexical_controls`` is off."""
    if not config.lexical_controls:
        return None
    lexical = sp.lexical_spaces(pairs, tokenizer)
    return {k: lexical[k] for k in ("critical_words", "vocabulary") if k in lexical}
