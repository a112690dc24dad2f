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

from .data import common_prefix_len

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
    "DEFAULT_TREE_ROW_TOKENS",
    "supports_prefix_tree",
    "build_prefix_tree_rows",
    "collate_prefix_tree",
    "iter_prefix_tree_batches",
    "prefix_tree_logprobs",
    "prefix_tree_sums",
]

#: Default token budget of a scoring batch (padded tokens). Measured on tiny-m, 2 idle CPU cores,
#: 4,000 BLiMP sentences (sentences/s): 512 -> 1,491; 1,024 -> 1,518-1,565; 2,048 -> 1,285;
#: 4,096 -> 1,266-1,304; 8,192 -> 1,311; 16,384 -> 1,127 (smaller batches stay in cache).
DEFAULT_BATCH_TOKENS = 1024

# Models whose LM head is applied directly to the base model's last hidden state (no logit
# scaling / soft-capping), so we can skip computing logits at positions that are not scored.
_HEAD_ON_HIDDEN = {"gpt_neox", "gpt2", "gpt_neo", "gptj", "llama", "mistral", "qwen2", "qwen3", "olmo", "olmo2", "phi3"}


#: Rows of hidden states sent through the LM head + log-softmax at a time: the ``[rows, vocab]``
#: logits then stay in cache (measured on an [920 x 192] x [192 x 8192] head, 2 cores: all at once
#: 15.6 ms, chunks of 256 rows 12.8 ms, 128: 14.0, 512: 14.3; in sentence_logprobs on tiny-m the
#: difference between 256, 512 and no chunks is within noise, and chunks bound the memory).
_HEAD_CHUNK_ROWS = 512


def _head_logprobs(head, hidden: torch.Tensor, targets: torch.Tensor, chunk_rows: int | None = None) -> torch.Tensor:
    """``log_softmax(head(hidden))[target]`` per row (float32 or wider), in chunks of
    ``chunk_rows`` rows (default ``_HEAD_CHUNK_ROWS``; ``0``: one call of the head for all rows,
    which per-example gradient hooks on the head rely on).

    log_softmax + gather is one fused pass over the vocabulary, 2.5x faster on CPU than
    ``logit[target] - logsumexp(logits)`` (amax, sub, exp, sum and log as separate passes).
    """
    step = _HEAD_CHUNK_ROWS if chunk_rows is None else (int(chunk_rows) or max(1, hidden.shape[0]))
    out = []
    for start in range(0, max(1, hidden.shape[0]), step):
        logits = head(hidden[start:start + step])
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        out.append(torch.log_softmax(logits, dim=-1).gather(-1, targets[start:start + step, None]).squeeze(-1))
    return out[0] if len(out) == 1 else torch.cat(out)


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
    ends = 1 + np.asarray(lengths)
    attention_np = np.arange(width)[None, :] < ends[:, None]
    input_np = np.full((len(id_lists), width), int(pad_id), dtype=np.int64)
    input_np[:, 0] = prefix_id
    input_np[attention_np & (np.arange(width)[None, :] > 0)] = np.fromiter(
        (t for ids in id_lists for t in ids), dtype=np.int64, count=int(sum(lengths)))
    input_ids = torch.from_numpy(input_np)
    attention = torch.from_numpy(attention_np.astype(np.int64))
    score_mask = torch.from_numpy(attention_np.copy())
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


