"""The paper's three findings as tested contrasts: ``<run>/comparison/claims.csv``.

Weber et al. (2024) claim **C1** larger models generalise better to linguistic phenomena, **C2**
pre-training makes processing more distributed (tasks of one phenomenon share more parameters as
training goes on), **C3** the task spaces are stable through training, with no incisive stages.
Each becomes a contrast between units, one row per claim and comparison (:data:`COLUMNS`), with
the statistics of :mod:`.claim_statistics` (bootstrap CI over tasks and pre-training seeds,
task-exchange permutation p, minimal detectable difference = 2.8 x bootstrap SE) and a verdict by
the rule fixed in advance, :data:`RULE`:

    a contrast is ``supported`` when its 95 % CI excludes 0 in the claimed direction,
    ``contradicted`` when it excludes 0 the other way, ``inconclusive`` otherwise.

The headline space is the **margin** transfer space (``probing/task_space_transfer_margin.csv``).

- **C1**, at each size's final step: (a) the generalisation contrast ``g`` (within- minus
  across-phenomenon transfer relative to self-transfer,
  :func:`~.claim_statistics.generalisation_contrast`) and (b) phenomenon alignment controlled for
  lexical overlap (partial Spearman with the critical-word and vocabulary spaces as controls);
  contrasts largest − smallest size and each adjacent pair of sizes; beside them, for a size with
  several pre-training seeds, the seed spread (SD over seeds).
- **C2**, per size: within- minus across-phenomenon subnetwork overlap and its lexically
  controlled alignment (partial Mantel statistic) at each checkpoint minus step 0, and the trend of
  both over ``log10(1 + step)``. The overlap is over **non-embedding** parameters when the gradient
  stage's ``mask_overlap_modules.parquet`` carries per-module counts (:data:`~.sharing.OVERLAP_COUNTS`:
  ``J = sum_m |M_t n M_u|_m / (sum_m |M_t|_m + sum_m |M_u|_m - sum_m |M_t n M_u|_m)`` over the
  modules other than :data:`~.sharing.EMBEDDING_MODULES`), else the whole-model ``mask_overlap.csv``
  (the ``space`` column says which).
- **C3**, per family: rank agreement of each checkpoint's space with the next and with the final
  one, minus the noise ceiling — agreement of the same unit's space with its second probing seed
  (``probing/seed<N>/``) or with another pre-training seed's unit at the same step (when the
  family has no such twin, the agreement between the pre-training seeds of the size that has
  several, at its final step, labelled ``pre-training-seed (tiny-s @ step1000) ceiling``). An incisive
  stage is a consecutive agreement below the ceiling's lower CI bound; a summary row per family says
  whether one occurs. Without a ceiling the agreement is reported alone (kind ``reference``).

Columns: ``claim``, ``contrast`` (``tiny-l − tiny-s @ final``), ``statistic`` (its name),
``value``, ``ci_low``/``ci_high`` (95 % percentile interval), ``p_value`` (two-sided permutation
p), ``n_tasks``, ``n_seeds`` (units per side: pre-training seeds; probing seeds for a probing-seed
ceiling), ``verdict``, ``min_detectable`` (2.8 x bootstrap SE), ``kind`` (``contrast``,
``reference``: no verdict, ``summary``: the C3 incisive-stage count), ``space``, ``units``, ``note``.

Pre-training seeds: a unit's seed is its ``model_info.json`` ``seed`` field when present, else the
``-seed<N>`` suffix of its ``family`` (``tiny-s-seed1``: size ``tiny-s``, seed 1), else 0; units of
one size at one step with different seeds are resampled as seeds.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from .. import spaces as sp
from ..layout import unit_layout
from ..task_data import task_metadata
from . import claim_statistics as cs
from .claim_statistics import RULE
from .sharing import EMBEDDING_MODULES, OVERLAP_COUNTS, jaccard_from_counts
from .units import (
    HEADLINE,
    SPACE_FILES,
    ComparisonConfig,
    _attempt,
    gradient_dir,
    lexical_controls,
    unit_pairs,
)

__all__ = [
    "COLUMNS",
    "EMBEDDING_MODULES",
    "HEADLINE",
    "OVERLAP_COUNTS",
    "RULE",
    "VERDICT_RULE",
    "claims_table",
    "model_roles",
    "overlap_space",
]  # fmt: skip

#: The rule the report prints (alias of :data:`RULE`).
VERDICT_RULE = RULE
#: Columns of ``claims.csv``.
COLUMNS = ["claim", "contrast", "statistic", "value", "ci_low", "ci_high", "p_value", "n_tasks", "n_seeds",
           "verdict", "min_detectable", "kind", "space", "units", "note"]  # fmt: skip

_SEED = re.compile(r"^(?P<size>.+?)-seed(?P<seed>\d+)$")
_MINUS = "−"
_BORROWED = "ceiling borrowed from the pre-training seeds of another size or step (none at this one)"


def model_roles(units: pd.DataFrame) -> pd.DataFrame:
    """``units`` (:func:`~taskspace_utils.comparison.discover_units`) with ``size`` and ``seed``
    columns (module docstring)."""
    out = units.copy()
    sizes, seeds = [], []
    for unit, row in out.iterrows():
        family = str(row.get("family", unit))
        match = _SEED.match(family)
        sizes.append(match["size"] if match else family)
        given = row.get("seed", None)
        seeds.append(int(given) if given is not None and pd.notna(given) else int(match["seed"]) if match else 0)
    out["size"], out["seed"] = sizes, seeds
    return out


def overlap_space(folder, non_embedding: bool = True) -> tuple[pd.DataFrame, str] | None:
    """A unit's subnetwork-overlap space and what it covers: the non-embedding Jaccard from the
    per-module counts (module docstring) when ``non_embedding`` and they are stored, else the
    whole-model ``mask_overlap.csv``; ``None`` when the unit has neither."""
    stage = gradient_dir(folder)
    path = stage / "mask_overlap_modules.parquet"
    if non_embedding and path.exists():
        long = pd.read_parquet(path)
        if set(OVERLAP_COUNTS) <= set(long.columns):
            modules = [m for m in long["module"].unique() if m not in EMBEDDING_MODULES]
            return jaccard_from_counts(long, modules), "overlap (non-embedding)"
    path = stage / "mask_overlap.csv"
    if not path.exists():
        return None
    frame = pd.read_csv(path, index_col=0)
    frame.columns = frame.columns.astype(str)
    return frame, "overlap (all parameters)"


class _Reader:
    """Cached reads of a run's units: headline spaces, probing-seed spaces, overlaps, metadata, controls."""

    def __init__(self, roles: pd.DataFrame, config: ComparisonConfig):
        self.roles, self.config, self._cache = roles, config, {}

    def _get(self, key, make):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def _read(self, path: Path) -> pd.DataFrame | None:
        if not path.exists():
            return None
        frame = pd.read_csv(path, index_col=0)
        frame.columns = frame.columns.astype(str)
        return frame

    def space(self, unit):
        return self._get(("space", unit), lambda: self._read(unit_layout(self.roles.loc[unit, "folder"]).probing
                                                              / SPACE_FILES[HEADLINE]))

    def seed_spaces(self, unit) -> list[pd.DataFrame]:
        def make():
            probing = unit_layout(self.roles.loc[unit, "folder"]).probing
            found = [self._read(p / SPACE_FILES[HEADLINE]) for p in sorted(probing.glob("seed[0-9]*")) if p.is_dir()]
            return [f for f in found if f is not None]
        return self._get(("seeds", unit), make)

    def overlap(self, unit, non_embedding: bool):
        return self._get(("overlap", unit, non_embedding), lambda: overlap_space(self.roles.loc[unit, "folder"], non_embedding))

    def pairs(self, unit):
        return self._get(("pairs", unit), lambda: unit_pairs(self.roles.loc[unit, "folder"]))

    def meta(self, unit, tasks):
        return self._get(("meta", unit), lambda: task_metadata(self.pairs(unit))).loc[list(tasks)]

    def controls(self, unit, tasks) -> list[np.ndarray]:
        def make():
            pairs = self.pairs(unit)
            ctrl = lexical_controls(pairs[pairs.task.isin(tasks)], self.config) or {}
            return [c.loc[list(tasks), list(tasks)].to_numpy(float) for c in ctrl.values()]
        return self._get(("controls", unit, tuple(tasks)), make)


