"""Generalisation to phenomena: alignment of a unit's spaces with the hypotheses, against step 0.

For every space of a unit: the rank correlation of its off-diagonal entries with the phenomenon
and field hypothesis spaces (Mantel test; partial, controlling for lexical overlap), with a task
bootstrap CI (:func:`unit_alignment`); the trained-minus-step-0 difference of that alignment
(:func:`baseline_differences`); the generalisation index of a transfer space
(:func:`generalisation_summary`). Every table lists the spaces in the order of
:data:`~.units.SPACE_FILES`: the headline margin transfer space first (:data:`~.units.HEADLINE`),
then the accuracy transfer space (secondary) and the gradient space. :func:`probe_alignment` and
:func:`baseline_difference` are the same computations on the spaces a probing notebook holds in
memory.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from .. import spaces as sp
from ..task_data import task_metadata
from .units import (
    HEADLINE,
    SPACE_FILES,
    ComparisonConfig,
    _attempt,
    check_space,
    hypotheses_for,
    lexical_controls,
    load_unit_spaces,
    unit_pairs,
)

__all__ = [
    "unit_alignment",
    "baseline_differences",
    "generalisation_summary",
    "probe_alignment",
    "baseline_difference",
    "describe_alignment",
]

log = logging.getLogger(__name__)


def unit_alignment(folder, config: ComparisonConfig | None = None) -> pd.DataFrame:
    """Alignment of every space of one unit with the phenomenon and field hypotheses.

    Rows from :func:`taskspace_utils.spaces.alignment_table`: ``space``, ``hypothesis``,
    ``controlled`` (``"none"`` or the lexical controls partialled out), ``statistic`` (rank
    correlation over off-diagonal entries), ``p_value`` (label permutations), ``ci_low``/``ci_high``
    (task bootstrap, when ``n_boot``)."""
    config = config or ComparisonConfig()
    spaces = load_unit_spaces(folder)
    if not spaces:
        return pd.DataFrame()
    pairs = unit_pairs(folder)
    meta = task_metadata(pairs)
    tasks = sorted(set.intersection(*[set(s.index) for s in spaces.values()]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        table = _attempt(
            f"alignment of {Path(folder).name}", sp.alignment_table,
            spaces, hypotheses_for(meta, tasks), controls=lexical_controls(pairs[pairs.task.isin(tasks)], config),
            method=config.method, n_permutations=config.n_permutations, n_boot=config.n_boot, seed=config.seed,
            ci=config.ci,
        )
    return table if table is not None else pd.DataFrame()


def baseline_differences(units: pd.DataFrame, config: ComparisonConfig | None = None) -> pd.DataFrame:
    """Alignment of every checkpoint minus that of the same family's step-0 unit, per space and
    hypothesis, raw and lexically controlled, with a task-bootstrap CI
    (:func:`taskspace_utils.spaces.difference_with_uncertainty`). Families without a step-0 unit
    are skipped (logged)."""
    config = config or ComparisonConfig()
    rows = []
    for family, group in units.groupby("family", sort=False):
        base = group[group["step"] == 0]
        if base.empty:
            log.info("family %s has no step-0 unit: no baseline difference", family)
            continue
        base_spaces = load_unit_spaces(base["folder"].iloc[0])
        for unit, row in group[group["step"] != 0].iterrows():
            spaces = load_unit_spaces(row["folder"])
            pairs = unit_pairs(row["folder"])
            meta = task_metadata(pairs)
            for name in [n for n in SPACE_FILES if n in spaces and n in base_spaces]:
                tasks = sorted(set(spaces[name].index) & set(base_spaces[name].index))
                controls = lexical_controls(pairs[pairs.task.isin(tasks)], config)
                for hname, hyp in hypotheses_for(meta, tasks).items():
                    for ctrl in ([None, controls] if controls else [None]):
                        res = _attempt(
                            f"baseline difference of {unit} {name}", sp.difference_with_uncertainty,
                            spaces[name], base_spaces[name], hyp, method=config.method, controls=ctrl,
                            n_boot=max(config.n_boot, 1), seed=config.seed, ci=config.ci,
                        )
                        if res is None:
                            continue
                        rows.append({"unit": unit, "family": family, "step": row["step"], "space": name,
                                     "hypothesis": hname, "controlled": ", ".join(ctrl) if ctrl else "none",
                                     "trained": res.statistic_a, "step0": res.statistic_b,
                                     "difference": res.difference, "ci_low": res.ci_low, "ci_high": res.ci_high,
                                     "n_tasks": res.n_tasks})
    return pd.DataFrame(rows)


def generalisation_summary(units: pd.DataFrame, space: str = HEADLINE) -> pd.DataFrame:
    """Per unit (index), the mean generalisation index of its ``space`` (default the headline
    margin transfer space; ``"transfer_accuracy"`` for the secondary view), named in the ``space``
    column.

    :func:`taskspace_utils.spaces.generalisation_index`: for a tuned task ``t`` with self-transfer
    ``T[t, t] > 0``, the mean of ``T[t, u] / T[t, t]`` over the other paradigms ``u`` of its
    phenomenon (``same_phenomenon``), over the other phenomena of its field (``same_field``) and
    over other fields (``other_field``); the columns are the means over tuned tasks, beside
    ``mean_self_transfer``, ``n_tasks`` and ``n_undefined`` (tasks whose self-transfer was not
    positive, left out of the means). An unknown ``space`` raises ``ValueError``."""
    check_space(space)
    rows = []
    for unit, row in units.iterrows():
        spaces = load_unit_spaces(row["folder"])
        if space not in spaces:
            continue
        meta = task_metadata(unit_pairs(row["folder"]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gi = _attempt(f"generalisation index of {unit}", sp.generalisation_index, spaces[space], meta)
        if gi is None:
            continue
        overall = gi.attrs.get("overall", {})
        rows.append({"unit": unit, "space": space, **{k: float(v) for k, v in overall.items()},
                     "mean_self_transfer": float(gi["self"].mean()), "n_undefined": int(gi.attrs.get("n_undefined", 0)),
                     "n_tasks": len(gi)})
    return pd.DataFrame(rows).set_index("unit") if rows else pd.DataFrame()


def probe_alignment(compared: Mapping[str, pd.DataFrame], metadata: pd.DataFrame, pairs: pd.DataFrame,
                    tasks, *, n_permutations: int = 1000, n_boot: int = 1000, seed: int = 0,
                    min_tasks_for_ci: int = 10):
    """Alignment of the spaces of one probe (``compared``: name -> space) with every hypothesis
    space of ``metadata`` over ``tasks``, raw and partialling out the lexical controls (critical
    words and vocabularies of ``pairs``). Hypotheses, controls and spaces that are constant or
    incomplete off the diagonal over ``tasks`` are left out (a rank correlation cannot use them);
    bootstrap CIs only with at least ``min_tasks_for_ci`` tasks (a bootstrap over fewer says little
    and can draw a single task).

    Returns ``(table, hypotheses, controls)``: the :func:`taskspace_utils.spaces.alignment_table`
    rows and the hypothesis and control spaces used."""
    tasks = list(tasks)
    hypotheses = sp.drop_constant_spaces(sp.hypothesis_spaces(metadata), tasks)
    controls = sp.drop_constant_spaces(lexical_controls(pairs[pairs.task.isin(tasks)], ComparisonConfig()), tasks)
    compared = sp.drop_constant_spaces(dict(compared), tasks)
    boots = n_boot if len(tasks) >= min_tasks_for_ci else 0
    table = sp.alignment_table(compared, hypotheses, controls, n_permutations=n_permutations, n_boot=boots, seed=seed)
    return table, hypotheses, controls


def describe_alignment(table: pd.DataFrame, space: str, hypothesis: str, controlled: str) -> str:
    """One row of an alignment table in words: ``Spearman +0.31 (p = 0.012, 95% CI [0.10, 0.52])``,
    or ``not available``."""
    if table.empty:
        return "not available"
    row = table[(table.space == space) & (table.hypothesis == hypothesis) & (table.controlled == controlled)]
    if row.empty:
        return "not available"
    r = row.iloc[0]
    ci = f", 95% CI [{r.ci_low:.2f}, {r.ci_high:.2f}]" if "ci_low" in r and np.isfinite(r.ci_low) else ""
    return f"Spearman {r.statistic:+.2f} (p = {r.p_value:.3f}{ci})"


def baseline_difference(space: pd.DataFrame, baseline: pd.DataFrame, hypothesis: pd.DataFrame,
                        controls: Mapping[str, pd.DataFrame] | None, *, n_boot: int, seed: int) -> pd.DataFrame:
    """Alignment of ``space`` minus that of ``baseline`` with ``hypothesis``, raw and (when
    ``controls``) lexically controlled, with a task-bootstrap CI
    (:func:`taskspace_utils.spaces.difference_with_uncertainty`); one row per ``alignment``."""
    rows = []
    for label, ctrl in (("raw", None), ("lexically controlled", controls or None)):
        diff = sp.difference_with_uncertainty(space, baseline, hypothesis, controls=ctrl, n_boot=n_boot, seed=seed)
        rows.append({"alignment": label, **diff.to_dict()})
    return pd.DataFrame(rows)
