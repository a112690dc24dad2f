"""The suite on disk: checkpoint folders, resume state, build status, and the per-checkpoint table.

Suite layout (``suite_dir`` defaults to ``models.suite_root()``)
-----------------------------------------------------------------
- ``{root}/tokenizer-v{V}-{corpus sha[:12]}-{segment}[-p{N}]/``: the tokenizer (trained once, shared by
  sizes) and ``tokens.safetensors``, the tokenised corpus (train and validation id streams; see
  :mod:`.data`).
- ``{root}/{size}/config.json``: the :class:`~.config.PretrainConfig` (a different config in the same
  folder is refused, so results are never mixed).
- ``{root}/{size}/step{N}/``: ``save_pretrained`` model (``model.safetensors``) and tokenizer, and
  ``checkpoint.json`` (model and training config, corpus and tokenizer SHA-256, seed, step, tokens
  seen, validation loss, wall time so far, library versions). Written into a hidden temporary folder
  and renamed, so a checkpoint is complete or absent.
- ``{root}/{size}/resume/``: optimizer state of the latest checkpoint (``optimizer.safetensors``, one
  tensor ``"{param index}.{state key}"`` per entry, and ``state.json`` with step, wall time and param
  groups): resume state, not a result.
- ``{root}/{size}/suite.json``: written atomically *last*; a size without it is not built.

BLiMP per checkpoint (:func:`evaluate_checkpoints`): ``blimp_mean`` is the macro mean over tasks of
the per-task accuracy of ``scoring.score_pairs`` (sum of token log-probabilities after BOS; ties count
as wrong), as in the BLiMP paper.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..results import atomic_save_safetensors, atomic_write_json, read_json, to_jsonable
from .config import SUITE_MODELS

__all__ = ["resolve_suite_dir", "is_built", "settings_differ", "checkpoint_table", "suite_table", "token_design_problems", "evaluate_checkpoints", "save_checkpoint",
           "save_resume_state", "resume_step", "load_resume_state", "library_versions", "sha256_file"]


def resolve_suite_dir(suite_dir: str | Path | None) -> Path:
    """``suite_dir`` as a path (``~`` expanded), or ``models.suite_root()`` when it is ``None``."""
    if suite_dir is not None:
        return Path(suite_dir).expanduser()
    from ..models import suite_root
    return Path(suite_root())


def is_built(size: str, suite_dir: str | Path | None = None) -> bool:
    """Whether ``{suite_dir}/{size}/suite.json`` exists (written last, when the size is complete)."""
    return (resolve_suite_dir(suite_dir) / size / "suite.json").exists()


def settings_differ(size: str, suite_dir: str | Path | None, config) -> list[str]:
    """The settings in which the size's recorded ``config.json`` differs from ``config`` (a
    :class:`~.config.PretrainConfig`), e.g. ``["max_steps"]`` for a suite built with an earlier
    budget; ``[]`` when they agree or nothing is recorded yet. A size built with other settings is
    not the suite the current code would build: callers refuse it with a message (a rebuild into
    the same folder would mix two configs)."""
    path = resolve_suite_dir(suite_dir) / size / "config.json"
    if not path.exists():
        return []
    found, wanted = read_json(path), json.loads(json.dumps(to_jsonable(config)))
    return sorted(k for k in set(found) | set(wanted) if found.get(k, "<absent>") != wanted.get(k, "<absent>"))


def library_versions() -> dict:
    """Python, torch, transformers and tokenizers versions, for ``checkpoint.json`` and ``suite.json``."""
    import tokenizers
    import transformers
    return {"python": sys.version.split()[0], "torch": torch.__version__,
            "transformers": transformers.__version__, "tokenizers": tokenizers.__version__}


def sha256_file(path: Path) -> str:
    """SHA-256 hex digest of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ------------------------------------------------------------------------ checkpoints and resume
def save_checkpoint(size_dir: Path, step: int, model, tokenizer, record: dict) -> Path:
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