def _common(frames) -> list[str]:
    sets = [set(f.index) & set(f.columns) for f in frames]
    return sorted(set.intersection(*sets)) if sets else []


def _arrays(frames, tasks) -> list[np.ndarray]:
    return [f.loc[tasks, tasks].to_numpy(float) for f in frames]


def _alignment_name(config: ComparisonConfig, controls) -> str:
    method = config.method if config.method in ("spearman", "pearson") else "spearman"
    return f"phenomenon alignment{' | lexical' if controls else ''} ({'partial ' if controls else ''}{method})"


def _space_stats(reader, unit, tasks, config, kind: str) -> list[tuple[str, object]]:
    """The statistics of one claim on ``tasks``: ``[(name, stat)]`` (see the module docstring)."""
    meta = reader.meta(unit, tasks)
    phen = meta["phenomenon"].to_numpy(dtype=object)
    hyp = sp.hypothesis_space(meta, "phenomenon").to_numpy(float)
    controls = reader.controls(unit, tasks)
    method = config.method if config.method in ("spearman", "pearson") else "spearman"
    align = (_alignment_name(config, controls), cs.alignment_statistic(hyp, controls, method))
    if kind == "transfer":
        first = ("generalisation: (within − across phenomenon) / self transfer",
                 lambda m, idx: cs.generalisation_contrast(m[0], phen, idx))
    else:
        first = ("within − across phenomenon overlap (Jaccard)", lambda m, idx: cs.within_minus_across(m[0], phen, idx))
    return [first, align]


