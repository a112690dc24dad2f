"""Pairs encoded once: token ids, spans and exclusions of a pairs frame under one tokenizer.

Every stage of the kit works on token ids with one convention (:mod:`taskspace_utils.scoring`):
a sentence is tokenised *as given* (``add_special_tokens=False``: no added space, no special
tokens) and the tokenizer's BOS (EOS when it has none) is put in front of it. This module is the
only place where sentences meet the tokenizer:

- :func:`tokenize_sentences` tokenises through a per-tokenizer memo, so that within one process
  each distinct sentence is tokenised once per tokenizer, whichever stage asks first.
- :class:`EncodedPairs` is made once per pairs frame and tokenizer (:func:`encode`) and passed
  along: good/bad token ids, the common token prefix and suffix of each pair, the critical spans
  and why a pair has none, the task and split of each row, the pairs hash, and a cache for the
  batches a stage derives from it. ``select(...)`` takes subsets without re-tokenising.

Token alignment of a pair with token sequences ``g`` and ``b``:

- ``prefix_len = p``: length of the longest common prefix;
- ``suffix_len = s``: length of the longest common suffix of the remainders ``g[p:]`` / ``b[p:]``
  (prefix and suffix never overlap);
- critical span of a sentence of ``n`` tokens: ``[p, n - min(s, n - p - 1))``, i.e. the suffix is
  shortened so that every sentence keeps at least its first differing token. A pair where one
  sentence has no token after ``p`` has no critical tokens (``excluded`` says why).
"""

from __future__ import annotations

import hashlib
import weakref
from typing import Sequence

import numpy as np
import pandas as pd

__all__ = [
    "prefix_token_id",
    "pad_token_id",
    "tokenize_sentences",
    "pairs_hash",
    "common_prefix_len",
    "EncodedPairs",
    "encode",
    "VARIANTS",
]

#: Which tokens of a pair are scored: ``sentence`` (all) or ``critical`` (where the pair differs).
VARIANTS = ("sentence", "critical")


def check_variant(variant: str) -> None:
    """Raise ``ValueError`` unless ``variant`` is one of :data:`VARIANTS`."""
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r}: use one of {VARIANTS}")


def prefix_token_id(tokenizer) -> int:
    """The id put in front of every sentence: BOS, or EOS when the tokenizer has no BOS."""
    token_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token_id is None:
        raise ValueError("tokenizer has neither a BOS nor an EOS token to use as the sentence prefix")
    return int(token_id)


def pad_token_id(tokenizer) -> int:
    """The id used for padding: the tokenizer's PAD token, else the prefix id (padding is never
    attended to nor scored, so any id works)."""
    return int(tokenizer.pad_token_id) if tokenizer.pad_token_id is not None else prefix_token_id(tokenizer)


def common_prefix_len(a, b) -> int:
    """Length of the longest common prefix of two token-id sequences."""
    n = min(len(a), len(b))
    p = 0
    while p < n and a[p] == b[p]:
        p += 1
    return p


def common_suffix_len(a, b, prefix: int) -> int:
    """Length of the longest common suffix of ``a[prefix:]`` and ``b[prefix:]``."""
    n = min(len(a), len(b)) - prefix
    s = 0
    while s < n and a[-1 - s] == b[-1 - s]:
        s += 1
    return s


