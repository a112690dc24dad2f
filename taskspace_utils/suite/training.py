"""Pre-train suite sizes: the GPT-NeoX model, AdamW, the training loop with checkpoints and resume.

Each optimizer step ``s`` (0-based) takes rows :func:`.data.batch_indices` ``(s)``, computes the mean
next-token cross-entropy over the rows, clips the global gradient norm to ``grad_clip`` and applies
AdamW (decoupled weight decay on matrices only) at :func:`.config.learning_rate` ``(s)``; after it,
``s + 1`` steps and ``(s + 1) * batch_size * seq_len`` tokens have been seen. Checkpoint ``N`` holds
the weights after ``N`` steps (``step0`` = the initialisation seeded by ``config.seed``). Validation
loss: mean next-token cross-entropy (nats) over the first ``n_valid_rows`` rows of the held-out
stream, every prediction weighted equally. Files and folders are those of :mod:`.records`.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..models import count_parameters, default_device, eval_mode
from ..results import atomic_write_json, ensure_run_config, read_json
from . import corpus, records
from ..layout import SUITE_NAME_PATTERN
from .config import (
    SUITE_MODELS,
    PretrainConfig,
    checkpoint_steps,
    default_config,
    learning_rate,
)
from .data import batch_indices, cut_rows, data_order_sha256, prepare_data

#: Seconds between the plain progress lines of :func:`train_size` when stdout is not a terminal
#: (a notebook kernel, a log file), where tqdm's bar is not seen.
PLAIN_PROGRESS_EVERY_S = 30.0

__all__ = ["build_suite", "train_size", "validation_loss", "model_config", "make_optimizer", "train_step"]


def model_config(config: PretrainConfig, tokenizer):
    """The ``GPTNeoXConfig`` of ``config``: MLP 4x wide, no dropout, parallel residual (Pythia),
    untied input and output embeddings; BOS, EOS and pad ids from ``tokenizer``."""
    from transformers import GPTNeoXConfig
    return GPTNeoXConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
        intermediate_size=4 * config.hidden_size, max_position_embeddings=max(512, config.seq_len),
        hidden_dropout=0.0, attention_dropout=0.0, use_parallel_residual=True, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)


def make_optimizer(model: torch.nn.Module, config: PretrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on the parameters of 2 or more dimensions only (``eps = 1e-8``)."""
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr, betas=(config.beta1, config.beta2), eps=1e-8, foreach=False)


def train_step(model, optimizer, batch: torch.Tensor, config: PretrainConfig) -> torch.Tensor:
    """One optimizer step on ``batch`` (``[B, T]`` token ids): next-token loss, backward, gradients
    clipped to ``config.grad_clip`` in global norm, AdamW step. Returns the loss (before the step)."""
    loss = model(input_ids=batch, labels=batch).loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    optimizer.step()
    return loss


