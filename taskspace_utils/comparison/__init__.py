"""Comparing task spaces across model sizes and pre-training checkpoints (paper Section 6).

A *run* folder holds one *unit* folder per model@revision (written by notebooks 01–04 through
``run_all.py``; files named by :mod:`taskspace_utils.layout`): ``data/`` (``model_info.json``,
``eval_blimp.csv``, ``pairs.parquet``), the gradient stage's ``gradients_<variant>/`` and the
probe's ``probing/``. This package reads them all and answers the paper's three questions, always
against the untrained initialisation (step 0) as baseline:

1. **Generalisation to phenomena** — alignment of each space with the phenomenon and field
   hypotheses, raw and controlling for lexical overlap (:func:`unit_alignment`), the
   trained-minus-step-0 difference with a task-bootstrap CI (:func:`baseline_differences`), and the
   generalisation index of the margin transfer space (:func:`generalisation_summary`).
2. **Parameter sharing** — overlap (Jaccard) of the task subnetworks within vs. across phenomena,
   over the non-embedding parameters with the embedding (``embed_in``) and output (``embed_out``)
   matrices reported apart, for the whole model (:func:`parameter_sharing`, one row per ``scope``)
   and per module (:func:`sharing_by_module`).
3. **Stability** — agreement of each checkpoint's space with the next checkpoint's and with the
   final one (:func:`stability`).

The paper's three claims as tested contrasts with CIs, permutation p-values, minimal detectable
differences and verdicts by a rule fixed in advance (:data:`RULE`): :func:`claims_table`
(:mod:`.claims`, statistics in :mod:`.claim_statistics`), written as ``comparison/claims.csv``.

Modules: :mod:`.units` (reading a run), :mod:`.alignment`, :mod:`.sharing`, :mod:`.stability`,
:mod:`.claims` and :mod:`.claim_statistics` (the claims table), :mod:`.findings` (all tables, and
the findings in words).

The headline task space everywhere is the **margin** transfer space, :data:`HEADLINE` =
``"transfer_margin"``; the accuracy transfer space (``"transfer_accuracy"``, :data:`SECONDARY`) is a
secondary view and the gradient space a third (:data:`SPACE_FILES`, labels :data:`SPACE_LABELS`).

Public functions
----------------
- :class:`ComparisonConfig`; :func:`discover_units`, :func:`load_unit_spaces`; :data:`HEADLINE`,
  :data:`SECONDARY`, :data:`SPACE_FILES`, :data:`SPACE_LABELS`.
- :func:`unit_alignment`, :func:`baseline_differences`, :func:`generalisation_summary`,
  :func:`parameter_sharing`, :func:`headline_sharing`, :func:`sharing_by_module`, :func:`stability`.
- :func:`claims_table`, :data:`RULE` (the verdict rule), :func:`model_roles` (size and
  pre-training seed of each unit), :func:`overlap_space` (non-embedding subnetwork overlap).
- :func:`compare_units` — all of the above for a run, written atomically to
  ``<run_dir>/comparison/*.csv`` beside its config; :func:`describe_findings` — plain sentences
  stating what the numbers say.
"""

from __future__ import annotations

from .alignment import (
    baseline_difference,
    baseline_differences,
    describe_alignment,
    generalisation_summary,
    probe_alignment,
    unit_alignment,
)
from .claims import RULE, claims_table, model_roles, overlap_space
from .findings import compare_units, describe_findings
from .premise import PREMISE_MAX_MEDIAN_CHANGE, plot_premise, premise_table, probe_premise
from .sharing import SCOPES, headline_sharing, parameter_sharing, sharing_by_module
from .stability import stability
from .units import (
    HEADLINE,
    SECONDARY,
    SPACE_FILES,
    SPACE_LABELS,
    ComparisonConfig,
    discover_units,
    gradient_dir,
    load_unit_spaces,
    unit_pairs,
)

__all__ = [
    "ComparisonConfig",
    "HEADLINE",
    "SECONDARY",
    "SPACE_FILES",
    "SPACE_LABELS",
    "discover_units",
    "gradient_dir",
    "load_unit_spaces",
    "unit_pairs",
    "unit_alignment",
    "baseline_differences",
    "generalisation_summary",
    "probe_alignment",
    "baseline_difference",
    "describe_alignment",
    "parameter_sharing",
    "headline_sharing",
    "SCOPES",
    "sharing_by_module",
    "stability",
    "claims_table",
    "RULE",
    "model_roles",
    "overlap_space",
    "compare_units",
    "describe_findings",
    "premise_table", "probe_premise", "plot_premise", "PREMISE_MAX_MEDIAN_CHANGE",
]