def _c1_jobs(roles, reader, config):
    finals = roles[roles["is_final"]]
    finals = finals[[reader.space(u) is not None for u in finals.index]]
    order = finals.groupby("size")["n_parameters"].mean().sort_values() if "n_parameters" in finals else None
    sizes = list(order.index) if order is not None else sorted(finals["size"].unique())
    by_size = {s: list(finals.index[finals["size"] == s]) for s in sizes}
    pairs = [(sizes[-1], sizes[0])] + [(sizes[i + 1], sizes[i]) for i in range(len(sizes) - 1)] if len(sizes) >= 2 else []
    for big, small in dict.fromkeys(pairs):
        a, b = by_size[big], by_size[small]
        tasks = _common([reader.space(u) for u in a + b])
        steps = f"steps {sorted(set(finals.loc[a, 'step']))} vs {sorted(set(finals.loc[b, 'step']))}"
        for name, stat in _space_stats(reader, a[0], tasks, config, "transfer"):
            yield (dict(claim="C1", contrast=f"{big} {_MINUS} {small} @ final", statistic=name, kind="contrast",
                        units=f"{';'.join(a)} vs {';'.join(b)}", note=steps),
                   lambda stat=stat, a=a, b=b, tasks=tasks: cs.contrast(
                       stat, [(x,) for x in _arrays([reader.space(u) for u in a], tasks)],
                       [(x,) for x in _arrays([reader.space(u) for u in b], tasks)], **_boot(config)))
    for size in sizes:
        if len(by_size[size]) < 2:
            continue
        units = by_size[size]
        tasks = _common([reader.space(u) for u in units])
        for name, stat in _space_stats(reader, units[0], tasks, config, "transfer"):
            yield (dict(claim="C1", contrast=f"seed spread {size} @ final", statistic=f"SD over seeds of {name}",
                        kind="reference", units=";".join(units), note="pre-training seeds of one size: the noise floor"),
                   lambda stat=stat, units=units, tasks=tasks: cs.spread(
                       stat, [(x,) for x in _arrays([reader.space(u) for u in units], tasks)],
                       **{k: v for k, v in _boot(config).items() if k != "n_permutations"}))


def _boot(config):
    return dict(n_boot=config.n_boot, n_permutations=config.n_permutations, seed=config.seed, ci=config.ci)


def _c2_jobs(roles, reader, config):
    for size, group in roles.groupby("size", sort=False):
        have = [u for u in group.index if reader.overlap(u, True) is not None]
        if not have:
            continue
        non_emb = all(reader.overlap(u, True)[1].endswith("(non-embedding)") for u in have)
        space = reader.overlap(have[0], non_emb)[1]
        frame = lambda u, ne=non_emb: reader.overlap(u, ne)[0]
        by_step = {s: list(g.index) for s, g in group.loc[have].groupby("step")}
        tasks = _common([frame(u) for u in have])
        stats_ = _space_stats(reader, have[0], tasks, config, "overlap")
        side = lambda units, frame=frame, tasks=tasks: [(x,) for x in _arrays([frame(u) for u in units], tasks)]
        if 0 in by_step:
            for step in [s for s in sorted(by_step) if s != 0]:
                for name, stat in stats_:
                    yield (dict(claim="C2", contrast=f"{size} @ step{int(step)} {_MINUS} step0", statistic=name,
                                kind="contrast", space=space,
                                units=f"{';'.join(by_step[step])} vs {';'.join(by_step[0])}"),
                           lambda stat=stat, step=step, side=side, by_step=by_step: cs.contrast(
                               stat, side(by_step[step]), side(by_step[0]), **_boot(config)))
        if len(by_step) >= 3:
            steps = sorted(by_step)
            for name, stat in stats_:
                yield (dict(claim="C2", contrast=f"{size}: trend over log10(1 + step), steps {[int(s) for s in steps]}",
                            statistic=f"slope of {name}", kind="contrast", space=space,
                            units=";".join(u for s in steps for u in by_step[s])),
                       lambda stat=stat, steps=steps, side=side, by_step=by_step: cs.trend(
                           stat, steps, [side(by_step[s]) for s in steps], **_boot(config)))


