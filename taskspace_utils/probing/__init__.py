"""Similarity probing: the transfer task space (Weber et al. 2024, the paper's similarity probing).

``eval1`` (score every evaluated task's test pairs), then for each tuned task t: FTGD-tune on t's
training pairs and ``eval2`` (score again with t's delta applied, then reverted); the transfer
``T[t, u] = eval2_t(u) - eval1(u)`` in accuracy and in mean margin (nats). Beyond the paper: the
first-order prediction ``P[t, u] = < D_u, delta_t >`` of the margin transfer.

Modules
-------
- :mod:`.config`: :class:`ProbingConfig` (every setting, with an embedded
  :class:`~taskspace_utils.ftgd.FTGDConfig`), :func:`select_pairs` (the pairs a probe uses).
- :mod:`.evaluation`: :func:`prepare_evaluation` (:class:`PreparedEvaluation`): the reusable,
  pre-collated test set (the cost of a probe).
- :mod:`.probe`: :func:`probe_transfer` -> :class:`TransferResult` (with every tuned model's
  validation-perplexity change, FTGD's premise); :func:`load_transfer`: read a run folder back (its
  files are listed there); :func:`load_transfer_deltas`.
- :mod:`.first_order`: :func:`first_order_prediction`, :func:`differential_store`,
  :func:`probe_differentials` (the differentials a probe reads: notebook 02's, else its own).
- :mod:`.seeds`: :func:`resplit_pairs`, :func:`compare_seeds`: a second probing seed and its
  agreement with the first.
"""

from .config import PROBING_FTGD, ProbingConfig, select_pairs
from .evaluation import PreparedEvaluation, prepare_evaluation
from .first_order import differential_store, first_order_prediction, probe_differentials
from .probe import (
    BASELINE_COLUMNS,
    BASELINE_FILE,
    CONFIG_FILE,
    DELTAS_DIR,
    METRICS,
    PPL_COLUMNS,
    ROWS_DIR,
    VAL_PPL_FILE,
    TransferResult,
    load_transfer,
    load_transfer_deltas,
    probe_transfer,
)
from .seeds import compare_seeds, resplit_pairs

__all__ = [
    "METRICS",
    "PROBING_FTGD",
    "CONFIG_FILE",
    "BASELINE_FILE",
    "VAL_PPL_FILE",
    "PPL_COLUMNS",
    "ROWS_DIR",
    "DELTAS_DIR",
    "BASELINE_COLUMNS",
    "ProbingConfig",
    "PreparedEvaluation",
    "TransferResult",
    "prepare_evaluation",
    "select_pairs",
    "probe_transfer",
    "load_transfer",
    "load_transfer_deltas",
    "differential_store",
    "first_order_prediction",
    "probe_differentials",
    "resplit_pairs",
    "compare_seeds",
]
