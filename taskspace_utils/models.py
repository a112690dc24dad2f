"""Model loading: local folders, Hugging Face hub names with revisions, and the offline suite.

One entry point, :func:`load_model`, takes a *model spec* string and returns ``(model,
tokenizer)`` in eval mode:

=======================================  ==================================================
``"path/to/folder"``                     a ``save_pretrained`` folder (model + tokenizer)
``"EleutherAI/pythia-160m@step3000"``    a hub name, optionally ``@revision`` (branch, tag,
                                         commit); from the local HF cache when offline
``"tiny-m"``, ``"tiny-m@step500"``       the kit's offline suite (see :mod:`.suite`): the
                                         final checkpoint, or the one at a given step
=======================================  ==================================================

``trust_remote_code`` is always off. Without network, a hub model that is not in the local cache
fails at once with :class:`ModelNotAvailableError` (no retries, no hang) saying what to do.

Public functions
----------------
- :func:`load_model` — resolve a spec and load model and tokenizer.
- :func:`check_available` — the same resolution without loading any weights (the runner's check
  before a run starts).
- :func:`parse_spec` — split ``name@revision``.
- :func:`suite_root`, :func:`suite_checkpoint_dir`, :func:`list_suite` — where the offline
  suite lives (``$TASKSPACE_SUITE_DIR``, default ``~/.cache/taskspace/suite``).
- :func:`default_device`, :func:`resolve_dtype`, :func:`accumulation_dtype`, :func:`model_dtype`,
  :func:`dtype_identity`.

Precision
---------
``load_model(spec, dtype=...)`` sets the parameter dtype: ``None`` = float32 (the default on every
device), ``"bf16"`` for speed and memory on a GPU (also accepted on the CPU, e.g. for tests).
Whatever the parameter dtype, the kit *accumulates* in at least float32
(:func:`accumulation_dtype`): log-softmax and token sums (:mod:`.lm_head`, :mod:`.padded`,
:mod:`.prefix_tree`), task differentials summed over batches (:mod:`.gradients`), FTGD's Adam
state and the tuned entries' master values (:mod:`.ftgd.tuning`). The matmuls themselves run in
the parameter dtype (bf16: 8-bit mantissa, relative rounding ``2^-8`` ~ 0.4 % per operation).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
from pathlib import Path
from urllib.parse import urlparse

import torch

from .layout import SUITE_NAME_PATTERN, suite_root  # noqa: F401  (names of this module)

__all__ = [
    "ModelNotAvailableError", "SUITE_NAME_PATTERN", "load_model", "check_available", "parse_spec", "suite_root",
    "suite_checkpoint_dir", "list_suite", "default_device", "resolve_dtype", "accumulation_dtype", "model_dtype",
    "dtype_identity", "count_parameters", "describe_model", "eval_mode", "step0_spec", "context_length",
]


class ModelNotAvailableError(RuntimeError):
    """The model spec cannot be loaded here (not cached and no network, unknown name, suite not built)."""


def default_device() -> torch.device:
    """``cuda`` when a CUDA device is visible, else ``cpu``."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dtype(dtype) -> torch.dtype | None:
    """Accept ``None``, a ``torch.dtype`` or a name (``"float32"``, ``"bf16"``, ``"float64"`` ...)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {
        "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
        "float64": torch.float64, "fp64": torch.float64, "double": torch.float64,
        "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
        "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    }
    try:
        return names[str(dtype).lower().replace("torch.", "")]
    except KeyError:
        raise ValueError(f"dtype={dtype!r} is not one of {sorted(names)}") from None


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype sums over many terms are kept in for parameters of ``dtype``: float32 for the
    16-bit floats (bfloat16 keeps 8 mantissa bits, so a running sum of 100 terms of one size
    would lose ~log2(100) of them), the dtype itself for float32 and float64."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def model_dtype(model) -> torch.dtype:
    """The dtype of ``model``'s first floating-point parameter (float32 when it has none)."""
    for p in model.parameters():
        if p.dtype.is_floating_point:
            return p.dtype
    return torch.float32


