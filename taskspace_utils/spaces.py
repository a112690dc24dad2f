"""Task spaces, hypothesis spaces and the statistics that compare them (similarity probing).

A **task space** is a ``pandas.DataFrame`` of shape ``(n_tasks, n_tasks)``: the index (named
``"tuned"``) is the source task t, the columns (named ``"evaluated"``) the target task u, and entry
``S[t, u]`` is how much tuning on t changes the score on u (the transfer space; not symmetric) or
the similarity of the two tasks' gradients (a gradient space; symmetric). The diagonal is the
self-transfer. A **hypothesis space** has the same shape and says which tasks *should* be close:
1 within a group, 0 across (or any graded similarity, e.g. lexical overlap). Similarity probing
(Weber, Jumelet, Bruni & Hupkes, ACL 2024, arXiv 2406.06441) asks how well a model's space agrees
with linguistically motivated hypotheses; this module adds the controls for shared words that a
fair answer needs (a random initialisation already aligns with the phenomenon hypothesis through
lexical overlap).

Contents
--------
Building hypothesis spaces
  - :func:`hypothesis_space`, :func:`hypothesis_spaces`: same paradigm / phenomenon / field.
  - :func:`load_hypothesis_space`: a user's labelled task x task matrix (CSV or DataFrame).
  - :func:`lexical_spaces`: the shared-word confound: overlap of the words (or token ids) that differ
    between good and bad sentences, and of whole vocabularies, between every two tasks.
Comparing spaces (Mantel-style, labels permuted; seeded)
  - :func:`compare_spaces`: rank correlation of a space with a hypothesis (or another space) over
    off-diagonal entries, permutation p-value, optional *partial* correlation controlling for other
    hypothesis spaces.
  - :func:`regress_space`: OLS of the entries on several hypotheses, standardised coefficients with
    permutation p-values.
  - :func:`within_across`: mean transfer within vs. across groups with bootstrap CIs.
  - :func:`difference_with_uncertainty`: e.g. trained-minus-untrained alignment, bootstrap over tasks.
  - :func:`alignment_table`: every space x hypothesis, raw and controlled, as one results frame.
  - :func:`compare_prediction`: Pearson, Spearman and R^2 of a predicted vs. a measured space.
Transforming and summarising
  - :func:`generalisation_index`: how far transfer from a tuned paradigm reaches its phenomenon, its
    field and beyond, relative to self-transfer.
  - :func:`normalise_rows`, :func:`symmetrise`, :func:`drop_incomplete_tasks`, :func:`align_spaces`,
    :func:`space_entries` (the compared entries of several spaces side by side, long format).
  - :func:`task_distances`, :func:`embed_mds`: distances between tasks and their classical MDS.

Entry convention used throughout: for a non-symmetric space both ordered entries ``(t, u)`` and
``(u, t)``, t != u, enter the comparison (``n (n - 1)`` values); when every matrix involved is
symmetric only the upper triangle is used (``n (n - 1) / 2`` values; duplicating it would not
change Pearson or Spearman but would change Kendall's tau and the bootstrap). ``include_diagonal``
adds the ``n`` self entries.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import warnings
from collections import Counter
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

__all__ = [
    "LEVELS",
    "SpaceComparison",
    "SpaceRegression",
    "WithinAcross",
    "AlignmentDifference",
    "align_spaces",
    "space_entries",
    "check_space",
    "drop_incomplete_tasks",
    "hypothesis_space",
    "hypothesis_spaces",
    "load_hypothesis_space",
    "critical_words",
    "lexical_spaces",
    "compare_spaces",
    "regress_space",
    "within_across",
    "generalisation_index",
    "normalise_rows",
    "symmetrise",
    "difference_with_uncertainty",
    "alignment_table",
    "compare_prediction",
    "task_distances",
    "embed_mds",
]

LEVELS = ("paradigm", "phenomenon", "field")
_METHODS = ("spearman", "pearson", "kendall")
_ALTERNATIVES = ("greater", "less", "two-sided")
_WORD = re.compile(r"\w+(?:'\w+)*")  # words, keeping inner apostrophes ("can't"); punctuation dropped
_EPS = 1e-12  # tolerance when counting permuted statistics "at least as extreme"


# --------------------------------------------------------------------------------------------
# validation and alignment
# --------------------------------------------------------------------------------------------
def _name_frame(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.astype(float)
    frame.index.name, frame.columns.name = "tuned", "evaluated"
    return frame


def check_space(space: pd.DataFrame, name: str = "space") -> pd.DataFrame:
    """Check that ``space`` is a square, numeric task x task frame; return it as float, columns
    in the order of the index. Raises ``ValueError`` naming ``name`` and the offending tasks."""
    if not isinstance(space, pd.DataFrame):
        raise TypeError(f"{name}: expected a pandas DataFrame (tasks x tasks), got {type(space).__name__}")
    if space.index.has_duplicates or space.columns.has_duplicates:
        dup = sorted(set(space.index[space.index.duplicated()]) | set(space.columns[space.columns.duplicated()]))
        raise ValueError(f"{name}: duplicated task labels {dup}")
    rows, cols = set(space.index), set(space.columns)
    if rows != cols:
        raise ValueError(
            f"{name}: not square over the same tasks; only as rows: {sorted(rows - cols)}, "
            f"only as columns: {sorted(cols - rows)}"
        )
    bad = [c for c in space.columns if not pd.api.types.is_numeric_dtype(space[c])]
    if bad:
        raise ValueError(f"{name}: non-numeric values in column(s) {bad}")
    return _name_frame(space.loc[:, list(space.index)])


def align_spaces(*spaces: pd.DataFrame, names: Sequence[str] | None = None) -> list[pd.DataFrame]:
    """Restrict every space to the tasks they all share, in the order of the first space.

    Raises ``ValueError`` if fewer than 3 tasks are shared (a rank correlation over the entries of
    a 2 x 2 matrix is meaningless), naming the shared tasks."""
    names = list(names) if names is not None else [f"space {i}" for i in range(len(spaces))]
    checked = [check_space(s, n) for s, n in zip(spaces, names)]
    common = set(checked[0].index)
    for s in checked[1:]:
        common &= set(s.index)
    tasks = [t for t in checked[0].index if t in common]
    if len(tasks) < 3:
        raise ValueError(f"{', '.join(names)} share only {len(tasks)} task(s) {tasks}; need at least 3")
    return [s.loc[tasks, tasks] for s in checked]


def drop_incomplete_tasks(space: pd.DataFrame) -> pd.DataFrame:
    """Drop, repeatedly, the task with the most NaN off-diagonal entries (row + column) until none
    is left; e.g. after :func:`normalise_rows` turned rows with non-positive self-transfer to NaN."""
    space = check_space(space)
    while True:
        values = space.to_numpy().copy()
        np.fill_diagonal(values, 0.0)
        missing = np.isnan(values).sum(0) + np.isnan(values).sum(1)
        if missing.max(initial=0) == 0:
            return space
        drop = space.index[int(np.argmax(missing))]
        space = space.drop(index=drop, columns=drop)


def _metadata_for(tasks: Sequence[str], metadata: pd.DataFrame) -> pd.DataFrame:
    needed = {"phenomenon", "field"}
    if not needed <= set(metadata.columns):
        raise ValueError(f"metadata: needs columns {sorted(needed)}, has {list(metadata.columns)}")
    missing = [t for t in tasks if t not in metadata.index]
    if missing:
        raise ValueError(f"metadata has no row for task(s) {missing}")
    return metadata.loc[list(tasks), ["phenomenon", "field"]]


def _is_symmetric(values: np.ndarray) -> bool:
    return bool(np.allclose(values, values.T, equal_nan=True, rtol=1e-10, atol=1e-12))


def _entry_index(n: int, symmetric: bool, include_diagonal: bool) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of the compared entries (see the module docstring)."""
    if symmetric:
        return np.triu_indices(n, k=0 if include_diagonal else 1)
    keep = np.ones((n, n), bool) if include_diagonal else ~np.eye(n, dtype=bool)
    return np.nonzero(keep)


