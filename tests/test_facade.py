"""The package's top level exports the workflow lazily."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import taskspace_utils


@pytest.mark.parametrize("name", taskspace_utils.__all__)
def test_every_exported_name_resolves_to_its_module(name):
    value = getattr(taskspace_utils, name)
    module = importlib.import_module(f"taskspace_utils.{taskspace_utils._EXPORTS[name]}")
    assert value is getattr(module, name)


def test_unknown_name_and_submodules():
    with pytest.raises(AttributeError, match="no attribute 'not_there'"):
        taskspace_utils.not_there  # noqa: B018
    from taskspace_utils import spaces as sp  # submodules still import through the facade

    assert hasattr(sp, "compare_spaces")


def test_importing_the_package_loads_no_heavy_library():
    code = "import sys, taskspace_utils; print(sorted(m for m in ('torch', 'transformers', 'matplotlib') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
