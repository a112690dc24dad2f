"""Pre-train the offline model suite: three GPT-NeoX sizes with checkpoints (stage 00).

The paper (Weber et al., 2024, section 3) compares Pythia models of several sizes and checkpoints
along pre-training. Offline, the kit builds its own small suite in the same shape: sizes ``tiny-s``,
``tiny-m``, ``tiny-l`` (``transformers``' GPT-NeoX, the Pythia architecture), each saved at
log-spaced early steps and evenly spaced later ones, trained on the bundled corpus
(:mod:`taskspace_utils.corpus`) with a byte-level BPE tokenizer. ``models.load_model("tiny-m")`` loads
the final checkpoint, ``load_model("tiny-m@step64")`` an earlier one, ``@step0`` the initialisation.

Suite layout (``suite_dir`` defaults to ``models.suite_root()``)
-----------------------------------------------------------------
- ``{root}/tokenizer-v{V}-{corpus sha[:12]}/``: the tokenizer (trained once, shared by sizes) and
  ``tokens.safetensors``, the tokenised corpus (train and validation id streams).
- ``{root}/{size}/config.json``: the :class:`PretrainConfig` (a different config in the same folder
  is refused, so results are never mixed).
- ``{root}/{size}/step{N}/``: ``save_pretrained`` model (``model.safetensors``) and tokenizer, and
  ``checkpoint.json`` (model and training config, corpus and tokenizer SHA-256, seed, step, tokens
  seen, validation loss, wall time so far, library versions).
- ``{root}/{size}/resume/``: optimizer state of the latest checkpoint (resume state, not a result).
- ``{root}/{size}/suite.json``: written atomically *last*; a size without it is not built.

Training data: every corpus paragraph is split into sentences (:func:`corpus.split_sentences`) and
each sentence follows ``<|endoftext|>``, exactly as a BLiMP sentence follows BOS when scored; the
stream ``EOT s1 EOT s2 EOT ...`` is cut into rows of ``seq_len`` tokens and rows are drawn in a
seeded random order, epoch by epoch. Loss: mean next-token cross-entropy over the row.

Public functions
----------------
- :func:`default_config`: the :class:`PretrainConfig` of a size (CPU, GPU or smoke budget).
- :func:`build_suite`: build (or resume, or skip) sizes; returns their ``suite.json`` records.
- :func:`train_size`: train one size into ``{root}/{size}``.
- :func:`checkpoint_table`, :func:`evaluate_checkpoints`: per checkpoint parameters, tokens,
  validation loss, wall time, and BLiMP mean accuracy (``scoring.score_pairs``).
- :func:`is_built`, :func:`checkpoint_steps`, :func:`count_parameters`.

CLI: ``python -m taskspace_utils.pretrain --size tiny-m [--suite-dir DIR] [--smoke]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import corpus
from .results import atomic_save_safetensors, atomic_write_json, ensure_run_config, read_json

__all__ = [
    "SUITE_SIZES",
    "PretrainConfig",
    "default_config",
    "checkpoint_steps",
    "count_parameters",
    "build_suite",
    "train_size",
    "is_built",
    "checkpoint_table",
    "evaluate_checkpoints",
    "learning_rate",
    "validation_loss",
    "prepare_data",
]

SUITE_SIZES = ("tiny-s", "tiny-m", "tiny-l")

# Model shapes. Parameters (vocabulary V = 8,192, untied input and output embeddings):
#   embeddings 2 * V * d, each layer 12 d^2 + 13 d (attention 4 d^2, MLP 8 d^2 with 4d hidden).
#   tiny-s: d=128, 4 layers: 2.10M + 0.79M = 2.9M   (the reference point)
#   tiny-m: d=192, 4 layers: 3.15M + 1.78M = 4.9M
#   tiny-l: d=256, 5 layers: 4.19M + 3.94M = 8.1M
_SHAPES = {
    "tiny-s": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4),
    "tiny-m": dict(hidden_size=192, num_hidden_layers=4, num_attention_heads=6),
    "tiny-l": dict(hidden_size=256, num_hidden_layers=5, num_attention_heads=8),
}
# Optimizer steps on 2 CPU cores (batch 32 x 64 tokens = 2,048 tokens per step); measured
# throughput with these shapes sets the budget so that the three sizes together fit in 25 min.
#   Measured on the idle 2-core machine (fresh build, 2026-11-25): tiny-s 0.27 s/step, tiny-m
#   0.35 s/step (checkpoints and validation included); a bare training step of tiny-l 0.49 s
#   (tiny-s 0.23 s; two threads are 1.8x one, so building sizes side by side gains nothing).
#   The first budget, 1200 / 1500 / 1800 steps, took 325 s + 525 s + ~950 s: ~31 min, over budget.
#   Now 800 x 0.27 + 1000 x 0.35 + 1500 x 0.52 = 216 + 350 + 780 s ~ 22.5 min, plus ~1 min for the
#   tokenizer and the notebook's BLiMP curve. What it cost (BLiMP, 300 pairs per task, checkpoints
#   of the 1800-step run): tiny-l 0.591 at step 1800, 0.589 at step 1500 (a 1500-step schedule, whose
#   learning rate has fully decayed there, does at least as well); tiny-m 0.582 at 1500, 0.562 at
#   1000. The sizes therefore also differ in tokens seen (1.6M, 2.0M, 3.1M), as they did before.
_CPU_STEPS = {"tiny-s": 800, "tiny-m": 1000, "tiny-l": 1500}
_GPU_STEP_FACTOR = 4  # on a GPU, 4x the tokens (still minutes)


@dataclass(frozen=True)
class PretrainConfig:
    """Everything that determines one trained size; stored as ``{root}/{size}/config.json``.

    Attributes
    ----------
    size: suite name (``tiny-s``, ``tiny-m``, ``tiny-l``); also the folder name.
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
    seed: seeds initialisation and data order.
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
    seed: int = 1234
    corpus_paragraphs: int | None = None
    segment: str = "sentence"

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len


