"""The gradient task space: similarity of task differentials, whole model or per module.

For task differentials ``D_t`` (:mod:`.differentials`), the space is the tasks x tasks matrix

* ``"cosine"``: ``<D_t, D_u> / (||D_t|| ||D_u||)`` (NaN for a zero differential);
* ``"pearson"``: the cosine of the vectors centred by their mean entry;
* ``"dot"``: ``<D_t, D_u>``;

over all parameters (:func:`gradient_space`) or over the parameters of one module
(:func:`module_groups`: embeddings, each layer's attention and MLP, final norm, head). It is
accumulated in float64 from per-tensor Gram matrices (:func:`_grams`), so a run folder is streamed
one parameter tensor of all tasks at a time. :func:`summarise_module_spaces` says where tasks share
signal (within / across phenomena and fields, per module).
"""

from __future__ import annotations

import re
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..spaces import relation_labels
from .differentials import _trainable
from .subnetworks import _task_names

__all__ = ["METRICS", "module_groups", "gradient_space", "summarise_module_spaces"]

#: Similarity of two task differentials in the gradient space.
METRICS = ("cosine", "pearson", "dot")

_LAYER = re.compile(r"\.(?:layers|h|blocks|layer)\.(\d+)\.")
_ATTN_KEYS = ("attention", "attn", "input_layernorm", "ln_1", "self_attn")
_MLP_KEYS = ("mlp", "post_attention_layernorm", "ln_2", "feed_forward", "ffn")


def module_groups(model_or_param_names) -> dict[str, str]:
    """Map parameter names to modules: ``embed``, ``layer{i}.attention``, ``layer{i}.mlp``,
    ``final_norm``, ``head`` (and ``layer{i}.other`` / ``other`` for anything else).

    A layer's pre-attention norm belongs to its attention, its pre-MLP norm to its MLP. Names of
    GPT-NeoX (``gpt_neox.layers.3.attention.dense.weight``), GPT-2 (``transformer.h.3.attn``) and
    Llama-style models (``model.layers.3.self_attn``) are recognised. Accepts a model (its trainable
    parameters) or an iterable of names; returns ``{name: module}`` in the given order.
    """
    names = [n for n, _ in _trainable(model_or_param_names)] if hasattr(model_or_param_names, "named_parameters") else list(model_or_param_names)
    out = {}
    for name in names:
        m = _LAYER.search("." + name)
        if m:
            rest = ("." + name)[m.end() :]
            if any(rest.startswith(key) or f".{key}" in "." + rest for key in _ATTN_KEYS):
                out[name] = f"layer{m.group(1)}.attention"
            elif any(rest.startswith(key) or f".{key}" in "." + rest for key in _MLP_KEYS):
                out[name] = f"layer{m.group(1)}.mlp"
            else:
                out[name] = f"layer{m.group(1)}.other"
        elif any(key in name for key in ("embed_in", "wte", "wpe", "embed_tokens", "embed_positions")):
            out[name] = "embed"
        elif any(key in name for key in ("embed_out", "lm_head")):
            out[name] = "head"
        elif any(key in name for key in ("final_layer_norm", "ln_f", "norm")):
            out[name] = "final_norm"
        else:
            out[name] = "other"
    return out


def _module_order(labels) -> list[str]:
    """The distinct module labels in network order: embed, layers (attention, mlp, other), final
    norm, head, other."""
    def key(label: str):
        m = re.match(r"layer(\d+)\.(\w+)", label)
        if label == "embed":
            return (0, 0, 0)
        if m:
            return (1, int(m.group(1)), {"attention": 0, "mlp": 1}.get(m.group(2), 2))
        return (2, {"final_norm": 0, "head": 1}.get(label, 2), 0)

    return sorted(set(labels), key=key)


#: Columns of the float64 block the Gram matrices are accumulated over (67 tasks: 140 MB). One
#: buffer serves every block of every tensor: a fresh block per step is above glibc's 32 MB mmap
#: threshold, so it was mapped and page-faulted each time (with the stacked ``[T, n]`` input of the
#: embedding and head tensors, 570k of the 695k minor faults of tiny-s's gradient stage).
GRAM_BLOCK = 2**18


