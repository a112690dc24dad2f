"""Parameter sharing: how much the task subnetworks of one phenomenon overlap, whole model and per module.

The subnetwork ``M_t(k)`` of a task is its top-``k`` parameters by ``|D_t|``; the gradient stage
saves the Jaccard overlap of every two tasks' masks (``mask_overlap.csv``) and the same restricted
to each module (``mask_overlap_modules.parquet``). Here they are summarised within vs. across
phenomena per unit.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .. import spaces as sp
from ..task_data import task_metadata
from .units import ComparisonConfig, _attempt, gradient_dir, unit_pairs

__all__ = ["parameter_sharing", "sharing_by_module"]


def parameter_sharing(units: pd.DataFrame, config: ComparisonConfig | None = None) -> pd.DataFrame:
    """Mean Jaccard overlap of task subnetworks (``mask_overlap.csv``) within the same phenomenon
    vs. across phenomena, per unit, with bootstrap CIs over task pairs
    (:func:`taskspace_utils.spaces.within_across`) and the permutation test of the overlap space
    against the phenomenon hypothesis."""
    config = config or ComparisonConfig()
    rows = []
    for unit, row in units.iterrows():
        path = gradient_dir(row["folder"]) / "mask_overlap.csv"
        if not path.exists():
            continue
        overlap = pd.read_csv(path, index_col=0)
        overlap.columns = overlap.columns.astype(str)
        meta = task_metadata(unit_pairs(row["folder"]))
        hyp = sp.hypothesis_space(meta.loc[list(overlap.index)], "phenomenon")
        wa = _attempt(f"subnetwork sharing of {unit}", sp.within_across, overlap, hyp,
                      n_boot=max(config.n_boot, 10), seed=config.seed, ci=config.ci)
        test = _attempt(f"subnetwork sharing test of {unit}", sp.compare_spaces, overlap, hyp,
                        method=config.method, n_permutations=config.n_permutations, seed=config.seed)
        if wa is None or test is None:
            continue
        rows.append({"unit": unit, **{k: v for k, v in wa.to_dict().items() if not isinstance(v, (list, np.ndarray))},
                     "rho_phenomenon": test.statistic, "p_value": test.p_value})
    return pd.DataFrame(rows).set_index("unit") if rows else pd.DataFrame()


def sharing_by_module(folder) -> pd.DataFrame:
    """Where in the network task subnetworks overlap: per module (embeddings, each layer's attention
    and MLP, head), the mean Jaccard overlap of the tasks' global top-``k`` masks restricted to that
    module, over task pairs of the same phenomenon, of different phenomena in one field, and of
    different fields (:func:`taskspace_utils.gradients.summarise_module_spaces`), from the gradient
    stage's ``mask_overlap_modules.parquet`` (empty when that stage did not write it)."""
    from ..gradients import load_gradient_spaces, summarise_module_spaces

    stage = gradient_dir(folder)
    if not (stage / "mask_overlap_modules.parquet").exists():
        return pd.DataFrame()
    spaces = load_gradient_spaces(stage, name="mask_overlap", by="module")
    return summarise_module_spaces(spaces, task_metadata(unit_pairs(folder)))