def space_entries(spaces: Mapping[str, pd.DataFrame], include_diagonal: bool = False) -> pd.DataFrame:
    """The compared entries of several spaces side by side (module-docstring convention, spaces
    aligned on common tasks): columns ``tuned``, ``evaluated`` and one column per named space."""
    aligned = align_spaces(*spaces.values(), names=list(spaces))
    values = [a.to_numpy() for a in aligned]
    rows, cols = _entry_index(len(values[0]), all(_is_symmetric(v) for v in values), include_diagonal)
    tasks = aligned[0].index.to_numpy()
    frame = pd.DataFrame({"tuned": tasks[rows], "evaluated": tasks[cols]})
    for name, v in zip(spaces, values):
        frame[name] = v[rows, cols]
    return frame


def _as_named(controls, prefix: str) -> dict[str, pd.DataFrame]:
    if controls is None:
        return {}
    if isinstance(controls, pd.DataFrame):
        return {f"{prefix}_0": controls}
    if isinstance(controls, Mapping):
        return dict(controls)
    return {f"{prefix}_{i}": c for i, c in enumerate(controls)}


# --------------------------------------------------------------------------------------------
# hypothesis spaces
# --------------------------------------------------------------------------------------------
def hypothesis_space(metadata: pd.DataFrame, level: str = "phenomenon") -> pd.DataFrame:
    """Binary hypothesis space ``H[t, u] = 1 if label(t) == label(u) else 0``.

    ``level`` is ``"paradigm"`` (each task its own group: the identity matrix), ``"phenomenon"`` or
    ``"field"`` (the metadata column). Tasks in the order of ``metadata.index``."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    tasks = list(metadata.index)
    labels = np.asarray(tasks if level == "paradigm" else _metadata_for(tasks, metadata)[level], dtype=object)
    values = (labels[:, None] == labels[None, :]).astype(float)
    return _name_frame(pd.DataFrame(values, index=tasks, columns=tasks))


def hypothesis_spaces(metadata: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """All metadata hypotheses: ``{"paradigm": ..., "phenomenon": ..., "field": ...}``."""
    return {level: hypothesis_space(metadata, level) for level in LEVELS}


def load_hypothesis_space(
    path_or_frame: str | Path | pd.DataFrame, tasks: Sequence[str] | None = None
) -> pd.DataFrame:
    """Read a user-supplied task x task hypothesis (CSV: first column and header row are task
    names), validate it and return it restricted to ``tasks`` (in that order) if given.

    Errors (``ValueError``, naming the file and the task): not square over the same tasks,
    a non-numeric or missing value (with its row and column), a task of ``tasks`` absent."""
    if isinstance(path_or_frame, pd.DataFrame):
        source, frame = "hypothesis frame", path_or_frame.copy()
    else:
        source = str(path_or_frame)
        frame = pd.read_csv(path_or_frame, index_col=0)
    frame.index = frame.index.map(str)
    frame.columns = frame.columns.map(str)
    rows, cols = set(frame.index), set(frame.columns)
    if rows != cols or frame.index.has_duplicates or frame.columns.has_duplicates:
        raise ValueError(
            f"{source}: hypothesis must be a square matrix over the same tasks; only as rows: "
            f"{sorted(rows - cols)}, only as columns: {sorted(cols - rows)}, "
            f"duplicated: {sorted(set(frame.index[frame.index.duplicated()]))}"
        )
    numeric = frame.apply(pd.to_numeric, errors="coerce")
    bad = numeric.isna().to_numpy()
    if bad.any():
        i, j = map(int, np.argwhere(bad)[0])
        raise ValueError(
            f"{source}: non-numeric or missing value {frame.iat[i, j]!r} at row (task) "
            f"{frame.index[i]!r}, column (task) {frame.columns[j]!r} ({int(bad.sum())} such value(s))"
        )
    numeric = numeric.loc[:, list(numeric.index)]
    if tasks is not None:
        missing = [t for t in tasks if t not in rows]
        if missing:
            raise ValueError(f"{source}: hypothesis has no row/column for task(s) {missing}")
        numeric = numeric.loc[list(tasks), list(tasks)]
    return _name_frame(numeric)


# --------------------------------------------------------------------------------------------
# lexical hypothesis spaces (the shared-word confound)
# --------------------------------------------------------------------------------------------
def critical_words(good: Sequence, bad: Sequence) -> set:
    """Items that differ between two sequences: everything in a non-``equal`` opcode of
    ``difflib.SequenceMatcher(None, good, bad, autojunk=False)``, from both sides.

    Strings are first split into lower-cased words (``\\w+`` runs, keeping inner apostrophes;
    punctuation is dropped): ``critical_words("The cat is here.", "The cat are here.") ==
    {"is", "are"}``. Lists (e.g. token ids) are compared as they are."""
    if isinstance(good, str):
        good, bad = _WORD.findall(good.lower()), _WORD.findall(bad.lower())
    out: set = set()
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, good, bad, autojunk=False).get_opcodes():
        if tag != "equal":
            out.update(good[i1:i2])
            out.update(bad[j1:j2])
    return out


def _encode_all(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids without special tokens for a ``tokenizers.Tokenizer``, a transformers tokenizer
    or any callable ``str -> sequence of ids``."""
    if hasattr(tokenizer, "encode_batch"):  # tokenizers.Tokenizer
        return [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
    if hasattr(tokenizer, "encode") and callable(tokenizer):  # transformers tokenizer
        return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    return [list(tokenizer(t)) for t in texts]


def _overlap(counts: list[Counter], tasks: list[str], measure: str) -> pd.DataFrame:
    """Similarity of per-task bags: ``jaccard`` = |A n B| / |A u B| of the supports (0 if both
    empty); ``weighted`` = sum_w min(f_A, f_B) / sum_w max(f_A, f_B) of the relative frequencies
    f = count / total (Ruzicka); ``cosine`` of the count vectors."""
    vocab = {w: k for k, w in enumerate(sorted({w for c in counts for w in c}, key=str))}
    matrix = np.zeros((len(tasks), len(vocab)))
    for i, c in enumerate(counts):
        for w, v in c.items():
            matrix[i, vocab[w]] = v
    if measure == "jaccard":
        present = (matrix > 0).astype(float)
        inter = present @ present.T
        union = present.sum(1)[:, None] + present.sum(1)[None, :] - inter
        values = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    elif measure == "weighted":
        freq = matrix / np.maximum(matrix.sum(1, keepdims=True), 1.0)
        values = np.empty((len(tasks), len(tasks)))
        for i in range(len(tasks)):
            mx = np.maximum(freq[i], freq).sum(1)
            values[i] = np.divide(np.minimum(freq[i], freq).sum(1), mx, out=np.zeros(len(tasks)), where=mx > 0)
    elif measure == "cosine":
        norm = np.linalg.norm(matrix, axis=1, keepdims=True)
        unit = np.divide(matrix, norm, out=np.zeros_like(matrix), where=norm > 0)
        values = unit @ unit.T
    else:
        raise ValueError(f"measure must be 'jaccard', 'weighted' or 'cosine', got {measure!r}")
    return _name_frame(pd.DataFrame(values, index=tasks, columns=tasks))


def lexical_spaces(
    pairs: pd.DataFrame,
    tokenizer: Callable | None = None,
    weighted: bool = False,
    vocabulary_measure: str = "jaccard",
) -> dict[str, pd.DataFrame]:
    """Lexical-overlap hypothesis spaces between every two tasks of a pairs frame.

    ``pairs`` has one row per minimal pair with columns ``task``, ``good``, ``bad``. Returns

    - ``"critical_words"``: Jaccard ``|C_t n C_u| / |C_t u C_u|`` of the sets of words that differ
      between good and bad sentences (:func:`critical_words`, pooled over the task's pairs); with
      ``weighted=True`` the weighted Jaccard (Ruzicka) of their relative frequencies (how many of a
      task's pairs contrast the word), so a word contrasted once does not count like ``herself``;
    - ``"vocabulary"``: overlap of the words of all good and bad sentences of each task,
      ``vocabulary_measure`` = ``"jaccard"`` (sets), ``"weighted"`` or ``"cosine"`` (word counts);
    - with a ``tokenizer``: ``"critical_tokens"`` and ``"token_vocabulary"``, the same on token ids
      (diff on id sequences encoded without special tokens).

    Tasks in order of first appearance; diagonal 1 (0 for a task with an empty set)."""
    missing = {"task", "good", "bad"} - set(pairs.columns)
    if missing:
        raise ValueError(f"pairs: missing column(s) {sorted(missing)}")
    tasks = list(dict.fromkeys(pairs["task"]))
    task_col = pairs["task"].to_numpy()
    good, bad = pairs["good"].astype(str).tolist(), pairs["bad"].astype(str).tolist()
    units = {"words": ([_WORD.findall(s.lower()) for s in good], [_WORD.findall(s.lower()) for s in bad])}
    if tokenizer is not None:
        units["tokens"] = (_encode_all(tokenizer, good), _encode_all(tokenizer, bad))
    names = {"words": ("critical_words", "vocabulary"), "tokens": ("critical_tokens", "token_vocabulary")}
    out: dict[str, pd.DataFrame] = {}
    for unit, (good_seq, bad_seq) in units.items():
        crit = {t: Counter() for t in tasks}
        vocab = {t: Counter() for t in tasks}
        for task, g, b in zip(task_col, good_seq, bad_seq):
            crit[task].update(critical_words(list(g), list(b)))
            vocab[task].update(g)
            vocab[task].update(b)
        crit_name, vocab_name = names[unit]
        out[crit_name] = _overlap([crit[t] for t in tasks], tasks, "weighted" if weighted else "jaccard")
        out[vocab_name] = _overlap([vocab[t] for t in tasks], tasks, vocabulary_measure)
    return out


# --------------------------------------------------------------------------------------------
# comparing spaces
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class SpaceComparison:
    """Result of :func:`compare_spaces`. ``null`` holds the permuted statistics."""

    statistic: float
    p_value: float
    method: str
    partial: bool
    controls: tuple[str, ...]
    alternative: str
    n_permutations: int
    n_tasks: int
    n_entries: int
    symmetric: bool
    include_diagonal: bool
    seed: int
    null: np.ndarray = dataclasses.field(repr=False)

    def to_dict(self) -> dict:
        """Plain values (no null distribution), e.g. for a row of a results frame."""
        out = dataclasses.asdict(self)
        out.pop("null")
        out["controls"] = ", ".join(self.controls)
        return out


def _prepare(spaces: list[pd.DataFrame], include_diagonal: bool, names: list[str]):
    aligned = align_spaces(*spaces, names=names)
    values = [s.to_numpy() for s in aligned]
    symmetric = all(_is_symmetric(v) for v in values)
    rows, cols = _entry_index(len(aligned[0]), symmetric, include_diagonal)
    vectors = [v[rows, cols] for v in values]
    for name, vec in zip(names, vectors):
        if np.isnan(vec).any():
            bad = sorted({aligned[0].index[i] for i in np.concatenate([rows, cols])[np.tile(np.isnan(vec), 2)]})
            raise ValueError(
                f"{name}: {int(np.isnan(vec).sum())} NaN entries (tasks involved: {bad[:10]}"
                f"{' ...' if len(bad) > 10 else ''}); drop them first, e.g. with drop_incomplete_tasks"
            )
        if np.ptp(vec) == 0:
            raise ValueError(
                f"{name}: all compared entries are equal ({vec[0]}), so no correlation is defined "
                "(the paradigm hypothesis is the identity: its off-diagonal is all 0; use include_diagonal=True)"
            )
    return aligned, values, symmetric, rows, cols, vectors


def _columns(vectors: Sequence[np.ndarray], m: int) -> np.ndarray:
    """Control vectors as the columns of an (m, k) matrix; (m, 0) when there are none."""
    return np.column_stack(vectors) if len(vectors) else np.empty((m, 0))


def _transform(vec: np.ndarray, method: str) -> np.ndarray:
    return stats.rankdata(vec) if method == "spearman" else np.asarray(vec, float)


def _orthonormal_basis(z: np.ndarray) -> np.ndarray:
    """Orthonormal basis of the span of ``[1, z]`` (columns), dropping dependent directions."""
    design = np.column_stack([np.ones(len(z)), z]) if z.size else np.ones((len(z), 1))
    u, s, _ = np.linalg.svd(design, full_matrices=False)
    return u[:, s > s[0] * 1e-10]


def _correlate(x: np.ndarray, y: np.ndarray, z: np.ndarray, method: str) -> float:
    """(Partial) correlation of entry vectors x, y given control columns z (m x k, maybe k = 0)."""
    if method == "kendall":
        if z.size:
            raise ValueError("partial correlation (controls) is defined for 'spearman' and 'pearson' only")
        return float(stats.kendalltau(x, y).statistic)
    if not z.size:
        fn = stats.spearmanr if method == "spearman" else stats.pearsonr
        return float(fn(x, y).statistic)
    basis = _orthonormal_basis(np.column_stack([_transform(c, method) for c in z.T]))
    residuals = []
    for v in (_transform(x, method), _transform(y, method)):
        e = v - basis @ (basis.T @ v)
        if np.linalg.norm(e) <= 1e-9 * np.linalg.norm(v - v.mean()):  # v lies in the span of the controls
            return float("nan")
        residuals.append(e)
    ex, ey = residuals
    return float(ex @ ey / (np.linalg.norm(ex) * np.linalg.norm(ey)))


def _permutations(n: int, n_permutations: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.permuted(np.tile(np.arange(n), (n_permutations, 1)), axis=1)


def _p_value(null: np.ndarray, observed: float, alternative: str) -> float:
    """Permutation p-value ``(1 + #{null at least as extreme}) / (1 + n_permutations)``
    (never 0; Phipson & Smyth 2010)."""
    if len(null) == 0 or not np.isfinite(observed):
        return float("nan")
    if alternative == "greater":
        hits = np.sum(null >= observed - _EPS)
    elif alternative == "less":
        hits = np.sum(null <= observed + _EPS)
    else:
        hits = np.sum(np.abs(null) >= abs(observed) - _EPS)
    return float((1 + hits) / (1 + len(null)))


def compare_spaces(
    space: pd.DataFrame,
    hypothesis: pd.DataFrame,
    method: str = "spearman",
    n_permutations: int = 1000,
    seed: int = 0,
    controls: Sequence[pd.DataFrame] | Mapping[str, pd.DataFrame] | None = None,
    include_diagonal: bool = False,
    alternative: str = "greater",
) -> SpaceComparison:
    """Correlate a task space with a hypothesis (or another space) with a Mantel permutation test.

    Both (and any ``controls``) are aligned on their common tasks; the compared entries are the
    off-diagonal ones (module docstring: both ordered pairs unless all matrices are symmetric).

    - statistic: ``scipy.stats.spearmanr`` (``"spearman"``), ``pearsonr`` or ``kendalltau`` of the
      two entry vectors;
    - with ``controls`` (hypothesis spaces, e.g. :func:`lexical_spaces`): the **partial**
      correlation: rank-transform every vector (spearman; raw values for pearson), residualise the
      space's and the hypothesis's vectors on ``[1, controls]`` by least squares and correlate the
      residuals: ``r = <e_x, e_y> / (|e_x| |e_y|)``; NaN (with a warning) if the space or the
      hypothesis is a function of the controls;
    - p-value: permute the task labels of ``space`` (rows and columns together, the same permutation
      for both) ``n_permutations`` times (``numpy.random.default_rng(seed)``), recompute the
      statistic with hypothesis and controls fixed, and report
      ``(1 + #{null >= observed}) / (1 + n_permutations)`` for ``alternative="greater"`` (Mantel's
      one-sided test: the hypothesis predicts positive alignment), ``"less"`` or ``"two-sided"``
      (``|null| >= |observed|``).

    Speed: ranks, the entry index and the control projection are computed once; each permutation
    gathers pre-ranked entries ``R[p[rows], p[cols]]`` (permuting labels only reorders the
    entries, so their ranks are reordered too) and all permutations of a chunk are correlated by
    one matrix product: 1,000 permutations of a 67 x 67 space take 0.1-0.2 s, partial or not
    (Kendall loops over ``scipy.stats.kendalltau``: about 1 s). Symmetry is decided with ``numpy.allclose``
    (rtol 1e-10), so a float32 gradient space may count as non-symmetric (all ordered pairs used;
    harmless for Spearman and Pearson).
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    if alternative not in _ALTERNATIVES:
        raise ValueError(f"alternative must be one of {_ALTERNATIVES}, got {alternative!r}")
    named = _as_named(controls, "control")
    if named and method == "kendall":
        raise ValueError("partial correlation (controls) is defined for 'spearman' and 'pearson' only")
    names = ["space", "hypothesis", *[f"control {k!r}" for k in named]]
    aligned, values, symmetric, rows, cols, vectors = _prepare(
        [space, hypothesis, *named.values()], include_diagonal, names
    )
    x, y, z = vectors[0], vectors[1], _columns(vectors[2:], len(vectors[0]))
    observed = _correlate(x, y, z, method)
    n = len(aligned[0])
    perms = _permutations(n, n_permutations, seed)
    null = np.full(n_permutations, np.nan)
    if not np.isfinite(observed):
        warnings.warn(
            "compare_spaces: the space or the hypothesis is (a monotone function of) the controls, so "
            "nothing is left to correlate after residualising; statistic and p-value are NaN",
            stacklevel=2,
        )
    elif method == "kendall":
        for k, p in enumerate(perms):
            null[k] = stats.kendalltau(values[0][p[rows], p[cols]], y).statistic
    else:
        # put the transformed entries of the space back into a matrix, so that a permuted entry
        # vector is a gather; the permuted set of entries is the same multiset, hence same ranks
        rx = _transform(x, method)
        ranked = np.full((n, n), np.nan)
        ranked[rows, cols] = rx
        if symmetric:
            ranked[cols, rows] = rx
        basis = _orthonormal_basis(np.column_stack([_transform(c, method) for c in z.T]) if named else z)
        ry = _transform(y, method)
        ey = ry - basis @ (basis.T @ ry)
        ey = ey / np.linalg.norm(ey)
        chunk = max(1, 4_000_000 // max(len(x), 1))
        for start in range(0, n_permutations, chunk):
            p = perms[start : start + chunk]
            xp = ranked[p[:, rows], p[:, cols]]  # (chunk, m)
            resid_sq = np.einsum("ij,ij->i", xp, xp) - np.sum((xp @ basis) ** 2, axis=1)
            null[start : start + chunk] = (xp @ ey) / np.sqrt(np.maximum(resid_sq, 1e-300))
    return SpaceComparison(
        statistic=observed,
        p_value=_p_value(null, observed, alternative),
        method=method,
        partial=bool(named),
        controls=tuple(named),
        alternative=alternative,
        n_permutations=n_permutations,
        n_tasks=n,
        n_entries=len(x),
        symmetric=symmetric,
        include_diagonal=include_diagonal,
        seed=seed,
        null=null,
    )


@dataclasses.dataclass
class SpaceRegression:
    """Result of :func:`regress_space`: ``coefficients`` has one row per hypothesis with the
    standardised coefficient ``beta`` and its two-sided permutation ``p_value``."""

    coefficients: pd.DataFrame
    r_squared: float
    r_squared_p: float
    n_tasks: int
    n_entries: int
    n_permutations: int
    rank: bool


def regress_space(
    space: pd.DataFrame,
    hypotheses: Mapping[str, pd.DataFrame] | Sequence[pd.DataFrame],
    n_permutations: int = 1000,
    seed: int = 0,
    rank: bool = False,
    include_diagonal: bool = False,
) -> SpaceRegression:
    """Multiple regression of the space's off-diagonal entries on several hypothesis spaces.

    ``z(y) = sum_k beta_k z(x_k) + e`` by least squares, where y are the space's entries, x_k the
    k-th hypothesis's entries, ``z`` the z-score (population sd), so ``beta_k`` are standardised
    coefficients (ranks first if ``rank``). Permutation test (multiple regression on distance
    matrices, Legendre et al. 1994): permute the space's task labels, refit, two-sided
    ``p_k = (1 + #{|beta_k^perm| >= |beta_k|}) / (1 + n_permutations)``; ``r_squared_p`` likewise
    (one-sided). Raises if the hypotheses are collinear on the compared entries.
    """
    hypotheses = _as_named(hypotheses, "hypothesis")
    if not hypotheses:
        raise ValueError("hypotheses: need at least one hypothesis space")
    names = list(hypotheses)
    aligned, values, symmetric, rows, cols, vectors = _prepare(
        [space, *hypotheses.values()], include_diagonal, ["space", *[f"hypothesis {k!r}" for k in names]]
    )
    prep = (lambda v: stats.rankdata(v)) if rank else (lambda v: np.asarray(v, float))
    zscore = lambda v: (v - v.mean(-1, keepdims=True)) / v.std(-1, keepdims=True)  # noqa: E731
    design = np.column_stack([zscore(prep(v)) for v in vectors[1:]])
    if np.linalg.matrix_rank(design) < design.shape[1]:
        raise ValueError(f"hypotheses {names} are collinear on the compared entries; drop one")
    pinv = np.linalg.pinv(design)  # (k, m)
    basis = _orthonormal_basis(design)
    y = zscore(prep(vectors[0]))
    beta = pinv @ y
    r2 = float(np.sum((basis.T @ y) ** 2) / (y @ y))
    n = len(aligned[0])
    ymat = np.full((n, n), np.nan)
    ymat[rows, cols] = y
    if symmetric:
        ymat[cols, rows] = y
    perms = _permutations(n, n_permutations, seed)
    null_beta = np.empty((n_permutations, len(names)))
    null_r2 = np.empty(n_permutations)
    chunk = max(1, 4_000_000 // len(y))
    for start in range(0, n_permutations, chunk):
        p = perms[start : start + chunk]
        yp = ymat[p[:, rows], p[:, cols]]
        null_beta[start : start + chunk] = yp @ pinv.T
        null_r2[start : start + chunk] = np.sum((yp @ basis) ** 2, axis=1) / (y @ y)
    p_beta = [_p_value(null_beta[:, k], beta[k], "two-sided") for k in range(len(names))]
    table = pd.DataFrame({"beta": beta, "p_value": p_beta}, index=pd.Index(names, name="hypothesis"))
    return SpaceRegression(table, r2, _p_value(null_r2, r2, "greater"), n, len(y), n_permutations, rank)


@dataclasses.dataclass
class WithinAcross:
    """Result of :func:`within_across`; CIs are ``(low, high)`` percentile intervals."""

    within_mean: float
    across_mean: float
    difference: float
    within_ci: tuple[float, float]
    across_ci: tuple[float, float]
    difference_ci: tuple[float, float]
    n_within: int
    n_across: int
    n_dropped_nan: int
    ci: float
    n_boot: int

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        for key in ("within", "across", "difference"):
            low, high = out.pop(f"{key}_ci")
            out[f"{key}_ci_low"], out[f"{key}_ci_high"] = low, high
        return out


def within_across(
    space: pd.DataFrame,
    hypothesis: pd.DataFrame,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> WithinAcross:
    """Mean off-diagonal entry within groups vs. across groups, and their difference.

    An entry ``(t, u)``, t != u, is *within* if ``hypothesis[t, u] != 0`` and *across* otherwise
    (entries as in the module docstring; NaN entries of the space are dropped and counted).
    Confidence intervals: ``scipy.stats.bootstrap`` percentile intervals over entries (pairs),
    resampling within and across entries independently (two-sample bootstrap for the difference),
    ``n_boot`` resamples, seeded with ``numpy.random.default_rng(seed)``. Entries sharing a task are
    not independent, so these intervals are optimistic; :func:`difference_with_uncertainty`
    resamples tasks instead."""
    aligned = align_spaces(space, hypothesis, names=["space", "hypothesis"])
    s, h = (a.to_numpy() for a in aligned)
    rows, cols = _entry_index(len(s), _is_symmetric(s) and _is_symmetric(h), False)
    values, group = s[rows, cols], h[rows, cols] != 0
    keep = ~np.isnan(values)
    within, across = values[keep & group], values[keep & ~group]
    if len(within) < 2 or len(across) < 2:
        raise ValueError(f"need at least 2 within and 2 across entries, got {len(within)} and {len(across)}")
    rng = np.random.default_rng(seed)
    kwargs = dict(n_resamples=n_boot, confidence_level=ci, method="percentile", vectorized=True)
    mean = lambda a, axis: np.mean(a, axis=axis)  # noqa: E731
    diff = lambda a, b, axis: np.mean(a, axis=axis) - np.mean(b, axis=axis)  # noqa: E731
    interval = lambda data, fn: tuple(  # noqa: E731
        float(v) for v in stats.bootstrap(data, fn, rng=rng, **kwargs).confidence_interval
    )
    return WithinAcross(
        within_mean=float(within.mean()),
        across_mean=float(across.mean()),
        difference=float(within.mean() - across.mean()),
        within_ci=interval((within,), mean),
        across_ci=interval((across,), mean),
        difference_ci=interval((within, across), diff),
        n_within=len(within),
        n_across=len(across),
        n_dropped_nan=int((~keep).sum()),
        ci=ci,
        n_boot=n_boot,
    )


@dataclasses.dataclass
class AlignmentDifference:
    """Result of :func:`difference_with_uncertainty` (``boot``: bootstrap differences)."""

    statistic_a: float
    statistic_b: float
    difference: float
    ci_low: float
    ci_high: float
    ci: float
    n_boot: int
    n_tasks: int
    method: str
    controls: tuple[str, ...]
    boot: np.ndarray = dataclasses.field(repr=False)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out.pop("boot")
        out["controls"] = ", ".join(self.controls)
        return out


def _bootstrap_tasks(
    values: list[np.ndarray],
    rows: np.ndarray,
    cols: np.ndarray,
    statistic: Callable[[list[np.ndarray]], float],
    n_boot: int,
    seed: int,
    n_checked: int,
) -> np.ndarray:
    """``statistic`` of the entry vectors of task-resampled matrices, one value per replicate.

    Each replicate draws n task indices with replacement (``default_rng(seed).integers``) and
    takes the entries ``(idx[i], idx[j])`` of the compared positions ``(i, j)``, keeping those with
    ``idx[i] != idx[j]`` (and the diagonal positions, if compared), so a task is never compared
    with a copy of itself. Replicates where one of the first ``n_checked`` vectors is constant give
    NaN."""
    n = len(values[0])
    rng = np.random.default_rng(seed)
    boot = np.full(n_boot, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate resamples: scipy warns, we record NaN
        for k in range(n_boot):
            idx = rng.integers(0, n, size=n)
            keep = (idx[rows] != idx[cols]) | (rows == cols)
            r, c = idx[rows][keep], idx[cols][keep]
            vecs = [v[r, c] for v in values]
            if all(v.size > 1 and np.ptp(v) > 0 for v in vecs[:n_checked]):
                boot[k] = statistic(vecs)
    return boot


def difference_with_uncertainty(
    space_a: pd.DataFrame,
    space_b: pd.DataFrame,
    hypothesis: pd.DataFrame,
    method: str = "spearman",
    controls: Sequence[pd.DataFrame] | Mapping[str, pd.DataFrame] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    include_diagonal: bool = False,
) -> AlignmentDifference:
    """Difference of two alignments with the same hypothesis, ``r(a, H) - r(b, H)``, e.g. the
    final checkpoint's transfer space (a) minus the untrained initialisation's (b).

    ``r`` is the (partial, given ``controls``) correlation of :func:`compare_spaces`. Uncertainty:
    bootstrap over tasks (all matrices aligned on their common tasks): draw n tasks with
    replacement, take the resampled matrices ``M[idx][:, idx]``, keep the entries ``(i, j)`` with
    ``idx[i] != idx[j]`` (a task is never compared with a copy of itself; Nili et al. 2014),
    recompute both correlations and their difference; percentile CI at level ``ci``; seeded with
    ``numpy.random.default_rng(seed)``. Resamples with a constant vector give NaN and are skipped.
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    named = _as_named(controls, "control")
    names = ["space_a", "space_b", "hypothesis", *[f"control {k!r}" for k in named]]
    aligned, values, symmetric, rows, cols, vectors = _prepare(
        [space_a, space_b, hypothesis, *named.values()], include_diagonal, names
    )

    def pair(vecs: list[np.ndarray]) -> tuple[float, float]:
        z = _columns(vecs[3:], len(vecs[0]))
        return _correlate(vecs[0], vecs[2], z, method), _correlate(vecs[1], vecs[2], z, method)

    stat_a, stat_b = pair(vectors)
    n = len(aligned[0])
    boot = _bootstrap_tasks(values, rows, cols, lambda v: np.subtract(*pair(v)), n_boot, seed, n_checked=3)
    finite = boot[np.isfinite(boot)]
    low, high = (np.quantile(finite, [(1 - ci) / 2, (1 + ci) / 2]) if len(finite) else (np.nan, np.nan))
    return AlignmentDifference(
        stat_a, stat_b, stat_a - stat_b, float(low), float(high), ci, n_boot, n, method, tuple(named), boot
    )


def alignment_table(
    spaces: Mapping[str, pd.DataFrame],
    hypotheses: Mapping[str, pd.DataFrame],
    controls: Mapping[str, pd.DataFrame] | None = None,
    method: str = "spearman",
    n_permutations: int = 1000,
    n_boot: int = 0,
    seed: int = 0,
    ci: float = 0.95,
) -> pd.DataFrame:
    """Every space against every hypothesis, raw and (with ``controls``) partial: one row per
    (space, hypothesis, controlled) with the :func:`compare_spaces` statistic and permutation
    p-value and, if ``n_boot > 0``, a percentile CI from a bootstrap over tasks (as in
    :func:`difference_with_uncertainty`). Hypotheses whose compared entries are constant (the
    paradigm identity) are skipped with a warning; a hypothesis is not controlled for itself (its
    partial row is omitted if it is one of the ``controls``, compared by identity). A partial
    bootstrap replicate costs a few ms on 67 tasks (``n_boot=1000``: seconds per row). Ready for
    :func:`taskspace_utils.plotting.plot_alignment` (``x="hypothesis"``, ``hue="space"``)."""
    controls = dict(controls or {})
    records = []
    for h_name, hyp in hypotheses.items():
        off = check_space(hyp, f"hypothesis {h_name!r}").to_numpy()[~np.eye(len(hyp), dtype=bool)]
        if np.nanmax(off) == np.nanmin(off):
            warnings.warn(f"alignment_table: hypothesis {h_name!r} is constant off the diagonal; skipped", stacklevel=2)
            continue
        variants = [{}]
        if controls and not any(c is hyp for c in controls.values()):
            variants.append(controls)
        for s_name, space in spaces.items():
            for ctrl in variants:
                res = compare_spaces(space, hyp, method, n_permutations, seed, controls=ctrl or None)
                row = {"space": s_name, "hypothesis": h_name, "controlled": ", ".join(ctrl) or "none",
                       "statistic": res.statistic, "p_value": res.p_value, "n_tasks": res.n_tasks,
                       "n_entries": res.n_entries}  # fmt: skip
                if n_boot:
                    aligned, values, _, rows, cols, _ = _prepare(
                        [space, hyp, *ctrl.values()], False, ["space", "hypothesis", *ctrl]
                    )
                    fn = lambda v: _correlate(v[0], v[1], _columns(v[2:], len(v[0])), method)  # noqa: E731
                    boot = _bootstrap_tasks(values, rows, cols, fn, n_boot, seed, n_checked=2)
                    finite = boot[np.isfinite(boot)]
                    row["ci_low"], row["ci_high"] = (
                        np.quantile(finite, [(1 - ci) / 2, (1 + ci) / 2]) if len(finite) else (np.nan, np.nan)
                    )
                records.append(row)
    return pd.DataFrame.from_records(records)


def compare_prediction(
    predicted: pd.DataFrame, measured: pd.DataFrame, include_diagonal: bool = False
) -> dict[str, float]:
    """How well a predicted space (e.g. first-order gradient prediction) matches a measured one.

    On the compared entries (module docstring; NaN in either dropped): ``pearson``/``spearman``
    (with p-values, scipy), ``r2 = 1 - sum (m - p)^2 / sum (m - mean m)^2`` of the prediction taken
    as is (can be negative) and ``r2_linear = pearson^2`` (after the best affine rescaling)."""
    aligned = align_spaces(predicted, measured, names=["predicted", "measured"])
    p_mat, m_mat = (a.to_numpy() for a in aligned)
    rows, cols = _entry_index(len(p_mat), _is_symmetric(p_mat) and _is_symmetric(m_mat), include_diagonal)
    p, m = p_mat[rows, cols], m_mat[rows, cols]
    keep = ~(np.isnan(p) | np.isnan(m))
    p, m = p[keep], m[keep]
    pearson, spearman = stats.pearsonr(p, m), stats.spearmanr(p, m)
    return {
        "pearson": float(pearson.statistic),
        "pearson_p": float(pearson.pvalue),
        "spearman": float(spearman.statistic),
        "spearman_p": float(spearman.pvalue),
        "r2": float(1 - np.sum((m - p) ** 2) / np.sum((m - m.mean()) ** 2)),
        "r2_linear": float(pearson.statistic**2),
        "n_entries": int(keep.sum()),
        "n_tasks": len(p_mat),
    }


# --------------------------------------------------------------------------------------------
# transforming and summarising spaces
# --------------------------------------------------------------------------------------------
def _nonpositive_diagonal(space: pd.DataFrame, what: str) -> np.ndarray:
    diag = np.diag(space.to_numpy())
    bad = ~(diag > 0)
    if bad.any():
        warnings.warn(
            f"{what}: {int(bad.sum())} task(s) with non-positive or NaN self-transfer set to NaN: "
            f"{list(space.index[bad])[:10]}",
            stacklevel=3,
        )
    return bad


def normalise_rows(space: pd.DataFrame) -> pd.DataFrame:
    """``S'[t, u] = S[t, u] / S[t, t]``: transfer relative to self-transfer (diagonal becomes 1).

    Rows whose self-transfer is <= 0 or NaN become NaN (warning with their count)."""
    space = check_space(space)
    bad = _nonpositive_diagonal(space, "normalise_rows")
    diag = np.diag(space.to_numpy()).copy()
    diag[bad] = np.nan
    return space.div(diag, axis=0)


def symmetrise(space: pd.DataFrame) -> pd.DataFrame:
    """``(S + S^T) / 2``: e.g. to compare a transfer space with a symmetric gradient space."""
    space = check_space(space)
    return _name_frame((space + space.T) / 2)


def generalisation_index(space: pd.DataFrame, metadata: pd.DataFrame) -> pd.DataFrame:
    """How far transfer from each tuned task reaches, relative to its self-transfer.

    For tuned task t with self-transfer ``d_t = S[t, t]``:

    - ``same_phenomenon = mean_{u != t, phen(u) = phen(t)} S[t, u] / d_t``
    - ``same_field = mean_{phen(u) != phen(t), field(u) = field(t)} S[t, u] / d_t``
    - ``other_field = mean_{field(u) != field(t)} S[t, u] / d_t``

    A group with no task (e.g. a phenomenon with one paradigm) gives NaN; if ``d_t <= 0`` (or NaN)
    the whole row is NaN (tuning did not help the task itself, so the ratio is meaningless) and a
    warning counts them. Returns a frame indexed by tuned task with columns ``phenomenon``,
    ``field``, ``self``, ``same_phenomenon``, ``same_field``, ``other_field``; ``.attrs["overall"]``
    holds the NaN-skipping means of the three ratios over tasks and ``.attrs["n_undefined"]`` the
    number of tasks with ``d_t <= 0``."""
    space = check_space(space)
    tasks = list(space.index)
    meta = _metadata_for(tasks, metadata)
    s = space.to_numpy()
    phen, field = meta["phenomenon"].to_numpy(dtype=object), meta["field"].to_numpy(dtype=object)
    bad = _nonpositive_diagonal(space, "generalisation_index")
    not_self = ~np.eye(len(tasks), dtype=bool)
    same_p = (phen[:, None] == phen[None, :]) & not_self
    same_f = (field[:, None] == field[None, :]) & ~(phen[:, None] == phen[None, :])
    other_f = field[:, None] != field[None, :]
    diag = np.diag(s).copy()
    diag[bad] = np.nan

    def group_mean(mask: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # empty groups -> NaN
            return np.nanmean(np.where(mask, s, np.nan), axis=1) / diag

    frame = pd.DataFrame(
        {
            "phenomenon": phen,
            "field": field,
            "self": np.diag(s),
            "same_phenomenon": group_mean(same_p),
            "same_field": group_mean(same_f),
            "other_field": group_mean(other_f),
        },
        index=pd.Index(tasks, name="tuned"),
    )
    frame.attrs["overall"] = frame[["same_phenomenon", "same_field", "other_field"]].mean().to_dict()
    frame.attrs["n_undefined"] = int(bad.sum())
    return frame


def task_distances(space: pd.DataFrame, kind: str = "correlation") -> pd.DataFrame:
    """Distances between tasks, from the symmetrised space ``A = (S + S^T) / 2``.

    ``kind="correlation"``: ``d(t, u) = 1 - corr(A[t, :], A[u, :])`` (Pearson of the two tasks'
    profiles, pairwise-complete for NaN); ``kind="similarity"``: ``d(t, u) = max_{v != w} A[v, w]
    - A[t, u]`` off the diagonal, 0 on it (high transfer = close). Symmetric, zero diagonal."""
    sym = symmetrise(space)
    if kind == "correlation":
        dist = 1.0 - sym.T.corr().to_numpy()
    elif kind == "similarity":
        a = sym.to_numpy()
        off = ~np.eye(len(a), dtype=bool)
        dist = np.nanmax(a[off]) - a
    else:
        raise ValueError(f"kind must be 'correlation' or 'similarity', got {kind!r}")
    dist = np.nan_to_num(np.clip(dist, 0.0, None), nan=np.nanmax(dist) if np.isfinite(dist).any() else 1.0)
    np.fill_diagonal(dist, 0.0)
    return _name_frame(pd.DataFrame((dist + dist.T) / 2, index=sym.index, columns=sym.columns))


def embed_mds(distances: pd.DataFrame, n_components: int = 2) -> pd.DataFrame:
    """Classical (Torgerson) MDS in numpy: ``B = -1/2 J D^2 J`` with ``J = I - 11^T / n``; the
    coordinates are the top eigenvectors of B scaled by ``sqrt(eigenvalue)`` (negative eigenvalues,
    from non-Euclidean distances, clipped to 0). Each axis's sign is fixed so that its
    largest-magnitude coordinate is positive. Returns tasks x ``mds1 .. mds{n_components}``;
    ``.attrs["eigenvalues"]`` holds all eigenvalues, largest first."""
    d = check_space(distances, "distances").to_numpy()
    n = len(d)
    centre = np.eye(n) - np.ones((n, n)) / n
    b = -0.5 * centre @ (d**2) @ centre
    eigval, eigvec = np.linalg.eigh((b + b.T) / 2)
    order = np.argsort(eigval)[::-1]
    eigval, eigvec = eigval[order], eigvec[:, order]
    coords = eigvec[:, :n_components] * np.sqrt(np.clip(eigval[:n_components], 0.0, None))
    signs = np.sign(coords[np.argmax(np.abs(coords), axis=0), np.arange(coords.shape[1])])
    coords = coords * np.where(signs == 0, 1.0, signs)
    out = pd.DataFrame(coords, index=distances.index, columns=[f"mds{k + 1}" for k in range(n_components)])
    out.attrs["eigenvalues"] = eigval.tolist()
    return out
