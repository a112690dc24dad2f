"""The controls comparison: what tuning one task buys on it and costs elsewhere.

Controls (:func:`compare_controls`; ``FTGDConfig.control``), on the same task, steps, learning
rate, batch size and optimiser:

- ``"ftgd"``        the objective on the subnetwork (top-k by ``|d_T|``);
- ``"all_params"``  the objective on all parameters;
- ``"random_mask"`` the objective on a random mask of the same size (same count per tensor when
  ``per_module``);
- ``"lm_good"``     plain language-model fine-tuning, maximising ``mean_i log p(g_i)`` over the
  good sentences, all parameters.

Each is reported by the gain in target-task test accuracy and mean margin, the mean change on all
other tasks (tuned - base, test pairs), the change in validation perplexity on held-out corpus text
(general language ability; ``ppl_change = ppl / ppl_base - 1``), and the number of parameters
changed. Perplexity: ``exp(- sum_s log p(s) / sum_s n_tokens(s))`` in the BOS-prefix convention of
:mod:`taskspace_utils.scoring` (:func:`~.validation.perplexity`; the texts are tokenised and collated
once per table, :func:`~.validation.prepare_texts`).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..encoding import EncodedPairs, encode
from ..layout import task_file_stem
from ..models import dtype_identity
from ..results import atomic_write_csv, atomic_write_json, ensure_run_config, read_json
from ..scoring import blimp_accuracy, score_pairs
from .config import CONTROLS, FTGDConfig
from .delta import SparseDelta, applied
from .tuning import tune_task
from .validation import PreparedTexts, model_max_tokens, perplexity, prepare_texts

__all__ = ["ROW_COLUMNS", "perplexity", "evaluate_model", "evaluate_control", "compare_controls"]

#: Columns of a controls-table row (:func:`evaluate_control`), in order.
ROW_COLUMNS = ("task", "control", "target_acc_base", "target_acc", "target_gain", "target_margin_base",
               "target_margin", "margin_gain", "other_acc_change", "other_margin_change", "ppl_base", "ppl",
               "ppl_change", "n_changed", "frac_changed", "final_loss", "seconds")


def evaluate_model(model, tokenizer, test_pairs: pd.DataFrame | EncodedPairs,
                   val_text: Sequence[str] | PreparedTexts | None) -> dict:
    """Scores of the model as it stands: per task ``accuracy`` and ``mean_margin`` on
    ``test_pairs`` (frame with ``task``, ``good``, ``bad``, or its
    :class:`~taskspace_utils.encoding.EncodedPairs`), and validation ``perplexity`` of ``val_text``
    (texts, or their :class:`~.validation.PreparedTexts`).

    Returns ``{"per_task": DataFrame[task -> accuracy, mean_margin], "perplexity": float or nan}``.
    """
    scored = score_pairs(model, tokenizer, encode(tokenizer, test_pairs))
    per_task = blimp_accuracy(scored)[["accuracy", "mean_margin"]]
    ppl = perplexity(model, tokenizer, val_text) if val_text is not None and len(val_text) else float("nan")
    return {"per_task": per_task, "perplexity": ppl}


def _split_frames(pairs) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, test) pairs from a ``split_pairs`` frame (or its
    :class:`~taskspace_utils.encoding.EncodedPairs`) or a ``{task: frame}`` dict of them."""
    if isinstance(pairs, EncodedPairs):
        pairs = pairs.pairs
    elif isinstance(pairs, Mapping):
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

    ``pairs_by_task``: a :func:`~taskspace_utils.data.split_pairs` frame (its ``EncodedPairs``, or
    ``{task: frame}``)
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
    test = encode(tokenizer, test)  # once, for both evaluations
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
    model are not mixed in; so is ``"dtype"`` (e.g. ``"bfloat16"``) when the model's parameters are
    not float32 (float32 runs keep the config they always had).

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
                                   "watched_tasks": sorted(set(test["task"])), **dtype_identity(model),
                                   **dict(run_info or {})})
    if val_text is not None and len(val_text) and not isinstance(val_text, PreparedTexts):
        val_text = prepare_texts(tokenizer, val_text, model_max_tokens(model))  # once for every run
    base = None
    rows = []
    runs = [(t, c) for t in tasks for c in controls]
    show = len(runs) > 1 if progress is None else progress
    for task, control in tqdm(runs, desc="controls", unit="run", disable=not show):
        row_path = folder / "rows" / f"{task_file_stem(task)}__{control}.json" if folder is not None else None
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
