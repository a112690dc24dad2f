"""Shared by the benchmarks: a suite model, or a random GPT-NeoX of its shape when it is not built
(the cost of a forward/backward pass does not depend on the weights)."""

from __future__ import annotations

import os
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
    from transformers import GPTNeoXForCausalLM, PreTrainedTokenizerFast

    from taskspace_utils.suite import default_config
    from taskspace_utils.suite.training import model_config

    size = spec.split("@")[0]
    shape = default_config(size)
    found = sorted(suite_root().glob(f"tokenizer-v{shape.vocab_size}-*/tokenizer.json"))
    if found:
        tok = PreTrainedTokenizerFast(tokenizer_file=str(found[0]), bos_token="<|endoftext|>",
                                      eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    else:
        from conftest import build_tiny_tokenizer
        tok = build_tiny_tokenizer(vocab_size=shape.vocab_size)
    torch.manual_seed(0)
    return (GPTNeoXForCausalLM(model_config(shape, tok)).eval(), tok), f"random GPT-NeoX of {size}'s shape ({spec} not built)"


def use_kernel_environment() -> None:
    """Re-execute this benchmark once with the environment the runner gives its kernels
    (:func:`taskspace_utils.pipeline.kernel_env.kernel_environment`: glibc malloc settings and, on Linux
    x86-64, Intel's OpenMP runtime), so that it times the kit as the main job runs it. Variables
    already set are kept; ``TASKSPACE_OPENMP=gnu`` keeps torch's GNU OpenMP runtime."""
    from taskspace_utils.pipeline.kernel_env import kernel_environment

    env = kernel_environment()
    if env and os.environ.get("TASKSPACE_BENCH_REEXEC") != "1":
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **env, "TASKSPACE_BENCH_REEXEC": "1"})
