"""Lexical hypothesis spaces: the shared-word confound between tasks.

Two tasks can look alike to a model only because their sentences share words: a random
initialisation already aligns with the phenomenon hypothesis through lexical overlap. This
module measures that overlap between every two tasks of a pairs frame, as hypothesis spaces to
control for (:func:`~taskspace_utils.spaces.compare_spaces` with ``controls``):

- critical words: the words (or token ids) that differ between the good and the bad sentence of
  a pair (:func:`critical_words`, ``difflib`` opcodes), pooled over a task's pairs;
- vocabulary: all words (or token ids) of a task's good and bad sentences.

Overlap measures (:func:`_overlap`): Jaccard of the supports, weighted Jaccard (Ruzicka) of the
relative frequencies, or cosine of the counts. Token ids come from
:func:`taskspace_utils.encoding.tokenize_sentences` (the kit's one tokenisation path, memoised per
tokenizer: as given, no special tokens).
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from ..encoding import tokenize_sentences
from .frames import _name_frame

__all__ = ["critical_words", "lexical_spaces"]

_WORD = re.compile(r"\w+(?:'\w+)*")  # words, keeping inner apostrophes ("can't"); punctuation dropped


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
    (both through :func:`taskspace_utils.encoding.tokenize_sentences`) or any callable
    ``str -> sequence of ids`` (called once per text)."""
    if hasattr(tokenizer, "encode_batch") or (hasattr(tokenizer, "encode") and callable(tokenizer)):
        return tokenize_sentences(tokenizer, texts)
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

