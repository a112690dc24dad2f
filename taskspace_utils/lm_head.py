"""The LM head at the scored positions only: ``log_softmax(head(h))[target]``.

For the model types in :data:`HEAD_ON_HIDDEN` the LM head is applied directly to the base
model's last hidden state (no logit scaling or soft-capping), so the ``[positions, vocab]`` logits
are computed only where a token is scored (a pair's shared prefix, padding and the BOS position are
skipped). Used by the padded batches (:mod:`.padded`) and the prefix trees (:mod:`.prefix_tree`).
"""

from __future__ import annotations

import torch

__all__ = ["HEAD_ON_HIDDEN", "head_logprobs", "scored_hidden_and_head"]

# Models whose LM head is applied directly to the base model's last hidden state (no logit
# scaling / soft-capping), so we can skip computing logits at positions that are not scored.
HEAD_ON_HIDDEN = {"gpt_neox", "gpt2", "gpt_neo", "gptj", "llama", "mistral", "qwen2", "qwen3", "olmo", "olmo2", "phi3"}


#: Rows of hidden states sent through the LM head + log-softmax at a time (chunks bound the memory:
#: ``rows x vocab`` logits). Measured 2026-11-29 on tiny-m, 2 cores, the runner's kernel environment:
#: the probing evaluation (67 tasks x 100 test pairs, 98,802 head rows in batches of <= 1,024
#: positions) took 8.2 s with chunks of 128 rows, 7.5 s with 256, 7.0-7.2 s with 512 and 6.8 s with
#: 1,024 (its head 2.5 s, 126 GFLOP/s, against 2.7-2.8 s at 512); the head alone on [16384, 192] x
#: [192, 8192]: 127 / 147 / 158 / 167 GFLOP/s for the product at 256 / 512 / 1,024 / 2,048 rows.
#: 1,024 rows of logits over a vocabulary of 8,192 are exactly 32 MiB, where glibc maps a block
#: afresh under the runner's malloc settings (:mod:`taskspace_utils.pipeline.kernel_env`); a batch of
#: at most 1,024 positions scores fewer rows than that, so its logits stay on the heap (six
#: alternating task differentials at 512 / 1,024 rows: 10,021 / 8,709 page faults).
_HEAD_CHUNK_ROWS = 1024


def head_logprobs(head, hidden: torch.Tensor, targets: torch.Tensor, chunk_rows: int | None = None) -> torch.Tensor:
    """``log_softmax(head(hidden))[target]`` per row (float32 or wider: 16-bit logits are upcast
    before the log-softmax, so its sum over the vocabulary is not rounded to 8 mantissa bits; the
    head's matmul itself runs in the model's dtype, so a bf16 logit carries a relative rounding
    error of up to 2^-9), in chunks of
    ``chunk_rows`` rows (default ``_HEAD_CHUNK_ROWS``; ``0``: one call of the head for all rows,
    which per-example gradient hooks on the head rely on).

    log_softmax + gather is one fused pass over the vocabulary, 2.5x faster on CPU than
    ``logit[target] - logsumexp(logits)`` (amax, sub, exp, sum and log as separate passes). Without
    autograd (scoring, the probing evaluation) the log-softmax overwrites the logits instead of
    writing a second ``[rows, vocab]`` tensor: the same numbers bit for bit, and 4 % less time for
    the head on ``tiny-m`` (``[16384, 192] x [192, 8192]`` in chunks of 512-2048 rows, 2 cores).
    """
    step = _HEAD_CHUNK_ROWS if chunk_rows is None else (int(chunk_rows) or max(1, hidden.shape[0]))
    in_place = not torch.is_grad_enabled()  # autograd keeps the log-softmax's output for its backward
    out = []
    for start in range(0, max(1, hidden.shape[0]), step):
        logits = head(hidden[start:start + step])
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        own = logits.untyped_storage().data_ptr() != hidden.untyped_storage().data_ptr()  # not the caller's tensor
        logp = torch.log_softmax(logits, dim=-1, out=logits) if in_place and own else torch.log_softmax(logits, dim=-1)
        out.append(logp.gather(-1, targets[start:start + step, None]).squeeze(-1))
    return out[0] if len(out) == 1 else torch.cat(out)


def scored_hidden_and_head(model, input_ids, attention_mask):
    """Last hidden states ``[B, L, d]`` and the LM head, when the head can be applied to a subset of
    positions; ``(None, None)`` for models where that shortcut is not known to be exact."""
    if getattr(model.config, "model_type", None) not in HEAD_ON_HIDDEN:
        return None, None
    base = getattr(model, model.base_model_prefix, None)
    head = model.get_output_embeddings()
    if base is None or head is None:
        return None, None
    hidden = base(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return hidden, head