def dtype_identity(model) -> dict:
    """``{"dtype": "bfloat16"}`` for a model whose parameters are not float32, ``{}`` for float32:
    what a stage adds to its ``config.json`` so results of two precisions never mix in one folder
    while float32 configs stay as they were."""
    dtype = model_dtype(model)
    return {} if dtype == torch.float32 else {"dtype": str(dtype).replace("torch.", "")}


def parse_spec(spec: str) -> tuple[str, str | None]:
    """``"name@rev"`` -> ``("name", "rev")``; ``"name"`` -> ``("name", None)``."""
    if not isinstance(spec, (str, os.PathLike)) or not str(spec).strip():
        raise ValueError(f"model spec must be a non-empty string, got {spec!r}")
    text = str(spec).strip()
    if "@" in text:
        name, _, revision = text.rpartition("@")
        if not name or not revision:
            raise ValueError(f"model spec {spec!r}: expected 'name@revision'")
        return name, revision
    return text, None


def list_suite(suite_dir: str | os.PathLike | None = None) -> dict[str, dict]:
    """Built sizes of the suite: ``{size: suite.json record}`` (sizes without ``suite.json`` are
    incomplete and left out)."""
    root = Path(suite_dir) if suite_dir is not None else suite_root()
    found = {}
    if root.is_dir():
        for record in sorted(root.glob("*/suite.json")):
            found[record.parent.name] = json.loads(record.read_text(encoding="utf-8"))
    return found


def _build_hint(size: str) -> str:
    return (
        f"build it with `python run_all.py` (builds the whole suite when missing) or "
        f"`python -m taskspace_utils.suite --size {size}`; set TASKSPACE_SUITE_DIR to use a suite "
        "built elsewhere"
    )


def suite_checkpoint_dir(size: str, step: int | None = None, suite_dir: str | os.PathLike | None = None) -> Path:
    """Folder of one checkpoint of the offline suite (``step=None``: the final one).

    Layout: ``{root}/{size}/suite.json`` (written when the size is complete; holds ``steps`` and
    ``final_step``) and ``{root}/{size}/step{N}/`` (model, tokenizer, ``checkpoint.json``).
    """
    root = Path(suite_dir) if suite_dir is not None else suite_root()
    record_path = root / size / "suite.json"
    if not record_path.exists():
        raise ModelNotAvailableError(f"offline suite model {size!r} is not built in {root}: {_build_hint(size)}")
    record = json.loads(record_path.read_text(encoding="utf-8"))
    if step is None:
        step = int(record["final_step"])
    folder = root / size / f"step{int(step)}"
    if not (folder / "config.json").exists():
        steps = record.get("steps", [])
        raise ModelNotAvailableError(f"offline suite model {size!r} has no checkpoint at step {step}; saved steps: {steps}")
    return folder