def token_logprob_sums(model, batch: dict, token_weights: torch.Tensor | None = None,
                       head_chunk_rows: int | None = None) -> torch.Tensor:
    """Differentiable ``sum_i w_i log p(t_i | t_<i)`` per row of a collated batch.

    Args:
        model: a causal LM (``AutoModelForCausalLM``).
        batch: from :func:`encode_batch` / :func:`collate_token_ids` (``input_ids``,
            ``attention_mask``, ``score_mask``; ``[B, L]``).
        token_weights: optional ``[B, L]`` float weights replacing ``score_mask`` (e.g. 1 on the
            critical tokens only); position 0 (the prefix) is never scored.
        head_chunk_rows: scored positions per call of the LM head (default: ``_HEAD_CHUNK_ROWS``;
            ``0``: a single call, as per-example gradient hooks on the head need).

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
        token_lp = _head_logprobs(head, hidden[:, :-1][rows], targets, head_chunk_rows)
    else:
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1][rows]
        token_lp = _head_logprobs(torch.nn.Identity(), logits, targets)
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
    packing: str = "auto",
    row_tokens: int | None = None,
) -> np.ndarray:
    """log p(sentence) for every sentence, float64, with the module's BOS-prefix / sum convention.

    Sentences are de-duplicated and run without gradient, packed in one of two ways:

    - ``packing="tree"``: prefix trees (:func:`build_prefix_tree_rows`): sentences that share a
      beginning (the two sentences of a minimal pair, paradigms built from one template) share the
      positions of that beginning, so every distinct prefix goes through the model once (29 % fewer
      positions on BLiMP with tiny-m's tokenizer). Rows of ``row_tokens`` positions with a 4-D
      ancestor mask and tree-depth position ids; exact for the model types in
      ``_TREE_MODEL_TYPES`` with SDPA or eager attention.
    - ``packing="padded"``: sorted by token length (so batches carry little padding), right padded.

    ``"auto"`` (default) takes the tree when :func:`supports_prefix_tree` and no ``batch_size`` is
    given. ``batch_size`` fixes the number of sentences per padded batch; otherwise batches hold
    at most ``batch_tokens`` positions. Results do not depend on packing or batch size beyond
    floating-point summation order (tested: < 1e-5 absolute in float32, 1e-10 in float64).
    ``progress`` shows a tqdm bar (default: when there are more than 20 batches).

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
    if packing not in ("auto", "tree", "padded"):
        raise ValueError(f"packing={packing!r}: use 'auto', 'tree' or 'padded'")
    if packing == "tree" and not supports_prefix_tree(model):
        raise ValueError(
            f"packing='tree' is not supported for model_type={getattr(model.config, 'model_type', None)!r} with "
            f"attention {getattr(model.config, '_attn_implementation', None)!r}; use packing='padded'"
        )
    use_tree = packing == "tree" or (packing == "auto" and batch_size is None and supports_prefix_tree(model))
    out = np.empty(len(unique), dtype=np.float64)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            if use_tree:
                tree = build_prefix_tree_rows(ids, row_tokens or DEFAULT_TREE_ROW_TOKENS)
                batches = list(iter_prefix_tree_batches(tree, batch_tokens))
                show = len(batches) > 20 if progress is None else progress
                for rows, index in tqdm(batches, desc="scoring", unit="batch", disable=not show, leave=False):
                    batch = collate_prefix_tree(tree, rows, prefix, pad, sentences=index, device=device)
                    out[index] = prefix_tree_sums(model, batch, len(index)).double().cpu().numpy()
            else:
                batches = _batches_by_tokens(lengths, batch_size, batch_tokens)
                show = len(batches) > 20 if progress is None else progress
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


# ---------------------------------------------------------------------------------------------
# prefix-tree packing: every distinct prefix is run through the model once

#: Model types whose forward honours explicit ``position_ids`` and a custom 4-D attention mask
#: (transformers' ``create_causal_mask`` returns a 4-D mask unchanged), so that the prefix-tree
#: packing below is exact. Tested against the padded path: gpt_neox, llama, gpt2.
_TREE_MODEL_TYPES = {"gpt_neox", "gpt2", "llama", "mistral", "qwen2", "qwen3", "olmo", "olmo2"}

#: Default length (positions, prefix included) of one packed prefix-tree row. Measured on tiny-m,
#: 2 idle CPU cores, 3,886 BLiMP sentences, seconds (batches of 1,024 / 1,536 positions): rows of
#: 16 -> 2.02 / -; 32 -> 1.83 (512) ; 64 -> 1.62 / 1.82; 96 -> 1.58 / 1.97; 128 -> 1.59-1.63 / 1.85;
#: 192 -> 1.64 / 1.75; 256 -> 1.69 / 2.14; padded batches: 2.08-2.10.
DEFAULT_TREE_ROW_TOKENS = 128


def supports_prefix_tree(model) -> bool:
    """Whether :func:`sentence_logprobs` may pack ``model``'s inputs as prefix trees (exactly)."""
    config = getattr(model, "config", None)
    return (
        getattr(config, "model_type", None) in _TREE_MODEL_TYPES & _HEAD_ON_HIDDEN
        and getattr(config, "_attn_implementation", None) in ("sdpa", "eager")
    )


def build_prefix_tree_rows(id_lists: Sequence[Sequence[int]], row_tokens: int = DEFAULT_TREE_ROW_TOKENS):
    """Pack token sequences into rows of shared-prefix trees.

    Sequences are sorted lexicographically and added to the current row one by one; a sequence
    shares the nodes of its longest common prefix with the previous sequence of the row (which, in
    sorted order, is its longest common prefix with any earlier sequence of the row), and only its
    remaining tokens become new positions. A row starts with the prefix (BOS) at position 0 and
    takes sequences while it has at most ``row_tokens`` positions (a longer sequence gets a row of
    its own). Every token position ``p > 0`` has a parent position (the previous token of every
    sequence through it), so ``log p(token_p | ancestors)`` is the same number for all of them.

    Returns a dict: ``tokens`` (per row, the ids at positions ``1..``), ``parents`` (per row,
    ``int64`` array of the parent of positions ``1..``), ``sentence_row`` (``[S]``) and
    ``sentence_positions`` (per sequence, the row positions of its tokens ``t_1..t_n``).
    """
    order = sorted(range(len(id_lists)), key=lambda i: tuple(id_lists[i]))
    tokens: list[list[int]] = []
    parents: list[list[int]] = []
    sentence_row = np.empty(len(id_lists), dtype=np.int64)
    sentence_positions: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * len(id_lists)
    prev: Sequence[int] = ()
    path: list[int] = [0]
    for i in order:
        ids = id_lists[i]
        if not len(ids):
            raise ValueError("cannot score an empty sentence (0 tokens)")
        shared = common_prefix_len(prev, ids) if tokens else 0
        if not tokens or 1 + len(tokens[-1]) + len(ids) - shared > row_tokens:
            tokens.append([])
            parents.append([])
            shared, path = 0, [0]
        row_t, row_p = tokens[-1], parents[-1]
        path = path[: shared + 1]
        for t in ids[shared:]:
            row_t.append(int(t))
            row_p.append(path[-1])
            path.append(len(row_t))
        sentence_row[i] = len(tokens) - 1
        sentence_positions[i] = np.asarray(path[1:], dtype=np.int64)
        prev = ids
    return {
        "tokens": tokens,
        "parents": [np.asarray(p, dtype=np.int64) for p in parents],
        "sentence_row": sentence_row,
        "sentence_positions": sentence_positions,
    }


def collate_prefix_tree(tree: dict, rows: Sequence[int], prefix_id: int, pad_id: int,
                        sentences: Sequence[int] | None = None, sentence_weights=None,
                        sentence_ranges=None, device=None) -> dict:
    """Batch tensors for some rows of :func:`build_prefix_tree_rows`.

    ``input_ids`` / ``position_ids`` ``[R, W]`` (position = depth in the tree, the prefix at 0),
    ``tree_mask`` ``[R, W, W]`` bool (a position sees itself and its ancestors; padding sees only
    itself), and the scored nodes: ``node_row``, ``node_parent`` (where the next-token distribution
    is read) and ``node_token``. ``member_sentence`` / ``member_node`` list which scored node
    belongs to which of ``sentences`` (local index; default: every sequence in these rows).
    ``sentence_ranges = (starts, ends)`` restricts each sequence's membership to its tokens
    ``starts[j] .. ends[j] - 1`` (0-based; e.g. the tokens after a pair's common prefix). Only nodes
    with a member are scored. With ``sentence_weights`` (``[len(sentences)]``), nodes carry
    ``node_weight`` = the summed weight of their members, and nodes whose weights cancel are not
    scored either (e.g. the shared beginning of a good and a bad sentence weighted +1 and -1; their
    memberships are dropped with them).
    """
    rows = [int(r) for r in rows]
    row_local = {r: k for k, r in enumerate(rows)}
    lengths = np.array([1 + len(tree["tokens"][r]) for r in rows])
    width = int(lengths.max())
    n_rows = len(rows)
    input_ids = np.full((n_rows, width), int(pad_id), dtype=np.int64)
    input_ids[:, 0] = prefix_id
    parent = np.tile(np.arange(width, dtype=np.int64), (n_rows, 1))  # padding: its own parent
    parent[:, 0] = -1
    offsets = np.concatenate([[0], np.cumsum(lengths - 1)])
    for k, r in enumerate(rows):
        n = lengths[k]
        input_ids[k, 1:n] = tree["tokens"][r]
        parent[k, 1:n] = tree["parents"][r]
    # ancestor-or-self mask by pointer jumping up the tree, all rows at once
    valid = np.arange(width)[None, :] < lengths[:, None]
    mask = np.zeros((n_rows, width, width), dtype=bool)
    r_idx, p_idx = np.nonzero(np.ones((n_rows, width), dtype=bool))
    cur = p_idx.copy()
    depth = np.zeros(n_rows * width, dtype=np.int64)
    mask[r_idx, p_idx, cur] = True
    pad_flat = ~valid.reshape(-1)
    alive = (cur > 0) & ~pad_flat
    while alive.any():
        cur[alive] = parent[r_idx[alive], cur[alive]]
        depth[alive] += 1
        mask[r_idx[alive], p_idx[alive], cur[alive]] = True
        alive &= cur > 0
    position_ids = depth.reshape(n_rows, width)
    # scored nodes: every valid position > 0, row-major (flat index = offsets[k] + p - 1)
    node_row, node_pos = np.nonzero(valid & (np.arange(width)[None, :] > 0))
    node_parent = parent[node_row, node_pos]
    node_token = input_ids[node_row, node_pos]
    if sentences is None:
        sentences = np.flatnonzero(np.isin(tree["sentence_row"], rows))
    sentences = np.asarray(sentences, dtype=np.int64)
    member_sentence = np.concatenate(
        [np.full(len(tree["sentence_positions"][s]), j, dtype=np.int64) for j, s in enumerate(sentences)]
    ) if len(sentences) else np.zeros(0, dtype=np.int64)
    member_node = np.concatenate(
        [offsets[row_local[int(tree["sentence_row"][s])]] + tree["sentence_positions"][s] - 1 for s in sentences]
    ) if len(sentences) else np.zeros(0, dtype=np.int64)
    if sentence_ranges is not None:
        starts, ends = (np.asarray(x, dtype=np.int64) for x in sentence_ranges)
        first = np.concatenate([[0], np.cumsum([len(tree["sentence_positions"][s]) for s in sentences])])[:-1]
        token_index = np.arange(len(member_sentence)) - first[member_sentence]
        inside = (token_index >= starts[member_sentence]) & (token_index < ends[member_sentence])
        member_sentence, member_node = member_sentence[inside], member_node[inside]
    # only nodes some member scores (with weights: whose summed weight is not 0) reach the LM head
    if sentence_weights is not None:
        w = np.asarray(sentence_weights, dtype=np.float64)
        node_weight = np.bincount(member_node, weights=w[member_sentence], minlength=len(node_row))
        keep = node_weight != 0
    else:
        keep = np.zeros(len(node_row), dtype=bool)
        keep[member_node] = True
    kept_member = keep[member_node]
    batch = {
        "input_ids": input_ids, "position_ids": position_ids, "tree_mask": mask,
        "node_row": node_row[keep], "node_parent": node_parent[keep], "node_token": node_token[keep],
        "member_sentence": member_sentence[kept_member],
        "member_node": (np.cumsum(keep) - 1)[member_node[kept_member]],
    }
    if sentence_weights is not None:
        batch["node_weight"] = node_weight[keep]
    out = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}
    return {k: v.to(device) for k, v in out.items()} if device is not None else out


