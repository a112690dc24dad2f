"""Tests of taskspace_utils.pipeline.runner: the progress lines (the runs themselves are tested in
tests/test_pipeline_resume.py, tests/test_pipeline_report.py and tests/test_run_all.py)."""

from __future__ import annotations

import re

import pytest

from taskspace_utils import pipeline
from taskspace_utils.pipeline.runner import Progress


def test_progress_lines_count_time_and_estimate():
    """One line per notebook: [k/N], unit, notebook, status, its time, elapsed, eta; a failure drops
    the rest of its unit from N; the last line's eta is 00:00."""
    lines = []
    progress = Progress([("a", "01"), ("a", "02"), ("b", "01"), ("b", "02")], lines.append)
    progress.finished("a", "01", "ok", 2.4)
    assert re.fullmatch(r"\[1/4\] a 01 ok 00:02 \| elapsed \d\d:\d\d \| eta \d\d:\d\d", lines[0]), lines[0]
    progress.finished("b", "01", "failed", 61)
    assert lines[1].startswith("[2/3] b 01 failed 01:01 | elapsed ")
    progress.finished("a", "02", "ok", 3700)
    assert lines[2].startswith("[3/3] a 02 ok 1:01:40 | elapsed ") and lines[2].endswith("| eta 00:00")
    progress.close()


def test_run_rejects_an_unknown_executor(tmp_path):
    plan = pipeline.Plan(profile="p", description="", run_dir=tmp_path, notebooks_dir=tmp_path, notebooks={},
                         suite=None, units=[], comparison=[], unit_notebooks=[])
    with pytest.raises(pipeline.PlanError, match="--executor 'slurm': expected local or dask"):
        pipeline.run(plan, executor="slurm")


def test_a_suite_built_with_other_settings_is_refused_before_any_work(tmp_path_factory):
    """Before: only suite.json was checked, so a suite of an earlier step budget counted as built."""
    import json
    import shutil

    from _suite_toy import toy_suite_roots

    from taskspace_utils.pipeline.plan import SuiteBuild
    from taskspace_utils.pipeline.profiles import PlanError
    from taskspace_utils.pipeline.runner import check_suite_settings

    built, _ = toy_suite_roots(tmp_path_factory.getbasetemp() / "toy_suites")
    check_suite_settings(SuiteBuild(sizes=["tiny-s"], suite_dir=built, smoke=True, device="cpu", job=None))
    other = tmp_path_factory.mktemp("other_budget")
    shutil.copytree(built / "tiny-s", other / "tiny-s")
    config = json.loads((other / "tiny-s" / "config.json").read_text())
    (other / "tiny-s" / "config.json").write_text(json.dumps({**config, "max_steps": config["max_steps"] - 4}))
    with pytest.raises(PlanError, match=r"tiny-s .* other settings .*differs in: max_steps.*delete"):
        check_suite_settings(SuiteBuild(sizes=["tiny-s"], suite_dir=other, smoke=True, device="cpu", job=None))
