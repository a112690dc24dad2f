"""Tuning one task: FTGD and its controls (:func:`tune_task`), the masks, the objective, the steps.

Weber et al. (2024), Section 4 ("Fine-tuning via gradient differentials"): a task's *subnetwork*
is the top-k parameters by ``|d_T|``, where the task differential is

    d_T = mean_{(g, b) in T_train}  grad_theta [ log p(g) - log p(b) ]          (one per parameter)

(:func:`taskspace_utils.gradients.task_differential`). FTGD tunes only that subnetwork so that the
model prefers the grammatical member of each pair (objectives: :mod:`.config`):

    theta_{t+1} = theta_t + update_t  restricted to the mask M (|M| = round(k * n_params)),
    M chosen once from d_T (``mask_mode="fixed"``) or from the step's gradient (``"per_step"``).

``random_mask`` draws M uniformly with the same counts; ``all_params`` and ``lm_good`` update every
parameter. Batches are consecutive slices of seeded permutations of the training pairs, from a
stream separate from the random masks', so every control sees the same batches. The model is
restored bitwise afterwards; the change is returned as a :class:`~.delta.SparseDelta`. A step's
margins come from :func:`~taskspace_utils.gradients.batch_margins`: its 16 pairs packed as prefix
trees where the model supports them (a pair's two sentences share their common beginning).

Precision. A float32/float64 model is updated in place in its own dtype (the optimiser works on
the parameters, or on gathered copies of their masked entries). A bf16/fp16 model is not: bf16
keeps 8 mantissa bits, so an Adam step of ``lr = 1e-4`` on a weight of 0.02 (ulp 1.2e-4) would
round away and Adam's second moments (squares of ~1e-4 gradients) would lose most bits. There the
optimiser works on float32 *master* copies of the tuned entries (its state in float32 too); after
every step the masters are written into the model rounded to its dtype, so the forward pass sees
what the model can hold, while updates smaller than half an ulp accumulate in the master until
they move the stored value. The delta compares the rounded tuned values with the original bf16
values bit for bit, as for any dtype.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from typing import Mapping

import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..encoding import EncodedPairs, encode
from ..gradients import batch_margins, subnetwork_masks, task_differential
from ..models import accumulation_dtype, eval_mode
from ..padded import collate_token_ids, token_logprob_sums
from .config import FTGDConfig, FTGDDivergedError
from .delta import SparseDelta, _build_delta, _named_parameters

__all__ = ["tune_task"]


def _pairs_of(train_pairs) -> pd.DataFrame:
    """The training pairs as a frame with a fresh range index (from a frame, an
    :class:`~taskspace_utils.encoding.EncodedPairs` or a list of ``(good, bad)``)."""
    if isinstance(train_pairs, EncodedPairs):
        frame = train_pairs.pairs
    elif isinstance(train_pairs, pd.DataFrame):
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


def _objective(model, tokenizer, batch: EncodedPairs, config: FTGDConfig, device) -> torch.Tensor:
    """The loss to minimise (a scalar): minus the mean margin, minus mean log sigmoid(beta margin),
    or (``lm_good``) minus the mean log-probability of the good sentences."""
    if config.control == "lm_good":
        encoded = collate_token_ids(batch.good_ids, batch.prefix_id, batch.pad_id, device)
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
    # float32 at least: on the CPU the top-k selection runs through numpy, which has no bfloat16
    grads = {n: (p.grad if p.grad is not None else torch.zeros_like(p)).to(accumulation_dtype(p.dtype))
             for n, p in params.items()}
    return subnetwork_masks(grads, config.k, per_module=config.per_module)


def _write_leaves(params, base, leaves, master) -> None:
    """Write the optimiser's leaves into the model: gathered copies and float32 masters (rounded
    to the parameter's dtype) at their entries; dense leaves that are the parameter need nothing."""
    with torch.no_grad():
        for name, (idx, _) in base.items():
            if not master[name] and idx is None:
                continue
            p, value = params[name], leaves[name].detach().to(params[name].dtype)
            if idx is None:
                p.view(-1).copy_(value)
            else:
                p.view(-1).index_copy_(0, idx, value)


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
        model: causal LM (any dtype/device; float32/float64 parameters are updated in their
            dtype, bf16/fp16 ones through float32 master copies: module docstring).
        tokenizer: its tokenizer.
        train_pairs: frame with ``good``/``bad`` columns, its
            :class:`~taskspace_utils.encoding.EncodedPairs`, or a list of ``(good, bad)`` — the
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
    encoded = train_pairs if isinstance(train_pairs, EncodedPairs) else encode(tokenizer, pairs)
    if task is None and "task" in pairs.columns and pairs["task"].nunique() == 1:
        task = str(pairs["task"].iloc[0])
    label = task if task is not None else "<unnamed task>"
    if config.variant == "critical" and config.control != "lm_good":
        excluded = encoded.excluded.notna().to_numpy()
        if excluded.all():
            raise ValueError(f"tune_task({label!r}, variant='critical'): no pair has critical tokens")
        if excluded.any():  # as task_differential does: drop them, loudly
            warnings.warn(f"tune_task({label!r}, variant='critical'): {int(excluded.sum())} of {len(pairs)} pair(s) "
                          "have no critical tokens and are left out", stacklevel=2)
            encoded = encoded.select(~excluded)
    params = _named_parameters(model)
    device = next(iter(params.values())).device
    # Two streams, so that every control sees the same batches: batch order and random masks.
    generator = torch.Generator().manual_seed(int(config.seed))
    mask_generator = torch.Generator().manual_seed(int(config.seed) + 1_000_003)
    n_params = sum(p.numel() for p in params.values())

    saved_flags = {n: p.requires_grad for n, p in params.items()}
    saved_grads = {n: p.grad for n, p in params.items()}
    masks = None
    if config.uses_mask and config.mask_mode == "fixed":
        masks = _fixed_masks(model, tokenizer, encoded, config, differential, params, mask_generator)
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
    # entries (sparse, so the optimiser state has k * n_params entries, not n_params); for a
    # 16-bit parameter a float32 master copy of those entries (module docstring, "Precision").
    master = {name: accumulation_dtype(params[name].dtype) != params[name].dtype for name in base}
    leaves = {}
    for name, (idx, orig) in base.items():
        if master[name]:
            leaves[name] = orig.to(accumulation_dtype(orig.dtype)).requires_grad_(True)  # flat float32 copy
        else:
            leaves[name] = params[name] if idx is None else orig.clone().requires_grad_(True)
    optimizer = _make_optimizer(list(leaves.values()), config)
    batches = _batch_order(len(encoded), int(config.batch_size), int(config.steps), generator)
    losses: list[float] = []
    with eval_mode(model):  # dropout off: the objective tuned is the one that is scored
        try:
            for n, p in params.items():
                p.requires_grad_(n in base)
            show = config.steps >= 200 if progress is None else progress
            for step, batch_idx in enumerate(tqdm(batches, desc=f"FTGD {label}", unit="step", disable=not show, leave=False), 1):
                model.zero_grad(set_to_none=True)
                loss = _objective(model, tokenizer, encoded.select(batch_idx.numpy()), config, device)
                value = float(loss.detach())
                if not math.isfinite(value) or abs(value) > config.max_abs_loss:
                    kind = "is not finite" if not math.isfinite(value) else f"exceeds max_abs_loss={config.max_abs_loss:g}"
                    raise FTGDDivergedError(f"FTGD diverged on task {label!r} at step {step}/{config.steps}: loss {value:g} "
                                            f"{kind} (control={config.control}, lr={config.lr:g}); lower lr or steps")
                loss.backward()
                losses.append(value)
                sums = []  # one float64 sum per tensor: NaN/inf anywhere makes it non-finite (4x cheaper than isfinite)
                for name, (idx, _) in base.items():
                    grad = params[name].grad
                    if master[name]:  # float32 masters get the (masked) entries of the gradient, upcast
                        if grad is not None:
                            grad = (grad.reshape(-1) if idx is None else grad.reshape(-1)[idx]).to(leaves[name].dtype)
                        leaves[name].grad = grad
                    elif idx is not None:  # the sparse leaves get the masked entries of the gradient
                        leaves[name].grad = grad = None if grad is None else grad.reshape(-1)[idx]
                    sums.append((name, None if grad is None else grad.sum(dtype=torch.float64)))
                # one device sync per step (not one per tensor: on a GPU each is a round trip)
                present = [(name, t) for name, t in sums if t is not None]
                if present and not math.isfinite(float(torch.stack([t for _, t in present]).sum())):
                    name = next((n for n, t in present if not math.isfinite(float(t))), "<all tensors summed>")
                    raise FTGDDivergedError(f"FTGD diverged on task {label!r} at step {step}/{config.steps}: "
                                            f"gradient of {name!r} is not finite (lr={config.lr:g})")
                if config.uses_mask and config.mask_mode == "per_step":
                    step_masks = _step_masks(params, config, mask_generator)
                    before = {n: leaf.detach().clone() for n, leaf in leaves.items()}
                    optimizer.step()
                    with torch.no_grad():
                        for n, leaf in leaves.items():
                            keep = step_masks[n].to(leaf.device).reshape(leaf.shape)
                            leaf.copy_(torch.where(keep, leaf, before[n]))
                else:
                    optimizer.step()
                _write_leaves(params, base, leaves, master)
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
    delta.meta["seconds"] = time.perf_counter() - started
    delta.meta["n_changed"] = delta.n_changed
    return delta
