"""Gradient differentials, the gradient-based task space and task subnetworks (paper Section 4).

For a minimal pair (good, bad), the *gradient differential* is
``d = grad_theta [log p(good) - log p(bad)]`` (scoring convention of :mod:`taskspace_utils.scoring`);
the *task differential* is the mean over a task's training pairs, ``D_t = (1/N) sum_i d_i``. The
*task subnetwork* ``M_t(k)`` is the top-``k`` fraction of parameters by ``|D_t|``; the *gradient
space* is the task x task cosine similarity of the ``D_t`` (whole model or per module).

Modules (one job each; every name is importable from this package):

- :mod:`.differentials` - pairs -> scored token spans -> per-pair margins (:func:`encode_pairs`,
  :func:`pair_margins`, :func:`batch_margins`, reused by FTGD; :func:`critical_exclusions`) and
  ``D_t`` by batched backward passes of the summed margins (:func:`task_differential`).
- :mod:`.per_pair` - the pairs' own differentials, streamed in chunks (``torch.func`` vmap or a
  loop: :func:`iter_pair_differentials`), streamed reductions (:func:`pair_differential_stats`)
  and a seeded CountSketch projection (:class:`ParameterSketch`).
- :mod:`.ghost_norms` - every pair's ``||d_i||`` from the same batched backward pass
  (:func:`pair_differential_norms`).
- :mod:`.subnetworks` - top-k subnetworks and their Jaccard space (:func:`subnetwork_masks`,
  :func:`pack_masks`, :func:`packed_jaccard_space`, :func:`mask_overlap_space`).
- :mod:`.space` - the gradient task space, whole model or per module (:func:`module_groups`,
  :func:`gradient_space`) and where tasks share signal (:func:`summarise_module_spaces`).
- :mod:`.stage` - the stage of notebook ``02_gradient_extraction``: :class:`GradientConfig`,
  :func:`extract_task_differentials` (all tasks of one model to disk, resumable),
  :func:`summarise_run`.
- :mod:`.summary` - what a task file keeps by default (``store="summary"``): the top entries of
  ``D_t`` (ties at the threshold included, so every top-k mask with k <= ``top_k`` is exact), and
  the gradient space accumulated while the differentials are in memory (``gram.safetensors``).
- :mod:`.store` - the run folder's files and reading them back (:func:`load_task_differentials`,
  :func:`load_gradient_spaces`, :func:`load_differential_stats`).

Functions that take ``(tokenizer, pairs)`` accept a pairs frame, a ``(goods, bads)`` tuple or an
:class:`~taskspace_utils.encoding.EncodedPairs` (:func:`taskspace_utils.encoding.encode`).
"""

from ..encoding import VARIANTS
from ..prefix_tree import supports_prefix_tree  # noqa: F401  (old access path, benchmarks)
from .differentials import (
    MARGIN_TREE_ROW_TOKENS,
    batch_margins,
    critical_exclusions,
    encode_pairs,
    pair_margins,
    task_differential,
)
from .ghost_norms import _GhostNorms, pair_differential_norms  # noqa: F401
from .per_pair import ParameterSketch, iter_pair_differentials, pair_differential_stats
from .space import METRICS, gradient_space, module_groups, summarise_module_spaces
from . import summary  # noqa: F401  (what a summary file keeps)
from .stage import GradientConfig, extract_task_differentials, recompute_differential, summarise_run
from .store import (  # noqa: F401
    _pairs_sha,
    _task_metadata,
    load_differential_stats,
    load_gradient_spaces,
    load_task_differentials,
    modules_to_long,
)
from .subnetworks import (
    mask_overlap_space,
    pack_masks,
    packed_jaccard_space,
    subnetwork_masks,
)

__all__ = [
    "VARIANTS",
    "GradientConfig",
    "critical_exclusions",
    "encode_pairs",
    "pair_margins",
    "batch_margins",
    "MARGIN_TREE_ROW_TOKENS",
    "task_differential",
    "iter_pair_differentials",
    "pair_differential_stats",
    "pair_differential_norms",
    "ParameterSketch",
    "subnetwork_masks",
    "mask_overlap_space",
    "pack_masks",
    "packed_jaccard_space",
    "module_groups",
    "gradient_space",
    "extract_task_differentials",
    "load_task_differentials",
    "summarise_run",
    "recompute_differential",
    "summarise_module_spaces",
    "load_gradient_spaces",
    "load_differential_stats",
    "modules_to_long",
]
