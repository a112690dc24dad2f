"""Tests for the command line of taskspace_utils.suite (``python -m taskspace_utils.suite``)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from taskspace_utils import suite
from taskspace_utils.suite.__main__ import main


def test_the_module_runs_the_command_line():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "taskspace_utils.suite", "--help"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "--size" in done.stdout and "--threads" in done.stdout and "--smoke" in done.stdout


def test_command_line_refuses_an_unknown_size(capsys):
    with pytest.raises(SystemExit):
        main(["--size", "tiny-xl"])
    assert "tiny-xl" in capsys.readouterr().err


def test_named_budgets_and_corpus():
    assert suite.config.CPU_STEPS == {"tiny-s": 800, "tiny-m": 1000, "tiny-l": 1500}  # named in notebook 00
    assert (suite.corpus.CORPUS_DIR / "manifest.json").exists()
