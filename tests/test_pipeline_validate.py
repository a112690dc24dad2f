"""Tests of the plan's early checks (taskspace_utils.pipeline.validate, .parameters, their use in
plan.build_plan and run_all.py): every bad input fails before any work, naming the argument, with
the nearest valid names, exit code 2, in well under the 5 s the issue allows."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from pipeline_workspace import workspace  # noqa: F401 (a fixture)
from pipeline_workspace import REPO, write_synthetic_notebooks

from taskspace_utils.pipeline import Overrides, PlanError, build_plan, check_value, declared_parameters, load_profiles
from taskspace_utils.pipeline.parameters import RULES, rule_for
from taskspace_utils.pipeline.validate import did_you_mean, model_kind, source_tasks


@pytest.mark.parametrize("stem, param, value, accepted", [
    ("02_gradient_extraction", "n_train", 64, True), ("02_gradient_extraction", "n_train", -5, False),
    ("02_gradient_extraction", "n_train", 0, False), ("02_gradient_extraction", "n_train", 2.5, False),
    ("02_gradient_extraction", "n_train", True, False), ("02_gradient_extraction", "k", 1, True),
    ("02_gradient_extraction", "k", 0, False), ("02_gradient_extraction", "k", 0.01, True),
    ("02_gradient_extraction", "k", 1.5, False), ("02_gradient_extraction", "k", float("nan"), False),
    ("02_gradient_extraction", "metric", "dot", True), ("02_gradient_extraction", "metric", "cos", False),
    ("01_build_data", "tasks", None, True), ("03_ftgd", "tasks", None, False), ("01_build_data", "tasks", [], False),
    ("01_build_data", "score_pairs_per_task", None, True), ("04_similarity_probing", "seed2", None, True),
    ("04_similarity_probing", "lr", 0.0, False), ("04_similarity_probing", "device", "cuda:1", True),
    ("04_similarity_probing", "device", "gpu", False), ("00_pretrain_suite", "blimp_tasks", 68, False),
    ("05_scale_and_checkpoints", "smoke", "yes", False), ("01_build_data", "unruled", object(), True),
])
def test_parameter_rules(stem, param, value, accepted):
    assert (check_value(stem, param, value) is None) is accepted


def test_every_parameter_of_the_kit_notebooks_has_a_rule():
    """The table covers every parameter the kit's notebooks declare (but the runner's own), and
    each notebook's own default value passes its rule."""
    import ast

    from taskspace_utils.pipeline.notebooks import read_cells

    for path in sorted((REPO / "notebooks").glob("0[0-5]_*.ipynb")):
        missing = [p for p in declared_parameters(path)
                   if rule_for(path.stem, p) is None and p not in ("model", "out_dir", "run_dir", "units")]
        assert not missing, (path.name, missing)
        cell = next(c for c in read_cells(path) if "parameters" in (c.get("metadata") or {}).get("tags", []))
        for node in ast.parse(cell["source"]).body:
            name, value = node.targets[0].id, ast.literal_eval(node.value)
            if name not in ("model", "out_dir", "run_dir", "units"):
                assert check_value(path.stem, name, value) is None, (path.name, name, value)
    assert all(isinstance(r.kind, str) for r in RULES.values())


def test_dtype_rule_matches_resolve_dtype():
    from taskspace_utils.models import resolve_dtype

    for name in RULES["dtype"].choices:
        assert resolve_dtype(name) is not None
    assert check_value("01_build_data", "dtype", "bf16") is None and check_value("01_build_data", "dtype", "int8")


def test_suite_names_are_defined_once_without_torch():
    """The suite sizes, the suite name pattern and suite_root have one definition (layout), which
    the packages and the torch-free plan checks share."""
    import subprocess
    import sys

    from taskspace_utils import layout, models, suite
    from taskspace_utils.pipeline import validate

    assert validate.SUITE_SIZES is suite.SUITE_SIZES is layout.SUITE_SIZES
    assert validate.SUITE_NAME_PATTERN is models.SUITE_NAME_PATTERN is layout.SUITE_NAME_PATTERN
    assert validate.suite_root is models.suite_root is layout.suite_root
    code = "import sys, taskspace_utils.pipeline.validate; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_model_kinds_and_names(tmp_path):
    assert model_kind(str(tmp_path), "--models") == "local"
    assert model_kind("tiny-m", "--models") == "suite" and model_kind("EleutherAI/pythia-70m", "--models") == "hub"
    assert model_kind("gpt2", "--models") == "hub"
    for name, message in (("tiny_m", "did you mean 'tiny-m'"), ("./nowhere", "no such folder"),
                          ("a b", "neither an offline-suite size"), ("org--x/y", "neither"),
                          ("x/y/z", "looks like a local folder")):
        with pytest.raises(PlanError, match=message):
            model_kind(name, "--models")
    assert did_you_mean("n_trian", ["n_train", "n_test", "seed"]).startswith(" (did you mean 'n_train'")
    assert did_you_mean("zzz", ["n_train"]) == ""


def test_source_tasks_of_blimp_and_of_a_user_file(tmp_path):
    blimp = source_tasks("blimp", "--data")
    assert len(blimp) == 67 and "npi_present_1" in blimp
    path = tmp_path / "pairs.csv"
    path.write_text("good,bad,task\nA dog runs.,A dog run.,t1\nThe cat sleeps.,The cat sleep.,t2\n")
    assert source_tasks(str(path), "--data") == ["t1", "t2"]
    bad = tmp_path / "bad.csv"
    bad.write_text("good,bad,task\nA dog runs.,,t1\n")
    with pytest.raises(PlanError, match=r"(?s)--data: .*bad.csv: invalid minimal pairs.*bad.csv: line 2"):
        source_tasks(str(bad), "--data")


