"""Tests of taskspace_utils.pipeline.plan on the synthetic notebooks (tests/pipeline_workspace.py): the
repo's profiles, overrides, per-model notebook selections and errors that name the culprit."""

from __future__ import annotations

import re

import pytest
from pipeline_workspace import workspace  # noqa: F401 (a fixture)
from pipeline_workspace import REPO, write_synthetic_notebooks

from taskspace_utils import pipeline
from taskspace_utils.pipeline import Overrides, PlanError, build_plan, load_profiles


def test_repo_profiles_plan(tmp_path, monkeypatch):
    """The repo's smoke, quick and paper profiles plan over notebooks with the real stems."""
    monkeypatch.setenv("TASKSPACE_SUITE_DIR", str(tmp_path / "suite"))
    notebooks = write_synthetic_notebooks(tmp_path / "nb")
    profiles = load_profiles(REPO / "profiles.yaml")
    assert {"smoke", "quick", "paper"} <= set(profiles["profiles"])
    quick = build_plan(profiles, "quick", notebooks_dir=notebooks, out_dir=tmp_path / "q")
    assert [u.name for u in quick.units] == ["tiny-s@final", "tiny-m@step0", "tiny-m@early", "tiny-m@mid",
                                             "tiny-m@final", "tiny-l@final", "tiny-s-seed1@final", "tiny-s-seed2@final"]
    # the synthetic notebooks have no 03/04: the units restricted to [01, 02, 04] keep 01 and 02 (noted),
    # the seed units restricted to [01, 04] keep 01
    assert all([j.name for j in u.jobs] == ["01_build_data", "02_gradient_extraction"] for u in quick.units[:6])
    assert all([j.name for j in u.jobs] == ["01_build_data"] for u in quick.units[6:])
    assert any("'tiny-s': 04 is not in" in note for note in quick.notes)
    assert quick.suite.sizes == ["tiny-s", "tiny-m", "tiny-l", "tiny-s-seed1", "tiny-s-seed2"]
    assert quick.suite.suite_dir == (tmp_path / "suite").resolve()
    assert quick.env["TASKSPACE_SUITE_DIR"] == str((tmp_path / "suite").resolve())
    params = quick.units[0].jobs[0].parameters
    assert params["tasks"] is None and params["seed"] == 0 and "n_train" not in params  # not declared
    assert {"n_train", "n_test"} <= set(quick.dropped["01_build_data"])
    assert any("03_ftgd" in note for note in quick.notes)
    smoke = build_plan(profiles, "smoke", notebooks_dir=notebooks, out_dir=tmp_path / "s")
    assert smoke.suite.smoke and smoke.suite.suite_dir == (tmp_path / "s" / "suite").resolve()
    assert smoke.units[0].jobs[0].parameters["smoke"] is True
    paper = build_plan(profiles, "paper", notebooks_dir=notebooks, out_dir=tmp_path / "p")
    assert paper.suite is None and len(paper.units) == 30
    assert paper.units[0].name == "EleutherAI--pythia-14m@step1000"
    assert paper.units[-1].name == "EleutherAI--pythia-160m-seed2@step143000"


def test_overrides(workspace):
    notebooks, profiles, counter, tmp = workspace
    plan = build_plan(profiles, "pair", notebooks_dir=notebooks, out_dir=tmp / "r", overrides=Overrides(
        models=["test/alpha@v1", "test/gamma"], revisions=None, tasks=["wh_island", "npi_present_1"],
        device="cpu", sets=[pipeline.parse_set("02.scale=3"), pipeline.parse_set("all.seed=7")]))
    assert [u.name for u in plan.units] == ["test--alpha@v1", "test--gamma"]
    first, second = plan.units[0].jobs
    assert first.parameters["tasks"] == ["wh_island", "npi_present_1"] and first.parameters["device"] == "cpu"
    assert second.parameters["scale"] == 3 and second.parameters["seed"] == 7 and first.parameters["seed"] == 7
    assert "tasks" not in second.parameters  # 02 does not declare it
    sized = build_plan(profiles, "pair", notebooks_dir=notebooks, out_dir=tmp / "r",
                       overrides=Overrides(sizes=["beta"], revisions=["r1", "r2"], tasks=["all"], notebooks=["02"]))
    assert [u.name for u in sized.units] == ["test--beta@r1", "test--beta@r2"]
    assert [j.name for j in sized.units[0].jobs] == ["02_gradient_extraction"]
    assert sized.comparison == []  # not selected
    everything = build_plan(profiles, "pair", notebooks_dir=notebooks, overrides=Overrides(tasks=["ALL"]))
    assert everything.units[0].jobs[0].parameters["tasks"] is None