def _hub_reachable(timeout: float = 3.0) -> bool:
    """True if a TCP connection to the configured hub endpoint opens within ``timeout`` seconds."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes") or os.environ.get(
        "TRANSFORMERS_OFFLINE", "0"
    ).lower() in ("1", "true", "yes"):
        return False
    try:
        from huggingface_hub import constants

        endpoint = urlparse(constants.ENDPOINT)
    except Exception:  # pragma: no cover - huggingface_hub always ships with transformers
        return False
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def _from_pretrained(source: str, revision: str | None, local_only: bool, dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = dict(revision=revision, local_files_only=local_only, trust_remote_code=False)
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype if dtype is not None else torch.float32, **kwargs)
    return model, tokenizer


def _finish(model, tokenizer, device):
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.bos_token
    if tokenizer.bos_token is None and tokenizer.eos_token is None:
        raise ModelNotAvailableError(
            "the tokenizer has neither a BOS nor an EOS token; sentence scoring needs one as the prefix"
        )
    model.to(device)
    model.eval()
    return model, tokenizer


#: Weight files of a ``save_pretrained`` folder or hub snapshot (one of them is enough).
_WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin")


def _lacks(folder: Path) -> str | None:
    """What a model folder lacks to be loaded (``config.json`` or a weights file), else ``None``."""
    if not (folder / "config.json").exists():
        return "config.json"
    return None if any(next(folder.glob(p), None) for p in _WEIGHT_FILES) else " or ".join(_WEIGHT_FILES)


def _local_folder(spec) -> Path | None:
    """The folder of a local or suite spec (checked: config and weights, a built checkpoint),
    ``None`` for a hub name; :class:`ModelNotAvailableError` for a path-like spec that is no folder."""
    path = Path(str(spec)).expanduser()
    if path.is_dir():
        lacks = _lacks(path)
        if lacks:
            raise ModelNotAvailableError(f"{path}: folder has no {lacks} (not a save_pretrained model folder)")
        return path
    match = SUITE_NAME_PATTERN.match(str(spec).strip())
    if match:
        step = match.group("step")
        return suite_checkpoint_dir(match.group("size"), int(step) if step is not None else None)
    name, _ = parse_spec(str(spec))
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelNotAvailableError(f"model spec {spec!r}: no such local folder")
    return None


def _not_cached(name: str, revision: str | None) -> str:
    what = f"{name!r}" + (f" at revision {revision!r}" if revision else "")
    return (f"model {what} is not in the local Hugging Face cache and the hub cannot be reached (no "
            "network). Either run once where the hub is reachable to cache it, pass the path of a "
            "folder saved with save_pretrained, or use the kit's offline suite, e.g. "
            "load_model('tiny-m') or load_model('tiny-m@step500').")


def _cached_snapshot(name: str, revision: str | None) -> Path | None:
    """The local HF cache's snapshot of ``name`` at ``revision`` when it holds a config and weights."""
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(name, revision=revision, local_files_only=True))
    except Exception:  # noqa: BLE001 - any miss (no entry, bad name, partial cache) means "not cached"
        return None
    return None if _lacks(folder) else folder


def check_available(spec: str | os.PathLike, timeout: float = 10.0) -> str:
    """Whether :func:`load_model` can have ``spec`` here, without loading any weights.

    Returns ``"local"`` (a ``save_pretrained`` folder), ``"suite"`` (a built checkpoint), ``"hub
    cache"`` (a cached snapshot with config and weights) or ``"hub"`` (not cached; the hub is
    reachable and knows name and revision: one metadata request of at most ``timeout`` s, passed
    if the request itself fails). Else :class:`ModelNotAvailableError` with :func:`load_model`'s
    message. The runner calls it for every unit before any notebook runs.
    """
    if _local_folder(spec) is not None:
        return "suite" if SUITE_NAME_PATTERN.match(str(spec).strip()) else "local"
    name, revision = parse_spec(str(spec))
    if _cached_snapshot(name, revision) is not None:
        return "hub cache"
    if not _hub_reachable():
        raise ModelNotAvailableError(_not_cached(name, revision))
    from huggingface_hub import HfApi
    from huggingface_hub.utils import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        HfApi().model_info(name, revision=revision, timeout=timeout)
    except (RepositoryNotFoundError, RevisionNotFoundError, GatedRepoError) as err:
        raise ModelNotAvailableError(f"cannot load model {spec!r} from the hub: {type(err).__name__}: "
                                     f"{str(err).splitlines()[0]}") from None
    except Exception:  # noqa: BLE001 - a flaky request proves nothing; loading will say more
        pass
    return "hub"


