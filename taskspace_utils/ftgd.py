"""FTGD: fine-tuning via gradient differentials, and the controls that show why it is needed.

Weber et al. (2024), Section 4 ("Fine-tuning via gradient differentials"): a task's *subnetwork*
is the top-k parameters by ``|d_T|``, where the task differential is

    d_T = mean_{(g, b) in T_train}  grad_theta [ log p(g) - log p(b) ]          (one per parameter)

(:func:`taskspace_utils.gradients.task_differential`). FTGD tunes only that subnetwork so that the
model prefers the grammatical member of each pair:

    objective "margin"      maximise  m(theta) = mean_i [ log p(g_i) - log p(b_i) ]
                            (its gradient on the batch is the batch's differential itself)
    objective "logsigmoid"  maximise  mean_i log sigma(beta * m_i(theta))   (bounded above by 0)

    theta_{t+1} = theta_t + update_t  restricted to the mask M (|M| = round(k * n_params)),
    M chosen once from d_T (``mask_mode="fixed"``) or from the step's gradient (``"per_step"``).

The tuned model is kept as a :class:`SparseDelta` over the base model: the flat indices of the
changed entries of each parameter, their tuned values and their original values. Applying writes
the tuned values, reverting writes the originals back (never "subtract the delta"), so both are
bitwise exact and tuning 67 tasks never copies the model.

Controls (:func:`compare_controls`; ``FTGDConfig.control``), on the same task, steps, learning
rate, batch size and optimiser:

- ``"ftgd"``        the objective on the subnetwork (top-k by ``|d_T|``);
- ``"all_params"``  the objective on all parameters;
- ``"random_mask"`` the objective on a random mask of the same size (same count per tensor when
  ``per_module``);
- ``"lm_good"``     plain language-model fine-tuning, maximising ``mean_i log p(g_i)`` over the
  good sentences, all parameters.

Each is reported by the gain in target-task test accuracy and mean margin, the mean change on all
other tasks, the change in validation perplexity on held-out corpus text (general language
ability), and the number of parameters changed.

Public functions
----------------
- :class:`FTGDConfig`: every setting, with its default and the measurement behind it.
- :func:`tune_task`: tune one task in place, return its :class:`SparseDelta`, restore the model.
- :class:`SparseDelta`, :func:`applied`: apply / revert / save / load a tuned model;
  :func:`delta_by_module`: where (embeddings, which layer's attention or MLP) it changed.
- :func:`perplexity`: validation perplexity of held-out text (BOS-prefix convention of
  :mod:`.scoring`).
- :func:`evaluate_model`, :func:`evaluate_control`, :func:`compare_controls`: the controls table.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .gradients import batch_margins, critical_exclusions, module_groups, subnetwork_masks, task_differential
from .results import atomic_save_safetensors, atomic_write_csv, atomic_write_json, ensure_run_config, read_json
from .scoring import (
    DEFAULT_BATCH_TOKENS,
    collate_token_ids,
    encode_batch,
    prefix_token_id,
    score_pairs,
    token_logprob_sums,
    tokenize_sentences,
)

__all__ = [
    "CONTROLS",
    "ROW_COLUMNS",
    "FTGDConfig",
    "FTGDDivergedError",
    "SparseDelta",
    "applied",
    "delta_by_module",
    "tune_task",
    "perplexity",
    "evaluate_model",
    "evaluate_control",
    "compare_controls",
]

#: The four runs of the controls comparison, FTGD first.
CONTROLS = ("ftgd", "all_params", "random_mask", "lm_good")
_OBJECTIVES = ("margin", "logsigmoid")
_OPTIMIZERS = ("adam", "sgd")
_MASK_MODES = ("fixed", "per_step")
_VARIANTS = ("sentence", "critical")
#: Columns of a controls-table row (:func:`evaluate_control`), in order.
ROW_COLUMNS = ("task", "control", "target_acc_base", "target_acc", "target_gain", "target_margin_base",
               "target_margin", "margin_gain", "other_acc_change", "other_margin_change", "ppl_base", "ppl",
               "ppl_change", "n_changed", "frac_changed", "final_loss", "seconds")


class FTGDDivergedError(RuntimeError):
    """The loss (or a gradient) became NaN/inf or exceeded ``FTGDConfig.max_abs_loss``; the message
    names the task and the step. The model is restored before this is raised."""


@dataclass(frozen=True)
class FTGDConfig:
    """Settings of one FTGD run (notebook ``03_ftgd``; every field is a plain literal there).

    Defaults were chosen by measurement (``benchmarks/bench_ftgd.py --sweep``) on the offline suite's
    ``tiny-s`` (the size built in time; 2.9M parameters), 5 BLiMP tasks from 5 phenomena
    (anaphor_gender_agreement, regular_plural_subject_verb_agreement_1, npi_present_1, wh_island,
    passive_1), 100 train / 100 test pairs, 500 held-out corpus sentences. One setting varied at a
    time; numbers are means over the 5 tasks: target accuracy gain (points) / relative validation
    perplexity change. The margin objective is unbounded, so the question is how far to push: we
    took the largest step that keeps perplexity damage at a few per cent.

    Attributes:
        objective: ``"margin"`` (default) maximises the mean margin ``log p(g) - log p(b)``, whose
            gradient is the differential itself; ``"logsigmoid"`` maximises
            ``mean log sigmoid(beta * margin)``, which saturates once a pair is well separated
            (measured at lr=1e-4: +19.6 / +1.6% vs. margin's +21.6 / +4.0%, but a larger loss on
            the other tasks, -1.6 vs. -0.6 points; at lr=1e-3 the bound matters: +27.2 / +21% vs.
            margin's +27.8 / +1271%).
        beta: inverse temperature of ``"logsigmoid"`` (1.0: margins are in nats; ignored by
            ``"margin"``).
        k: fraction of all parameters in the subnetwork (``round(k * n_params)`` entries; the
            same count for ``"random_mask"``). Default 0.01: k=0.001 +14.4 / +0.3%, 0.01
            +21.6 / +4.0%, 0.1 +24.8 / +21%.
        per_module: choose the top-k within every parameter tensor (k of each) instead of
            globally (see :func:`taskspace_utils.gradients.subnetwork_masks`).
        mask_mode: ``"fixed"`` (default): the mask is chosen once, from the task differential of
            the training pairs, before the first step (the paper's subnetwork; one top-k instead
            of one per step). ``"per_step"``: re-chosen at every step from ``|gradient|`` of the
            step's objective on its batch (a fresh random draw for ``"random_mask"``); the delta
            covers the union of the masks, and the optimiser state is dense. Not in the sweep.
        optimizer: ``"adam"`` (default; torch Adam, betas (0.9, 0.999), eps 1e-8, no weight decay)
            or ``"sgd"`` (plain SGD: the first update is ``lr * masked differential``). Adam is the
            default because the differential's scale differs by orders of magnitude across
            tensors, which one SGD learning rate cannot serve: SGD at lr=0.01 drove the mean
            margin of npi_present_1 to 11,461 nats by step 47 (stopped by the explode guard).
        lr: learning rate. Default 1e-4 (Adam): 3e-5 +13.6 / +0.3%, 1e-4 +21.6 / +4.0%,
            3e-4 +25.4 / +26%, 1e-3 +27.8 / +1271% (perplexity x13.7).
        steps: optimiser steps. Default 50 (50 x 16 = 800 pair presentations = 8 epochs of 100
            pairs): 25 steps +16.2 / +1.0%, 50 +21.6 / +4.0%, 100 +23.0 / +13%.
        batch_size: pairs per step, drawn without replacement from seeded permutations of the
            training pairs (a new permutation every epoch). Default 16: batch 32 gave the same
            gain (+21.6 / +4.3%) at twice the time.
        seed: seed of the batch order and of the random mask (same seed, same result, bitwise).
            Batches and random masks use separate streams, so all controls see the same batches.
        max_abs_loss: the explode guard: a step whose loss is not finite, whose gradient is not
            finite, or whose ``|loss|`` exceeds this stops the run with :class:`FTGDDivergedError`
            (naming task and step). Default 1e4 nats: every Adam run of the sweep stayed below
            210 nats (largest ``|loss|``: 206 at k=0.1, lr=1e-3), the diverging SGD run crossed it.
        variant: ``"sentence"`` (default): margins over the whole sentences; ``"critical"``: only
            the tokens from the first difference between good and bad on (see
            :func:`taskspace_utils.gradients.batch_margins`; pairs without critical tokens are
            left out with a warning). The mask's differential uses the same variant.
            ``"lm_good"`` always scores whole good sentences.
        control: ``"ftgd"`` (default), ``"all_params"``, ``"random_mask"`` or ``"lm_good"``
            (module docstring).
    """

    objective: str = "margin"
    beta: float = 1.0
    k: float = 0.01
    per_module: bool = False
    mask_mode: str = "fixed"
    optimizer: str = "adam"
    lr: float = 1e-4
    steps: int = 50
    batch_size: int = 16
    seed: int = 0
    max_abs_loss: float = 1e4
    variant: str = "sentence"
    control: str = "ftgd"

    def __post_init__(self):
        checks = [
            ("objective", self.objective, _OBJECTIVES),
            ("optimizer", self.optimizer, _OPTIMIZERS),
            ("mask_mode", self.mask_mode, _MASK_MODES),
            ("variant", self.variant, _VARIANTS),
            ("control", self.control, CONTROLS),
        ]
        for name, value, allowed in checks:
            if value not in allowed:
                raise ValueError(f"FTGDConfig.{name}={value!r}: use one of {allowed}")
        if not 0.0 < float(self.k) <= 1.0:
            raise ValueError(f"FTGDConfig.k={self.k!r}: a fraction of the parameters in (0, 1]")
        if int(self.steps) < 1 or int(self.batch_size) < 1:
            raise ValueError(f"FTGDConfig.steps={self.steps}, batch_size={self.batch_size}: both must be >= 1")
        if not float(self.lr) > 0 or not float(self.beta) > 0 or not float(self.max_abs_loss) > 0:
            raise ValueError(f"FTGDConfig: lr={self.lr}, beta={self.beta}, max_abs_loss={self.max_abs_loss} must be > 0")

    def replace(self, **changes) -> "FTGDConfig":
        """A copy with some fields changed (e.g. ``config.replace(control="lm_good")``)."""
        return dataclasses.replace(self, **changes)

    @property
    def uses_mask(self) -> bool:
        """Whether the run updates a subset of the parameters (``ftgd`` and ``random_mask``)."""
        return self.control in ("ftgd", "random_mask")


# ------------------------------------------------------------------------------------ sparse delta
_INT_VIEW = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.int8}


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bit patterns as integers (so -0.0 != 0.0 and NaN == NaN compare by bits)."""
    return t.contiguous().view(_INT_VIEW[t.element_size()])


def _bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(_bits(a), _bits(b))


def _named_parameters(model) -> dict[str, torch.nn.Parameter]:
    """``model.named_parameters()`` as a dict (tied tensors once, under their first name)."""
    return dict(model.named_parameters())


@dataclass
class SparseDelta:
    """A tuned model as a change of some entries of the base model's parameters.

    For every changed parameter ``name`` (all tensors on the parameter's device and dtype):

    - ``indices[name]``: ``LongTensor[n]`` of sorted flat indices into ``param.view(-1)``, or
      ``None`` when the tensor is stored densely (more than half its entries changed: then dense
      storage is smaller than index + two values per entry);
    - ``tuned[name]``: ``[n]`` (or the full shape when dense) tuned values;
    - ``original[name]``: the base model's values at the same places.

    :meth:`apply` writes ``tuned`` and :meth:`revert` writes ``original`` (both bitwise exact);
    each first checks, bit for bit, that the model holds what it expects (the base for ``apply``,
    the tuned values for ``revert``), so applying twice or to another model fails loudly.
    ``values`` gives ``tuned - original``. ``meta`` carries the task, the config and run stats.
    """

    indices: dict[str, torch.Tensor | None]
    tuned: dict[str, torch.Tensor]
    original: dict[str, torch.Tensor]
    meta: dict = dataclasses.field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return list(self.tuned)

    @property
    def n_changed(self) -> int:
        """Number of parameter entries whose tuned value differs (bitwise) from the base value."""
        return int(sum(int((_bits(self.tuned[n]) != _bits(self.original[n])).sum()) for n in self.tuned))

    @property
    def values(self) -> dict[str, torch.Tensor]:
        """``tuned - original`` per parameter (the update; sparse layout as ``indices``)."""
        return {n: self.tuned[n] - self.original[n] for n in self.tuned}

    def _check(self, params: Mapping[str, torch.Tensor], expected: dict[str, torch.Tensor], what: str) -> None:
        for name in self.tuned:
            if name not in params:
                raise KeyError(f"SparseDelta.{what}: the model has no parameter {name!r}")
            p = params[name].detach()
            current = p if self.indices[name] is None else p.reshape(-1)[self.indices[name]]
            if current.shape != expected[name].shape or current.dtype != expected[name].dtype:
                raise ValueError(f"SparseDelta.{what}: parameter {name!r} has shape/dtype {tuple(p.shape)}/{p.dtype}, "
                                 f"the delta was made for {tuple(expected[name].shape)}/{expected[name].dtype}")
            if not _bitwise_equal(current, expected[name]):
                state = "base" if what == "apply" else "tuned"
                raise ValueError(f"SparseDelta.{what}: parameter {name!r} does not hold the {state} values the delta "
                                 f"expects (already {'applied' if what == 'apply' else 'reverted'}, or another model?)")

    def _write(self, model, source: dict[str, torch.Tensor]) -> None:
        params = _named_parameters(model)
        with torch.no_grad():
            for name, values in source.items():
                p = params[name]
                if self.indices[name] is None:
                    p.copy_(values)
                else:
                    p.view(-1).index_copy_(0, self.indices[name], values)

    def apply(self, model, check: bool = True) -> "SparseDelta":
        """Write the tuned values into ``model`` in place (checks it holds the base values first)."""
        if check:
            self._check(_named_parameters(model), self.original, "apply")
        self._write(model, self.tuned)
        return self

    def revert(self, model, check: bool = True) -> "SparseDelta":
        """Write the original values back into ``model`` in place (checks it holds the tuned values)."""
        if check:
            self._check(_named_parameters(model), self.tuned, "revert")
        self._write(model, self.original)
        return self

    def to(self, device=None) -> "SparseDelta":
        """A copy on ``device`` (dtype kept)."""
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return SparseDelta({n: move(i) for n, i in self.indices.items()}, {n: move(v) for n, v in self.tuned.items()},
                           {n: move(v) for n, v in self.original.items()}, dict(self.meta))

    def save(self, path: str | os.PathLike) -> Path:
        """Write to a safetensors file (atomically): tensors ``{name}.indices`` (sparse ones only),
        ``{name}.tuned``, ``{name}.original``; ``meta`` (task, config, stats) in the header."""
        tensors = {}
        for name in self.tuned:
            if self.indices[name] is not None:
                tensors[f"{name}.indices"] = self.indices[name]
            tensors[f"{name}.tuned"] = self.tuned[name]
            tensors[f"{name}.original"] = self.original[name]
        meta = {"format": "taskspace.SparseDelta/1", "names": self.names, "meta": self.meta}
        return atomic_save_safetensors(path, tensors, metadata=meta)

    @classmethod
    def load(cls, path: str | os.PathLike, device=None) -> "SparseDelta":
        """Read a file written by :meth:`save` (onto ``device``; default CPU)."""
        from safetensors import safe_open

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such SparseDelta file")
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            header = {k: json.loads(v) for k, v in (handle.metadata() or {}).items()}
            if header.get("format") != "taskspace.SparseDelta/1":
                raise ValueError(f"{path}: not a SparseDelta file (format {header.get('format')!r})")
            keys = set(handle.keys())
            indices, tuned, original = {}, {}, {}
            for name in header["names"]:
                indices[name] = handle.get_tensor(f"{name}.indices") if f"{name}.indices" in keys else None
                tuned[name] = handle.get_tensor(f"{name}.tuned")
                original[name] = handle.get_tensor(f"{name}.original")
        delta = cls(indices, tuned, original, header.get("meta", {}))
        return delta.to(device) if device is not None else delta


def delta_by_module(delta: SparseDelta, model) -> pd.DataFrame:
    """Where a delta changed the model: per module (:func:`taskspace_utils.gradients.module_groups`:
    ``embed``, ``layer{i}.attention``, ``layer{i}.mlp``, ``final_norm``, ``head``) the number of
    parameters ``n_params``, of changed entries ``n_changed`` and their ratio ``frac_changed``, and
    the squared norm of the update ``update_sq`` (``sum (tuned - original)^2``, float64)."""
    params = _named_parameters(model)
    groups = module_groups(list(params))
    rows = []
    for name, p in params.items():
        changed, update_sq = 0, 0.0
        if name in delta.tuned:
            changed = int((_bits(delta.tuned[name]) != _bits(delta.original[name])).sum())
            update_sq = float(((delta.tuned[name].double() - delta.original[name].double()) ** 2).sum())
        rows.append((groups[name], p.numel(), changed, update_sq))
    frame = pd.DataFrame(rows, columns=["module", "n_params", "n_changed", "update_sq"])
    out = frame.groupby("module", sort=False).sum()
    out["frac_changed"] = out["n_changed"] / out["n_params"]
    return out


@contextlib.contextmanager
def applied(model, delta: SparseDelta) -> Iterator:
    """``with applied(model, delta): ...`` runs the block on the tuned model and reverts it after
    (also on an exception)."""
    delta.apply(model)
    try:
        yield model
    finally:
        delta.revert(model)


# ------------------------------------------------------------------------------------------ tuning
def _pairs_of(train_pairs) -> pd.DataFrame:
    if isinstance(train_pairs, pd.DataFrame):
        frame = train_pairs
    else:
        frame = pd.DataFrame(list(train_pairs), columns=["good", "bad"])
    missing = [c for c in ("good", "bad") if c not in frame.columns]
    if missing:
        raise ValueError(f"tune_task: train_pairs lacks column(s) {missing}")
    if len(frame) == 0:
        raise ValueError("tune_task: no training pairs")
    return frame.reset_index(drop=True)


def _random_masks(params: Mapping[str, torch.Tensor], k: float, per_module: bool, generator: torch.Generator):
    """Uniformly random masks with the same counts as :func:`subnetwork_masks`: ``round(k * numel)``
    per tensor (``per_module``) or ``round(k * total)`` over all tensors."""
    def pick(n_total: int, n_true: int) -> torch.Tensor:
        chosen = torch.randperm(n_total, generator=generator)[:n_true]
        mask = torch.zeros(n_total, dtype=torch.bool)
        mask[chosen] = True
        return mask

    if per_module:
        return {n: pick(p.numel(), round(k * p.numel())).view(p.shape).to(p.device) for n, p in params.items()}
    sizes = [p.numel() for p in params.values()]
    flat = pick(sum(sizes), round(k * sum(sizes)))
    return {n: part.view(p.shape).to(p.device) for (n, p), part in zip(params.items(), torch.split(flat, sizes))}


def _batch_order(n: int, batch_size: int, steps: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Indices of each step's batch: consecutive slices of seeded permutations of ``range(n)``
    (a fresh permutation whenever one is used up; ``batch_size >= n`` gives all pairs every step)."""
    size = min(batch_size, n)
    stream, batches = torch.empty(0, dtype=torch.long), []
    for _ in range(steps):
        while len(stream) < size:
            stream = torch.cat([stream, torch.randperm(n, generator=generator)])
        batches.append(stream[:size])
        stream = stream[size:]
    return batches


def _objective(model, tokenizer, batch: pd.DataFrame, config: FTGDConfig, device) -> torch.Tensor:
    """The loss to minimise (a scalar): minus the mean margin, minus mean log sigmoid(beta margin),
    or (``lm_good``) minus the mean log-probability of the good sentences."""
    if config.control == "lm_good":
        encoded = encode_batch(tokenizer, list(batch["good"].astype(str)), device=device)
        return -token_logprob_sums(model, encoded).mean()
    margins = batch_margins(model, tokenizer, batch, variant=config.variant)
    if config.objective == "margin":
        return -margins.mean()
    return -F.logsigmoid(config.beta * margins).mean()


def _make_optimizer(tensors: list[torch.Tensor], config: FTGDConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(tensors, lr=config.lr)
    return torch.optim.Adam(tensors, lr=config.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)


def _fixed_masks(model, tokenizer, pairs, config, differential, params, generator):
    """``{name: BoolTensor}`` for ``ftgd`` / ``random_mask`` with a fixed mask; ``None`` = all."""
    if config.control == "random_mask":
        return _random_masks(params, config.k, config.per_module, generator)
    if config.control != "ftgd":
        return None
    if differential is None:
        differential = task_differential(model, tokenizer, pairs, variant=config.variant)
    missing = [n for n in params if n not in differential]
    if missing:
        raise KeyError(f"tune_task: the differential has no entry for parameter(s) {missing[:3]}")
    return subnetwork_masks({n: differential[n] for n in params}, config.k, per_module=config.per_module)


def _step_masks(params, config, generator):
    """Per-step masks (``mask_mode="per_step"``): top-k of the step's ``|gradient|`` for FTGD."""
    if config.control == "random_mask":
        return _random_masks(params, config.k, config.per_module, generator)
    grads = {n: (p.grad if p.grad is not None else torch.zeros_like(p)) for n, p in params.items()}
    return subnetwork_masks(grads, config.k, per_module=config.per_module)


def _build_delta(params, base: dict, meta: dict) -> SparseDelta:
    """Compare the tuned parameters with the base copies and keep the entries that differ."""
    indices, tuned, original = {}, {}, {}
    for name, p in params.items():
        if name not in base:
            continue
        idx, orig = base[name]
        now = p.detach().reshape(-1)
        now = now if idx is None else now[idx]
        differs = _bits(now) != _bits(orig)
        n_diff = int(differs.sum())
        if n_diff == 0:
            continue
        if 2 * n_diff > p.numel():  # dense is smaller than index + 2 values per entry
            tuned[name] = now.clone().view(p.shape) if idx is None else _scatter_dense(p, idx, now)
            original[name] = orig.clone().view(p.shape) if idx is None else _scatter_dense(p, idx, orig)
            indices[name] = None
        else:
            where = torch.nonzero(differs, as_tuple=True)[0]
            flat_idx = where if idx is None else idx[where]
            indices[name], tuned[name], original[name] = flat_idx.clone(), now[where].clone(), orig[where].clone()
    return SparseDelta(indices, tuned, original, meta)


def _scatter_dense(p, idx, values):
    full = p.detach().reshape(-1).clone()
    full[idx] = values
    return full.view(p.shape)


def tune_task(
    model,
    tokenizer,
    train_pairs,
    config: FTGDConfig = FTGDConfig(),
    differential: Mapping[str, torch.Tensor] | None = None,
    task: str | None = None,
    progress: bool | None = None,
) -> SparseDelta:
    """Tune ``model`` on one task with ``config`` and return the change as a :class:`SparseDelta`.

    The model is changed in place while tuning and restored **bitwise** before returning (also
    when an error is raised), together with its train/eval mode, ``requires_grad`` flags and
    ``.grad`` slots; apply the delta (:func:`applied`) to use the tuned model.

    Args:
        model: causal LM (any dtype/device; updates are made in the parameter dtype).
        tokenizer: its tokenizer.
        train_pairs: frame with ``good``/``bad`` columns (or a list of ``(good, bad)``) — the
            task's training pairs only.
        config: :class:`FTGDConfig`.
        differential: ``{name: Tensor}`` task differential of ``train_pairs`` (same variant), e.g.
            precomputed by the gradient stage, to skip recomputing it for the mask; only used by
            ``control="ftgd"`` with ``mask_mode="fixed"``.
        task: name used in errors and ``meta`` (default: the single value of a ``task`` column).
        progress: tqdm bar over steps (default: off for fewer than 200 steps).

    Returns:
        The delta; ``meta`` holds ``task``, ``config``, ``n_masked`` (entries allowed to change),
        ``n_params``, ``losses`` (per step, before its update) and ``seconds``.

    Raises:
        FTGDDivergedError: NaN/inf loss or gradient, or ``|loss| > config.max_abs_loss``; names the
            task and the 1-based step.
    """
    started = time.perf_counter()
    pairs = _pairs_of(train_pairs)
    if task is None and "task" in pairs.columns and pairs["task"].nunique() == 1:
        task = str(pairs["task"].iloc[0])
    label = task if task is not None else "<unnamed task>"
    if config.variant == "critical" and config.control != "lm_good":
        excluded = critical_exclusions(pairs, tokenizer).notna().to_numpy()
        if excluded.all():
            raise ValueError(f"tune_task({label!r}, variant='critical'): no pair has critical tokens")
        if excluded.any():  # as task_differential does: drop them, loudly
            warnings.warn(f"tune_task({label!r}, variant='critical'): {int(excluded.sum())} of {len(pairs)} pair(s) "
                          "have no critical tokens and are left out", stacklevel=2)
            pairs = pairs[~excluded].reset_index(drop=True)
    params = _named_parameters(model)
    device = next(iter(params.values())).device
    # Two streams, so that every control sees the same batches: batch order and random masks.
    generator = torch.Generator().manual_seed(int(config.seed))
    mask_generator = torch.Generator().manual_seed(int(config.seed) + 1_000_003)
    n_params = sum(p.numel() for p in params.values())

    saved_flags = {n: p.requires_grad for n, p in params.items()}
    saved_grads = {n: p.grad for n, p in params.items()}
    was_training = model.training
    masks = None
    if config.uses_mask and config.mask_mode == "fixed":
        masks = _fixed_masks(model, tokenizer, pairs, config, differential, params, mask_generator)
    # base[name] = (flat indices or None for all entries, original values there): what may change
    base: dict[str, tuple[torch.Tensor | None, torch.Tensor]] = {}
    if masks is None:
        for name, p in params.items():
            base[name] = (None, p.detach().reshape(-1).clone())
    else:
        for name, p in params.items():
            idx = torch.nonzero(masks[name].reshape(-1), as_tuple=True)[0].to(device)
            if len(idx):
                base[name] = (idx, p.detach().reshape(-1)[idx].clone())
    # entries allowed to change (per_step: the union of the step masks, known only afterwards)
    n_masked = sum(len(idx) for idx, _ in base.values()) if masks is not None else n_params
    if config.uses_mask and config.mask_mode == "per_step":
        n_masked = None

    # Leaves the optimiser updates: the parameter itself (dense) or a gathered copy of its masked
    # entries (sparse, so the optimiser state has k * n_params entries, not n_params).
    leaves = {}
    for name, (idx, orig) in base.items():
        leaves[name] = params[name] if idx is None else orig.clone().requires_grad_(True)
    optimizer = _make_optimizer(list(leaves.values()), config)
    batches = _batch_order(len(pairs), int(config.batch_size), int(config.steps), generator)
    losses: list[float] = []
    try:
        model.eval()  # dropout off: the objective tuned is the one that is scored
        for n, p in params.items():
            p.requires_grad_(n in base)
        show = config.steps >= 200 if progress is None else progress
        for step, batch_idx in enumerate(tqdm(batches, desc=f"FTGD {label}", unit="step", disable=not show, leave=False), 1):
            model.zero_grad(set_to_none=True)
            loss = _objective(model, tokenizer, pairs.iloc[batch_idx.numpy()], config, device)
            value = float(loss.detach())
            if not math.isfinite(value) or abs(value) > config.max_abs_loss:
                kind = "is not finite" if not math.isfinite(value) else f"exceeds max_abs_loss={config.max_abs_loss:g}"
                raise FTGDDivergedError(f"FTGD diverged on task {label!r} at step {step}/{config.steps}: loss {value:g} "
                                        f"{kind} (control={config.control}, lr={config.lr:g}); lower lr or steps")
            loss.backward()
            losses.append(value)
            for name, (idx, _) in base.items():
                grad = params[name].grad
                if idx is not None:  # the sparse leaves get the masked entries of the gradient
                    leaves[name].grad = grad = None if grad is None else grad.reshape(-1)[idx]
                # one float64 sum per tensor: NaN/inf anywhere makes it non-finite (4x cheaper than isfinite)
                if grad is not None and not math.isfinite(float(grad.sum(dtype=torch.float64))):
                    raise FTGDDivergedError(f"FTGD diverged on task {label!r} at step {step}/{config.steps}: "
                                            f"gradient of {name!r} is not finite (lr={config.lr:g})")
            if config.uses_mask and config.mask_mode == "per_step":
                step_masks = _step_masks(params, config, mask_generator)
                before = {n: p.detach().clone() for n, p in params.items()}
                optimizer.step()
                with torch.no_grad():
                    for n, p in params.items():
                        p.copy_(torch.where(step_masks[n].to(p.device), p, before[n]))
                continue
            optimizer.step()
            with torch.no_grad():
                for name, (idx, _) in base.items():
                    if idx is not None:
                        params[name].view(-1).index_copy_(0, idx, leaves[name].detach())
        meta = {"task": task, "config": dataclasses.asdict(config), "n_masked": n_masked, "n_params": n_params,
                "losses": losses, "steps_done": len(losses)}
        delta = _build_delta(params, base, meta)
    finally:
        with torch.no_grad():  # restore the base model bitwise
            for name, (idx, orig) in base.items():
                p = params[name]
                if idx is None:
                    p.copy_(orig.view(p.shape))
                else:
                    p.view(-1).index_copy_(0, idx, orig)
        for name, p in params.items():
            p.requires_grad_(saved_flags[name])
            p.grad = saved_grads[name]
        model.train(was_training)
    delta.meta["seconds"] = time.perf_counter() - started
    delta.meta["n_changed"] = delta.n_changed
    return delta


# -------------------------------------------------------------------------------------- evaluation
def perplexity(
    model,
    tokenizer,
    texts: Sequence[str],
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    max_tokens: int | None = None,
    progress: bool | None = None,
) -> float:
    """Per-token perplexity of held-out ``texts`` under the kit's scoring convention.

        ppl = exp( - sum_s log p(s) / sum_s n_tokens(s) )

    with ``log p(s)`` the BOS-prefixed sum of token log-probabilities of :mod:`.scoring` (every
    token of every text is predicted, the first one from BOS alone). Texts longer than
    ``max_tokens`` (default: the model's ``max_position_embeddings - 1``) are cut to their first
    ``max_tokens`` tokens; empty texts are skipped. Batches are filled up to ``batch_tokens``
    padded tokens, longest texts first; run without gradient in eval mode.
    """
    limit = max_tokens or int(getattr(model.config, "max_position_embeddings", 2048)) - 1
    ids = [x[:limit] for x in tokenize_sentences(tokenizer, [str(t) for t in texts]) if len(x)]
    if not ids:
        raise ValueError("perplexity: no non-empty texts")
    order = np.argsort([-len(x) for x in ids], kind="stable")
    prefix = prefix_token_id(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else prefix
    device = next(model.parameters()).device
    batches, start = [], 0
    while start < len(order):
        stop = start + max(1, batch_tokens // (len(ids[order[start]]) + 1))
        batches.append(order[start:stop])
        start = stop
    total_lp, total_tokens = 0.0, sum(len(x) for x in ids)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            show = len(batches) > 20 if progress is None else progress
            for index in tqdm(batches, desc="perplexity", unit="batch", disable=not show, leave=False):
                batch = collate_token_ids([ids[i] for i in index], prefix, pad, device)
                total_lp += float(token_logprob_sums(model, batch).double().sum())
    finally:
        model.train(was_training)
    return math.exp(-total_lp / total_tokens)


def evaluate_model(model, tokenizer, test_pairs: pd.DataFrame, val_text: Sequence[str] | None) -> dict:
    """Scores of the model as it stands: per task ``accuracy`` and ``mean_margin`` on
    ``test_pairs`` (frame with ``task``, ``good``, ``bad``), and validation ``perplexity``.

    Returns ``{"per_task": DataFrame[task -> accuracy, mean_margin], "perplexity": float or nan}``.
    """
    scored = score_pairs(model, tokenizer, test_pairs)
    per_task = scored.groupby("task", sort=True).agg(accuracy=("correct", "mean"), mean_margin=("margin", "mean"))
    ppl = perplexity(model, tokenizer, val_text) if val_text is not None and len(val_text) else float("nan")
    return {"per_task": per_task, "perplexity": ppl}


def _split_frames(pairs) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, test) pairs from a ``split_pairs`` frame or a ``{task: frame}`` dict of them."""
    if isinstance(pairs, Mapping):
        pairs = pd.concat([f.assign(task=t) if "task" not in f.columns else f for t, f in pairs.items()],
                          ignore_index=True)
    if "split" not in pairs.columns:
        raise ValueError("pairs need a 'split' column (train/test), as made by taskspace_utils.data.split_pairs")
    return pairs[pairs["split"] == "train"], pairs[pairs["split"] == "test"]


def evaluate_control(
    model,
    tokenizer,
    pairs_by_task,
    task: str,
    config: FTGDConfig,
    val_text: Sequence[str] | None,
    base: dict | None = None,
    differential: Mapping[str, torch.Tensor] | None = None,
) -> tuple[dict, SparseDelta]:
    """Tune ``task`` with ``config`` (its ``control`` says which run) and measure the tuned model.

    ``pairs_by_task``: a :func:`~taskspace_utils.data.split_pairs` frame (or ``{task: frame}``)
    holding the target task and the other tasks to watch; training uses the target's ``train``
    rows, every measurement uses ``test`` rows. ``base``: :func:`evaluate_model` of the untuned
    model on the same test rows and text (computed when ``None``).

    Returns ``(row, delta)``; ``row`` has ``task``, ``control``, ``target_acc_base``,
    ``target_acc``, ``target_gain`` (accuracy points, tuned - base), ``target_margin_base``,
    ``target_margin``, ``margin_gain``, ``other_acc_change`` and ``other_margin_change`` (mean over
    all other tasks of tuned - base), ``ppl_base``, ``ppl``, ``ppl_change`` (relative:
    ``ppl / ppl_base - 1``), ``n_changed``, ``frac_changed``, ``final_loss`` and ``seconds``.
    """
    train, test = _split_frames(pairs_by_task)
    target_train = train[train["task"] == task]
    if target_train.empty or not (test["task"] == task).any():
        raise KeyError(f"evaluate_control: task {task!r} has no train or no test pairs")
    if base is None:
        base = evaluate_model(model, tokenizer, test, val_text)
    delta = tune_task(model, tokenizer, target_train, config, differential=differential, task=task)
    with applied(model, delta):
        tuned = evaluate_model(model, tokenizer, test, val_text)
    before, after = base["per_task"], tuned["per_task"]
    change = after - before.loc[after.index]
    others = change.drop(index=task)
    row = {
        "task": task,
        "control": config.control,
        "target_acc_base": float(before.loc[task, "accuracy"]),
        "target_acc": float(after.loc[task, "accuracy"]),
        "target_gain": float(change.loc[task, "accuracy"]),
        "target_margin_base": float(before.loc[task, "mean_margin"]),
        "target_margin": float(after.loc[task, "mean_margin"]),
        "margin_gain": float(change.loc[task, "mean_margin"]),
        "other_acc_change": float(others["accuracy"].mean()) if len(others) else float("nan"),
        "other_margin_change": float(others["mean_margin"].mean()) if len(others) else float("nan"),
        "ppl_base": base["perplexity"],
        "ppl": tuned["perplexity"],
        "ppl_change": tuned["perplexity"] / base["perplexity"] - 1.0,
        "n_changed": delta.meta["n_changed"],
        "frac_changed": delta.meta["n_changed"] / delta.meta["n_params"],
        "final_loss": delta.meta["losses"][-1],
        "seconds": delta.meta["seconds"],
    }
    return row, delta


def compare_controls(
    model,
    tokenizer,
    pairs_by_task,
    tasks: Sequence[str],
    config: FTGDConfig = FTGDConfig(),
    val_text: Sequence[str] | None = None,
    controls: Sequence[str] = CONTROLS,
    out_dir: str | os.PathLike | None = None,
    save_deltas: bool = False,
    run_info: Mapping | None = None,
    progress: bool | None = None,
) -> pd.DataFrame:
    """The controls table: for every task in ``tasks`` and every control, :func:`evaluate_control`
    with ``config.replace(control=...)`` (same steps, lr, batch size, optimiser, seed).

    With ``out_dir``, the folder gets ``config.json`` (the config, tasks, controls; a different
    config there raises :class:`~taskspace_utils.results.ConfigMismatchError`), one
    ``rows/{task}__{control}.json`` per finished run (a rerun skips those: resumable), optionally
    ``deltas/{task}__{control}.safetensors``, and ``controls.csv`` with the whole table.
    ``run_info`` (e.g. ``{"model": "tiny-m"}``) is added to ``config.json``, so results of another
    model are not mixed in.

    Returns one row per (task, control), with the task's ``phenomenon``/``field`` when the pairs
    carry them (columns of :func:`evaluate_control`).
    """
    unknown = [c for c in controls if c not in CONTROLS]
    if unknown:
        raise ValueError(f"compare_controls: unknown control(s) {unknown}; use {CONTROLS}")
    train, test = _split_frames(pairs_by_task)
    missing = [t for t in tasks if t not in set(train["task"])]
    if missing:
        raise KeyError(f"compare_controls: task(s) {missing} not in the pairs")
    folder = Path(out_dir) if out_dir is not None else None
    if folder is not None:
        ensure_run_config(folder, {"ftgd": dataclasses.asdict(config), "tasks": list(tasks), "controls": list(controls),
                                   "n_train": int((train["task"] == tasks[0]).sum()),
                                   "n_test": int((test["task"] == tasks[0]).sum()),
                                   "n_val_texts": 0 if val_text is None else len(val_text),
                                   "watched_tasks": sorted(set(test["task"])), **dict(run_info or {})})
    base = None
    rows = []
    runs = [(t, c) for t in tasks for c in controls]
    show = len(runs) > 1 if progress is None else progress
    for task, control in tqdm(runs, desc="controls", unit="run", disable=not show):
        row_path = folder / "rows" / f"{task}__{control}.json" if folder is not None else None
        if row_path is not None and row_path.exists():
            rows.append(read_json(row_path))
            continue
        if base is None:
            base = evaluate_model(model, tokenizer, test, val_text)
        row, delta = evaluate_control(model, tokenizer, pd.concat([train, test]), task,
                                      config.replace(control=control), val_text, base=base)
        if row_path is not None:
            atomic_write_json(row_path, row)
            if save_deltas:
                delta.save(folder / "deltas" / f"{task}__{control}.safetensors")
        rows.append(row)
    table = pd.DataFrame(rows)[list(ROW_COLUMNS)]  # (rows read back from JSON have sorted keys)
    meta_cols = [c for c in ("phenomenon", "field") if c in train.columns]
    if meta_cols:
        meta = train.groupby("task")[meta_cols].first()
        table = table.join(meta, on="task")
        table = table[["task", *meta_cols] + [c for c in table.columns if c not in ("task", *meta_cols)]]
    if folder is not None:
        atomic_write_csv(folder / "controls.csv", table, index=False)
    return table