def prefix_tree_logprobs(model, batch: dict) -> torch.Tensor:
    """Differentiable ``log p(node_token | ancestors)`` of every scored node of a
    :func:`collate_prefix_tree` batch (``[n_nodes]``; float32 or wider), one forward pass.

    The 4-D mask is additive (0 where a position may attend, the dtype's minimum elsewhere), which
    both the SDPA and the eager attention of transformers accept.
    """
    base = getattr(model, model.base_model_prefix)
    head = model.get_output_embeddings()
    dtype = next(model.parameters()).dtype
    additive = torch.zeros(batch["tree_mask"].shape, dtype=dtype, device=batch["input_ids"].device)
    additive.masked_fill_(~batch["tree_mask"], torch.finfo(dtype).min)
    hidden = base(input_ids=batch["input_ids"], attention_mask=additive[:, None],
                  position_ids=batch["position_ids"]).last_hidden_state
    return _head_logprobs(head, hidden[batch["node_row"], batch["node_parent"]], batch["node_token"])


def prefix_tree_sums(model, batch: dict, n_sentences: int) -> torch.Tensor:
    """``[n_sentences]`` sentence log-probabilities of a :func:`collate_prefix_tree` batch."""
    lp = prefix_tree_logprobs(model, batch)
    out = torch.zeros(n_sentences, dtype=lp.dtype, device=lp.device)
    return out.index_add(0, batch["member_sentence"], lp[batch["member_node"]])


