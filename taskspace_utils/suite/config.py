"""What one suite size is: its :class:`PretrainConfig`, default shapes and budgets, saved steps, LR.

Model shapes (vocabulary V = 8,192, untied input and output embeddings): embeddings ``2 * V * d``,
each layer ``12 d^2 + 13 d`` (attention ``4 d^2``, MLP ``8 d^2`` with a ``4 d`` hidden layer).
Checkpoints: 0 and powers of 4 below ``checkpoint_every`` (like Pythia's log-spaced early steps),
then every ``checkpoint_every`` steps, and the final step. Learning rate of optimizer step ``s``
(0-based): linear warm-up ``lr * (s + 1) / W`` for ``s < W``, then a cosine from ``lr`` to
``min_lr_ratio * lr`` (:func:`learning_rate`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..layout import SUITE_MODELS, SUITE_NAME_PATTERN, SUITE_SEEDS, SUITE_SIZES

__all__ = ["SUITE_SIZES", "SUITE_SEEDS", "SUITE_MODELS", "SUITE_STEPS", "BASE_SEED", "split_name", "CPU_STEPS", "GPU_STEP_FACTOR", "PretrainConfig", "default_config", "checkpoint_steps", "learning_rate"]


# Model shapes (parameters as in the module docstring):
#   tiny-s: d=128, 4 layers: 2.10M + 0.79M = 2.9M   (the reference point)
#   tiny-m: d=192, 4 layers: 3.15M + 1.78M = 4.9M
#   tiny-l: d=256, 5 layers: 4.19M + 3.94M = 8.1M
_SHAPES = {
    "tiny-s": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4),
    "tiny-m": dict(hidden_size=192, num_hidden_layers=4, num_attention_heads=6),
    "tiny-l": dict(hidden_size=256, num_hidden_layers=5, num_attention_heads=8),
}
# One step budget for every size and seed (Pythia's design: the same token stream, in the same
# order, with the same batch size and the same saved steps, so that size and training step are the
# only variables; the extra seeds change the initialisation and the data order, as in PolyPythias).
# Batch 32 x 64 tokens = 2,048 tokens per step; 1,000 steps = 2.05M tokens for every model.
#   Budget (issue 16): the whole suite, 3 sizes + 2 seeds of tiny-s, within 1.3x the build of the
#   earlier suite (800 / 1,000 / 1,500 steps, sizes saw 1.6M / 2.0M / 3.1M tokens), which took
#   194 + 314 + 693 = 1,201 s of training on the idle 2-core machine (2026-11-25). Per step there:
#   tiny-s 0.243 s, tiny-m 0.314 s, tiny-l 0.462 s (checkpoints and validation included), so N equal
#   steps cost N x (3 x 0.243 + 0.314 + 0.462) = 1.50 N s: N = 1,000 gives 1,503 s = 1.25x, while
#   N = 1,100 would be 1.38x. Measured in one process (benchmarks/bench_suite_budget.py, 2026-11-28,
#   load 1.6): 0.296 / 0.421 / 0.670 s per step, old 27.7 min, new 33.0 min: 1.19x. What it cost in
#   BLiMP (67 tasks x 1,000 pairs, final step): tiny-s 0.561 (seeds 0.555, 0.555), tiny-m 0.567,
#   tiny-l 0.560 (0.515 at step 0): under the 0.58 that tiny-l reached with 1,500 steps, and not
#   ordered by size (validation loss is: 4.655, 4.538, 4.522). 1,500 equal steps would cost 1.5x.
#   tiny-m's config is the same as before (1,000 steps, seed 0), so a suite built earlier keeps it.
SUITE_STEPS = 1000
CPU_STEPS = {size: SUITE_STEPS for size in SUITE_SIZES}
#: The default seed (``tiny-s``); ``tiny-s-seedK`` trains with ``BASE_SEED + K``.
BASE_SEED = 1234
GPU_STEP_FACTOR = 4  # on a GPU, 4x the tokens (still minutes)


@dataclass(frozen=True)
class PretrainConfig:
    """Everything that determines one trained size; stored as ``{root}/{size}/config.json``.

    Attributes
    ----------
    size: suite name (``tiny-s``, ``tiny-m``, ``tiny-l``, or a size with an extra pre-training seed,
        ``tiny-s-seed1``); also the folder name.
    hidden_size, num_hidden_layers, num_attention_heads: GPT-NeoX shape; the MLP is 4x wide.
    vocab_size: BPE vocabulary, ``<|endoftext|>`` included (the output layer, ``V * d`` weights,
        dominates small models, so this is a size choice too).
    seq_len: tokens per training row (BLiMP sentences are 5-20 tokens; the mean corpus sentence ~27).
    batch_size: rows per optimizer step; tokens per step = ``batch_size * seq_len``.
    max_steps: optimizer steps; tokens seen at the end = ``max_steps * batch_size * seq_len``.
    lr, min_lr_ratio, warmup_fraction: AdamW learning rate, linear warm-up over
        ``warmup_fraction * max_steps`` steps, then cosine decay to ``min_lr_ratio * lr``.
    weight_decay, beta1, beta2, grad_clip: AdamW decoupled decay (matrices only) and betas; global
        gradient-norm clip.
    checkpoint_every: spacing of the later checkpoints; early ones are 0, 1, 4, 16, 64, 256, ... (x4)
        below it, like Pythia's log-spaced 0, 1, 2, 4, ..., 512; the final step is always saved.
    n_valid_rows: validation rows (``seq_len`` tokens each, the first of the held-out stream) for
        the validation loss at each checkpoint.
    seed: seeds initialisation and data order (:data:`BASE_SEED` + the name's ``-seedK``, else + 0).
    corpus_paragraphs: use only the first N training paragraphs (``None`` = all; smoke runs).
    segment: what follows each ``<|endoftext|>`` in the stream: ``"sentence"`` (as BLiMP sentences
        follow BOS when scored) or ``"paragraph"`` (whole paragraphs, sentences after a space).
    """

    size: str
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    vocab_size: int = 8192
    seq_len: int = 64
    batch_size: int = 32
    max_steps: int = 1200
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_fraction: float = 0.05
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.98
    grad_clip: float = 1.0
    checkpoint_every: int = 500
    n_valid_rows: int = 256
    seed: int = BASE_SEED
    corpus_paragraphs: int | None = None
    segment: str = "sentence"

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len


def split_name(name: str) -> tuple[str, int]:
    """``"tiny-s-seed2"`` -> ``("tiny-s", 2)``; ``"tiny-m"`` -> ``("tiny-m", 0)`` (seed 0 is the default
    seed). ``ValueError`` for a name that is not a suite size with an optional ``-seedK``."""
    match = SUITE_NAME_PATTERN.match(str(name))
    if not match or match["step"] is not None or match["base"] not in _SHAPES:
        raise ValueError(f"unknown suite model {name!r}; expected one of {SUITE_SIZES}, optionally with "
                         f"-seedK (e.g. {SUITE_SEEDS[0]}); the default build makes {', '.join(SUITE_MODELS)}")
    return match["base"], int(match["seed"] or 0)


def default_config(size: str, smoke: bool = False, device: str | torch.device = "cpu") -> PretrainConfig:
    """The default :class:`PretrainConfig` of ``size`` (a size, or a size with ``-seedK``).

    Every size and seed gets the same batch, sequence length, step budget (:data:`SUITE_STEPS`),
    saved steps and learning-rate schedule; ``tiny-s-seedK`` is ``tiny-s`` with ``seed = BASE_SEED
    + K`` (initialisation and data order). ``smoke=True`` gives a toy of the same name that builds in
    seconds (hidden 32, 2 layers, vocabulary 300, 12 steps on the first 2,000 paragraphs); on a CUDA
    ``device`` the token budget is ``GPU_STEP_FACTOR`` times the CPU one.
    """
    base, seed = split_name(size)
    if smoke:
        return PretrainConfig(size=size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                              vocab_size=300, seq_len=32, batch_size=8, max_steps=12, lr=3e-3,
                              checkpoint_every=8, n_valid_rows=16, corpus_paragraphs=2000, seed=BASE_SEED + seed)
    steps = CPU_STEPS[base] * (GPU_STEP_FACTOR if torch.device(device).type == "cuda" else 1)
    return PretrainConfig(size=size, **_SHAPES[base], max_steps=steps, seed=BASE_SEED + seed)


def checkpoint_steps(max_steps: int, every: int) -> list[int]:
    """Saved steps: 0 and powers of 4 below ``every``, multiples of ``every``, and ``max_steps``.

    >>> checkpoint_steps(1200, 500)
    [0, 1, 4, 16, 64, 256, 500, 1000, 1200]
    """
    early = [0] + [4 ** k for k in range(20) if 4 ** k < min(every, max_steps)]
    later = list(range(every, max_steps + 1, every))
    return sorted(set(early + later + [max_steps]))


def learning_rate(step: int, config: PretrainConfig) -> float:
    """LR of optimizer step ``step`` (0-based): ``lr * (step + 1) / W`` for ``step < W``, then
    ``lr * (r + (1 - r) * (1 + cos(pi * t)) / 2)`` with ``t = (step - W) / (max_steps - W)``,
    ``r = min_lr_ratio`` and ``W = round(warmup_fraction * max_steps)``.

    Hand-written on purpose, not ``transformers.get_cosine_with_min_lr_schedule_with_warmup``
    (issue 13, section 5): that schedule warms up as ``lr * step / W``, one step behind this one, so
    it gives step 0 a learning rate of 0 (a wasted step) and differs at every warm-up step (for the
    smoke configs, ``W = 1``, at step 0 only). After the warm-up both give the same floats. Switching
    would change the weights of every checkpoint after step 0, so suites built before would no longer
    match a rebuild (``tests/test_suite_config.py`` shows the difference step by step).
    """
    warmup = max(1, round(config.warmup_fraction * config.max_steps))
    if step < warmup:
        return config.lr * (step + 1) / warmup
    t = (step - warmup) / max(1, config.max_steps - warmup)
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))