def _ceilings(roles, reader, unit, other, borrowed):
    """``[(kind, reference unit, the other checkpoint, [(space, space), ...])]`` for an agreement of
    ``unit`` with ``other``: the probing-seed and the pre-training-seed ceilings available, each as
    the pairs of spaces whose agreement is the ceiling. The pre-training-seed ceiling is the
    agreement of the reference unit with another seed's unit of its size at its step; when no
    such twin exists, the agreement between the pre-training seeds of the size that has several
    (at its final step: ``tiny-s`` vs. ``tiny-s-seed1``, ...), a ceiling borrowed
    from another size (or step) and labelled with it: ``borrowed`` is :func:`_seed_groups` of the run, computed once."""
    out = []
    for ref, far in ((unit, other), (other, unit)):
        if reader.seed_spaces(ref):
            out.append(("probing-seed", ref, far, [(reader.space(ref), s) for s in reader.seed_spaces(ref)]))
            break
    for ref, far in ((unit, other), (other, unit)):
        r = roles.loc[ref]
        twins = roles[(roles["size"] == r["size"]) & (roles["step"] == r["step"]) & (roles["seed"] != r["seed"])]
        twins = [reader.space(t) for t in twins.index if reader.space(t) is not None]
        if twins:
            out.append(("pre-training-seed", ref, far, [(reader.space(ref), t) for t in twins]))
            return out
    if borrowed:
        (size, step), members = borrowed[0]
        first, *rest = members
        out.append((f"pre-training-seed ({size} @ step{int(step)})", unit, other,
                    [(reader.space(first), reader.space(m)) for m in rest]))
    return out


def _seed_groups(roles, reader) -> list[tuple[tuple[str, int], list[str]]]:
    """Units of one size at one step with two or more pre-training seeds (and a space), the groups
    at a size's final step first, then by size and step; within a group, the lowest seed first."""
    have = roles[[reader.space(u) is not None for u in roles.index]]
    groups = []
    for (size, step), group in have.groupby(["size", "step"], sort=True):
        if group["seed"].nunique() >= 2:
            members = list(group.sort_values("seed").drop_duplicates("seed").index)
            groups.append((not bool(group["is_final"].all()), size, step, members))
    return [((size, step), members) for _, size, step, members in sorted(groups, key=lambda g: g[:3])]


def _c3_jobs(roles, reader, config):
    method = config.method if config.method in ("spearman", "pearson") else "spearman"
    stat = lambda m, idx: cs.agreement(m[0], m[1], idx, method)
    borrowed = _seed_groups(roles, reader)
    for family, group in roles.groupby("family", sort=False):
        order = [u for u in group.sort_values("step").index if reader.space(u) is not None]
        for i, unit in enumerate(order[:-1]):
            targets = [("next", order[i + 1])] + ([("final", order[-1])] if order[-1] != order[i + 1] else [])
            for label, other in targets:
                pair = f"{family}: {method}(step{int(roles.loc[unit, 'step'])}, step{int(roles.loc[other, 'step'])})"
                base = dict(claim="C3", statistic=f"rank agreement with the {label} checkpoint", units=f"{unit};{other}",
                            family=family, target=label)
                ceilings = _ceilings(roles, reader, unit, other, borrowed)
                if not ceilings:
                    tasks = _common([reader.space(unit), reader.space(other)])
                    yield (dict(base, contrast=pair, kind="reference", note="no noise ceiling in this run"),
                           lambda unit=unit, other=other, tasks=tasks: cs.estimate(
                               stat, [tuple(_arrays([reader.space(unit), reader.space(other)], tasks))],
                               **{k: v for k, v in _boot(config).items() if k != "n_permutations"}))
                for kind, ref, far, pairs in ceilings:
                    tasks = _common([reader.space(ref), reader.space(far), *[s for p in pairs for s in p]])

                    def run(ref=ref, far=far, pairs=pairs, tasks=tasks):
                        r, x = _arrays([reader.space(ref), reader.space(far)], tasks)
                        return cs.contrast(stat, [(r, x)], [tuple(_arrays(list(p), tasks)) for p in pairs], **_boot(config))
                    yield (dict(base, contrast=f"{pair} {_MINUS} {kind} ceiling", kind="contrast",
                                statistic=f"rank agreement with the {label} checkpoint minus the {kind.split(' (')[0]} ceiling",
                                note=(_BORROWED if "(" in kind else "")),
                           run)


