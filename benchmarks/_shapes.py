"""Shared by the benchmarks: a suite model, or a random GPT-NeoX of its shape when it is not built
(the cost of a forward/backward pass does not depend on the weights)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def suite_or_shaped_model(spec: str):
    """``load_model(spec)``, or (suite size not built) a random GPT-NeoX of that size's shape."""
    from taskspace_utils.models import ModelNotAvailableError, load_model, suite_root

    try:
        return load_model(spec, device="cpu"), f"{spec} (trained)"
    except ModelNotAvailableError:
        pass
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast

    from taskspace_utils.pretrain import default_config

    size = spec.split("@")[0]
    shape = default_config(size)
    found = sorted(suite_root().glob(f"tokenizer-v{shape.vocab_size}-*/tokenizer.json"))
    if found:
        tok = PreTrainedTokenizerFast(tokenizer_file=str(found[0]), bos_token="<|endoftext|>",
                                      eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    else:
        from conftest import build_tiny_tokenizer
        tok = build_tiny_tokenizer(vocab_size=shape.vocab_size)
    config = GPTNeoXConfig(
        vocab_size=shape.vocab_size, hidden_size=shape.hidden_size, num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads, intermediate_size=4 * shape.hidden_size,
        max_position_embeddings=512, hidden_dropout=0.0, attention_dropout=0.0, use_parallel_residual=True,
        tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    return (GPTNeoXForCausalLM(config).eval(), tok), f"random GPT-NeoX of {size}'s shape ({spec} not built)"