def default_config(size: str, smoke: bool = False, device: str | torch.device = "cpu") -> PretrainConfig:
    """The default :class:`PretrainConfig` of ``size``.

    ``smoke=True`` gives a toy of the same size name that builds in seconds (hidden 32, 2 layers,
    vocabulary 300, 12 steps on the first 2,000 paragraphs); on a CUDA ``device`` the token budget
    is ``_GPU_STEP_FACTOR`` times the CPU one.
    """
    if size not in _SHAPES:
        raise ValueError(f"unknown suite size {size!r}; expected one of {SUITE_SIZES}")
    if smoke:
        return PretrainConfig(size=size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                              vocab_size=300, seq_len=32, batch_size=8, max_steps=12, lr=3e-3,
                              checkpoint_every=8, n_valid_rows=16, corpus_paragraphs=2000)
    steps = _CPU_STEPS[size] * (_GPU_STEP_FACTOR if torch.device(device).type == "cuda" else 1)
    return PretrainConfig(size=size, **_SHAPES[size], max_steps=steps)


def checkpoint_steps(max_steps: int, every: int) -> list[int]:
    """Saved steps: 0 and powers of 4 below ``every``, multiples of ``every``, and ``max_steps``.

    >>> checkpoint_steps(1200, 500)
    [0, 1, 4, 16, 64, 256, 500, 1000, 1200]
    """
    early = [0] + [4 ** k for k in range(20) if 4 ** k < min(every, max_steps)]
    later = list(range(every, max_steps + 1, every))
    return sorted(set(early + later + [max_steps]))


def count_parameters(model: torch.nn.Module) -> int:
    """Number of parameters (embeddings and output layer included, as Pythia's names count them)."""
    return sum(p.numel() for p in model.parameters())


def is_built(size: str, suite_dir: str | Path | None = None) -> bool:
    """Whether ``{suite_dir}/{size}/suite.json`` exists (written last, when the size is complete)."""
    return (_suite_dir(suite_dir) / size / "suite.json").exists()


def _suite_dir(suite_dir: str | Path | None) -> Path:
    if suite_dir is not None:
        return Path(suite_dir).expanduser()
    from .models import suite_root
    return Path(suite_root())


def _library_versions() -> dict:
    import tokenizers
    import transformers
    return {"python": sys.version.split()[0], "torch": torch.__version__,
            "transformers": transformers.__version__, "tokenizers": tokenizers.__version__}


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------ data
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


