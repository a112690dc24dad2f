"""Scoring minimal pairs with a causal LM: log p(good) vs. log p(bad).

Convention (used by every stage of the kit, and by the gradient differential):

    log p(s) = sum_{i=1..n} log p(t_i | BOS, t_1, ..., t_{i-1})

where ``t_1..t_n`` are the tokens of the sentence *as given* (``tokenizer(s,
add_special_tokens=False)``: no added leading space, no special tokens) and ``BOS`` is the
tokenizer's BOS token, or its EOS token when it has no BOS (GPT-2 and Pythia use the same
``<|endoftext|>`` for both). Why: with the BOS prefix *every* word of the sentence, the first one
included, is scored, so pairs that differ in their first word (several BLiMP paradigms) are
compared fairly; the sum (not the mean) is the sentence's log-probability, which is what BLiMP's
"simple LM method" compares. This equals minicons' ``sequence_score(..., bos_token=True,
reduction=sum)``. lm-evaluation-harness' BLiMP task differs: it scores the whole sentence as a
continuation of an *empty* context that it fills with the EOS token, which is the same for
Pythia/GPT-2 but not for tokenizers with a distinct BOS; we always use BOS.

A pair is ``correct`` when ``log p(good) > log p(bad)`` strictly; equal scores are ``tie`` (never
correct) and are counted separately. Identical sentences are scored once (sentences are
de-duplicated before scoring), so BLiMP's identical pairs tie exactly.

Public functions
----------------
- :func:`sentence_logprobs` — float64 log-probabilities of many sentences, batched and fast.
- :func:`score_pairs` — adds ``logp_good``, ``logp_bad``, ``margin``, ``correct``, ``tie``.
- :func:`blimp_accuracy` — accuracy / ties / mean margin per task, phenomenon or field.
- :func:`encode_batch`, :func:`token_logprob_sums` — the differentiable building blocks that
  :mod:`.gradients` and :mod:`.ftgd` reuse, so that scores and gradients share one convention.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

__all__ = [
    "prefix_token_id",
    "tokenize_sentences",
    "encode_batch",
    "collate_token_ids",
    "token_logprob_sums",
    "sentence_logprobs",
    "score_pairs",
    "blimp_accuracy",
    "DEFAULT_BATCH_TOKENS",
]

#: Default token budget of a scoring batch (padded tokens). Measured on tiny-m, 2 idle CPU cores,
#: 4,000 BLiMP sentences (sentences/s): 512 -> 1,491; 1,024 -> 1,518-1,565; 2,048 -> 1,285;
#: 4,096 -> 1,266-1,304; 8,192 -> 1,311; 16,384 -> 1,127 (smaller batches stay in cache).
DEFAULT_BATCH_TOKENS = 1024

# Models whose LM head is applied directly to the base model's last hidden state (no logit
# scaling / soft-capping), so we can skip computing logits at positions that are not scored.
_HEAD_ON_HIDDEN = {"gpt_neox", "gpt2", "gpt_neo", "gptj", "llama", "mistral", "qwen2", "qwen3", "olmo", "olmo2", "phi3"}


def prefix_token_id(tokenizer) -> int:
    """The id put in front of every sentence: BOS, or EOS when the tokenizer has no BOS."""
    token_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token_id is None:
        raise ValueError("tokenizer has neither a BOS nor an EOS token to use as the sentence prefix")
    return int(token_id)


def tokenize_sentences(tokenizer, sentences: Sequence[str]) -> list[list[int]]:
    """Token ids of each sentence as given (no special tokens, no added space)."""
    sentences = [str(s) for s in sentences]
    if not sentences:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    # Fast tokenizers: call the Rust backend directly (skips transformers' per-sentence Python
    # wrapping, 4x faster), but only when no padding/truncation state was left on it by an earlier
    # `tokenizer(..., padding=...)` call; the regular call below resets that state.
    if backend is not None and backend.padding is None and backend.truncation is None:
        return [enc.ids for enc in backend.encode_batch(sentences, add_special_tokens=False)]
    return [list(ids) for ids in tokenizer(sentences, add_special_tokens=False)["input_ids"]]


def collate_token_ids(id_lists: Sequence[Sequence[int]], prefix_id: int, pad_id: int, device=None) -> dict:
    """Right-pad ``[prefix] + ids`` rows into a batch.

    Returns ``input_ids`` and ``attention_mask`` (``[B, L]``, ``L = 1 + max len``) and
    ``score_mask`` (``[B, L]`` bool): True at the positions of the sentence tokens (never at the
    prefix position 0, never at padding).
    """
    lengths = [len(ids) for ids in id_lists]
    if any(n == 0 for n in lengths):
        raise ValueError("cannot score an empty sentence (0 tokens)")
    width = 1 + max(lengths)
    input_ids = torch.full((len(id_lists), width), int(pad_id), dtype=torch.long)
    attention = torch.zeros((len(id_lists), width), dtype=torch.long)
    for row, ids in enumerate(id_lists):
        input_ids[row, 0] = prefix_id
        input_ids[row, 1 : 1 + len(ids)] = torch.as_tensor(ids, dtype=torch.long)
        attention[row, : 1 + len(ids)] = 1
    score_mask = attention.bool().clone()
    score_mask[:, 0] = False
    batch = {"input_ids": input_ids, "attention_mask": attention, "score_mask": score_mask}
    return {k: v.to(device) for k, v in batch.items()} if device is not None else batch


def encode_batch(tokenizer, sentences: Sequence[str], device=None) -> dict:
    """Tokenise ``sentences`` with the kit's convention and collate them (see :func:`collate_token_ids`)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else prefix_token_id(tokenizer)
    return collate_token_ids(tokenize_sentences(tokenizer, sentences), prefix_token_id(tokenizer), pad, device)