def _row(template: dict, res: cs.ContrastResult, direction: int = 1) -> dict:
    row = {k: v for k, v in template.items() if k in COLUMNS}
    row.update(value=res.value, ci_low=res.ci_low, ci_high=res.ci_high, p_value=res.p_value, n_tasks=res.n_tasks,
               n_seeds=res.n_seeds, min_detectable=res.min_detectable,
               verdict=cs.verdict(res.ci_low, res.ci_high, direction) if template["kind"] == "contrast" else "reference")
    if template["claim"] == "C3" and template["kind"] == "contrast":
        low, high = res.side_b_ci
        interval = f"[{low:+.3f}, {high:+.3f}]" if np.isfinite(low) else "(no CI: too few tasks)"
        row["note"] = "; ".join(filter(None, [f"agreement {res.side_a:+.3f}; ceiling {res.side_b:+.3f} {interval}",
                                               template.get("note")]))
    return row


def _c3_summary(done: list[tuple[dict, cs.ContrastResult]]) -> list[dict]:
    """One row per family: how many consecutive agreements fall below the ceiling's lower bound."""
    rows, families = [], dict.fromkeys(t["family"] for t, _ in done if t["claim"] == "C3" and t["target"] == "next")
    for family in families:
        nexts = [(t, r) for t, r in done if t["claim"] == "C3" and t.get("family") == family and t["target"] == "next"]
        tested = [(t, r) for t, r in nexts if t["kind"] == "contrast" and np.isfinite(r.side_b_ci[0])]
        pairs = list(dict.fromkeys(t["units"] for t, _ in nexts))
        lows = {p: [(r.side_a, r.side_b_ci[0]) for t, r in tested if t["units"] == p] for p in pairs}
        covered = [p for p in pairs if lows[p]]
        incisive = [p for p in covered if all(value < low for value, low in lows[p])]
        verdict = "contradicted" if incisive else ("supported" if pairs and covered == pairs else "inconclusive")
        rows.append(dict(claim="C3", contrast=f"{family}: incisive stages", statistic=(
            "number of consecutive agreements below the noise ceiling's lower CI bound"), value=float(len(incisive)),
            n_tasks=max((r.n_tasks for _, r in tested), default=np.nan), n_seeds=max((r.n_seeds for _, r in tested), default=np.nan),
            verdict=verdict, kind="summary", space=HEADLINE,
            note=(f"incisive: {'; '.join(incisive)}" if incisive else "none") + f"; {len(covered)} of {len(pairs)} consecutive pairs had a ceiling"))  # fmt: skip
    return rows


def claims_table(units: pd.DataFrame, config: ComparisonConfig | None = None) -> pd.DataFrame:
    """The claims table of a run (module docstring; columns :data:`COLUMNS`) from its
    :func:`~taskspace_utils.comparison.discover_units` table. A contrast the data cannot support
    (too few tasks or groups) is skipped with a warning naming it."""
    from tqdm.auto import tqdm

    config = config or ComparisonConfig()
    roles = model_roles(units)
    reader = _Reader(roles, config)
    jobs = [(t | {"space": t.get("space", HEADLINE)}, fn)
            for build in (_c1_jobs, _c2_jobs, _c3_jobs) for t, fn in build(roles, reader, config)]
    done = []
    for template, fn in tqdm(jobs, desc="claims", unit="contrast"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            res = _attempt(f"claim {template['claim']} {template['contrast']} ({template['statistic']})", fn)
        if res is not None:
            done.append((template, res))
    rows = [_row(t, r) for t, r in done] + _c3_summary(done)
    return pd.DataFrame(rows, columns=COLUMNS)
