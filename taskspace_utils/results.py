"""Results on disk: atomic writes, configs beside results, resumable runs.

Every stage of the kit writes its outputs through these helpers so that

* a file is either complete or absent (write to a temporary file in the same folder, then
  ``os.replace``, which is atomic on POSIX and Windows);
* every result folder holds the ``config.json`` that produced it, and a stage refuses to mix
  results of different configs (:func:`ensure_run_config`, after TRAK's ``savers.py``);
* a rerun finds what is finished (:func:`is_done`) and skips it.

Public functions
----------------
- :func:`atomic_write_text`, :func:`atomic_write_json`, :func:`atomic_write_csv`,
  :func:`atomic_write_parquet`, :func:`atomic_save_safetensors`: write-then-rename writers.
- :func:`read_json`: read JSON with an error that names the file and line.
- :func:`ensure_run_config`: create a run folder with its ``config.json`` or check that an existing
  one holds the same config.
- :func:`config_hash`: a short, stable hash of a JSON-serialisable config.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "ConfigMismatchError",
    "atomic_path",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_write_csv",
    "atomic_write_parquet",
    "atomic_save_safetensors",
    "read_json",
    "folder_bytes",
    "to_jsonable",
    "config_hash",
    "ensure_run_config",
    "files_table",
]


class ConfigMismatchError(RuntimeError):
    """A results folder already holds results of a different config."""


def to_jsonable(obj: Any) -> Any:
    """Turn dataclasses, paths, numpy scalars, tuples and sets into plain JSON values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted(to_jsonable(v) for v in obj)
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        return obj.item()  # numpy / torch scalars
    return obj


def config_hash(config: Any, length: int = 12) -> str:
    """SHA-256 of the canonical JSON of ``config`` (sorted keys), first ``length`` hex digits."""
    text = json.dumps(to_jsonable(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def _umask() -> int:
    """The process's umask (read by setting it and putting it back: there is no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    On any exception the temporary file is removed and ``path`` is left untouched, so nothing
    half-written is ever visible under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates the file with mode 600; give it the mode any file the user writes gets
        # (0666 less the umask), so that others on a shared file system can read the results
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented, key-sorted JSON atomically (dataclasses and numpy allowed)."""
    return atomic_write_text(path, json.dumps(to_jsonable(obj), indent=2, sort_keys=True) + "\n")


def atomic_write_csv(path: str | os.PathLike, frame, **kwargs) -> Path:
    """Write a pandas DataFrame as CSV atomically (``kwargs`` go to ``DataFrame.to_csv``)."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, **kwargs)
    return Path(path)


def atomic_write_parquet(path: str | os.PathLike, frame, **kwargs) -> Path:
    """Write a pandas DataFrame as Parquet atomically."""
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, **kwargs)
    return Path(path)


def atomic_save_safetensors(path: str | os.PathLike, tensors: Mapping, metadata: Mapping | None = None) -> Path:
    """Save a dict of torch tensors with safetensors atomically.

    ``metadata`` values are JSON-encoded into the safetensors header (it only holds strings), so
    the config that produced the tensors travels inside the file.
    """
    from safetensors.torch import save_file

    meta = None if metadata is None else {str(k): json.dumps(to_jsonable(v)) for k, v in metadata.items()}
    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(contiguous, str(tmp), metadata=meta)
    return Path(path)


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; a syntax error names the file, line and column."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: line {err.lineno}, column {err.colno}: invalid JSON ({err.msg})") from None


def ensure_run_config(folder: str | os.PathLike, config: Any, name: str = "config.json") -> Path:
    """Make ``folder`` a results folder for ``config``.

    If ``folder/name`` does not exist it is written; if it exists it must hold the same config
    (compared as canonical JSON), otherwise :class:`ConfigMismatchError` is raised, naming the keys
    that differ, so results of two configs are never mixed in one folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    wanted = to_jsonable(config)
    if path.exists():
        found = read_json(path)
        if json.dumps(found, sort_keys=True) != json.dumps(wanted, sort_keys=True):
            keys = sorted(
                k for k in set(found) | set(wanted) if found.get(k, "<absent>") != wanted.get(k, "<absent>")
            ) if isinstance(found, dict) and isinstance(wanted, dict) else ["<whole config>"]
            raise ConfigMismatchError(
                f"{path} holds results of a different config (differs in: {', '.join(keys)}). "
                "Use another output folder or delete this one."
            )
    else:
        atomic_write_json(path, wanted)
    return path


def folder_bytes(folder: str | os.PathLike) -> int:
    """Bytes of every file under ``folder`` (0 when it does not exist): the disk a stage, unit or run
    folder takes. Links are not counted (their targets are counted where they lie)."""
    folder = Path(folder)
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink()) if folder.is_dir() else 0


def files_table(folder: str | os.PathLike, pattern: str = "*") -> pd.DataFrame:
    """Every file under ``folder`` matching ``pattern`` (recursively), relative path and bytes,
    sorted: what a stage saved."""
    import pandas as pd  # local: the batch runner imports this module and stays light

    folder = Path(folder)
    rows = [(str(p.relative_to(folder)), p.stat().st_size) for p in sorted(folder.rglob(pattern)) if p.is_file()]
    return pd.DataFrame(rows, columns=["file", "bytes"])
