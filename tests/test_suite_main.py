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
    # Pythia's design: one budget for every size and seed (named in notebook 00)
    assert suite.config.CPU_STEPS == {"tiny-s": 1000, "tiny-m": 1000, "tiny-l": 1000}
    configs = [suite.default_config(name) for name in suite.SUITE_MODELS]
    assert {(c.max_steps, c.batch_size, c.seq_len, c.checkpoint_every, c.lr, c.warmup_fraction) for c in configs} == {
        (1000, 32, 64, 500, 2e-3, 0.05)}
    assert [c.seed for c in configs] == [1234, 1234, 1234, 1235, 1236]
    assert suite.default_config("tiny-s-seed1").hidden_size == suite.default_config("tiny-s").hidden_size
    assert (suite.corpus.CORPUS_DIR / "manifest.json").exists()


def test_command_line_accepts_a_seed_model(capsys):
    done = subprocess.run([sys.executable, "-m", "taskspace_utils.suite", "--help"], capture_output=True, text=True)
    assert "tiny-s-seed1" in done.stdout


@pytest.mark.parametrize("name", ["tiny-s-seed", "tiny-xl-seed1", "tiny-s@step5", "tiny-s-seed1-seed2"])
def test_unknown_seed_names_are_refused(name):
    with pytest.raises(ValueError, match="unknown suite model"):
        suite.default_config(name)