def test_model_entries_select_their_notebooks(workspace):
    notebooks, profiles, counter, tmp = workspace
    profiles["profiles"]["sel"] = {"models": [
        {"model": "test/alpha", "revisions": ["r1", "r2"], "notebooks": [1]},
        {"model": "test/alpha", "revisions": ["r2"], "notebooks": ["02_gradient_extraction"]},  # union for r2
        {"model": "test/beta"},
    ]}
    plan = build_plan(profiles, "sel", notebooks_dir=notebooks, out_dir=tmp / "r")
    jobs = {u.name: [j.name for j in u.jobs] for u in plan.units}
    assert jobs == {"test--alpha@r1": ["01_build_data"],
                    "test--alpha@r2": ["01_build_data", "02_gradient_extraction"],
                    "test--beta": ["01_build_data", "02_gradient_extraction"]}
    narrowed = build_plan(profiles, "sel", notebooks_dir=notebooks, out_dir=tmp / "r", overrides=Overrides(notebooks=["02"]))
    assert {u.name: [j.name for j in u.jobs] for u in narrowed.units}["test--alpha@r1"] == []
    for entry, message in (({"model": "test/alpha", "notebooks": ["05"]}, "not a per-unit notebook"),
                           ({"model": "test/alpha", "notebooks": []}, "must be a non-empty list"),
                           ({"model": "test/alpha", "skip": [1]}, "unknown key(s) ['skip']")):
        profiles["profiles"]["bad"] = {"models": [entry]}
        with pytest.raises(PlanError, match=re.escape(message)):
            build_plan(profiles, "bad", notebooks_dir=notebooks, out_dir=tmp / "r")


@pytest.mark.parametrize("call, message", [
    (dict(name="nope"), "unknown profile 'nope'"),
    (dict(overrides=Overrides(notebooks=["07"])), "--notebooks: unknown notebook '07'"),
    (dict(overrides=Overrides(notebooks=["02_gradients"])), "notebook 02 is '02_gradient_extraction'"),
    (dict(overrides=Overrides(sets=[("03", "x", 1)])), "--set 03.x: unknown notebook"),
    (dict(overrides=Overrides(sets=[("02", "n_train", 1)])), "notebook 02_gradient_extraction has no parameter 'n_train'"),
    (dict(overrides=Overrides(sets=[("01", "model", "x")])), "set by the runner"),
    (dict(overrides=Overrides(revisions=["mid"])), "symbolic revisions (final, mid, early) are for offline-suite"),
    (dict(overrides=Overrides(sizes=["70m"])), "--sizes 70m matches no model"),
    (dict(name="suite", overrides=Overrides(revisions=["latest"])), "expected stepN, final, mid or early"),
    (dict(name="suite", overrides=Overrides(models=["tiny-xl"])), "not an offline-suite size"),
])
def test_plan_errors_name_the_culprit(workspace, call, message):
    notebooks, profiles, counter, tmp = workspace
    with pytest.raises(PlanError) as err:
        build_plan(profiles, call.get("name", "pair"), notebooks_dir=notebooks, out_dir=tmp / "r",
                   overrides=call.get("overrides"))
    assert message in str(err.value)
