"""Shared fixtures: a seed, a tiny BPE tokenizer and tiny GPT-NeoX models built in the test session,
and a helper that executes a notebook through papermill.

Nothing here touches a hub: the tokenizer is trained on bundled BLiMP sentences with `tokenizers`,
the models are randomly initialised from a `GPTNeoXConfig`.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


def build_tiny_tokenizer(vocab_size: int = 400):
    """Byte-level BPE trained on 2,000 bundled BLiMP sentences; BOS = EOS = PAD = <|endoftext|>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from taskspace_utils.data import load_blimp

    pairs = load_blimp(tasks=["anaphor_gender_agreement", "regular_plural_subject_verb_agreement_1",
                              "npi_present_1", "wh_island"])
    texts = list(pairs["good"].head(1000)) + list(pairs["bad"].head(1000))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )


def build_tiny_model(tokenizer, dtype=torch.float32, seed: int = 0, hidden: int = 32, layers: int = 2):
    """A randomly initialised 2-layer GPT-NeoX (hidden 32, 4 heads) in eval mode."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(seed)
    config = GPTNeoXConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
        intermediate_size=4 * hidden, max_position_embeddings=128, rotary_pct=0.25,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False, use_parallel_residual=True,
    )
    model = GPTNeoXForCausalLM(config).to(dtype)
    model.eval()
    return model


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_lm(tiny_tokenizer):
    """(model, tokenizer): tiny GPT-NeoX in float32, eval mode. Tests must not modify it in place
    (or must restore it)."""
    return build_tiny_model(tiny_tokenizer), tiny_tokenizer


@pytest.fixture(scope="session")
def tiny_lm64(tiny_tokenizer):
    """(model, tokenizer): the same tiny GPT-NeoX in float64 (for exact / finite-difference checks)."""
    return build_tiny_model(tiny_tokenizer, dtype=torch.float64), tiny_tokenizer


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_lm):
    """A folder with the tiny model and tokenizer saved by `save_pretrained` (loadable by load_model)."""
    model, tokenizer = tiny_lm
    folder = tmp_path_factory.mktemp("tiny_model")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def run_notebook(name: str, nb_dir: Path, /, **parameters) -> Path:
    """Execute ``notebooks/<name>`` with papermill (kernel python3), writing the executed copy into
    ``nb_dir``, and return its path. ``parameters`` (e.g. ``out_dir=...``, ``smoke=True``) go to the
    notebook's ``parameters`` cell."""
    import papermill as pm

    nb_dir = Path(nb_dir)
    nb_dir.mkdir(parents=True, exist_ok=True)
    output = nb_dir / Path(name).name
    pm.execute_notebook(
        str(NOTEBOOKS / name), str(output), parameters=parameters, kernel_name="python3",
        cwd=str(NOTEBOOKS), progress_bar=False, log_output=False,
    )
    return output
