"""Task data: BLiMP paradigms and user minimal-pair sets, validated, split and token-aligned.

A *task* is one set of minimal pairs (grammatical ``good`` vs. ungrammatical ``bad`` sentence); for
BLiMP (Warstadt et al., 2020) a task is one paradigm (``UID``), grouped into 13 phenomena
(``linguistics_term``) and 4 fields. This module implements Section 3 ("Data") of Weber et al.
(2024): every later stage consumes the one *pairs frame* built here.

The pairs frame has one row per pair and the columns

=================  ==========================================================================
``task``           paradigm / task name (BLiMP ``UID``)
``phenomenon``     BLiMP ``linguistics_term`` (user sets: the ``phenomenon`` column, else the task)
``field``          ``syntax``, ``morphology``, ``semantics`` or ``syntax_semantics`` (BLiMP's
                   ``syntax/semantics`` spelling is normalised to ``syntax_semantics``)
``pair_id``        integer id, unique within a task
``good``, ``bad``  the two sentences, exactly as given (no whitespace normalisation)
``identical``      ``good == bad`` (BLiMP has 7 such pairs; they tie under any scorer)
flags              BLiMP's ``simple_LM_method``, ``one_prefix_method``, ``two_prefix_method``,
                   ``lexically_identical`` (user sets: missing -> ``<NA>``)
``source``, ``line``  file name and 1-based line (JSONL) / row (CSV, header = line 1) of origin
=================  ==========================================================================

Public functions
----------------
- :func:`load_blimp` — the 67 bundled BLiMP paradigms (67,000 pairs).
- :func:`load_pairs` — user minimal-pair sets from CSV / JSONL files or a folder of them.
- :func:`validate_pairs` — the checks both loaders apply (strict: raise; lenient: drop and log).
- The data stage itself (seeded splits, task metadata, token alignment, the saved task data that
  every later stage reads) is :mod:`taskspace_utils.task_data`; its names are importable from here.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from .encoding import common_prefix_len
from .layout import task_file_stem
from .task_data import (
    SMOKE_TASKS,
    DataConfig,
    PairsError,
    load_task_data,
    save_task_data,
    split_pairs,
    stage_pairs,
    task_metadata,
    token_alignment,
)

__all__ = [
    "BLIMP_DIR",
    "PairsError",
    "DataConfig",
    "load_blimp",
    "load_pairs",
    "load_source",
    "validate_pairs",
    "split_pairs",
    "task_metadata",
    "token_alignment",
    "common_prefix_len",
    "save_task_data",
    "load_task_data",
    "stage_pairs",
    "SMOKE_TASKS",
]

log = logging.getLogger(__name__)

#: The bundled BLiMP files (``data/blimp/<UID>.jsonl.gz``, see ``data/blimp/SOURCES.md``).
BLIMP_DIR = Path(__file__).resolve().parent.parent / "data" / "blimp"

BLIMP_FLAGS = ("simple_LM_method", "one_prefix_method", "two_prefix_method", "lexically_identical")
_BLIMP_RENAME = {
    "UID": "task",
    "linguistics_term": "phenomenon",
    "pairID": "pair_id",
    "sentence_good": "good",
    "sentence_bad": "bad",
}
_FIELD_SPELLINGS = {"syntax/semantics": "syntax_semantics", "syntax-semantics": "syntax_semantics"}
FRAME_COLUMNS = ["task", "phenomenon", "field", "pair_id", "good", "bad", "identical", *BLIMP_FLAGS, "source", "line"]


# ---------------------------------------------------------------------------------------------
# reading


def _open_text(path: Path):
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig")
    return open(path, encoding="utf-8-sig")


def _read_jsonl(path: Path) -> pd.DataFrame:
    records = []
    with _open_text(path) as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise PairsError(f"{path}: line {lineno}: malformed JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(record, dict):
                raise PairsError(f"{path}: line {lineno}: expected a JSON object, got {type(record).__name__}")
            record["source"] = path.name
            record["line"] = lineno
            records.append(record)
    if not records:
        raise PairsError(f"{path}: no pairs in file")
    return pd.DataFrame.from_records(records)


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise PairsError(f"{path}: malformed CSV ({err})") from None
    except pd.errors.EmptyDataError:
        raise PairsError(f"{path}: no pairs in file") from None
    if frame.empty:
        raise PairsError(f"{path}: no pairs in file")
    frame["source"] = path.name
    frame["line"] = np.arange(2, len(frame) + 2)  # header is line 1
    return frame


def _pair_files(path: Path) -> list[Path]:
    suffixes = (".jsonl", ".jsonl.gz", ".csv", ".csv.gz", ".json")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(suffixes))
        if not files:
            raise PairsError(f"{path}: folder holds no .jsonl or .csv files")
        return files
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder of minimal pairs")
    if not path.name.endswith(suffixes):
        raise PairsError(f"{path}: unsupported file type (use .jsonl, .csv or a folder of them)")
    return [path]


def _read_file(path: Path) -> pd.DataFrame:
    name = path.name
    return _read_csv(path) if name.endswith((".csv", ".csv.gz")) else _read_jsonl(path)


def _to_frame(raw: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Rename BLiMP/user columns to the pairs-frame schema and fill optional ones."""
    frame = raw.rename(columns={k: v for k, v in _BLIMP_RENAME.items() if k in raw.columns})
    if frame.columns.duplicated().any():
        dup = sorted(set(frame.columns[frame.columns.duplicated()]))
        raise PairsError(f"{path}: columns given twice under two names: {dup} (e.g. both 'good' and 'sentence_good')")
    missing = [c for c in ("good", "bad") if c not in frame.columns]
    if missing:
        found = sorted(map(str, raw.columns))
        raise PairsError(
            f"{path}: missing column(s) {missing}; a minimal-pair file needs 'good' and 'bad' "
            f"(or BLiMP's 'sentence_good' and 'sentence_bad'); found {found}"
        )
    stem = name_stem(path)
    if "task" not in frame.columns:
        frame["task"] = stem
    if "pair_id" not in frame.columns:
        frame["pair_id"] = frame.groupby("task", sort=False).cumcount()
    if "phenomenon" not in frame.columns:
        frame["phenomenon"] = frame["task"]
    if "field" not in frame.columns:
        frame["field"] = frame["phenomenon"]
    for flag in BLIMP_FLAGS:
        if flag not in frame.columns:
            frame[flag] = pd.NA
    return frame


