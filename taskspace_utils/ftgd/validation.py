"""Validation perplexity: the held-out corpus sentences (:func:`validation_texts`), tokenised and
collated once (:func:`prepare_texts` -> :class:`PreparedTexts`), and their :func:`perplexity`.

FTGD's premise is that tuning a task's subnetwork changes the task without damaging the language
model; the validation perplexity of held-out text measures that damage (notebook 03's controls,
notebook 04's probe rows). Convention (:mod:`taskspace_utils.scoring`): every token of a text is
predicted, the first one from the BOS prefix alone, and

    ppl = exp( - sum_s log p(s) / sum_s n_tokens(s) )          (per-token perplexity)

    relative change of a tuned model:  ppl_tuned / ppl_base - 1   (0.05 = 5 % worse)
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..batching import fill_logprob_sums, plan_batches
from ..encoding import pad_token_id, prefix_token_id, tokenize_sentences
from ..models import eval_mode
from ..padded import DEFAULT_BATCH_TOKENS

__all__ = ["PreparedTexts", "prepare_texts", "model_max_tokens", "perplexity", "validation_texts"]


def validation_texts(n: int) -> list[str]:
    """``n`` held-out sentences of the pre-training corpus's validation split
    (``data/corpus/valid.txt.gz``: :func:`~taskspace_utils.suite.corpus.read_corpus` ``("valid")``
    cut by :func:`~taskspace_utils.suite.corpus.split_sentences`, as in pre-training; N = 6,822
    sentences), **evenly spaced** over the split: sentence ``round(i (N - 1) / (n - 1))`` for
    ``i = 0 .. n-1`` (the first one for ``n = 1``), in corpus order. The held-out text of notebook
    03's controls and of notebook 04's probe rows.

    Evenly spaced, not the first ``n``: the split lists its sources one after the other, so the
    first sentences all come from one book. Measured on ``tiny-m`` (12 tuned models, lr 1e-3 and
    3e-4, ``benchmarks/bench_ftgd_premise.py``'s tasks): the relative perplexity change on the first
    300 sentences was off from the whole split's by 32 % of its value on average (first 1,000: 34 %),
    on 300 evenly spaced ones by 9 % (200: 4 %, 1,000: 2 %).

    Raises ``ValueError`` naming ``n_val_texts`` when ``n`` is negative or more than the split has."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n_val_texts={n!r}: a count of validation sentences >= 0")
    if n == 0:
        return []
    sentences = _validation_sentences()
    if n > len(sentences):
        raise ValueError(f"n_val_texts={n}: the corpus validation split has only {len(sentences)} sentences")
    index = np.round(np.linspace(0, len(sentences) - 1, int(n))).astype(int) if n > 1 else np.zeros(1, dtype=int)
    return [sentences[i] for i in index]


@functools.lru_cache(maxsize=1)
def _validation_sentences() -> tuple[str, ...]:
    from ..suite.corpus import read_corpus, split_sentences  # local: the suite package is heavy

    return tuple(s for paragraph in read_corpus("valid") for s in split_sentences(paragraph))


def model_max_tokens(model) -> int:
    """The longest text (in tokens, after the BOS prefix) ``model`` can score:
    ``max_position_embeddings - 1`` (2047 when the config does not say)."""
    return int(getattr(model.config, "max_position_embeddings", 2048)) - 1