def load_model(spec: str | os.PathLike, device=None, dtype=None):
    """Load ``(model, tokenizer)`` from a model spec (see the module docstring).

    Args:
        spec: local folder, hub ``name[@revision]``, or offline suite ``tiny-X[@stepN]``.
        device: ``"cpu"``, ``"cuda"``, a ``torch.device``; ``None`` picks CUDA when present.
        dtype: parameter dtype (``None``: float32, the default on CPU and GPU; ``"bf16"`` /
            ``torch.bfloat16`` on a GPU for speed, also accepted on the CPU). Forward and backward
            matmuls run in this dtype; log-probabilities, margins, sums over tokens and batches
            and FTGD's optimiser state are accumulated in float32 at least (see "Precision" in
            the module docstring). ``"float16"`` loads too, but its 5-bit exponent (max 65,504) is
            not tested here; prefer bf16.

    The model is returned in eval mode (dropout off) on ``device``. If the tokenizer has no pad
    token, its EOS token is used for padding (scoring masks padding out, so the choice does not
    matter). Raises :class:`ModelNotAvailableError` with a message saying what to do when the model
    cannot be had here.
    """
    device = torch.device(device) if device is not None else default_device()
    dtype = resolve_dtype(dtype)
    folder = _local_folder(spec)
    if folder is not None:
        return _finish(*_from_pretrained(str(folder), None, True, dtype), device)
    name, revision = parse_spec(str(spec))
    try:  # the local HF cache first: no network needed, no network touched
        return _finish(*_from_pretrained(name, revision, True, dtype), device)
    except OSError:
        pass
    if not _hub_reachable():
        raise ModelNotAvailableError(_not_cached(name, revision)) from None
    try:
        return _finish(*_from_pretrained(name, revision, False, dtype), device)
    except OSError as err:
        raise ModelNotAvailableError(f"cannot load model {spec!r} from the hub: {err}") from None


def count_parameters(model, trainable_only: bool = False) -> int:
    """Number of parameters (shared / tied tensors counted once)."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def describe_model(spec: str | os.PathLike, model=None) -> dict:
    """What a model spec names, for results tables: ``spec``, ``family`` (suite size, hub name or
    folder name), ``revision``, ``step`` (from ``stepN`` revisions; the suite's final step for a
    bare suite name; else ``None``), ``source`` (``suite``/``hub``/``local``) and, given the
    loaded ``model``, ``n_parameters`` and ``n_non_embedding_parameters`` (without input and
    output embeddings, the count scaling laws use)."""
    text = str(spec).strip()
    path = Path(text).expanduser()
    match = SUITE_NAME_PATTERN.match(text)
    if path.is_dir():
        info = {"source": "local", "family": path.resolve().name, "revision": None, "step": None}
        record = path / "checkpoint.json"
        if record.exists():
            meta = json.loads(record.read_text(encoding="utf-8"))
            info["step"] = meta.get("step")
            info["family"] = meta.get("size", info["family"])
    elif match:
        step = match.group("step")
        if step is None:
            try:
                step = suite_checkpoint_dir(match.group("size")).name[len("step"):]
            except ModelNotAvailableError:
                step = None
        info = {"source": "suite", "family": match.group("size"), "revision": f"step{step}" if step is not None else None,
                "step": int(step) if step is not None else None}
    else:
        name, revision = parse_spec(text)
        step = re.fullmatch(r"step(\d+)", revision or "")
        info = {"source": "hub", "family": name, "revision": revision, "step": int(step.group(1)) if step else None}
    info["spec"] = text
    if model is not None:
        info["n_parameters"] = count_parameters(model)
        embeddings = {id(m.weight) for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None}
        info["n_non_embedding_parameters"] = info["n_parameters"] - sum(
            p.numel() for p in model.parameters() if id(p) in embeddings
        )
    return info


@contextlib.contextmanager
def eval_mode(model):
    """``model.eval()`` inside the block, the model's previous train/eval mode restored after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def step0_spec(spec: str | os.PathLike) -> str | None:
    """The untrained initialisation of a model spec: ``name@step0`` for a suite or hub name (its
    step-0 checkpoint or revision), ``None`` for a local folder (it has no such revision)."""
    return None if Path(str(spec)).is_dir() else f"{str(spec).split('@')[0]}@step0"


def context_length(model) -> int | None:
    """The longest input (positions) ``model`` accepts: its config's ``max_position_embeddings``
    (GPT-NeoX, Llama, ...), ``n_positions`` (GPT-2) or ``max_sequence_length``; ``None`` when the
    config names none (e.g. rotary models that extrapolate)."""
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None
