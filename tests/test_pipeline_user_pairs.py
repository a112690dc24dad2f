"""The main job on the user's own minimal pairs: `run_all.py --data pairs.csv` runs notebooks 01 -> 05
on pairs written here (not BLiMP: 2 phenomena x 2 tasks x 10 pairs) with the smoke profile's
settings, the tasks taken from the file; and the run prints live progress on the way."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from taskspace_utils import layout

REPO = Path(__file__).resolve().parent.parent
NOUNS = ["dog", "cat", "bird", "horse", "teacher", "doctor", "child", "farmer", "singer", "pilot"]
ADJECTIVES = ["old", "apple", "orange", "egg", "idea", "hour", "owl", "umbrella", "eagle", "island"]


def write_pairs(path) -> dict[str, str]:
    """Four tasks of two phenomena, ten pairs each; returns {task: phenomenon}."""
    rows = []
    for i, noun in enumerate(NOUNS):
        rows.append(("agr_is", "agreement", f"The {noun} is here.", f"The {noun} are here."))
        rows.append(("agr_was", "agreement", f"The {noun}s were here.", f"The {noun}s was here."))
        word = ADJECTIVES[i]
        rows.append(("det_an", "determiners", f"She saw an {word}.", f"She saw a {word}."))
        rows.append(("det_these", "determiners", f"These {noun}s sleep.", f"This {noun}s sleep."))
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["task", "phenomenon", "good", "bad"])
        writer.writerows(rows)
    return {"agr_is": "agreement", "agr_was": "agreement", "det_an": "determiners", "det_these": "determiners"}


@pytest.mark.timeout(1800)
def test_user_pairs_end_to_end(tmp_path):
    tasks = write_pairs(tmp_path / "my_pairs.csv")
    out = tmp_path / "run"
    command = [sys.executable, str(REPO / "run_all.py"), "--profile", "smoke", "--data", "my_pairs.csv",
               "--models", "tiny-s", "--revisions", "step0,final", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    dry = subprocess.run([*command, "--dry-run"], capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert dry.returncode == 0, dry.stderr
    assert f"data: {tmp_path / 'my_pairs.csv'}: 4 tasks" in dry.stdout
    result = subprocess.run(command, capture_output=True, text=True, timeout=1500, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]

    plan = json.loads((out / "plan.json").read_text())
    assert len(plan["units"]) == 2
    for name in plan["units"]:
        unit = layout.unit_layout(out / name)
        assert json.loads(unit.record.read_text())["complete"]
        pairs = pd.read_parquet(unit.pairs)
        assert dict(pairs.groupby("task")["phenomenon"].first()) == tasks
        assert pairs.groupby("task").size().tolist() == [10, 10, 10, 10]
        assert set(pd.read_csv(unit.eval_blimp)["task"]) == set(tasks)
        assert sorted(p.stem for p in (unit.gradients() / "differentials").glob("*.safetensors")) == sorted(tasks)
        transfer = pd.read_csv(unit.probing / "task_space_transfer.csv", index_col=0)
        assert sorted(transfer.index) == sorted(transfer.columns) == sorted(tasks)
        ftgd = pd.read_csv(unit.ftgd / "controls.csv")
        assert set(ftgd["task"]) == set(tasks)
    run = layout.run_layout(out)
    assert len(pd.read_csv(run.comparison / "units.csv")) == 2
    assert run.report.stat().st_size > 1000
    # live progress: the suite build's own lines, cell lines of each notebook, no kernel transport warning
    assert "suite | pre-train tiny-s: step " in result.stdout
    assert f"{next(iter(plan['units']))} 01_build_data: cell " in result.stdout
    assert "without encryption" not in result.stderr
