"""Stability: agreement of each checkpoint's task space with the next checkpoint's and the final one's."""

from __future__ import annotations

import pandas as pd

from .. import spaces as sp
from .units import ComparisonConfig, _attempt, load_unit_spaces

__all__ = ["stability"]


def stability(units: pd.DataFrame, config: ComparisonConfig | None = None) -> pd.DataFrame:
    """Per family and space, for each checkpoint (ordered by step): rank correlation (with its
    permutation p-value) of its space with the next checkpoint's and with the final checkpoint's.
    Columns ``family``, ``unit``, ``step``, ``space`` (the headline ``transfer_margin`` first, in
    the order of :data:`~.units.SPACE_FILES`), ``rho_next``, ``p_next``, ``rho_final``, ``p_final``."""
    config = config or ComparisonConfig()
    rows = []
    for family, group in units.groupby("family", sort=False):
        group = group.sort_values("step")
        if len(group) < 2:
            continue
        loaded = {u: load_unit_spaces(r["folder"]) for u, r in group.iterrows()}
        order = list(group.index)
        final = order[-1]
        for i, unit in enumerate(order[:-1]):
            for name, space in loaded[unit].items():
                row = {"family": family, "unit": unit, "step": group.loc[unit, "step"], "space": name}
                for label, other in (("next", order[i + 1]), ("final", final)):
                    if name in loaded[other]:
                        res = _attempt(f"stability of {unit} {name}", sp.compare_spaces, space, loaded[other][name],
                                       method=config.method, n_permutations=config.n_permutations, seed=config.seed)
                        if res is not None:
                            row[f"rho_{label}"], row[f"p_{label}"] = res.statistic, res.p_value
                rows.append(row)
    return pd.DataFrame(rows)