def _grams(get_rows: Callable[[str], Sequence[torch.Tensor]], names: Sequence[str], metric: str, desc: str = "gram",
           progress: bool | None = None):
    """Per-parameter Gram matrices ``X_p X_p^T`` (``[T, T]`` float64) and row sums ``X_p 1``, where
    row t of ``X_p`` is ``get_rows(p)[t]`` (task t's flat tensor of parameter p), accumulated in
    float64 over column blocks of :data:`GRAM_BLOCK` entries copied into one reused buffer."""
    grams, sums, counts = {}, {}, {}
    buffer = None
    show = len(names) >= 50 if progress is None else bool(progress)
    for name in tqdm(names, desc=desc, unit="tensor", disable=not show, leave=False):
        rows = get_rows(name)
        n_tasks, n = len(rows), int(rows[0].numel())
        if buffer is None or buffer.numel() < n_tasks * min(n, GRAM_BLOCK):
            buffer = torch.empty(n_tasks * min(n, GRAM_BLOCK), dtype=torch.float64)
        gram = torch.zeros(n_tasks, n_tasks, dtype=torch.float64)
        total = torch.zeros(n_tasks, dtype=torch.float64)
        for start in range(0, n, GRAM_BLOCK):
            width = min(GRAM_BLOCK, n - start)
            block = buffer[: n_tasks * width].view(n_tasks, width)  # contiguous, as a fresh block would be
            for i, row in enumerate(rows):
                block[i].copy_(row[start : start + width])  # float32 -> float64 is exact
            gram += block @ block.T
            total += block.sum(dim=1)
        grams[name], sums[name], counts[name] = gram, total, n
    return grams, sums, counts


def _space_from(grams, sums, counts, names, tasks, metric) -> pd.DataFrame:
    g = sum(grams[n] for n in names)
    if metric == "pearson":
        s = sum(sums[n] for n in names)
        g = g - torch.outer(s, s) / sum(counts[n] for n in names)
    if metric in ("cosine", "pearson"):
        norm = g.diagonal().clamp_min(0).sqrt()
        g = g / torch.outer(norm, norm)
        g = torch.where(torch.outer(norm, norm) > 0, g, torch.full_like(g, float("nan")))
    return pd.DataFrame(g.numpy(), index=pd.Index(tasks, name="task"), columns=pd.Index(tasks, name="task"))


def _spaces_from_grams(grams, sums, counts, names, tasks, metric, by):
    """The space of all ``names`` (``by="model"``) or ``{module: space}`` (``by="module"``)."""
    if by == "model":
        return _space_from(grams, sums, counts, names, tasks, metric)
    groups = module_groups(names)
    return {
        module: _space_from(grams, sums, counts, [n for n in names if groups[n] == module], tasks, metric)
        for module in _module_order(groups.values())
    }


def gradient_space(
    differentials_by_task: Mapping[str, Mapping[str, torch.Tensor]],
    metric: str = "cosine",
    by: str = "model",
) -> pd.DataFrame | dict[str, pd.DataFrame]:
    """The gradient task space: similarity of task differentials, tasks x tasks.

    ``metric``: ``"cosine"`` ``<D_t, D_u> / (||D_t|| ||D_u||)`` over all parameters (or a module's);
    ``"pearson"``: the cosine of the vectors centred by their mean entry; ``"dot"``: ``<D_t, D_u>``.
    A zero differential gives NaN cosines. ``by="model"``: one ``DataFrame`` (index and columns
    the tasks, in the given order); ``by="module"``: ``{module: DataFrame}`` for every module of
    :func:`module_groups` (embed, layer{i}.attention, layer{i}.mlp, final_norm, head), in network
    order. Accumulated in float64 from per-tensor Gram matrices.
    """
    if metric not in METRICS:
        raise ValueError(f"metric={metric!r}: use one of {METRICS}")
    if by not in ("model", "module"):
        raise ValueError(f"by={by!r}: use 'model' or 'module'")
    tasks, names = _task_names(differentials_by_task, "gradient_space")

    def rows(name):
        return [differentials_by_task[t][name].detach().reshape(-1).cpu() for t in tasks]

    grams, sums, counts = _grams(rows, names, metric)
    return _spaces_from_grams(grams, sums, counts, names, tasks, metric, by)


def summarise_module_spaces(spaces: Mapping[str, pd.DataFrame], metadata: pd.DataFrame) -> pd.DataFrame:
    """Where in the network tasks share signal: per space (e.g. per module), the mean off-diagonal
    similarity over all task pairs, over pairs of the same phenomenon, of different phenomena
    within a field and of different fields (``metadata``: index task, columns ``phenomenon`` and
    ``field``, e.g. :func:`taskspace_utils.data.task_metadata`). Each unordered pair counts once;
    NaN entries are skipped. Rows in the order of ``spaces``."""
    rows = []
    for key, space in spaces.items():
        tasks = list(space.index)
        values = space.loc[tasks, tasks].to_numpy(dtype=float)
        upper = np.triu(np.ones_like(values, dtype=bool), k=1) & ~np.isnan(values)
        names = np.asarray(tasks, dtype=object)
        relation = relation_labels(names[:, None], names[None, :], metadata)
        pick = lambda m: float(values[upper & m].mean()) if (upper & m).any() else float("nan")  # noqa: E731
        rows.append({
            "space": key, "all_pairs": pick(np.ones_like(upper)), "same_phenomenon": pick(relation == "same phenomenon"),
            "same_field_other_phenomenon": pick(relation == "same field"), "other_field": pick(relation == "other"),
        })  # fmt: skip
    return pd.DataFrame(rows).set_index("space")