# Memo: tokenizer -> {sentence: ids}. Weak keys, so a tokenizer that is dropped frees its memo.
_MEMO: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _raw_tokenize(tokenizer, sentences: list[str]) -> list[list[int]]:
    """Token ids straight from the tokenizer (no memo)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    # Fast tokenizers: call the Rust backend directly (skips transformers' per-sentence Python
    # wrapping, 4x faster), but only when no padding/truncation state was left on it by an earlier
    # `tokenizer(..., padding=...)` call; the regular call below resets that state.
    if backend is not None and backend.padding is None and backend.truncation is None:
        return [enc.ids for enc in backend.encode_batch(sentences, add_special_tokens=False)]
    if hasattr(tokenizer, "encode_batch"):  # a bare tokenizers.Tokenizer
        return [enc.ids for enc in tokenizer.encode_batch(sentences, add_special_tokens=False)]
    return [list(ids) for ids in tokenizer(sentences, add_special_tokens=False)["input_ids"]]


def tokenize_sentences(tokenizer, sentences: Sequence[str]) -> list[list[int]]:
    """Token ids of each sentence as given (no special tokens, no added space).

    Memoised per tokenizer (and its vocabulary size, so adding tokens starts a new memo): a
    sentence already tokenised by this tokenizer in this process is not tokenised again. The
    returned lists are shared with the memo: do not modify them.
    """
    sentences = [str(s) for s in sentences]
    if not sentences:
        return []
    try:
        memo_all = _MEMO.setdefault(tokenizer, {})
    except TypeError:  # not weak-referenceable: no memo
        return _raw_tokenize(tokenizer, sentences)
    memo = memo_all.setdefault(len(tokenizer) if hasattr(tokenizer, "__len__") else None, {})
    missing = list(dict.fromkeys(s for s in sentences if s not in memo))
    if missing:
        memo.update(zip(missing, _raw_tokenize(tokenizer, missing)))
    return [memo[s] for s in sentences]


def pairs_hash(frame: pd.DataFrame, with_task: bool = True) -> str:
    """16 hex digits of ``sha256`` over the rows' ``task<TAB>good<TAB>bad`` lines (one per row, in
    order): what a result was computed from. ``with_task=False`` hashes ``good<TAB>bad`` lines only
    (the key the gradient stage stores in every task file: one task's pairs, so the name adds
    nothing, and files written before the two hashes were one keep matching)."""
    goods, bads = frame["good"].astype(str), frame["bad"].astype(str)
    if with_task:
        task = frame["task"].astype(str) if "task" in frame.columns else pd.Series([""] * len(frame))
        text = "\n".join(f"{t}\t{g}\t{b}" for t, g, b in zip(task, goods, bads))
    else:
        text = "\n".join(f"{g}\t{b}" for g, b in zip(goods, bads))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _exclusion(p: int, ng: int, nb: int) -> str | None:
    if p == ng and p == nb:
        return "identical tokens"
    if p == ng:
        return "good is a prefix of bad"
    if p == nb:
        return "bad is a prefix of good"
    return None


class EncodedPairs:
    """A pairs frame tokenised once under one tokenizer (see the module docstring).

    Attributes:
        pairs: the frame (index as given; ``good``, ``bad`` and whatever else it had).
        good_ids, bad_ids: token ids per row (lists shared with the tokenisation memo).
        prefix_id, pad_id: the BOS/EOS prefix and the padding id.
        prefix_len, suffix_len, n_good, n_bad: ``int64`` arrays per row (module docstring).
        cache: a dict where stages keep what they derive (batches, trees), keyed by their own
            tuples; shared by nothing else.
    """

    def __init__(self, pairs: pd.DataFrame, good_ids, bad_ids, prefix_id: int, pad_id: int,
                 prefix_len=None, suffix_len=None):
        self.pairs = pairs
        self.good_ids = list(good_ids)
        self.bad_ids = list(bad_ids)
        self.prefix_id = int(prefix_id)
        self.pad_id = int(pad_id)
        self.n_good = np.fromiter((len(g) for g in self.good_ids), dtype=np.int64, count=len(self.good_ids))
        self.n_bad = np.fromiter((len(b) for b in self.bad_ids), dtype=np.int64, count=len(self.bad_ids))
        if prefix_len is None:
            prefix_len = [common_prefix_len(g, b) for g, b in zip(self.good_ids, self.bad_ids)]
            suffix_len = [common_suffix_len(g, b, p) for g, b, p in zip(self.good_ids, self.bad_ids, prefix_len)]
        self.prefix_len = np.asarray(prefix_len, dtype=np.int64)
        self.suffix_len = np.asarray(suffix_len, dtype=np.int64)
        self.cache: dict = {}
        self._hash: str | None = None

    def __len__(self) -> int:
        return len(self.good_ids)

    def __repr__(self) -> str:
        n_tasks = self.pairs["task"].nunique() if "task" in self.pairs.columns else 0
        return f"EncodedPairs({len(self)} pairs, {n_tasks} tasks, hash {self.hash})"

    @property
    def hash(self) -> str:
        """:func:`pairs_hash` of the frame."""
        if self._hash is None:
            self._hash = pairs_hash(self.pairs)
        return self._hash

    @property
    def tasks(self) -> list[str]:
        """The tasks present, sorted."""
        return sorted(self.pairs["task"].astype(str).unique()) if "task" in self.pairs.columns else []

    @property
    def excluded(self) -> pd.Series:
        """Why a pair has no critical tokens (``"identical tokens"``, ``"good is a prefix of bad"``,
        ``"bad is a prefix of good"``), ``None`` when it has some; index of :attr:`pairs`."""
        reasons = [_exclusion(p, g, b) for p, g, b in zip(self.prefix_len, self.n_good, self.n_bad)]
        return pd.Series(reasons, index=self.pairs.index, name="excluded", dtype=object)

    def alignment(self) -> pd.DataFrame:
        """The token-alignment columns (index of :attr:`pairs`): ``prefix_len``, ``suffix_len``,
        ``n_good_tokens``, ``n_bad_tokens``, ``good_diff``, ``bad_diff`` (tokens in the differing
        middle), ``single_substitution`` (both middles one token) and ``same_length``."""
        gd = self.n_good - self.prefix_len - self.suffix_len
        bd = self.n_bad - self.prefix_len - self.suffix_len
        return pd.DataFrame({
            "prefix_len": self.prefix_len, "suffix_len": self.suffix_len,
            "n_good_tokens": self.n_good, "n_bad_tokens": self.n_bad, "good_diff": gd, "bad_diff": bd,
            "single_substitution": (gd == 1) & (bd == 1), "same_length": self.n_good == self.n_bad,
        }, index=self.pairs.index)

    def spans(self, variant: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Scored token span ``[start, end)`` of good and bad: ``(start, end_good, end_bad)``.

        ``"sentence"``: everything after the common prefix (its terms cancel exactly in the
        margin, so skipping them changes nothing but rounding); ``"critical"``: the critical spans
        of the module docstring (meaningless for excluded pairs: filter with :attr:`excluded`).
        """
        check_variant(variant)
        start = self.prefix_len
        if variant == "sentence":
            return start, self.n_good, self.n_bad
        end_good = self.n_good - np.minimum(self.suffix_len, self.n_good - start - 1).clip(min=0)
        end_bad = self.n_bad - np.minimum(self.suffix_len, self.n_bad - start - 1).clip(min=0)
        return start, end_good, end_bad

    def check_length(self, max_positions: int | None, what: str = "the model") -> "EncodedPairs":
        """Raise ``ValueError`` when a sentence with its prefix (``1 + n`` positions) is longer than
        ``max_positions`` (the model's context; ``None``: no limit), naming up to five offending
        pairs by file and line (``source``/``line`` columns) or by row. Returns ``self``."""
        if max_positions is None:
            return self
        longest = np.maximum(self.n_good, self.n_bad) + 1
        bad = np.flatnonzero(longest > int(max_positions))
        if len(bad):
            frame = self.pairs
            where = []
            for i in bad[:5]:
                row = frame.iloc[i]
                place = f"{row['source']}: line {row['line']}" if {"source", "line"} <= set(frame.columns) else f"row {i}"
                where.append(f"{place} ({longest[i]} positions)")
            more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
            raise ValueError(f"{len(bad)} pair(s) longer than {what}'s context of {int(max_positions)} positions "
                             f"(tokens + 1 for the BOS prefix): {'; '.join(where)}{more}")
        return self

    def select(self, rows=None, *, tasks: Sequence[str] | None = None, split: str | None = None) -> "EncodedPairs":
        """A subset without re-tokenising. ``rows``: a boolean mask (rows kept in order) or
        positional indices (taken in that order, repeats kept: a batch may hold a pair twice);
        then only the rows of ``tasks`` and of ``split`` (``"train"``/``"test"``)."""
        chosen = self
        if rows is not None:
            rows = np.asarray(rows)
            if rows.dtype == bool:
                if len(rows) != len(self):
                    raise ValueError(f"select: mask of length {len(rows)} for {len(self)} pairs")
                rows = np.flatnonzero(rows)
            chosen = self._take(rows.astype(np.int64))
        keep = np.ones(len(chosen), dtype=bool)
        if tasks is not None:
            keep &= chosen.pairs["task"].astype(str).isin([str(t) for t in tasks]).to_numpy()
        if split is not None:
            if "split" not in chosen.pairs.columns:
                raise ValueError("select(split=...): the pairs have no 'split' column")
            keep &= (chosen.pairs["split"] == split).to_numpy()
        return chosen if keep.all() and rows is not None else chosen._take(np.flatnonzero(keep))

    def _take(self, index: np.ndarray) -> "EncodedPairs":
        return EncodedPairs(
            self.pairs.iloc[index], [self.good_ids[i] for i in index], [self.bad_ids[i] for i in index],
            self.prefix_id, self.pad_id, self.prefix_len[index], self.suffix_len[index],
        )


def encode(tokenizer, pairs) -> EncodedPairs:
    """Encode a pairs frame (columns ``good``, ``bad``) or a ``(goods, bads)`` tuple of lists once."""
    if isinstance(pairs, EncodedPairs):
        return pairs
    if not isinstance(pairs, pd.DataFrame):
        goods, bads = pairs
        goods, bads = [str(s) for s in goods], [str(s) for s in bads]
        if len(goods) != len(bads):
            raise ValueError(f"pairs: {len(goods)} good but {len(bads)} bad sentences")
        pairs = pd.DataFrame({"good": goods, "bad": bads})
    missing = [c for c in ("good", "bad") if c not in pairs.columns]
    if missing:
        raise ValueError(f"pairs: missing column(s) {missing}")
    goods, bads = list(pairs["good"].astype(str)), list(pairs["bad"].astype(str))
    ids = tokenize_sentences(tokenizer, goods + bads)
    return EncodedPairs(pairs, ids[: len(goods)], ids[len(goods):], prefix_token_id(tokenizer), pad_token_id(tokenizer))
