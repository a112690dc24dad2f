"""Parameter sharing: how much the task subnetworks of one phenomenon overlap, whole model and per module.

The subnetwork ``M_t(k)`` of a task is its top-``k`` parameters by ``|D_t|``. The gradient stage
saves the Jaccard overlap ``|M_t n M_u| / |M_t u M_u|`` of every two tasks' masks over the whole
model (``mask_overlap.csv``) and, per module of :func:`taskspace_utils.gradients.module_groups`,
the overlap restricted to that module with the counts behind it (``mask_overlap_modules.parquet``:
``intersection``, ``size_task``, ``size_other``).

The headline is the overlap over the **non-embedding** parameters: the embedding (``embed_in``,
module ``embed``) and output (``embed_out``, module ``head``) matrices hold most of a small model's
parameters and their rows are selected by the words a task uses, so they are reported apart, as
their own scopes. Summed over a set of modules ``S`` the counts give the Jaccard over ``S``::

    J_S[t, u] = sum_{m in S} |M_t n M_u|_m / (sum_{m in S} |M_t|_m + sum_{m in S} |M_u|_m - sum_{m in S} |M_t n M_u|_m)

(NaN where the union is empty). The scopes (:data:`SCOPES`, headline first): ``non-embedding``
(every module but :data:`EMBEDDING_MODULES`, the same space as the claims' C2,
:func:`~.claims.overlap_space`), ``embedding (embed_in)``, ``output (embed_out)`` and ``all
parameters`` (``mask_overlap.csv``). A gradient stage that stored no counts gives no non-embedding
scope: the whole-model overlap is then the headline (:func:`headline_scope`).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from .. import spaces as sp
from ..task_data import task_metadata
from .units import ComparisonConfig, _attempt, gradient_dir, unit_pairs

__all__ = [
    "EMBEDDING_MODULES",
    "OVERLAP_COUNTS",
    "NON_EMBEDDING",
    "EMBEDDING",
    "OUTPUT",
    "ALL_PARAMETERS",
    "SCOPES",
    "scope_of_module",
    "headline_scope",
    "headline_sharing",
    "overlap_counts",
    "jaccard_from_counts",
    "sharing_spaces",
    "parameter_sharing",
    "sharing_by_module",
]

#: Modules of :func:`taskspace_utils.gradients.module_groups` left out of the non-embedding overlap.
EMBEDDING_MODULES = ("embed", "head")
#: Per-module counts that ``mask_overlap_modules.parquet`` must carry for the non-embedding overlap.
OVERLAP_COUNTS = ("intersection", "size_task", "size_other")
NON_EMBEDDING = "non-embedding"
EMBEDDING = "embedding (embed_in)"
OUTPUT = "output (embed_out)"
ALL_PARAMETERS = "all parameters"
#: The scopes of the sharing tables, in the order they are reported (the headline first).
SCOPES = (NON_EMBEDDING, EMBEDDING, OUTPUT, ALL_PARAMETERS)
_SEPARATE = {"embed": EMBEDDING, "head": OUTPUT}  # the modules of EMBEDDING_MODULES, by what they hold


def scope_of_module(module: str) -> str:
    """The scope label of a module of the gradient stage: ``embed`` -> ``embedding (embed_in)``,
    ``head`` -> ``output (embed_out)``, any other module of :data:`EMBEDDING_MODULES` its
    own name, and every other module ``non-embedding``."""
    if module in EMBEDDING_MODULES:
        return _SEPARATE.get(module, module)
    return NON_EMBEDDING


def headline_scope(scopes: Iterable[str]) -> str | None:
    """The headline among the ``scopes`` present: ``non-embedding`` when present, else ``all
    parameters`` (a gradient stage without per-module counts), else ``None``."""
    present = set(scopes)
    return next((s for s in (NON_EMBEDDING, ALL_PARAMETERS) if s in present), None)


def headline_sharing(sharing: pd.DataFrame) -> pd.DataFrame:
    """The rows of a :func:`parameter_sharing` table in its headline scope (:func:`headline_scope`
    over the whole table, so every unit is read on the same parameters). A table without a
    ``scope`` column (written before the scopes) is whole-model overlap and returned as it is."""
    if sharing.empty or "scope" not in sharing:
        return sharing
    return sharing[sharing["scope"] == headline_scope(sharing["scope"])]


def overlap_counts(folder) -> pd.DataFrame | None:
    """The per-module counts of a unit's gradient stage (``mask_overlap_modules.parquet``: one row
    per module and ordered task pair with ``intersection``, ``size_task``, ``size_other``), or
    ``None`` when the stage did not store them."""
    path = gradient_dir(folder) / "mask_overlap_modules.parquet"
    if not path.exists():
        return None
    long = pd.read_parquet(path)
    return long if set(OVERLAP_COUNTS) <= set(long.columns) else None


def jaccard_from_counts(counts: pd.DataFrame, modules: Iterable[str]) -> pd.DataFrame:
    """Tasks x tasks Jaccard over the parameters of ``modules`` from per-module ``counts``
    (:func:`overlap_counts`): ``J[t, u] = sum_m inter / (sum_m size_task + sum_m size_other -
    sum_m inter)`` over ``m`` in ``modules``, NaN where that union is empty. Tasks sorted."""
    modules = list(modules)
    part = counts[counts["module"].isin(modules)]
    if part.empty:
        raise ValueError(f"no counts for modules {modules}; the file has {sorted(counts['module'].unique())}")
    sums = part.groupby(["task", "other"])[list(OVERLAP_COUNTS)].sum()
    union = sums["size_task"] + sums["size_other"] - sums["intersection"]
    jac = (sums["intersection"] / union.where(union > 0)).unstack("other")
    jac.columns = jac.columns.astype(str)
    tasks = sorted(jac.index)
    return jac.loc[tasks, tasks]


def _subnetwork_fraction(counts: pd.DataFrame, modules: Iterable[str]) -> float:
    """Mean over tasks of the share of a task's subnetwork that lies in ``modules``:
    ``sum_{m in modules} |M_t|_m / sum_m |M_t|_m`` (sizes from the diagonal rows ``task == other``)."""
    sizes = counts[counts["task"] == counts["other"]].pivot_table(index="task", columns="module", values="size_task",
                                                                  aggfunc="sum")
    total = sizes.sum(axis=1)
    share = sizes[[m for m in modules if m in sizes.columns]].sum(axis=1) / total.where(total > 0)
    return float(share.mean())


def sharing_spaces(folder) -> dict[str, tuple[pd.DataFrame, float]]:
    """A unit's subnetwork-overlap spaces by scope (module docstring), in the order of
    :data:`SCOPES`: ``{scope: (tasks x tasks Jaccard, subnetwork_fraction)}`` where
    ``subnetwork_fraction`` is the mean share of a task's top-``k`` parameters inside the scope
    (NaN without counts). Without counts, the embedding and output scopes come from the per-module
    Jaccard values the stage wrote, and there is no non-embedding scope."""
    stage, out = gradient_dir(folder), {}
    counts = overlap_counts(folder)
    if counts is not None:
        modules = list(dict.fromkeys(counts["module"]))
        body = [m for m in modules if scope_of_module(m) == NON_EMBEDDING]
        if body:
            out[NON_EMBEDDING] = (jaccard_from_counts(counts, body), _subnetwork_fraction(counts, body))
        for module in (m for m in EMBEDDING_MODULES if m in modules):
            out[scope_of_module(module)] = (jaccard_from_counts(counts, [module]), _subnetwork_fraction(counts, [module]))
    elif (stage / "mask_overlap_modules.parquet").exists():
        long = pd.read_parquet(stage / "mask_overlap_modules.parquet")
        for module in (m for m in EMBEDDING_MODULES if m in set(long["module"])):
            frame = long[long["module"] == module].pivot(index="task", columns="other", values="value")
            frame.columns = frame.columns.astype(str)
            out[scope_of_module(module)] = (frame, float("nan"))
    if (stage / "mask_overlap.csv").exists():
        frame = pd.read_csv(stage / "mask_overlap.csv", index_col=0)
        frame.columns = frame.columns.astype(str)
        out[ALL_PARAMETERS] = (frame, 1.0)
    return {s: out[s] for s in sorted(out, key=lambda s: SCOPES.index(s) if s in SCOPES else len(SCOPES))}


def parameter_sharing(units: pd.DataFrame, config: ComparisonConfig | None = None) -> pd.DataFrame:
    """Subnetwork overlap within vs. across phenomena, per unit (index) and ``scope``
    (:func:`sharing_spaces`; the headline ``non-embedding`` first, then ``embedding (embed_in)``,
    ``output (embed_out)``, ``all parameters``).

    Columns: ``within_mean`` / ``across_mean`` (mean Jaccard over task pairs of the same phenomenon
    / of different phenomena), ``difference`` = within − across, their bootstrap CIs over task
    pairs (:func:`taskspace_utils.spaces.within_across`), ``n_within``, ``n_across``,
    ``rho_phenomenon`` and ``p_value`` (rank correlation of the overlap space with the phenomenon
    hypothesis, label permutations) and ``subnetwork_fraction`` (mean share of a task's subnetwork
    inside the scope). Read the headline with :func:`headline_sharing`."""
    config = config or ComparisonConfig()
    rows = []
    for unit, row in units.iterrows():
        scoped = sharing_spaces(row["folder"])
        if not scoped:
            continue
        meta = task_metadata(unit_pairs(row["folder"]))
        for scope, (overlap, fraction) in scoped.items():
            hyp = sp.hypothesis_space(meta.loc[list(overlap.index)], "phenomenon")
            label = f"subnetwork sharing of {unit}" + ("" if scope in (NON_EMBEDDING, ALL_PARAMETERS) else f" ({scope})")
            wa = _attempt(label, sp.within_across, overlap, hyp, n_boot=max(config.n_boot, 10), seed=config.seed,
                          ci=config.ci)
            test = _attempt(f"{label}: test", sp.compare_spaces, overlap, hyp, method=config.method,
                            n_permutations=config.n_permutations, seed=config.seed)
            if wa is None or test is None:
                continue
            stats = {k: v for k, v in wa.to_dict().items() if not isinstance(v, (list, np.ndarray))}
            rows.append({"unit": unit, "scope": scope, **stats, "rho_phenomenon": test.statistic,
                         "p_value": test.p_value, "subnetwork_fraction": fraction})
    return pd.DataFrame(rows).set_index("unit") if rows else pd.DataFrame()


def sharing_by_module(folder) -> pd.DataFrame:
    """Where in the network task subnetworks overlap, one row per ``module`` (index): first
    ``non-embedding`` (the Jaccard over all non-embedding modules, from the stored counts), then
    each non-embedding module in network order (each layer's attention and MLP, the final norm),
    then ``embedding (embed_in)`` and ``output (embed_out)``. Columns
    (:func:`taskspace_utils.gradients.summarise_module_spaces`): the mean Jaccard over task pairs
    (``all_pairs``), of the same phenomenon, of different phenomena in one field, and of different
    fields. Empty when the gradient stage wrote no ``mask_overlap_modules.parquet``."""
    from ..gradients import load_gradient_spaces, summarise_module_spaces

    stage = gradient_dir(folder)
    if not (stage / "mask_overlap_modules.parquet").exists():
        return pd.DataFrame()
    by_module = load_gradient_spaces(stage, name="mask_overlap", by="module")
    ordered = {}
    counts = overlap_counts(folder)
    body = [m for m in by_module if scope_of_module(m) == NON_EMBEDDING]
    if counts is not None and body:
        ordered[NON_EMBEDDING] = jaccard_from_counts(counts, body)
    ordered.update({m: by_module[m] for m in body})
    ordered.update({scope_of_module(m): by_module[m] for m in by_module if m not in body})
    table = summarise_module_spaces(ordered, task_metadata(unit_pairs(folder)))
    return table.rename_axis("module")
