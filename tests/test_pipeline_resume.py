"""Tests of taskspace_utils.pipeline.resume through runs over the synthetic notebooks: what reruns
after a changed parameter or a missing output, and the resume hashes' stability."""

from __future__ import annotations

import json

from pipeline_workspace import workspace  # noqa: F401 (a fixture)
from pipeline_workspace import quiet, read_counter, write_synthetic_notebooks

from taskspace_utils import pipeline
from taskspace_utils.pipeline import Overrides, build_plan
from taskspace_utils.pipeline.resume import code_hash, comparison_hash


def test_run_resumes_and_reruns_what_a_parameter_affects(workspace):
    """First run executes everything; a rerun nothing; a changed 02 parameter reruns only 02 (and
    deletes the file its old config wrote); a changed 01 parameter reruns 01 and 02."""
    notebooks, profiles, counter, tmp = workspace
    run_dir = tmp / "run"

    def plan(*sets, select=("01", "02")):
        return build_plan(profiles, "pair", notebooks_dir=notebooks, out_dir=run_dir,
                          overrides=Overrides(models=["test/alpha"], notebooks=list(select),
                                              sets=[pipeline.parse_set(s) for s in sets]))

    lines = []
    summary = pipeline.run(plan(), log=quiet(lines))
    assert summary.exit_code == 0 and summary.executed == ["test--alpha"]
    unit = run_dir / "test--alpha"
    assert read_counter(counter) == ["01 test/alpha", "02 test/alpha"]
    record = json.loads((unit / "unit.json").read_text())
    assert record["complete"] and record["notebooks"]["01_build_data"]["new_outputs"] == ["first.json"]
    assert (unit / "01_build_data.ipynb").exists() and (unit / "grads" / "scale1.json").exists()
    assert not list(unit.glob(".*running*"))
    assert any(line.startswith("[2/2] test--alpha 02_gradient_extraction ok") and "| eta 00:00" in line for line in lines)

    summary = pipeline.run(plan(), log=quiet(lines))
    assert summary.skipped == ["test--alpha"] and summary.executed == []
    assert len(read_counter(counter)) == 2
    # a selection does not change the hashes: 02 alone is complete too
    assert pipeline.run(plan(select=["02"]), log=quiet(lines)).skipped == ["test--alpha"]
    assert len(read_counter(counter)) == 2
    dry = pipeline.describe_plan(plan("02.scale=2"))
    assert "to run: 02_gradient_extraction" in dry

    pipeline.run(plan("02.scale=2"), log=quiet(lines))
    assert read_counter(counter)[2:] == ["02 test/alpha"]
    assert not (unit / "grads" / "scale1.json").exists() and (unit / "grads" / "scale2.json").exists()

    pipeline.run(plan("02.scale=2", "01.seed=5"), log=quiet(lines))
    assert read_counter(counter)[3:] == ["01 test/alpha", "02 test/alpha"]
    assert json.loads((unit / "first.json").read_text())["seed"] == 5
    assert "complete" in pipeline.describe_plan(plan("02.scale=2", "01.seed=5"))

    (unit / "first.json").unlink()  # a missing output makes its notebook (and the later ones) rerun
    pipeline.run(plan("02.scale=2", "01.seed=5"), log=quiet(lines))
    assert read_counter(counter)[5:] == ["01 test/alpha", "02 test/alpha"]


def test_resume_hashes_are_stable(tmp_path):
    """The hash inputs are those of the run folders made before the pipeline became a package: the
    values below were computed by the former ``taskspace_utils/pipeline.py`` on the same inputs, so
    an older run folder resumes without rerunning. (They change with the synthetic notebooks' code.)"""
    notebooks = write_synthetic_notebooks(tmp_path / "nb")
    profiles = {"defaults": {"params": {"seed": 0}},
                "profiles": {"pair": {"models": ["test/alpha", "test/beta@v1"], "notebooks": {2: {"scale": 3}}}}}
    plan = pipeline.resolve_revisions(build_plan(profiles, "pair", notebooks_dir=notebooks, out_dir=tmp_path / "r"))
    assert {u.name: [j.hash for j in u.jobs] for u in plan.units} == {
        "test--alpha": ["bf38dc1c2a21", "034170f5da3c"], "test--beta@v1": ["546a3bec5b48", "2dd7ddf20fe9"]}
    assert {s: code_hash(p) for s, p in plan.notebooks.items()} == {
        "01_build_data": "42c8cb387cdd", "02_gradient_extraction": "3b854ffe8e73",
        "05_scale_and_checkpoints": "41fcbc6cf25d"}
    comparison = comparison_hash("05_scale_and_checkpoints", plan.notebooks["05_scale_and_checkpoints"],
                                 {"run_dir": "/x", "units": ["a", "b"], "seed": 0}, {"a": "123", "b": "456"})
    assert comparison == "222d2d3c691d"
