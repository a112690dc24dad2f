"""End-to-end tests of run_all.py as a command: failure report and exit code, kill and resume,
the Dask executor on a LocalCluster, and the `smoke` profile over the kit's real notebooks.

All but the last use the synthetic notebooks of tests/pipeline_workspace.py (``--notebooks-dir`` and
``--profiles-file`` point the runner at them).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline_workspace import hub_cache  # noqa: F401 (a fixture)
from pipeline_workspace import read_counter, write_profiles, write_synthetic_notebooks

REPO = Path(__file__).resolve().parent.parent
UNIT_NOTEBOOKS = ("00_pretrain_suite", "01_build_data", "02_gradient_extraction", "03_ftgd",
                  "04_similarity_probing")

PROFILES_EXTRA = """
  trio:
    description: three units, the last two slow in 01
    models: [test/alpha, test/beta, test/gamma]
    params: {slow_models: [test/beta, test/gamma], sleep: 4}
  failing:
    models: [test/beta, test/alpha]
    params: {fail_on: [test/beta]}
"""


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run_cli(workspace, *args, timeout=240) -> subprocess.CompletedProcess:
    notebooks, profiles_file, _, tmp = workspace
    command = [sys.executable, str(REPO / "run_all.py"), "--notebooks-dir", str(notebooks),
               "--profiles-file", str(profiles_file), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=tmp, env=_env())


@pytest.fixture
def workspace(tmp_path, hub_cache):
    """(notebooks folder, profile file, counter file, tmp folder); the synthetic models cached."""
    notebooks = write_synthetic_notebooks(tmp_path / "notebooks")
    counter = tmp_path / "counter.txt"
    profiles_file = write_profiles(tmp_path / "profiles.yaml", counter, PROFILES_EXTRA)
    return notebooks, profiles_file, counter, tmp_path


def unit_record(run_dir: Path, unit: str) -> dict:
    return json.loads((run_dir / unit / "unit.json").read_text())


def test_failing_notebook_reports_and_exits_nonzero(workspace):
    """The failing notebook, cell and error are printed, exit code 1, the other unit goes on, the
    failed execution is kept; with --fail-fast the next unit never starts."""
    _, _, counter, tmp = workspace
    out = tmp / "run"
    result = run_cli(workspace, "--profile", "failing", "--out", str(out))
    assert result.returncode == 1, result.stdout + result.stderr
    text = result.stdout + result.stderr
    assert "FAILED test--beta 01_build_data: cell " in text
    assert "ValueError: asked to fail on test/beta" in text
    assert "run_all: failures:" in result.stderr and "test--beta 01_build_data" in result.stderr
    assert (out / "test--beta" / "01_build_data.failed.ipynb").exists()
    assert not (out / "test--beta" / "01_build_data.ipynb").exists()
    beta = unit_record(out, "test--beta")
    assert beta["notebooks"]["01_build_data"]["status"] == "failed" and not beta["complete"]
    assert beta["notebooks"]["01_build_data"]["error"]["ename"] == "ValueError"
    assert unit_record(out, "test--alpha")["complete"]
    assert json.loads((out / "compare.json").read_text())["units"] == ["test--alpha"]  # over complete units
    assert (out / "report.html").exists()

    counter.unlink()
    fast = run_cli(workspace, "--profile", "failing", "--out", str(tmp / "fast"), "--fail-fast")
    assert fast.returncode == 1
    assert read_counter(counter) == ["01 test/beta"]
    assert not (tmp / "fast" / "test--alpha").exists()


def test_bad_arguments_exit_2_with_a_message(workspace):
    result = run_cli(workspace, "--profile", "pair", "--set", "02.scale", "--dry-run")
    assert result.returncode == 2 and "--set '02.scale': expected NOTEBOOK.param=value" in result.stderr
    result = run_cli(workspace, "--profile", "pair", "--notebooks", "09", "--dry-run")
    assert result.returncode == 2 and "unknown notebook '09'" in result.stderr
    # the dry run prints the plan, then what the run would refuse on this machine (not cached, offline)
    result = run_cli(workspace, "--profile", "pair", "--models", "test/alpha,test/zeta", "--dry-run")
    assert result.returncode == 2 and "test--zeta" in result.stdout, result.stdout + result.stderr
    assert "error: unit test--zeta: model 'test/zeta' is not in the local Hugging Face cache" in result.stderr


def test_kill_mid_run_then_resume_recomputes_nothing_finished(workspace):
    """SIGKILL the runner (and its kernels) after the first unit finished, rerun: the finished
    unit is not executed again and the run completes."""
    notebooks, profiles_file, counter, tmp = workspace
    out = tmp / "run"
    command = [sys.executable, str(REPO / "run_all.py"), "--notebooks-dir", str(notebooks), "--profiles-file",
               str(profiles_file), "--profile", "trio", "--out", str(out), "--notebooks", "01,02"]
    process = subprocess.Popen(command, cwd=tmp, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True)
    record = out / "test--alpha" / "unit.json"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            if record.exists() and json.loads(record.read_text()).get("complete"):
                break
            assert process.poll() is None, process.stdout.read().decode()
            time.sleep(0.2)
        else:
            pytest.fail("the first unit did not finish in 120 s")
        time.sleep(1.0)  # the second unit is now inside its slow 01
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    first = out / "test--alpha" / "02_gradient_extraction.ipynb"
    mtime = first.stat().st_mtime_ns
    assert "02 test/alpha" in read_counter(counter) and not unit_record(out, "test--beta")["complete"]

    result = subprocess.run(command, cwd=tmp, env=_env(), capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[skip] test--alpha complete" in result.stdout
    lines = read_counter(counter)
    assert lines.count("01 test/alpha") == 1 and lines.count("02 test/alpha") == 1
    assert first.stat().st_mtime_ns == mtime
    for unit in ("test--alpha", "test--beta", "test--gamma"):
        assert unit_record(out, unit)["complete"]
    assert "eta" in result.stdout and "elapsed" in result.stdout


def test_dask_executor_runs_units_on_a_local_cluster(workspace):
    """Two units through --executor dask --scheduler on a LocalCluster of two worker processes."""
    distributed = pytest.importorskip("distributed")
    _, _, counter, tmp = workspace
    out = tmp / "run"
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        worker_pids = set(client.run(os.getpid).values())
        result = run_cli(workspace, "--profile", "pair", "--out", str(out), "--executor", "dask",
                         "--scheduler", cluster.scheduler_address, "--notebooks", "01,02")
    assert result.returncode == 0, result.stdout + result.stderr
    ran_on = set()
    for unit in ("test--alpha", "test--beta"):
        record = unit_record(out, unit)
        assert record["complete"]
        ran_on |= {int(e["worker"].rpartition(":")[2]) for e in record["notebooks"].values()}
        assert json.loads((out / unit / "grads" / "scale1.json").read_text())["model"] == unit.replace("--", "/")
    assert ran_on and ran_on <= worker_pids
    assert sorted(read_counter(counter)) == ["01 test/alpha", "01 test/beta", "02 test/alpha", "02 test/beta"]
    assert "[4/4]" in result.stdout


@pytest.mark.timeout(1800)
@pytest.mark.skipif(not all((REPO / "notebooks" / f"{s}.ipynb").exists() for s in UNIT_NOTEBOOKS),
                    reason="needs notebooks/00_pretrain_suite .. 04_similarity_probing, not all written yet")
def test_smoke_profile_end_to_end(tmp_path):
    """`python run_all.py --profile smoke` over the kit's notebooks: every unit complete, exit 0;
    the comparison report when 05_scale_and_checkpoints exists."""
    out = tmp_path / "smoke"
    command = [sys.executable, str(REPO / "run_all.py"), "--profile", "smoke", "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1500, cwd=tmp_path, env=_env())
    stderr = "\n".join(line for line in result.stderr.splitlines() if "[IPKernelApp]" not in line)
    assert result.returncode == 0, result.stdout[-4000:] + stderr[-4000:]
    plan = json.loads((out / "plan.json").read_text())
    assert len(plan["units"]) == 3
    for unit in plan["units"]:
        record = unit_record(out, unit)
        assert record["complete"], unit
        for stem in UNIT_NOTEBOOKS[1:]:
            assert (out / unit / f"{stem}.ipynb").exists()
    if (REPO / "notebooks" / "05_scale_and_checkpoints.ipynb").exists():
        assert (out / "report.html").stat().st_size > 1000
        _check_reference_page(out, tmp_path / "docs")
    again = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=_env())
    assert again.returncode == 0 and again.stdout.count("[skip]") == 3


def _check_reference_page(run, docs):
    """The reference page of a finished run: the command and code version the runner recorded in
    plan.json, the suite table (Pythia's design holds for the smoke sizes) and every claims row."""
    import pandas as pd

    from taskspace_utils.reporting.reference import main as reference_main

    plan = json.loads((run / "plan.json").read_text())
    assert plan["command"].startswith("run_all.py --profile smoke --out ")
    assert reference_main([str(run), "--out", str(docs)]) == 0
    page = (docs / "index.md").read_text()
    assert plan["command"] in page and "## The suite" in page and "**holds**" in page
    # the time line: the sum of the notebook seconds in every unit.json and run.json, computed here again
    from taskspace_utils.reporting.reference import run_seconds

    seconds = [e["seconds"] for u in plan["units"] for e in json.loads((run / u / "unit.json").read_text())["notebooks"].values()]
    comparison = sum(e["seconds"] for e in json.loads((run / "run.json").read_text())["comparison"].values())
    t = run_seconds(run)
    assert t["notebooks"] == len(seconds) > 0 and t["units"] == pytest.approx(sum(seconds))
    assert comparison > 0 and t["comparison"] == pytest.approx(comparison)
    assert t["total"] == pytest.approx(sum(seconds) + comparison)
    assert f"in {len(seconds)} unit notebooks" in page
    claims = pd.read_csv(run / "comparison" / "claims.csv")
    # verdicts counted per claim, reference rows left out, against a plain count of the CSV
    from taskspace_utils.reporting.reference import verdict_counts

    counts = verdict_counts(claims)
    for (claim, verdict), n in claims[claims["verdict"] != "reference"].value_counts(["claim", "verdict"]).items():
        assert counts.loc[claim, verdict] == n
    assert not re.search(r"\|\s*nan\s*\|", page) and str(run) not in page.split("## Units")[1]  # blanks, no paths
    assert len(claims) and all(contrast in page for contrast in claims["contrast"])
    assert all((docs / "figures" / f.name).exists() for f in (run / "comparison" / "figures").glob("*.png"))
