"""Task spaces, hypothesis spaces and the statistics that compare them (similarity probing).

A **task space** is a ``pandas.DataFrame`` of shape ``(n_tasks, n_tasks)``: the index (named
``"tuned"``) is the source task t, the columns (named ``"evaluated"``) the target task u, and entry
``S[t, u]`` is how much tuning on t changes the score on u (the transfer space; not symmetric) or
the similarity of the two tasks' gradients (a gradient space; symmetric). The diagonal is the
self-transfer. A **hypothesis space** has the same shape and says which tasks *should* be close:
1 within a group, 0 across (or any graded similarity, e.g. lexical overlap). Similarity probing
(Weber, Jumelet, Bruni & Hupkes, ACL 2024, arXiv 2406.06441) asks how well a model's space agrees
with linguistically motivated hypotheses; this package adds the controls for shared words that a
fair answer needs (a random initialisation already aligns with the phenomenon hypothesis through
lexical overlap).

Modules (everything is importable from ``taskspace_utils.spaces``)
--------------------------------------------------------------------
- :mod:`~taskspace_utils.spaces.frames`: :func:`check_space`, :func:`align_spaces`,
  :func:`drop_incomplete_tasks`, :func:`space_entries` (the compared entries of several spaces
  side by side, long format), :func:`varies_off_diagonal` (the one "constant off the diagonal?"
  check), :func:`drop_constant_spaces` (keep the spaces it accepts), and the entry convention below.
- :mod:`~taskspace_utils.spaces.hypotheses`: :func:`hypothesis_space`, :func:`hypothesis_spaces`
  (same paradigm / phenomenon / field), :func:`load_hypothesis_space` (a user's labelled task x
  task matrix, CSV or DataFrame), :func:`relation_labels` (the one labeller of how two tasks
  relate: self / same phenomenon / same field / other).
- :mod:`~taskspace_utils.spaces.lexical`: :func:`critical_words`, :func:`lexical_spaces` (the
  shared-word confound: overlap of the words or token ids that differ between good and bad
  sentences, and of whole vocabularies, between every two tasks).
- :mod:`~taskspace_utils.spaces.statistics` (Mantel-style, labels permuted; seeded):
  :func:`compare_spaces` (rank correlation of a space with a hypothesis or another space,
  permutation p-value, optional *partial* correlation controlling for other hypothesis spaces),
  :func:`regress_space` (OLS of the entries on several hypotheses, standardised coefficients with
  permutation p-values).
- :mod:`~taskspace_utils.spaces.uncertainty`: :func:`within_across` (mean transfer within vs.
  across groups with bootstrap CIs), :func:`difference_with_uncertainty` (e.g. trained-minus-
  untrained alignment, bootstrap over tasks), :func:`alignment_table` (every space x hypothesis,
  raw and controlled, as one results frame), :func:`compare_prediction` (Pearson, Spearman and
  R^2 of a predicted vs. a measured space).
- :mod:`~taskspace_utils.spaces.transforms`: :func:`normalise_rows`, :func:`symmetrise`,
  :func:`generalisation_index` (how far transfer from a tuned paradigm reaches its phenomenon,
  its field and beyond, relative to self-transfer), :func:`task_distances`, :func:`embed_mds`
  (distances between tasks and their classical MDS).

Entry convention used throughout: for a non-symmetric space both ordered entries ``(t, u)`` and
``(u, t)``, t != u, enter the comparison (``n (n - 1)`` values); when every matrix involved is
symmetric only the upper triangle is used (``n (n - 1) / 2`` values; duplicating it would not
change Pearson or Spearman but would change Kendall's tau and the bootstrap). ``include_diagonal``
adds the ``n`` self entries.
"""

from . import frames, hypotheses, lexical, statistics, transforms, uncertainty
from .frames import (
    align_spaces,
    check_space,
    drop_constant_spaces,
    drop_incomplete_tasks,
    space_entries,
    varies_off_diagonal,
)
from .hypotheses import LEVELS, RELATIONS, hypothesis_space, hypothesis_spaces, load_hypothesis_space, relation_labels
from .lexical import critical_words, lexical_spaces
from .statistics import SpaceComparison, SpaceRegression, compare_spaces, regress_space
from .transforms import embed_mds, generalisation_index, normalise_rows, symmetrise, task_distances
from .uncertainty import (
    AlignmentDifference,
    WithinAcross,
    alignment_table,
    compare_prediction,
    difference_with_uncertainty,
    within_across,
)

__all__ = [
    name for module in (frames, hypotheses, lexical, statistics, uncertainty, transforms) for name in module.__all__
]