@dataclass
class PreparedTexts:
    """Held-out texts tokenised, cut and collated once, scored many times (one validation set for
    the base model and every tuned one).

    Attributes:
        n_texts: texts given (empty texts included; they are skipped when scoring).
        lengths: ``[M]`` tokens of each non-empty text, after the cut to ``max_tokens``.
        batches: ``(indices into lengths, collated batch)``, at most ``batch_tokens`` padded tokens
            each, longest texts first (:func:`~taskspace_utils.padded.batches_by_tokens`).
        max_tokens: the cut applied to every text.
    """

    n_texts: int
    lengths: np.ndarray
    batches: list[tuple[np.ndarray, dict]]
    max_tokens: int
    _device: torch.device | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return self.n_texts

    @property
    def n_tokens(self) -> int:
        """Tokens predicted in all (the perplexity's denominator)."""
        return int(self.lengths.sum())

    def logprob_sums(self, model, progress: bool | None = None) -> np.ndarray:
        """``[M]`` float64 ``log p(s)`` of every non-empty text under ``model`` (eval mode, no
        gradient; the model's mode is restored; on the CPU the batches are spread over torch's threads,
        :func:`~taskspace_utils.batching.fill_logprob_sums`)."""
        if model_max_tokens(model) < int(self.lengths.max()):
            raise ValueError(f"perplexity: texts of up to {int(self.lengths.max())} tokens, but the model scores at most "
                             f"{model_max_tokens(model)} (prepare_texts with max_tokens=model_max_tokens(model))")
        device = next(model.parameters()).device
        if self._device != device:
            self.batches = [(idx, {k: v.to(device) for k, v in b.items()}) for idx, b in self.batches]
            self._device = device
        out = np.zeros(len(self.lengths), dtype=np.float64)
        show = len(self.batches) > 20 if progress is None else progress
        with (eval_mode(model), torch.inference_mode(),
              tqdm(total=len(self.batches), desc="perplexity", unit="batch", disable=not show, leave=False) as bar):
            fill_logprob_sums(model, self.batches, out, tree=False, device=device, bar=bar)
        return out

    def perplexity(self, model, progress: bool | None = None) -> float:
        """``exp(- sum_s log p(s) / sum_s n_tokens(s))`` under ``model`` (module docstring)."""
        return math.exp(-float(self.logprob_sums(model, progress).sum()) / self.n_tokens)


def prepare_texts(tokenizer, texts: Sequence[str], max_tokens: int | None = None,
                  batch_tokens: int = DEFAULT_BATCH_TOKENS) -> PreparedTexts:
    """Tokenise ``texts`` with the kit's convention, cut each to its first ``max_tokens`` tokens
    (``None``: no cut; use :func:`model_max_tokens` of the model to be scored), skip empty ones and
    collate batches of at most ``batch_tokens`` padded tokens. Raises ``ValueError`` when no text
    has a token."""
    limit = None if max_tokens is None else int(max_tokens)
    if limit is not None and limit < 1:
        raise ValueError(f"prepare_texts: max_tokens={max_tokens} must be >= 1")
    ids = [x[:limit] for x in tokenize_sentences(tokenizer, [str(t) for t in texts]) if len(x)]
    if not ids:
        raise ValueError("perplexity: no non-empty texts")
    prefix, pad = prefix_token_id(tokenizer), pad_token_id(tokenizer)
    lengths = np.array([len(x) for x in ids], dtype=np.int64)
    batches = plan_batches(ids, prefix, pad, tree=False, batch_tokens=int(batch_tokens)).collated()
    return PreparedTexts(len(texts), lengths, batches, limit if limit is not None else int(lengths.max()))


def perplexity(
    model,
    tokenizer,
    texts: Sequence[str] | PreparedTexts,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    max_tokens: int | None = None,
    progress: bool | None = None,
) -> float:
    """Per-token perplexity of held-out ``texts`` under the kit's scoring convention.

        ppl = exp( - sum_s log p(s) / sum_s n_tokens(s) )

    with ``log p(s)`` the BOS-prefixed sum of token log-probabilities of :mod:`.scoring` (every
    token of every text is predicted, the first one from BOS alone). Texts longer than
    ``max_tokens`` (default: the model's ``max_position_embeddings - 1``) are cut to their first
    ``max_tokens`` tokens; empty texts are skipped. Batches are filled up to ``batch_tokens``
    padded tokens, longest texts first; run without gradient in eval mode. ``texts`` may be a
    :class:`PreparedTexts` (:func:`prepare_texts`), then nothing is tokenised again and
    ``batch_tokens`` / ``max_tokens`` are those it was prepared with.
    """
    if not isinstance(texts, PreparedTexts):
        texts = prepare_texts(tokenizer, texts, max_tokens or model_max_tokens(model), batch_tokens)
    return texts.perplexity(model, progress)