def _scored_hidden_and_head(model, input_ids, attention_mask):
    """Last hidden states ``[B, L, d]`` and the LM head, when the head can be applied to a subset of
    positions; ``(None, None)`` for models where that shortcut is not known to be exact."""
    if getattr(model.config, "model_type", None) not in _HEAD_ON_HIDDEN:
        return None, None
    base = getattr(model, model.base_model_prefix, None)
    head = model.get_output_embeddings()
    if base is None or head is None:
        return None, None
    hidden = base(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return hidden, head


def token_logprob_sums(model, batch: dict, token_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Differentiable ``sum_i w_i log p(t_i | t_<i)`` per row of a collated batch.

    Args:
        model: a causal LM (``AutoModelForCausalLM``).
        batch: from :func:`encode_batch` / :func:`collate_token_ids` (``input_ids``,
            ``attention_mask``, ``score_mask``; ``[B, L]``).
        token_weights: optional ``[B, L]`` float weights replacing ``score_mask`` (e.g. 1 on the
            critical tokens only); position 0 (the prefix) is never scored.

    Returns:
        ``[B]`` tensor in the model's dtype (float32 accumulation at least): the weighted sum of
        token log-probabilities. The log-softmax is evaluated only at scored positions
        (``log p = logit[target] - logsumexp(logits)``), in float32 or wider.
    """
    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
    weights = batch["score_mask"] if token_weights is None else token_weights
    weights = weights.to(input_ids.device)
    target_w = weights[:, 1:]
    selected = target_w != 0
    rows = torch.nonzero(selected, as_tuple=True)
    targets = input_ids[:, 1:][rows]
    hidden, head = _scored_hidden_and_head(model, input_ids, attention_mask)
    if hidden is not None:
        logits = head(hidden[:, :-1][rows])
    else:
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1][rows]
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    token_lp = logits.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    w = target_w[rows].to(token_lp.dtype)
    out = torch.zeros(input_ids.shape[0], dtype=token_lp.dtype, device=token_lp.device)
    return out.index_add(0, rows[0], token_lp * w)


def _batches_by_tokens(lengths: np.ndarray, batch_size: int | None, batch_tokens: int) -> list[np.ndarray]:
    """Indices sorted by length (longest first), cut into batches of ``batch_size`` sentences or,
    when ``batch_size`` is None, of at most ``batch_tokens`` padded tokens."""
    order = np.argsort(-lengths, kind="stable")
    batches, start = [], 0
    while start < len(order):
        if batch_size is not None:
            stop = start + int(batch_size)
        else:
            width = int(lengths[order[start]]) + 1
            stop = start + max(1, batch_tokens // width)
        batches.append(order[start:stop])
        start = stop
    return batches


def sentence_logprobs(
    model,
    tokenizer,
    sentences: Sequence[str],
    batch_size: int | None = None,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    progress: bool | None = None,
) -> np.ndarray:
    """log p(sentence) for every sentence, float64, with the module's BOS-prefix / sum convention.

    Sentences are de-duplicated, sorted by token length (so batches carry little padding), right
    padded, and run without gradient. ``batch_size`` fixes the number of sentences per batch;
    ``None`` fills batches up to ``batch_tokens`` padded tokens. Results do not depend on the
    batch size beyond floating-point summation order (tested: < 1e-5 absolute in float32, 1e-10 in
    float64). ``progress`` shows a tqdm bar (default: when there are more than 20 batches).

    Returns:
        ``np.ndarray`` of shape ``[len(sentences)]``, dtype float64.
    """
    sentences = [str(s) for s in sentences]
    if not sentences:
        return np.zeros(0, dtype=np.float64)
    unique, inverse = np.unique(np.asarray(sentences, dtype=object), return_inverse=True)
    ids = tokenize_sentences(tokenizer, list(unique))
    lengths = np.array([len(x) for x in ids])
    if (lengths == 0).any():
        bad = [unique[i] for i in np.flatnonzero(lengths == 0)[:3]]
        raise ValueError(f"cannot score sentences with no tokens: {bad}")
    prefix = prefix_token_id(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else prefix
    device = next(model.parameters()).device
    batches = _batches_by_tokens(lengths, batch_size, batch_tokens)
    show = len(batches) > 20 if progress is None else progress
    out = np.empty(len(unique), dtype=np.float64)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for index in tqdm(batches, desc="scoring", unit="batch", disable=not show, leave=False):
                batch = collate_token_ids([ids[i] for i in index], prefix, pad, device)
                out[index] = token_logprob_sums(model, batch).double().cpu().numpy()
    finally:
        model.train(was_training)
    return out[inverse]


def score_pairs(model, tokenizer, pairs: pd.DataFrame, batch_size: int | None = None, progress: bool | None = None) -> pd.DataFrame:
    """Score every pair: a copy of ``pairs`` with ``logp_good``, ``logp_bad``, ``margin =
    logp_good - logp_bad``, ``correct = margin > 0`` and ``tie = margin == 0``.

    Good and bad sentences of all pairs are scored in one :func:`sentence_logprobs` call.
    """
    n = len(pairs)
    scores = sentence_logprobs(
        model, tokenizer, list(pairs["good"].astype(str)) + list(pairs["bad"].astype(str)),
        batch_size=batch_size, progress=progress,
    )
    out = pairs.copy()
    out["logp_good"] = scores[:n]
    out["logp_bad"] = scores[n:]
    out["margin"] = out["logp_good"] - out["logp_bad"]
    out["correct"] = out["margin"] > 0
    out["tie"] = out["margin"] == 0
    return out


def blimp_accuracy(scored: pd.DataFrame, by: str = "task") -> pd.DataFrame:
    """Accuracy per ``by`` (``"task"``, ``"phenomenon"`` or ``"field"``) of a :func:`score_pairs` frame.

    Per task: ``accuracy`` = mean of ``correct`` (ties count as wrong), ``ties``, ``n_pairs`` and
    ``mean_margin``. For ``phenomenon`` / ``field`` the accuracy is the *macro* mean over the
    group's tasks (every paradigm weighs the same, as in the BLiMP paper), with ``n_tasks``.
    """
    per_task = scored.groupby("task", sort=True).agg(
        phenomenon=("phenomenon", "first"), field=("field", "first"),
        accuracy=("correct", "mean"), ties=("tie", "sum"), n_pairs=("correct", "size"), mean_margin=("margin", "mean"),
    )
    if by == "task":
        return per_task
    if by not in ("phenomenon", "field"):
        raise ValueError(f"by={by!r}: use 'task', 'phenomenon' or 'field'")
    return per_task.groupby(by, sort=True).agg(
        accuracy=("accuracy", "mean"), ties=("ties", "sum"), n_tasks=("accuracy", "size"), mean_margin=("mean_margin", "mean"),
    )