def _rows(stream: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Cut a token stream into ``[n_rows, seq_len]`` int64 rows (the tail shorter than a row is dropped)."""
    n = stream.numel() // seq_len
    if n == 0:
        raise ValueError(f"token stream of {stream.numel()} tokens is shorter than seq_len={seq_len}")
    return stream[: n * seq_len].view(n, seq_len).long()


def _batch_indices(step: int, config: PretrainConfig, n_rows: int) -> torch.Tensor:
    """Row indices of optimizer step ``step`` (0-based): epoch ``e`` visits the rows in the order
    ``randperm(n_rows, generator seeded seed + e)``; consecutive steps take consecutive slices."""
    start = step * config.batch_size
    out = []
    while len(out) < config.batch_size:
        epoch, offset = divmod(start + len(out), n_rows)
        generator = torch.Generator().manual_seed(config.seed + 1000003 * (epoch + 1))
        perm = torch.randperm(n_rows, generator=generator)
        take = min(config.batch_size - len(out), n_rows - offset)
        out.extend(perm[offset: offset + take].tolist())
    return torch.tensor(out)


def learning_rate(step: int, config: PretrainConfig) -> float:
    """LR of optimizer step ``step`` (0-based): ``lr * (step + 1) / W`` for ``step < W``, then
    ``lr * (r + (1 - r) * (1 + cos(pi * t)) / 2)`` with ``t = (step - W) / (max_steps - W)``,
    ``r = min_lr_ratio`` and ``W = round(warmup_fraction * max_steps)``."""
    warmup = max(1, round(config.warmup_fraction * config.max_steps))
    if step < warmup:
        return config.lr * (step + 1) / warmup
    t = (step - warmup) / max(1, config.max_steps - warmup)
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


# ----------------------------------------------------------------------------------- model
def _model_config(config: PretrainConfig, tokenizer):
    from transformers import GPTNeoXConfig
    return GPTNeoXConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
        intermediate_size=4 * config.hidden_size, max_position_embeddings=max(512, config.seq_len),
        hidden_dropout=0.0, attention_dropout=0.0, use_parallel_residual=True, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)


def _make_optimizer(model: torch.nn.Module, config: PretrainConfig) -> torch.optim.AdamW:
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr, betas=(config.beta1, config.beta2), eps=1e-8, foreach=False)


@torch.no_grad()
def validation_loss(model, rows: torch.Tensor, batch_size: int = 64) -> float:
    """Mean next-token cross-entropy (nats) over ``rows`` ``[n, seq_len]``: every row contributes
    ``seq_len - 1`` predictions, all weighted equally."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, rows.shape[0], batch_size):
        batch = rows[start: start + batch_size].to(device)
        logits = model(input_ids=batch).logits[:, :-1]
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum")
        total += loss.item()
        count += batch[:, 1:].numel()
    model.train(was_training)
    return total / count


def _save_checkpoint(size_dir: Path, step: int, model, tokenizer, record: dict) -> Path:
    """Write ``step{N}/`` into a hidden temporary folder, then rename it (complete or absent)."""
    final = size_dir / f"step{step}"
    tmp = Path(tempfile.mkdtemp(prefix=f".step{step}.", dir=size_dir))
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    atomic_write_json(tmp / "checkpoint.json", record)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def _save_resume_state(size_dir: Path, step: int, optimizer, wall_time: float) -> None:
    """Optimizer moments and step counts of checkpoint ``step``, as safetensors + JSON."""
    state = optimizer.state_dict()
    tensors, meta = {}, {"step": step, "wall_time": wall_time, "param_groups": state["param_groups"]}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            tensors[f"{index}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    folder = size_dir / "resume"
    atomic_save_safetensors(folder / "optimizer.safetensors", tensors)
    atomic_write_json(folder / "state.json", meta)


def _resume_step(size_dir: Path) -> int | None:
    """Step of the saved resume state if it and its checkpoint folder are complete, else None."""
    folder = size_dir / "resume"
    if not (folder / "state.json").exists() or not (folder / "optimizer.safetensors").exists():
        return None
    step = int(read_json(folder / "state.json")["step"])
    return step if (size_dir / f"step{step}" / "checkpoint.json").exists() else None


def _load_resume_state(size_dir: Path, optimizer) -> tuple[int, float]:
    from safetensors.torch import load_file
    folder = size_dir / "resume"
    meta = read_json(folder / "state.json")
    tensors = load_file(str(folder / "optimizer.safetensors"))
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return int(meta["step"]), float(meta["wall_time"])


def _set_determinism(device: torch.device, num_threads: int | None) -> None:
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    torch.use_deterministic_algorithms(True, warn_only=device.type != "cpu")
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


# -------------------------------------------------------------------------------- training
def train_size(config: PretrainConfig, suite_dir: str | Path | None = None,
               device: str | torch.device | None = None, corpus_dir: str | Path = corpus.CORPUS_DIR,
               progress: bool = True, num_threads: int | None = None) -> dict:
    """Train ``config.size`` into ``{suite_dir}/{size}``, resuming from its latest checkpoint.

    Each optimizer step ``s`` (0-based) takes rows :func:`_batch_indices` ``(s)``, computes the mean
    next-token cross-entropy, clips the gradient norm to ``grad_clip`` and applies AdamW at
    :func:`learning_rate` ``(s)``; after it, ``s + 1`` steps and ``(s + 1) * batch_size * seq_len``
    tokens have been seen. Checkpoint ``N`` holds the weights after ``N`` steps (``step0`` = the
    seeded initialisation). Returns the ``suite.json`` record (also when the size was already built).

    Determinism: the same config gives bit-identical checkpoints on the same machine with the same
    ``num_threads`` (CPU float sums depend on how work is split across threads; ``None`` keeps
    torch's setting, the number of cores). The thread count is an execution detail, not part of the
    config: it is recorded in every ``checkpoint.json``. Under heavy CPU contention one thread is
    often faster than two (no waiting on a descheduled partner thread).
    """
    suite_dir = _suite_dir(suite_dir)
    size_dir = suite_dir / config.size
    if (size_dir / "suite.json").exists():
        ensure_run_config(size_dir, config)
        return read_json(size_dir / "suite.json")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled())
    _set_determinism(device, num_threads)
    try:
        return _train(config, suite_dir, size_dir, device, Path(corpus_dir), progress)
    finally:  # leave the caller's session (a notebook kernel) as it was
        torch.set_num_threads(before[0])
        torch.use_deterministic_algorithms(before[1], warn_only=before[2])


def _train(config: PretrainConfig, suite_dir: Path, size_dir: Path, device: torch.device,
           corpus_dir: Path, progress: bool) -> dict:
    """The body of :func:`train_size` (determinism and threads already set)."""
    from transformers import GPTNeoXForCausalLM

    ensure_run_config(size_dir, config)
    tokenizer, data_dir, streams = prepare_data(config, suite_dir, corpus_dir)
    if len(tokenizer) != config.vocab_size:
        raise ValueError(f"{data_dir}: tokenizer has {len(tokenizer)} tokens, config.vocab_size={config.vocab_size}")
    train_rows = _rows(streams["train"], config.seq_len)
    valid_rows = _rows(streams["valid"], config.seq_len)[: config.n_valid_rows]
    steps = checkpoint_steps(config.max_steps, config.checkpoint_every)
    base_record = {
        "size": config.size, "seed": config.seed, "training_config": dataclasses.asdict(config),
        "corpus_sha256": corpus.corpus_sha256(corpus_dir),
        "tokenizer_sha256": _sha256_file(data_dir / "tokenizer.json"),
        "train_tokens_available": int(train_rows.numel()), "valid_tokens": int(valid_rows.numel()),
        "device": device.type, "num_threads": torch.get_num_threads(), "versions": _library_versions(),
    }

    start, wall_before = 0, 0.0
    resume_step = _resume_step(size_dir)
    if resume_step is not None:  # weights of the last checkpoint + its optimizer state
        model = GPTNeoXForCausalLM.from_pretrained(size_dir / f"step{resume_step}", dtype=torch.float32).to(device)
        optimizer = _make_optimizer(model, config)
        start, wall_before = _load_resume_state(size_dir, optimizer)
    else:  # nothing usable: start from the seeded initialisation (checkpoints come out identical)
        torch.manual_seed(config.seed)
        model = GPTNeoXForCausalLM(_model_config(config, tokenizer)).to(device)
        optimizer = _make_optimizer(model, config)
    record_base_model = {"model_config": _model_config(config, tokenizer).to_dict(), "params": count_parameters(model)}

    def checkpoint(step: int, wall: float) -> None:
        record = {**base_record, **record_base_model, "step": step,
                  "tokens_seen": step * config.tokens_per_step, "validation_loss": validation_loss(model, valid_rows),
                  "wall_time_s": wall}
        _save_checkpoint(size_dir, step, model, tokenizer, record)
        _save_resume_state(size_dir, step, optimizer, wall)

    t0 = time.perf_counter() - wall_before
    if start == 0:
        checkpoint(0, time.perf_counter() - t0)
    model.train()
    bar = tqdm(range(start, config.max_steps), desc=f"pre-train {config.size}", initial=start,
               total=config.max_steps, disable=not progress)
    for step in bar:
        batch = train_rows[_batch_indices(step, config, train_rows.shape[0])].to(device)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config)
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if step + 1 in steps:
            checkpoint(step + 1, time.perf_counter() - t0)
    bar.close()

    summary = {
        "size": config.size, "steps": steps, "final_step": config.max_steps,
        "params": record_base_model["params"], "training_config": dataclasses.asdict(config),
        "model_config": record_base_model["model_config"], "tokens_seen": config.max_steps * config.tokens_per_step,
        "corpus_sha256": base_record["corpus_sha256"], "tokenizer_sha256": base_record["tokenizer_sha256"],
        "validation_loss": read_json(size_dir / f"step{config.max_steps}" / "checkpoint.json")["validation_loss"],
        "wall_time_s": time.perf_counter() - t0, "device": device.type, "versions": _library_versions(),
    }
    atomic_write_json(size_dir / "suite.json", summary)
    return summary


