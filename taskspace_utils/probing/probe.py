"""The transfer probe: eval1 -> tune each task -> eval2 (:func:`probe_transfer`), its result
(:class:`TransferResult`) and its files (:func:`load_transfer`, :func:`load_transfer_deltas`).

For each tuned task t: FTGD-tune on t's training pairs (:func:`taskspace_utils.ftgd.tune_task`, the
model is restored bitwise afterwards), score every evaluated task's test pairs with the sparse
delta applied (then reverted), and keep

    T_acc[t, u]    = acc_t(u) - acc(u)          T_margin[t, u] = mbar_t(u) - mbar(u)   (nats)

(``eval2 - eval1``, :mod:`.evaluation`). Rows: tuned tasks, columns: evaluated tasks; the diagonal
is the self-transfer; the normalised variant ``T[t, u] / T[t, t]`` (:meth:`TransferResult.space`
with ``normalised=True``, via :func:`taskspace_utils.spaces.normalise_rows`) keeps tasks that are
easy to tune from dominating.

FTGD's premise (the tuned model changed the task, not the language model): with
``config.n_val_texts > 0`` every tuned model's validation perplexity is measured on the same
held-out sentences (:func:`taskspace_utils.ftgd.validation_texts`, tokenised once:
:func:`taskspace_utils.ftgd.prepare_texts`), the base model's once:

    val_ppl = exp(- sum_s log p(s) / sum_s n_tokens(s))      val_ppl_change = val_ppl_tuned / val_ppl_base - 1

(:func:`taskspace_utils.ftgd.perplexity`; 0.05 = 5 % worse). ``n_val_texts = 0``: not measured (NaN).

Files (``out_dir``, the unit's ``probing/`` folder of :mod:`taskspace_utils.layout`; every file written atomically, the run resumes at the next unfinished task):

==================================  =========================================================
``config.json``                     the :class:`ProbingConfig`, tasks, pair counts and hash,
                                    ``run_info`` (e.g. the model); another config refuses
``eval_baseline.json``              ``eval1`` per evaluated task (exact floats, reused on resume)
``val_perplexity.json``             ``val_ppl_base`` of the untuned model, ``n_val_texts``,
                                    ``n_tokens`` (reused on resume; absent when ``n_val_texts=0``)
``rows/<task>.json``                one finished tuned task: ``eval2``, both transfer rows, timings,
                                    ``val_ppl_base``, ``val_ppl_tuned``, ``val_ppl_change``
``deltas/<task>.safetensors``       its :class:`~taskspace_utils.ftgd.SparseDelta` (``save_deltas``)
``task_space_transfer.csv``         ``T_acc`` (rows: tuned task, columns: evaluated task)
``task_space_transfer_margin.csv``  ``T_margin``
``eval_baseline.csv``               ``eval1``: accuracy, mean margin, ties, pairs per task
``transfer_timings.csv``            per tuned task: seconds tuning / evaluating / scoring the
                                    validation text, entries changed, the three ``val_ppl_*``
==================================  =========================================================
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..encoding import EncodedPairs, pairs_hash
from ..ftgd import SparseDelta, applied, model_max_tokens, prepare_texts, tune_task, validation_texts
from ..layout import CONFIG, task_file_stem
from ..models import dtype_identity
from ..results import atomic_write_csv, atomic_write_json, config_hash, ensure_run_config, read_json
from ..spaces import normalise_rows
from .config import ProbingConfig, _task_lists, select_pairs
from .evaluation import prepare_evaluation

__all__ = [
    "METRICS",
    "CONFIG_FILE",
    "BASELINE_FILE",
    "VAL_PPL_FILE",
    "PPL_COLUMNS",
    "ROWS_DIR",
    "DELTAS_DIR",
    "BASELINE_COLUMNS",
    "TransferResult",
    "probe_transfer",
    "load_transfer",
    "load_transfer_deltas",
]

#: The two transfer metrics kept for every entry.
METRICS = ("accuracy", "margin")
CONFIG_FILE = CONFIG
BASELINE_FILE = "eval_baseline.json"
#: The untuned model's validation perplexity (written once, reused on resume).
VAL_PPL_FILE = "val_perplexity.json"
#: Validation-perplexity fields of every row and columns of the per-task table (module docstring).
PPL_COLUMNS = ("val_ppl_base", "val_ppl_tuned", "val_ppl_change")
ROWS_DIR = "rows"
BASELINE_COLUMNS = ["accuracy", "mean_margin", "ties", "n_pairs"]
DELTAS_DIR = "deltas"


@dataclass
class TransferResult:
    """A transfer space and what it was made from.

    Attributes:
        accuracy: ``T_acc`` (index ``tuned``, columns ``evaluated``; accuracy points as fractions).
        margin: ``T_margin`` (nats of mean margin).
        baseline: ``eval1`` per evaluated task (``accuracy``, ``mean_margin``, ``ties``, ``n_pairs``).
        timings: the per-tuned-task table: ``tune_seconds``, ``eval_seconds``, ``ppl_seconds``
            (scoring the validation text), ``n_changed``, ``n_masked``, ``final_loss``,
            ``val_ppl_base``, ``val_ppl_tuned``, ``val_ppl_change`` (module docstring; NaN when
            not measured) and ``resumed`` (read from a finished row rather than computed now).
        config: the ``config.json`` content.
        out_dir: the run folder (``None`` for results not on disk).
    """

    accuracy: pd.DataFrame
    margin: pd.DataFrame
    baseline: pd.DataFrame
    timings: pd.DataFrame
    config: dict
    out_dir: Path | None = None

    def space(self, metric: str = "margin", normalised: bool = False) -> pd.DataFrame:
        """``T_acc`` or ``T_margin``; ``normalised=True`` divides each row by its self-transfer
        (:func:`~taskspace_utils.spaces.normalise_rows`; rows with ``T[t, t] <= 0`` become NaN,
        with a warning). Only for square spaces."""
        if metric not in METRICS:
            raise ValueError(f"metric={metric!r}: use one of {METRICS}")
        space = self.accuracy if metric == "accuracy" else self.margin
        return normalise_rows(space) if normalised else space

    @property
    def self_transfer(self) -> pd.DataFrame:
        """The diagonal (tuned tasks that are also evaluated): accuracy and margin."""
        tasks = [t for t in self.accuracy.index if t in self.accuracy.columns]
        return pd.DataFrame({m: [self.space(m).loc[t, t] for t in tasks] for m in METRICS},
                            index=pd.Index(tasks, name="task"))

    @property
    def premise(self) -> pd.DataFrame:
        """Per tuned task (index ``task``): the self-transfer in ``accuracy`` and ``margin`` (NaN
        for a task that is not evaluated) beside ``val_ppl_base``, ``val_ppl_tuned`` and
        ``val_ppl_change`` (relative, ``tuned / base - 1``): what tuning bought on the task and
        what it cost the language model."""
        diag = self.self_transfer.reindex(self.timings.index)
        diag.index.name = "task"
        return diag.join(self.timings[list(PPL_COLUMNS)].rename_axis("task"))


def _space_frame(rows: Sequence[dict], key: str, tasks: list[str], eval_tasks: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame([[row[key][u] for u in eval_tasks] for row in rows], index=tasks, columns=eval_tasks, dtype=float)
    frame.index.name, frame.columns.name = "tuned", "evaluated"
    return frame


def _write_tables(folder: Path, result: TransferResult) -> None:
    atomic_write_csv(folder / "task_space_transfer.csv", result.accuracy)
    atomic_write_csv(folder / "task_space_transfer_margin.csv", result.margin)
    atomic_write_csv(folder / "eval_baseline.csv", result.baseline)
    atomic_write_csv(folder / "transfer_timings.csv", result.timings)



def probe_transfer(
    model,
    tokenizer,
    pairs: pd.DataFrame,
    out_dir,
    config: ProbingConfig = ProbingConfig(),
    differentials: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
    run_info: Mapping | None = None,
    progress: bool = True,
    val_texts: Sequence[str] | None = None,
) -> TransferResult:
    """The transfer task space of ``model`` over ``config.tasks`` (module docstring), resumable.

    Args:
        model, tokenizer: a causal LM (left exactly as it was: every tuned delta is reverted
            bitwise) and its tokenizer.
        pairs: minimal pairs with ``task``, ``good``, ``bad`` and usually ``split`` (e.g.
            :func:`taskspace_utils.data.load_task_data`; any user pair set works the same way), or
            their :class:`~taskspace_utils.encoding.EncodedPairs`; see :func:`select_pairs`.
        out_dir: run folder (files in the module docstring). A rerun reads the finished rows and
            tunes only the remaining tasks; another config in the folder raises
            :class:`~taskspace_utils.results.ConfigMismatchError`.
        config: :class:`ProbingConfig`.
        differentials: optional ``{task: {param name: D_t}}`` of the *same* training pairs and
            FTGD variant (e.g. :func:`differential_store` over the gradient stage's folder); a
            task found there skips recomputing its differential for the mask.
        run_info: extra identity written into the config (e.g. ``{"model": "tiny-m"}``), so runs
            of different models never mix in one folder. The model's parameter dtype is written
            there too when it is not float32 (``"dtype": "bfloat16"``), so a bf16 and a float32
            probe never mix either (float32 configs are unchanged).
        progress: tqdm bar over tuned tasks.
        val_texts: held-out texts for the validation perplexity, of which the first
            ``config.n_val_texts`` are used (default: ``validation_texts(config.n_val_texts)``,
            sentences evenly spaced over the corpus's validation split,
            :func:`~taskspace_utils.ftgd.validation_texts`). Their hash is part of the config, so a
            resumed run scores the same texts and reuses the base perplexity of ``val_perplexity.json``.

    Returns:
        :class:`TransferResult`. Cost: ``eval1`` + per tuned task one FTGD run (``steps``
        forward/backward passes of ``2 * batch_size`` sentences, plus the differential of its
        training pairs unless given), one evaluation of every test sentence and one scoring of the
        ``n_val_texts`` validation sentences (see :class:`ProbingConfig` for its share).
    """
    folder = Path(out_dir)
    frame = pairs.pairs if isinstance(pairs, EncodedPairs) else pairs
    train, test = select_pairs(frame, config)
    tasks, eval_tasks = _task_lists(frame.assign(task=frame["task"].astype(str)), config)
    texts = _validation(val_texts, int(config.n_val_texts))
    identity = {
        "probing": dataclasses.asdict(config) | {"tasks": tasks, "eval_tasks": eval_tasks},
        "n_train": train.groupby("task").size().to_dict(),
        "n_test": test.groupby("task").size().to_dict(),
        "pairs_sha": pairs_hash(pd.concat([train, test])),
        **({"val_texts_sha": config_hash(texts)} if texts else {}),
        **dtype_identity(model),
        **dict(run_info or {}),
    }
    ensure_run_config(folder, identity, name=CONFIG_FILE)
    prepared = prepare_evaluation(tokenizer, test, eval_tasks, config.batch_tokens)
    baseline_path = folder / BASELINE_FILE
    if baseline_path.exists():
        baseline = _read_baseline(baseline_path, eval_tasks)
    else:
        baseline = prepared.evaluate(model)
        atomic_write_json(baseline_path, baseline.reset_index().to_dict(orient="list"))
    atomic_write_csv(folder / "eval_baseline.csv", baseline)
    val = prepare_texts(tokenizer, texts, model_max_tokens(model), config.batch_tokens) if texts else None
    ppl_base = _base_perplexity(folder, model, val)
    train_by_task = {t: g for t, g in train.groupby("task", sort=True)}
    tuning = config.tuning
    rows = []
    bar = tqdm(tasks, desc="transfer (tuned tasks)", unit="task", disable=not progress)
    for task in bar:
        row_path = folder / ROWS_DIR / f"{task_file_stem(task)}.json"
        if row_path.exists():
            rows.append(read_json(row_path) | {"resumed": True})
            continue
        started = time.perf_counter()
        differential = None
        if differentials is not None and task in differentials:
            differential = differentials[task]
        delta = tune_task(model, tokenizer, train_by_task[task], tuning, differential=differential, task=task)
        tuned_at = time.perf_counter()
        with applied(model, delta):
            after = prepared.evaluate(model)
            finished = time.perf_counter()
            ppl = val.perplexity(model) if val is not None else float("nan")
        scored = time.perf_counter()
        change = after[["accuracy", "mean_margin"]] - baseline[["accuracy", "mean_margin"]]
        row = {
            "task": task,
            "accuracy": change["accuracy"].to_dict(),
            "margin": change["mean_margin"].to_dict(),
            "accuracy_after": after["accuracy"].to_dict(),
            "margin_after": after["mean_margin"].to_dict(),
            "tune_seconds": tuned_at - started,
            "eval_seconds": finished - tuned_at,
            "ppl_seconds": scored - finished if val is not None else None,
            "val_ppl_base": _or_none(ppl_base),
            "val_ppl_tuned": _or_none(ppl),
            "val_ppl_change": _or_none(ppl / ppl_base - 1.0),
            "n_changed": int(delta.meta["n_changed"]),
            "n_masked": delta.meta.get("n_masked"),
            "final_loss": float(delta.meta["losses"][-1]),
            "losses": [float(v) for v in delta.meta["losses"]],
        }
        if config.save_deltas:  # before the row: a finished row always has its delta
            delta.save(folder / DELTAS_DIR / f"{task_file_stem(task)}.safetensors")
        atomic_write_json(row_path, row)
        rows.append(row | {"resumed": False})
        if task in eval_tasks:
            shown = {"self_acc": f"{row['accuracy'][task]:+.2f}", "self_margin": f"{row['margin'][task]:+.2f}"}
            bar.set_postfix(shown | ({"val_ppl": f"{ppl / ppl_base - 1.0:+.1%}"} if val is not None else {}))
    bar.close()
    result = _result_from_rows(rows, tasks, eval_tasks, baseline, read_json(folder / CONFIG_FILE), folder)
    _write_tables(folder, result)
    return result



def _validation(val_texts: Sequence[str] | None, n: int) -> list[str]:
    """The ``n`` validation texts: the first ``n`` of ``val_texts``, else ``validation_texts(n)``."""
    if val_texts is None:
        return validation_texts(n)
    if isinstance(val_texts, str):
        raise TypeError("probe_transfer: val_texts is a list of texts, not one string")
    texts = [str(t) for t in list(val_texts)[:n]]
    if len(texts) < n:
        raise ValueError(f"probe_transfer: n_val_texts={n} but only {len(texts)} val_texts given")
    return texts


def _base_perplexity(folder: Path, model, val) -> float:
    """The untuned model's validation perplexity: read from ``val_perplexity.json`` when a run in
    ``folder`` measured it (same texts: their hash is in the config), else measured and written."""
    if val is None:
        return float("nan")
    path = folder / VAL_PPL_FILE
    if path.exists():
        return float(read_json(path)["val_ppl_base"])
    ppl = val.perplexity(model)
    atomic_write_json(path, {"val_ppl_base": ppl, "n_val_texts": len(val), "n_tokens": val.n_tokens})
    return ppl


def _or_none(value: float) -> float | None:
    """JSON has no NaN: a value not measured is written as ``null``."""
    return None if value != value else float(value)


def _read_baseline(path: Path, eval_tasks: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame(read_json(path)).set_index("task")
    return frame.loc[eval_tasks, BASELINE_COLUMNS]


def _result_from_rows(rows, tasks, eval_tasks, baseline, config, folder) -> TransferResult:
    timing_cols = ["tune_seconds", "eval_seconds", "ppl_seconds", "n_changed", "n_masked", "final_loss",
                   *PPL_COLUMNS, "resumed"]
    timings = pd.DataFrame([{c: row.get(c) for c in timing_cols} for row in rows], index=pd.Index(tasks, name="tuned"))
    for column in ("ppl_seconds", *PPL_COLUMNS):  # null (not measured, or a row of an older run) -> NaN
        timings[column] = pd.to_numeric(timings[column], errors="coerce").astype(float)
    return TransferResult(
        accuracy=_space_frame(rows, "accuracy", tasks, eval_tasks),
        margin=_space_frame(rows, "margin", tasks, eval_tasks),
        baseline=baseline,
        timings=timings,
        config=config,
        out_dir=folder,
    )


def load_transfer(out_dir) -> TransferResult:
    """Read a run folder written by :func:`probe_transfer` (its tuned tasks in config order; an
    unfinished run gives the finished rows only, with a note in ``config["complete"]``)."""
    folder = Path(out_dir)
    path = folder / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: no transfer run here (run probe_transfer first)")
    config = read_json(path)
    tasks, eval_tasks = config["probing"]["tasks"], config["probing"]["eval_tasks"]
    done = [t for t in tasks if (folder / ROWS_DIR / f"{t}.json").exists()]
    if not done:
        raise FileNotFoundError(f"{folder / ROWS_DIR}: no finished tuned task yet")
    rows = [read_json(folder / ROWS_DIR / f"{t}.json") | {"resumed": True} for t in done]
    baseline = _read_baseline(folder / BASELINE_FILE, eval_tasks)
    config = config | {"complete": len(done) == len(tasks)}
    return _result_from_rows(rows, done, eval_tasks, baseline, config, folder)


def load_transfer_deltas(out_dir, tasks: Sequence[str] | None = None) -> dict[str, SparseDelta]:
    """``{task: SparseDelta}`` saved by :func:`probe_transfer` (``save_deltas``), on the CPU."""
    folder = Path(out_dir) / DELTAS_DIR
    if tasks is None:
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"{folder}: no saved deltas (probe with save_deltas=True)")
        return {f.stem: SparseDelta.load(f) for f in files}
    return {t: SparseDelta.load(folder / f"{task_file_stem(t)}.safetensors") for t in tasks}