def name_stem(path: Path) -> str:
    """File name without ``.jsonl``/``.csv`` (and ``.gz``): the default task name of a user file."""
    name = path.name
    for suffix in (".gz", ".jsonl", ".json", ".csv"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


def _normalise(frame: pd.DataFrame, path_label: str) -> pd.DataFrame:
    frame = frame.copy()
    for col in ("task", "phenomenon", "field", "good", "bad"):
        frame[col] = frame[col].astype("string")
    frame["field"] = frame["field"].replace(_FIELD_SPELLINGS)
    ids = pd.to_numeric(frame["pair_id"], errors="coerce")
    bad_ids = ids.isna() | (ids != ids.round())
    if bad_ids.any():
        row = frame[bad_ids].iloc[0]
        raise PairsError(f"{row['source']}: line {row['line']}: pair id {row['pair_id']!r} is not an integer")
    frame["pair_id"] = ids.astype("int64")
    for flag in BLIMP_FLAGS:
        frame[flag] = frame[flag].map(_as_bool).astype("boolean")
    frame["identical"] = (frame["good"] == frame["bad"]).fillna(False).astype(bool)
    frame["line"] = frame["line"].astype("int64")
    extra = [c for c in frame.columns if c not in FRAME_COLUMNS]
    return frame[FRAME_COLUMNS + extra]


def _as_bool(value):
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return pd.NA
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    return pd.NA


# ---------------------------------------------------------------------------------------------
# validation


def _safe_task_name(task: str) -> bool:
    try:
        task_file_stem(task)
    except ValueError:
        return False
    return True


def validate_pairs(frame: pd.DataFrame, strict: bool = True, allow_identical: bool = False) -> pd.DataFrame:
    """Check a pairs frame; raise (``strict``) or drop offending pairs with a logged count.

    Checks, each reported with the file and line of up to five offending rows:

    * empty or missing ``good`` / ``bad`` sentence (whitespace-only counts as empty);
    * empty or missing ``task`` name, or one that is no safe file name
      (:func:`taskspace_utils.layout.task_file_stem`: stages name files after tasks);
    * ``good == bad`` (unless ``allow_identical``: then kept, flagged in ``identical``);
    * a ``pair_id`` used twice within one task.

    Returns the (possibly reduced) frame; never modifies ``frame`` in place.
    """
    problems: list[tuple[str, pd.Series]] = []
    empty_sentence = frame["good"].isna() | frame["bad"].isna()
    empty_sentence |= frame["good"].fillna("").str.strip().eq("") | frame["bad"].fillna("").str.strip().eq("")
    problems.append(("empty sentence", empty_sentence))
    empty_task = frame["task"].isna() | frame["task"].fillna("").str.strip().eq("")
    problems.append(("empty task name", empty_task))
    problems.append(("task name that is not a safe file name (letters, digits, '_', '.', '-'; no '..')",
                     ~empty_task & ~frame["task"].fillna("").astype(str).map(_safe_task_name)))
    if not allow_identical:
        problems.append(("identical good and bad sentence", frame["identical"] & ~empty_sentence))
    problems.append(("duplicate pair id within task", frame.duplicated(["task", "pair_id"], keep="first") & ~empty_task))

    messages, drop = [], pd.Series(False, index=frame.index)
    for label, mask in problems:
        mask = mask.fillna(False).astype(bool)
        if mask.any():
            rows = frame[mask].head(5)
            where = "; ".join(f"{r.source}: line {r.line}" for r in rows.itertuples())
            more = f" (and {int(mask.sum()) - len(rows)} more)" if mask.sum() > len(rows) else ""
            messages.append(f"{int(mask.sum())} pair(s) with {label}: {where}{more}")
            drop |= mask
    if messages:
        if strict:
            raise PairsError("invalid minimal pairs:\n  " + "\n  ".join(messages) + "\n(use strict=False to drop them)")
        log.warning("dropping %d invalid pair(s):\n  %s", int(drop.sum()), "\n  ".join(messages))
        frame = frame[~drop]
    return frame.reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# loaders


def load_pairs(path: str | os.PathLike, strict: bool = True, allow_identical: bool = False) -> pd.DataFrame:
    """Load user minimal pairs from a CSV/JSONL file (optionally ``.gz``) or a folder of them.

    Each file needs ``good`` and ``bad`` columns (BLiMP's ``sentence_good`` / ``sentence_bad`` are
    accepted too); ``task`` (default: the file name without extension), ``phenomenon`` (default:
    the task), ``field`` (default: the phenomenon) and ``pair_id`` (default: running number within
    the task, in file order) are optional. Every other column is kept. Sentences are kept exactly
    as given. Errors (:class:`PairsError`) name the file and line; see :func:`validate_pairs`.
    """
    path = Path(path)
    frames = [_to_frame(_read_file(p), p) for p in _pair_files(path)]
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    frame = _normalise(frame, str(path))
    return validate_pairs(frame, strict=strict, allow_identical=allow_identical)


def load_blimp(directory: str | os.PathLike | None = None, tasks: Iterable[str] | None = None) -> pd.DataFrame:
    """Load the BLiMP paradigms bundled in ``data/blimp`` (or ``directory``) as a pairs frame.

    Returns 67 tasks x 1,000 pairs = 67,000 rows (fewer with ``tasks``), sorted by task and
    ``pair_id``; 13 phenomena; 4 fields after normalising ``syntax/semantics`` to
    ``syntax_semantics``. BLiMP's 7 pairs with identical sentences (``passive_1`` 324, 810;
    ``principle_A_case_2`` 105, 287, 372, 816, 967) are kept and flagged in ``identical``: they
    belong to the benchmark and count as ties when scored.
    """
    directory = Path(directory) if directory is not None else BLIMP_DIR
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: BLiMP folder not found (expected <UID>.jsonl[.gz] files)")
    files = sorted(p for p in directory.iterdir() if p.name.endswith((".jsonl", ".jsonl.gz")))
    if tasks is not None:
        wanted = list(tasks)
        by_name = {name_stem(p): p for p in files}
        unknown = [t for t in wanted if t not in by_name]
        if unknown:
            raise KeyError(f"unknown BLiMP task(s) {unknown}; known: {sorted(by_name)}")
        files = [by_name[t] for t in wanted]
    if not files:
        raise FileNotFoundError(f"{directory}: no BLiMP .jsonl(.gz) files")
    frame = pd.concat([_to_frame(_read_jsonl(p), p) for p in files], ignore_index=True)
    frame = _normalise(frame, str(directory))
    frame = validate_pairs(frame, strict=True, allow_identical=True)
    return frame.sort_values(["task", "pair_id"], kind="stable").reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# splits, metadata, alignment


def load_source(source: str | os.PathLike = "blimp", tasks: Iterable[str] | None = None) -> pd.DataFrame:
    """The pairs of a data source: ``"blimp"`` (:func:`load_blimp`) or a path to a user's CSV/JSONL
    file or folder (:func:`load_pairs`), restricted to ``tasks`` when given (unknown task names
    raise a ``KeyError`` naming them and the source)."""
    if str(source) == "blimp":
        return load_blimp(tasks=tasks)
    pairs = load_pairs(source)
    if tasks is not None:
        tasks = list(tasks)
        missing = sorted(set(tasks) - set(pairs["task"]))
        if missing:
            raise KeyError(f"task(s) {missing} are not in {source}")
        pairs = pairs[pairs["task"].isin(tasks)]
    return pairs