def build_suite(sizes=SUITE_SIZES, suite_dir: str | Path | None = None, config: dict | None = None,
                smoke: bool = False, device: str | torch.device | None = None,
                num_threads: int | None = None) -> dict:
    """Build every size in ``sizes`` (finished ones are skipped, interrupted ones resume).

    ``config`` maps a size to a :class:`PretrainConfig` or to a dict of fields overriding its
    :func:`default_config`. ``smoke=True`` builds the toy configs (seconds) and, when ``suite_dir``
    is ``None``, into a new temporary folder rather than the user's suite cache. Returns
    ``{size: suite.json record}``. ``num_threads`` goes to :func:`train_size`.
    """
    if isinstance(sizes, str):
        sizes = (sizes,)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if suite_dir is None and smoke:
        suite_dir = tempfile.mkdtemp(prefix="taskspace-suite-smoke-")
    root = _suite_dir(suite_dir)
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for size in sizes:
        given = (config or {}).get(size)
        if isinstance(given, PretrainConfig):
            cfg = given
        else:
            cfg = dataclasses.replace(default_config(size, smoke=smoke, device=device), **(given or {}))
        out[size] = train_size(cfg, root, device=device, num_threads=num_threads)
    return out


def checkpoint_table(sizes=SUITE_SIZES, suite_dir: str | Path | None = None):
    """One row per saved checkpoint of the built ``sizes``: ``size``, ``step``, ``params``,
    ``tokens_seen``, ``validation_loss`` (nats per token), ``wall_time_s`` (training time so far)
    and ``path`` (the ``step{N}`` folder, loadable by ``models.load_model``)."""
    import pandas as pd

    root = _suite_dir(suite_dir)
    rows = []
    for size in ([sizes] if isinstance(sizes, str) else sizes):
        if not is_built(size, root):
            raise FileNotFoundError(f"{root / size / 'suite.json'} missing: size {size!r} is not built "
                                    f"(build_suite(({size!r},)) or python -m taskspace_utils.pretrain --size {size})")
        for step in read_json(root / size / "suite.json")["steps"]:
            record = read_json(root / size / f"step{step}" / "checkpoint.json")
            rows.append({"size": size, "step": step, "params": record["params"],
                         "tokens_seen": record["tokens_seen"], "validation_loss": record["validation_loss"],
                         "wall_time_s": record["wall_time_s"], "path": str(root / size / f"step{step}")})
    return pd.DataFrame(rows)