def save_resume_state(size_dir: Path, step: int, optimizer, wall_time: float) -> None:
    """Optimizer moments and step counts of checkpoint ``step``, as safetensors + JSON."""
    state = optimizer.state_dict()
    tensors, meta = {}, {"step": step, "wall_time": wall_time, "param_groups": state["param_groups"]}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            tensors[f"{index}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    folder = size_dir / "resume"
    atomic_save_safetensors(folder / "optimizer.safetensors", tensors)
    atomic_write_json(folder / "state.json", meta)


def resume_step(size_dir: Path) -> int | None:
    """Step of the saved resume state if it and its checkpoint folder are complete, else None."""
    folder = size_dir / "resume"
    if not (folder / "state.json").exists() or not (folder / "optimizer.safetensors").exists():
        return None
    step = int(read_json(folder / "state.json")["step"])
    return step if (size_dir / f"step{step}" / "checkpoint.json").exists() else None


def load_resume_state(size_dir: Path, optimizer) -> tuple[int, float]:
    """Load the saved optimizer state into ``optimizer``; return (step, wall time so far)."""
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


# ------------------------------------------------------------------------------ built suite
def checkpoint_table(sizes=SUITE_MODELS, suite_dir: str | Path | None = None):
    """One row per saved checkpoint of the built ``sizes``: ``size`` (the model name, e.g.
    ``tiny-s-seed1``), ``base_size`` (``tiny-s``), ``seed`` (the training seed), ``step``, ``params``,
    ``tokens_seen``, ``validation_loss`` (nats per token), ``wall_time_s`` (training time so far)
    and ``path`` (the ``step{N}`` folder, loadable by ``models.load_model``)."""
    import pandas as pd

    root = resolve_suite_dir(suite_dir)
    rows = []
    for size in ([sizes] if isinstance(sizes, str) else sizes):
        if not is_built(size, root):
            raise FileNotFoundError(f"{root / size / 'suite.json'} missing: size {size!r} is not built "
                                    f"(build_suite(({size!r},)) or python -m taskspace_utils.suite --size {size})")
        built = read_json(root / size / "suite.json")
        for step in built["steps"]:
            record = read_json(root / size / f"step{step}" / "checkpoint.json")
            rows.append({"size": size, "base_size": built.get("base_size", size), "seed": record.get("seed"),
                         "step": step, "params": record["params"],
                         "tokens_seen": record["tokens_seen"], "validation_loss": record["validation_loss"],
                         "wall_time_s": record["wall_time_s"], "path": str(root / size / f"step{step}")})
    return pd.DataFrame(rows)


def suite_table(sizes=SUITE_MODELS, suite_dir: str | Path | None = None):
    """One row per built model of ``sizes`` (from its ``suite.json``): ``size``, ``base_size``,
    ``seed``, ``params``, ``final_step``, ``steps`` (saved steps, as text), ``tokens_seen`` (at the
    final step), ``batch_tokens`` (tokens per step), ``validation_loss`` (final), ``wall_time_s``
    (training and checkpoints) and ``data_order_sha256`` (:func:`.data.data_order_sha256`; models
    built before it was recorded have ``None``)."""
    import pandas as pd

    root = resolve_suite_dir(suite_dir)
    rows = []
    for size in ([sizes] if isinstance(sizes, str) else sizes):
        if not is_built(size, root):
            raise FileNotFoundError(f"{root / size / 'suite.json'} missing: size {size!r} is not built")
        built = read_json(root / size / "suite.json")
        config = built["training_config"]
        rows.append({"size": size, "base_size": built.get("base_size", size), "seed": config["seed"],
                     "params": built["params"], "final_step": built["final_step"],
                     "steps": " ".join(str(s) for s in built["steps"]), "tokens_seen": built["tokens_seen"],
                     "batch_tokens": config["batch_size"] * config["seq_len"],
                     "validation_loss": built["validation_loss"], "wall_time_s": built["wall_time_s"],
                     "data_order_sha256": built.get("data_order_sha256")})
    return pd.DataFrame(rows)


def token_design_problems(table) -> list[str]:
    """What breaks Pythia's design in a :func:`suite_table`: every model must have the same tokens
    per step, final step, saved steps and tokens seen, and models with the same ``seed`` must have
    read the same token stream in the same order (equal ``data_order_sha256``), models with different
    seeds a different one. ``[]`` when the design holds; each problem names the models."""
    problems = []
    for column in ("batch_tokens", "final_step", "steps", "tokens_seen"):
        values = table.groupby(column)["size"].apply(list)
        if len(values) > 1:
            problems.append(f"{column} differs: " + "; ".join(f"{v} for {', '.join(m)}" for v, m in values.items()))
    known = table.dropna(subset=["data_order_sha256"])
    for seed, group in known.groupby("seed"):
        if group["data_order_sha256"].nunique() > 1:
            problems.append(f"seed {seed}: {', '.join(group['size'])} read different token streams")
    by_digest = known.groupby("data_order_sha256")["seed"].nunique()
    for digest in by_digest[by_digest > 1].index:
        names = known.loc[known["data_order_sha256"] == digest, "size"]
        problems.append(f"{', '.join(names)}: different seeds but the same token order")
    return problems


def evaluate_checkpoints(table, pairs, device: str | torch.device | None = None, progress: bool = True):
    """BLiMP mean accuracy of every checkpoint in ``table`` (from :func:`checkpoint_table`).

    Each checkpoint scores ``pairs`` (a ``data.load_blimp`` frame, possibly a subset) with
    ``scoring.score_pairs`` (sum of token log-probabilities after BOS); ``blimp_mean`` is the macro
    mean over tasks of the per-task accuracy (ties count as wrong), as in the BLiMP paper. Returns
    ``table`` with ``blimp_mean``, ``blimp_pairs_per_task`` and ``eval_time_s`` added.
    """
    from ..models import load_model
    from ..scoring import blimp_accuracy, score_pairs

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