def iter_prefix_tree_batches(tree: dict, batch_tokens: int):
    """``(rows, sentences)`` per batch of :func:`build_prefix_tree_rows` rows (at most
    ``batch_tokens`` padded positions, longest rows first); ``sentences`` are the indices of the
    sequences in those rows."""
    by_row = np.argsort(tree["sentence_row"], kind="stable")
    row_start = np.searchsorted(tree["sentence_row"][by_row], np.arange(len(tree["tokens"]) + 1))
    for rows in _tree_batches(tree, batch_tokens):
        yield rows, np.concatenate([by_row[row_start[r]:row_start[r + 1]] for r in rows])


def _tree_batches(tree: dict, batch_tokens: int) -> list[list[int]]:
    """Consecutive rows grouped so that a batch holds at most ``batch_tokens`` padded positions."""
    lengths = [1 + len(t) for t in tree["tokens"]]
    order = np.argsort(-np.asarray(lengths), kind="stable")
    batches, cur, cur_width = [], [], 0
    for r in order:
        width = max(cur_width, lengths[r])
        if cur and width * (len(cur) + 1) > batch_tokens:
            batches.append(cur)
            cur, width = [], lengths[r]
        cur.append(int(r))
        cur_width = width
    if cur:
        batches.append(cur)
    return batches
