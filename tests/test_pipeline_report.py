"""Tests of taskspace_utils.pipeline.report (and the suite build of the runner): the comparison
notebook over the complete units, the report written after it (taskspace_utils.reporting), and its
resume."""

from __future__ import annotations

import json

from pipeline_workspace import workspace  # noqa: F401 (a fixture)
from pipeline_workspace import quiet, read_counter, write_synthetic_notebooks

from taskspace_utils import pipeline
from taskspace_utils.pipeline import Overrides, build_plan


def test_suite_build_symbolic_revisions_and_report(workspace):
    """The 00 notebook builds the missing suite into the run folder (once), symbolic revisions
    resolve from suite.json, the kernels see TASKSPACE_SUITE_DIR, the comparison makes the report."""
    notebooks, profiles, counter, tmp = workspace
    write_synthetic_notebooks(notebooks, stems=("00_pretrain_suite",))
    run_dir = tmp / "run"

    def plan():
        return build_plan(profiles, "suite", notebooks_dir=notebooks, out_dir=run_dir,
                          overrides=Overrides(notebooks=["01", "05"]))

    before = pipeline.describe_plan(plan())
    assert "to build tiny-s by 00_pretrain_suite" in before and "tiny-s@mid" in before
    lines = []
    summary = pipeline.run(plan(), log=quiet(lines))
    assert summary.exit_code == 0, lines
    assert summary.executed == ["tiny-s@step100", "tiny-s@step64"]
    assert (run_dir / "00_pretrain_suite.ipynb").exists() and (run_dir / "suite" / "tiny-s" / "suite.json").exists()
    first = json.loads((run_dir / "tiny-s@step64" / "first.json").read_text())
    assert first["model"] == "tiny-s@step64" and first["suite"] == str((run_dir / "suite").resolve())
    assert json.loads((run_dir / "compare.json").read_text())["units"] == ["tiny-s@step100", "tiny-s@step64"]
    assert summary.report == run_dir / "report.html"
    report = summary.report.read_text()
    # the report is written by taskspace_utils.reporting, not converted from the notebook: no code or
    # notebook output, the units table first with each unit's executed notebooks linked
    assert "compared 2 units" not in report and "<pre" not in report and "<script" not in report
    assert report.index('<table id="units">') < report.index('id="findings"')
    for unit in ("tiny-s@step100", "tiny-s@step64"):
        assert f'<td>{unit}</td>' in report and f'href="{unit.replace("@", "%40")}/01_build_data.ipynb"' in report
        assert (run_dir / unit / "01_build_data.ipynb").exists()
    assert 'href="05_scale_and_checkpoints.ipynb"' in report and (run_dir / "05_scale_and_checkpoints.ipynb").exists()
    assert read_counter(counter)[0] == "00 tiny-s"

    lines = []
    summary = pipeline.run(plan(), log=quiet(lines))
    assert len(read_counter(counter)) == 4  # 00, two 01s, 05: nothing again
    assert summary.skipped == ["tiny-s@step100", "tiny-s@step64"]
    assert any("up to date" in line for line in lines)
    assert "tiny-s@step64" in pipeline.describe_plan(plan()) and "complete" in pipeline.describe_plan(plan())
