"""The synthetic workspace of the pipeline tests (tests/test_pipeline_*.py, tests/test_run_all.py):
tiny notebooks written here, independent of the kit's notebooks, and a profile file over them.

The synthetic notebooks (:func:`write_synthetic_notebooks`) have the real stems, declare the
contract's parameters, append one line per execution to a ``counter`` file (so a test sees what
was executed), raise on demand (``fail_on``) and sleep on demand (``slow_models``).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import nbformat
import pytest

from taskspace_utils.pipeline import load_profiles

REPO = Path(__file__).resolve().parent.parent

_CELLS = {
    "00_pretrain_suite": (
        """sizes = ["tiny-s"]\nsuite_dir = None\nsmoke = False\ndevice = None\ncounter = ''""",
        """
        import json, pathlib
        if counter:
            with open(counter, "a") as f:
                f.write(f"00 {','.join(sizes)}\\n")
        for size in sizes:
            folder = pathlib.Path(suite_dir) / size
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "suite.json").write_text(json.dumps(
                {"size": size, "steps": [0, 1, 4, 16, 64, 100], "final_step": 100, "smoke": smoke}))
        """),
    "01_build_data": (
        """model = "m"\nout_dir = "."\nsmoke = False\nseed = 0\ndevice = None\ntasks = None\n"""
        """fail_on = []\nslow_models = []\nsleep = 0.0\ncounter = ''""",
        """
        import json, os, pathlib, time
        out = pathlib.Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if counter:
            with open(counter, "a") as f:
                f.write(f"01 {model}\\n")
        if model in slow_models:
            time.sleep(sleep)
        if model in fail_on:
            raise ValueError(f"asked to fail on {model}")
        (out / "first.json").write_text(json.dumps(
            {"model": model, "seed": seed, "tasks": tasks, "suite": os.environ.get("TASKSPACE_SUITE_DIR")}))
        """),
    "02_gradient_extraction": (
        """model = "m"\nout_dir = "."\nsmoke = False\nseed = 0\nscale = 1\ncounter = ''""",
        """
        import json, pathlib
        out = pathlib.Path(out_dir)
        if counter:
            with open(counter, "a") as f:
                f.write(f"02 {model}\\n")
        data = json.loads((out / "first.json").read_text())
        (out / "grads").mkdir(exist_ok=True)
        (out / "grads" / f"scale{scale}.json").write_text(json.dumps({**data, "scale": scale}))
        """),
    "05_scale_and_checkpoints": (
        """run_dir = "."\nunits = []\nsmoke = False\ncounter = ''""",
        """
        import json, pathlib
        if counter:
            with open(counter, "a") as f:
                f.write(f"05 {','.join(units)}\\n")
        (pathlib.Path(run_dir) / "compare.json").write_text(json.dumps({"units": units}))
        print("compared", len(units), "units")
        """),
}


def write_synthetic_notebooks(folder: Path, stems=("01_build_data", "02_gradient_extraction",
                                                    "05_scale_and_checkpoints")) -> Path:
    """Write the synthetic notebooks ``stems`` (see the module docstring) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for stem in stems:
        params, body = _CELLS[stem]
        notebook = nbformat.v4.new_notebook()
        notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        notebook.metadata["language_info"] = {"name": "python"}
        cell = nbformat.v4.new_code_cell(params)
        cell.metadata["tags"] = ["parameters"]
        notebook.cells = [nbformat.v4.new_markdown_cell(f"# {stem}"), cell,
                          nbformat.v4.new_code_cell(textwrap.dedent(body).strip())]
        nbformat.write(notebook, str(folder / f"{stem}.ipynb"))
    return folder


def write_profiles(path: Path, counter: Path, extra: str = "") -> Path:
    """A profile file with a `pair` profile (two hub-like models, never loaded) and `suite`;
    ``extra`` (profiles indented by two spaces) is appended under ``profiles``."""
    path.write_text(textwrap.dedent(f"""
        defaults:
          params: {{seed: 0, counter: "{counter}"}}
        profiles:
          pair:
            description: two units
            models: [test/alpha, test/beta]
            notebooks:
              02: {{scale: 1}}
          suite:
            suite: {{dir: run, smoke: true}}
            models:
              - {{model: tiny-s, revisions: [final, mid]}}
        """) + extra)
    return path


def read_counter(counter: Path) -> list[str]:
    return counter.read_text().splitlines() if counter.exists() else []


#: The hub-like models of the synthetic profiles (never loaded: the synthetic notebooks only name them).
SYNTHETIC_HUB_MODELS = ("test/alpha", "test/beta", "test/gamma")


def cache_hub_models(cache: Path, names=SYNTHETIC_HUB_MODELS, revision: str = "main") -> Path:
    """Write ``names`` into a Hugging Face hub cache at ``cache`` as snapshots of ``revision`` with a
    ``config.json`` and an (empty) ``model.safetensors``: what the runner's preflight
    (:func:`taskspace_utils.models.check_available`) looks for, in the hub cache's layout
    (``models--org--name/refs/<revision>`` holds the commit of ``snapshots/<commit>/``)."""
    for i, name in enumerate(names):
        repo = cache / f"models--{name.replace('/', '--')}"
        commit = f"{i:040x}"
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / revision).write_text(commit)
        snapshot = repo / "snapshots" / commit
        snapshot.mkdir(parents=True, exist_ok=True)
        (snapshot / "config.json").write_text("{}")
        (snapshot / "model.safetensors").write_bytes(b"")
    return cache


def use_hub_cache(tmp_path: Path, monkeypatch) -> Path:
    """The synthetic models cached (:func:`cache_hub_models`) in a hub cache of this test, for this
    process and the runner processes it starts; offline, so nothing touches the network."""
    import huggingface_hub.constants

    cache = cache_hub_models(tmp_path / "hf_cache")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """:func:`use_hub_cache` as a fixture."""
    return use_hub_cache(tmp_path, monkeypatch)


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """(notebooks folder, profiles dict, counter file, tmp folder); the synthetic models cached."""
    use_hub_cache(tmp_path, monkeypatch)
    notebooks = write_synthetic_notebooks(tmp_path / "notebooks")
    counter = tmp_path / "counter.txt"
    profiles = load_profiles(write_profiles(tmp_path / "profiles.yaml", counter))
    return notebooks, profiles, counter, tmp_path


def quiet(lines):
    return lambda line: lines.append(line)