@pytest.mark.parametrize("overrides, message", [
    (Overrides(tasks=["not_a_task"]), "--tasks: unknown task 'not_a_task' in BLiMP"),
    (Overrides(tasks=["npi_present1"]), "(did you mean 'npi_present_1'"),
    (Overrides(sets=[("01", "seed", -5)]), "--set 01_build_data.seed: expected an integer >= 0, got -5"),
    (Overrides(sets=[("all", "seed", "x")]), "--set all.seed: expected an integer >= 0"),
    (Overrides(sets=[("01", "sede", 5)]), "has no parameter 'sede' (did you mean 'seed'"),
    (Overrides(sets=[("01", "tasks", ["wh_island", "wh_islnd"])]), "--set 01_build_data.tasks: unknown task 'wh_islnd'"),
    (Overrides(device="gpu"), "--device: expected cpu, cuda, cuda:N, mps or null, got 'gpu'"),
    (Overrides(models=["tiny_s"]), "--models: model 'tiny_s' is not an offline-suite size"),
    (Overrides(data="nowhere.csv"), "--data: "),
    (Overrides(notebooks=["7"]), "not a notebook name"),
])
def test_bad_input_fails_while_planning(workspace, overrides, message):  # noqa: F811
    notebooks, profiles, counter, tmp = workspace
    with pytest.raises(PlanError) as err:
        build_plan(profiles, "pair", notebooks_dir=notebooks, out_dir=tmp / "r", overrides=overrides)
    assert message in str(err.value)


def test_profile_values_are_checked_too(workspace):  # noqa: F811
    notebooks, profiles, counter, tmp = workspace
    profiles["profiles"]["pair"]["notebooks"]["01"] = {"seed": 1.5}
    with pytest.raises(PlanError, match=r"profile 'pair': notebooks.01_build_data.seed: expected an integer >= 0"):
        build_plan(profiles, "pair", notebooks_dir=notebooks, out_dir=tmp / "r")
    with pytest.raises(PlanError, match=r"--profile: unknown profile 'par' \(did you mean 'pair'"):
        build_plan(profiles, "par", notebooks_dir=notebooks, out_dir=tmp / "r")


def test_data_sets_the_source_and_the_tasks_of_every_notebook(workspace, tmp_path):  # noqa: F811
    notebooks, profiles, counter, tmp = workspace
    path = tmp_path / "mine.jsonl"
    path.write_text('{"good": "A dog runs.", "bad": "A dog run.", "task": "agr"}\n'
                    '{"good": "An owl hoots.", "bad": "A owl hoots.", "task": "det"}\n')
    plan = build_plan(profiles, "pair", notebooks_dir=notebooks, out_dir=tmp / "r", overrides=Overrides(data=str(path)))
    first = plan.units[0].jobs[0].parameters
    assert first["tasks"] == ["agr", "det"] and plan.data_source == str(path.resolve())
    assert any("data: " + str(path.resolve()) + ": 2 tasks" in c for c in plan.checks)
    with pytest.raises(PlanError, match=r"--tasks: unknown task 'npi_present_1' in .*mine.jsonl"):
        build_plan(profiles, "pair", notebooks_dir=notebooks, out_dir=tmp / "r",
                   overrides=Overrides(data=str(path), tasks=["npi_present_1"]))
    profiles["profiles"]["mine"] = {"models": ["test/alpha"], "data": str(path)}
    mine = build_plan(profiles, "mine", notebooks_dir=notebooks, out_dir=tmp / "m")
    assert mine.units[0].jobs[0].parameters["tasks"] == ["agr", "det"]


def test_profile_data_key_is_relative_to_the_profile_file(tmp_path):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "pairs.csv").write_text("good,bad\nA dog runs.,A dog run.\n")
    (tmp_path / "p" / "profiles.yaml").write_text("profiles:\n  mine:\n    models: [x/y]\n    data: pairs.csv\n")
    profiles = load_profiles(tmp_path / "p" / "profiles.yaml")
    assert profiles["profiles"]["mine"]["data"] == str((tmp_path / "p" / "pairs.csv").resolve())


def run_cli(tmp_path, *args):
    """run_all.py with the repo's smoke profile over the kit's notebooks, into tmp_path/run."""
    command = [sys.executable, str(REPO / "run_all.py"), "--profile", "smoke", "--out", str(tmp_path / "run"), *args]
    start = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    return result, time.monotonic() - start


@pytest.mark.parametrize("args, message", [
    (["--tasks", "not_a_task"], "--tasks: unknown task 'not_a_task'"),
    (["--set", "02.n_train=-5"], "--set 02_gradient_extraction.n_train: expected an integer >= 1, got -5"),
    (["--models", "tiny-xl"], "did you mean 'tiny-l'"),
])
def test_cli_fails_fast_with_exit_2_and_builds_nothing(tmp_path, args, message):
    """The smoke profile (a suite to build) with a typo: exit 2 in under 5 s, the message on
    stderr, no suite build started and no run folder written; --dry-run fails the same way."""
    for extra in ([], ["--dry-run"]):
        result, seconds = run_cli(tmp_path, *args, *extra)
        assert result.returncode == 2, result.stdout + result.stderr
        assert message in result.stderr and "suite: building" not in result.stdout
        assert seconds < 5, seconds
        assert not (tmp_path / "run").exists()


def test_dry_run_shows_the_checks_and_an_estimate(tmp_path):
    result, seconds = run_cli(tmp_path, "--dry-run")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "checks passed:" in text and "data: BLiMP (data/blimp): 67 tasks" in text
    assert "estimate (rough" in text and "suite build (tiny-s, tiny-m)" in text and "  total: " in text
    assert seconds < 5, seconds
