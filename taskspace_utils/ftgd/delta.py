"""The tuned model as a sparse change of the base model: :class:`SparseDelta`, :func:`applied`,
:func:`delta_by_module`.

A delta keeps, for every changed parameter, the flat indices of the changed entries, their tuned
values and their original values. Applying writes the tuned values, reverting writes the
originals back (never "subtract the delta"), so both are bitwise exact and tuning 67 tasks never
copies the model. The update is ``values = tuned - original``. Entries are compared by their bit
patterns (so ``-0.0 != 0.0`` and ``NaN == NaN``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

import pandas as pd
import torch

from ..gradients import module_groups
from ..results import atomic_save_safetensors

__all__ = ["SparseDelta", "applied", "delta_by_module"]

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


def _build_delta(params, base: dict, meta: dict) -> SparseDelta:
    """The delta of a tuning run: compare the tuned ``params`` with ``base`` (``{name: (flat indices
    or None for all entries, original values there)}``) and keep the entries that differ (bitwise)."""
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