def evaluate_checkpoints(table, pairs, device: str | torch.device | None = None, progress: bool = True):
    """BLiMP mean accuracy of every checkpoint in ``table`` (from :func:`checkpoint_table`).

    Each checkpoint scores ``pairs`` (a ``data.load_blimp`` frame, possibly a subset) with
    ``scoring.score_pairs`` (sum of token log-probabilities after BOS); ``blimp_mean`` is the macro
    mean over tasks of the per-task accuracy (ties count as wrong), as in the BLiMP paper. Returns
    ``table`` with ``blimp_mean``, ``blimp_pairs_per_task`` and ``eval_time_s`` added.
    """
    from .models import load_model
    from .scoring import blimp_accuracy, score_pairs

    out = table.copy()
    means, seconds = [], []
    for path in tqdm(list(table["path"]), desc="BLiMP per checkpoint", disable=not progress):
        t0 = time.perf_counter()
        model, tokenizer = load_model(path, device=device)
        means.append(float(blimp_accuracy(score_pairs(model, tokenizer, pairs, progress=False))["accuracy"].mean()))
        seconds.append(time.perf_counter() - t0)
    out["blimp_mean"] = means
    out["blimp_pairs_per_task"] = int(pairs.groupby("task").size().min()) if len(pairs) else 0
    out["eval_time_s"] = seconds
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Pre-train one size of the offline model suite.")
    parser.add_argument("--size", required=True, choices=SUITE_SIZES)
    parser.add_argument("--suite-dir", default=None, help="suite folder (default: models.suite_root())")
    parser.add_argument("--smoke", action="store_true", help="toy config that builds in seconds")
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    record = build_suite((args.size,), suite_dir=args.suite_dir, smoke=args.smoke, device=args.device,
                         num_threads=args.threads)[args.size]
    print(f"{args.size}: {record['params']:,} parameters, {record['tokens_seen']:,} tokens, "
          f"validation loss {record['validation_loss']:.3f}, {record['wall_time_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
