"""Training data of a suite size: the tokenised corpus streams, rows of ``seq_len`` tokens, batch order.

Every corpus paragraph is split into sentences (:func:`corpus.split_sentences`) and each sentence
follows ``<|endoftext|>`` (EOT), exactly as a BLiMP sentence follows BOS when scored; the stream
``EOT s1 EOT s2 EOT ...`` is cut into rows of ``seq_len`` tokens (the tail shorter than a row is
dropped) and rows are drawn in a seeded random order, epoch by epoch: epoch ``e`` visits the rows in
the order ``randperm(n_rows)`` of a generator seeded ``seed + 1000003 * (e + 1)``, and optimizer step
``s`` (0-based) takes positions ``s * batch_size`` to ``(s + 1) * batch_size - 1`` of that sequence.

The tokenizer and the streams live in ``{suite_dir}/tokenizer-v{V}-{corpus sha[:12]}-{segment}[-p{N}]/``
(trained once, shared by the sizes with that vocabulary and corpus).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..results import atomic_save_safetensors
from . import corpus
from .config import PretrainConfig

__all__ = ["prepare_data", "cut_rows", "batch_indices", "data_order_sha256"]


def prepare_data(config: PretrainConfig, suite_dir: Path, corpus_dir: Path = corpus.CORPUS_DIR):
    """Train (or reuse) the tokenizer and tokenised corpus for ``config``; return (tokenizer, folder, streams).

    The folder ``tokenizer-v{V}-{corpus sha[:12]}-{segment}[-p{N}]`` under ``suite_dir`` holds the tokenizer
    (``save_pretrained``) and ``tokens.safetensors`` with int32 streams ``train`` and ``valid``:
    ``EOT s1 EOT s2 ...`` over the segments (sentences or paragraphs) of the split. Tokenizer training is
    deterministic, so a rebuilt folder has the same bytes.
    """
    from safetensors.torch import load_file
    from transformers import PreTrainedTokenizerFast

    corpus_sha = corpus.corpus_sha256(corpus_dir)
    if config.segment not in ("sentence", "paragraph"):
        raise ValueError(f"PretrainConfig.segment must be 'sentence' or 'paragraph', got {config.segment!r}")
    name = f"tokenizer-v{config.vocab_size}-{corpus_sha[:12]}-{config.segment}"
    if config.corpus_paragraphs is not None:
        name += f"-p{config.corpus_paragraphs}"
    folder = suite_dir / name
    if not (folder / "tokens.safetensors").exists():
        train = corpus.read_corpus("train", corpus_dir)[: config.corpus_paragraphs]
        valid = corpus.read_corpus("valid", corpus_dir)[: config.corpus_paragraphs]
        streams = {}
        tokenizer = None
        for split, paragraphs in (("train", train), ("valid", valid)):
            if config.segment == "sentence":
                sentences = [s for p in tqdm(paragraphs, desc=f"split {split} sentences", leave=False)
                             for s in corpus.split_sentences(p)]
            else:
                sentences = paragraphs
            if tokenizer is None:
                tokenizer = corpus.train_tokenizer(sentences, config.vocab_size)
            ids = tokenizer(sentences, add_special_tokens=False)["input_ids"]
            eot = tokenizer.eos_token_id
            streams[split] = torch.tensor([t for row in ids for t in [eot, *row]], dtype=torch.int32)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=suite_dir))
        tokenizer.save_pretrained(tmp)
        atomic_save_safetensors(tmp / "tokens.safetensors", streams, metadata={"corpus_sha256": corpus_sha})
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(folder)
    streams = load_file(str(folder / "tokens.safetensors"))
    return tokenizer, folder, streams


def cut_rows(stream: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Cut a token stream into ``[n_rows, seq_len]`` int64 rows (the tail shorter than a row is dropped)."""
    n = stream.numel() // seq_len
    if n == 0:
        raise ValueError(f"token stream of {stream.numel()} tokens is shorter than seq_len={seq_len}")
    return stream[: n * seq_len].view(n, seq_len).long()


def batch_indices(step: int, config: PretrainConfig, n_rows: int) -> torch.Tensor:
    """Row indices of optimizer step ``step`` (0-based): epoch ``e`` visits the rows in the order
    ``randperm(n_rows, generator seeded seed + 1000003 * (e + 1))``; consecutive steps take
    consecutive slices."""
    start = step * config.batch_size
    out = []
    while len(out) < config.batch_size:
        epoch, offset = divmod(start + len(out), n_rows)
        generator = torch.Generator().manual_seed(config.seed + 1000003 * (epoch + 1))
        perm = torch.randperm(n_rows, generator=generator)
        take = min(config.batch_size - len(out), n_rows - offset)
        out.extend(perm[offset: offset + take].tolist())
    return torch.tensor(out)


def data_order_sha256(config: PretrainConfig, train_rows: torch.Tensor) -> str:
    """SHA-256 of every token the training loop of ``config`` reads, in order: the int64 bytes of
    ``train_rows[batch_indices(s)]`` for ``s = 0 .. max_steps - 1``. Two suite models with the same
    digest saw the same token stream in the same order (Pythia's design: sizes differ only in shape;
    an extra seed changes the order, so its digest differs)."""
    digest = hashlib.sha256()
    for step in range(config.max_steps):
        digest.update(train_rows[batch_indices(step, config, train_rows.shape[0])].numpy().tobytes())
    return digest.hexdigest()