@torch.no_grad()
def validation_loss(model, rows: torch.Tensor, batch_size: int = 64) -> float:
    """Mean next-token cross-entropy (nats) over ``rows`` ``[n, seq_len]``: every row contributes
    ``seq_len - 1`` predictions, all weighted equally."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with eval_mode(model):
        for start in range(0, rows.shape[0], batch_size):
            batch = rows[start: start + batch_size].to(device)
            logits = model(input_ids=batch).logits[:, :-1]
            if logits.dtype in (torch.float16, torch.bfloat16):
                logits = logits.float()
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum")
            total += loss.item()
            count += batch[:, 1:].numel()
    return total / count


def _set_determinism(device: torch.device, num_threads: int | None) -> None:
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    torch.use_deterministic_algorithms(True, warn_only=device.type != "cpu")
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


def train_size(config: PretrainConfig, suite_dir: str | Path | None = None,
               device: str | torch.device | None = None, corpus_dir: str | Path = corpus.CORPUS_DIR,
               progress: bool = True, num_threads: int | None = None) -> dict:
    """Train ``config.size`` into ``{suite_dir}/{size}``, resuming from its latest checkpoint (steps and
    checkpoints as in the module docstring). Returns the ``suite.json`` record (also when the size was
    already built).

    Determinism: the same config gives bit-identical checkpoints on the same machine with the same
    ``num_threads`` (CPU float sums depend on how work is split across threads; ``None`` keeps
    torch's setting, the number of cores). The thread count is an execution detail, not part of the
    config: it is recorded in every ``checkpoint.json``. Under heavy CPU contention one thread is
    often faster than two (no waiting on a descheduled partner thread).
    """
    suite_dir = records.resolve_suite_dir(suite_dir)
    size_dir = suite_dir / config.size
    if (size_dir / "suite.json").exists():
        ensure_run_config(size_dir, config)
        return read_json(size_dir / "suite.json")
    device = torch.device(device) if device else default_device()
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
    train_rows = cut_rows(streams["train"], config.seq_len)
    valid_rows = cut_rows(streams["valid"], config.seq_len)[: config.n_valid_rows]
    steps = checkpoint_steps(config.max_steps, config.checkpoint_every)
    base_record = {
        "size": config.size, "seed": config.seed, "training_config": dataclasses.asdict(config),
        "corpus_sha256": corpus.corpus_sha256(corpus_dir),
        "tokenizer_sha256": records.sha256_file(data_dir / "tokenizer.json"),
        "train_tokens_available": int(train_rows.numel()), "valid_tokens": int(valid_rows.numel()),
        "device": device.type, "num_threads": torch.get_num_threads(), "versions": records.library_versions(),
    }

    start, wall_before = 0, 0.0
    resume_step = records.resume_step(size_dir)
    if resume_step is not None:  # weights of the last checkpoint + its optimizer state
        model = GPTNeoXForCausalLM.from_pretrained(size_dir / f"step{resume_step}", dtype=torch.float32).to(device)
        optimizer = make_optimizer(model, config)
        start, wall_before = records.load_resume_state(size_dir, optimizer)
    else:  # nothing usable: start from the seeded initialisation (checkpoints come out identical)
        torch.manual_seed(config.seed)
        model = GPTNeoXForCausalLM(model_config(config, tokenizer)).to(device)
        optimizer = make_optimizer(model, config)
    # untied embeddings: counting tied tensors once (models.count_parameters) counts every tensor
    record_base_model = {"model_config": model_config(config, tokenizer).to_dict(), "params": count_parameters(model)}

    def checkpoint(step: int, wall: float) -> None:
        record = {**base_record, **record_base_model, "step": step,
                  "tokens_seen": step * config.tokens_per_step, "validation_loss": validation_loss(model, valid_rows),
                  "wall_time_s": wall}
        records.save_checkpoint(size_dir, step, model, tokenizer, record)
        records.save_resume_state(size_dir, step, optimizer, wall)

    t0 = time.perf_counter() - wall_before
    if start == 0:
        checkpoint(0, time.perf_counter() - t0)
    model.train()
    bar = tqdm(range(start, config.max_steps), desc=f"pre-train {config.size}", initial=start,
               total=config.max_steps, disable=not progress)
    plain = progress and not sys.stdout.isatty()
    loop_start = last_line = time.perf_counter()
    for step in bar:
        batch = train_rows[batch_indices(step, config, train_rows.shape[0])].to(device)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config)
        loss = train_step(model, optimizer, batch, config)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if step + 1 in steps:
            checkpoint(step + 1, time.perf_counter() - t0)
        now = time.perf_counter()
        if plain and (now - last_line >= PLAIN_PROGRESS_EVERY_S or step + 1 == config.max_steps):
            print(_progress_line(config, step + 1, start, loss.item(), now - loop_start), flush=True)
            last_line = now
    bar.close()

    name = SUITE_NAME_PATTERN.match(config.size)  # tiny-s-seed2: base size tiny-s, seed number 2
    base_size, seed_number = (name["base"], int(name["seed"] or 0)) if name else (config.size, 0)
    summary = {
        "size": config.size, "base_size": base_size, "seed_number": seed_number, "seed": config.seed,
        "steps": steps, "final_step": config.max_steps, "data_order_sha256": data_order_sha256(config, train_rows),
        "params": record_base_model["params"], "training_config": dataclasses.asdict(config),
        "model_config": record_base_model["model_config"], "tokens_seen": config.max_steps * config.tokens_per_step,
        "corpus_sha256": base_record["corpus_sha256"], "tokenizer_sha256": base_record["tokenizer_sha256"],
        "validation_loss": read_json(size_dir / f"step{config.max_steps}" / "checkpoint.json")["validation_loss"],
        "wall_time_s": time.perf_counter() - t0, "device": device.type, "versions": records.library_versions(),
    }
    atomic_write_json(size_dir / "suite.json", summary)
    return summary


def _progress_line(config: PretrainConfig, done: int, start: int, loss: float, seconds: float) -> str:
    """``pre-train tiny-m: step 300/1000, loss 4.123, 2,345 tokens/s, eta 05:12`` (rates over the
    steps of this session, ``done - start``)."""
    steps = max(done - start, 1)
    rate = steps * config.tokens_per_step / max(seconds, 1e-9)
    eta = (config.max_steps - done) * seconds / steps
    return (f"pre-train {config.size}: step {done}/{config.max_steps}, loss {loss:.3f}, {rate:,.0f} tokens/s, "
            f"eta {tqdm.format_interval(eta)}")


def build_suite(sizes=SUITE_MODELS, suite_dir: str | Path | None = None, config: dict | None = None,
                smoke: bool = False, device: str | torch.device | None = None,
                num_threads: int | None = None) -> dict:
    """Build every size in ``sizes`` (default: the sizes and the extra seeds of :data:`SUITE_MODELS`;
    finished ones are skipped, interrupted ones resume).

    ``config`` maps a size to a :class:`PretrainConfig` or to a dict of fields overriding its
    :func:`default_config`. ``smoke=True`` builds the toy configs (seconds) and, when ``suite_dir``
    is ``None``, into a new temporary folder rather than the user's suite cache. Returns
    ``{size: suite.json record}``. ``num_threads`` goes to :func:`train_size`.
    """
    if isinstance(sizes, str):
        sizes = (sizes,)
    device = torch.device(device) if device else default_device()
    if suite_dir is None and smoke:
        suite_dir = tempfile.mkdtemp(prefix="taskspace-suite-smoke-")
    root = records.resolve_suite_dir(suite_dir)
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
