"""The nbgrader course assignments in notebooks/assignments (issue 9).

In a temporary course folder, nbgrader (from PyPI) generates the student release of every
assignment; the tests check that no solution or hidden-test text survives in it, that the source
(solution) versions pass every test cell when executed through papermill, and that the release,
executed unchanged, fails its tests without crashing nbgrader's autograder (score 0).

All runs use the tiny fixture model (and tiny sizes), never the offline suite.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from conftest import NOTEBOOKS, build_tiny_model, run_notebook

ASSIGNMENTS = NOTEBOOKS / "assignments"
NAMES = ["a1_scoring", "a2_differential", "a3_ftgd_transfer", "a4_checkpoints"]
STUDENT = "student1"
MARKERS = ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS")

# Tiny sizes per assignment (the model is added by the `parameters` fixture).
SMALL = {
    "a1_scoring": dict(tasks=["anaphor_gender_agreement", "npi_present_1", "wh_island"], n_pairs=3),
    "a2_differential": dict(n_pairs=4),
    "a3_ftgd_transfer": dict(eval_tasks=["anaphor_number_agreement", "regular_plural_subject_verb_agreement_1",
                                         "npi_present_1"], n_train=6, n_test=4, steps=2, batch_size=3),
    "a4_checkpoints": dict(tasks=["anaphor_gender_agreement", "anaphor_number_agreement", "npi_present_1",
                                  "npi_present_2", "wh_island", "adjunct_island"],
                           n_pairs=3, n_permutations=19, n_boot=20),
}


# nbgrader's gradebook runs the `alembic` command: put this interpreter's bin folder on PATH (the
# venv's python may run without the venv activated).
BIN_PATH = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


def nbgrader(course: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=course, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PATH": BIN_PATH})


def regions(source: str, begin: str, end: str) -> list[str]:
    """Stripped, non-empty lines inside ``### begin`` ... ``### end`` regions."""
    lines, inside = [], False
    for line in source.splitlines():
        if f"### {begin}" in line:
            inside = True
        elif f"### {end}" in line:
            inside = False
        elif inside and line.strip():
            lines.append(line.strip())
    return lines


def nbgrader_cells(nb, key: str) -> list:
    return [c for c in nb.cells if c.get("metadata", {}).get("nbgrader", {}).get(key)]


@pytest.fixture(scope="module")
def parameters(tiny_model_dir, tiny_tokenizer, tmp_path_factory):
    """papermill parameters of each assignment: the tiny model (two of them, as checkpoints, for a4)."""
    second = tmp_path_factory.mktemp("tiny_model_b")
    build_tiny_model(tiny_tokenizer, seed=1).save_pretrained(second)
    tiny_tokenizer.save_pretrained(second)
    out = {name: dict(SMALL[name], smoke=True, seed=0) for name in NAMES}
    for name in NAMES[:3]:
        out[name]["model"] = str(tiny_model_dir)
    out["a4_checkpoints"]["models"] = [str(tiny_model_dir), str(second)]
    return out


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    """A course folder with the shipped nbgrader_config.py, the sources and the generated releases."""
    root = tmp_path_factory.mktemp("course")
    shutil.copy(ASSIGNMENTS / "nbgrader_config.py", root / "nbgrader_config.py")
    for name in NAMES:
        (root / "source" / name).mkdir(parents=True)
        shutil.copy(ASSIGNMENTS / f"{name}.ipynb", root / "source" / name / f"{name}.ipynb")
    result = nbgrader(root, "generate_assignment", "*", "--force")  # every assignment, one process
    assert result.returncode == 0, f"generate_assignment failed:\n{result.stdout}\n{result.stderr}"
    return root


@pytest.fixture(scope="module")
def autograded(course, parameters):
    """Every release submitted unchanged by one student (only papermill's parameters injected, so
    that it runs on the tiny model), then `nbgrader autograde` over all assignments."""
    import papermill as pm

    for name in NAMES:
        submitted = course / "submitted" / STUDENT / name
        submitted.mkdir(parents=True)
        pm.execute_notebook(str(course / "release" / name / f"{name}.ipynb"), str(submitted / f"{name}.ipynb"),
                            parameters=parameters[name], prepare_only=True, kernel_name="python3")
    result = nbgrader(course, "autograde", "*", "--force")
    assert result.returncode == 0, f"autograde crashed:\n{result.stdout}\n{result.stderr}"
    return course


def test_sources_are_nbgrader_sources():
    """Layout and metadata of the source notebooks (no kernel needed)."""
    readme = (ASSIGNMENTS / "README.md").read_text()
    found = sorted(p.stem for p in ASSIGNMENTS.glob("*.ipynb"))
    assert found == NAMES
    for name in NAMES:
        assert not re.fullmatch(r"[0-9][0-9]_.*", name), "run_all.py must not pick up assignments"
        assert f"{name}.ipynb" in readme, f"the instructor guide does not mention {name}"
        nb = nbformat.read(ASSIGNMENTS / f"{name}.ipynb", as_version=4)
        nbformat.validate(nb)
        params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(params) == 1 and "seed = " in params[0].source and "smoke = " in params[0].source
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{name}: outputs committed"
        ids = [c.metadata["nbgrader"]["grade_id"] for c in nb.cells if "nbgrader" in c.metadata]
        assert len(ids) == len(set(ids)), f"{name}: duplicated grade_id"
        solutions, graded = nbgrader_cells(nb, "solution"), nbgrader_cells(nb, "grade")
        assert solutions and graded
        for cell in solutions:
            assert "### BEGIN SOLUTION" in cell.source and "### END SOLUTION" in cell.source
        for cell in graded:
            meta = cell.metadata["nbgrader"]
            assert cell.cell_type == "code" and meta["locked"] and meta["points"] > 0
            assert "### BEGIN HIDDEN TESTS" in cell.source, f"{name}/{meta['grade_id']}: no hidden tests"


@pytest.mark.parametrize("name", NAMES)
def test_release_has_no_solution_text(course, name):
    source = nbformat.read(ASSIGNMENTS / f"{name}.ipynb", as_version=4)
    release = nbformat.read(course / "release" / name / f"{name}.ipynb", as_version=4)
    text = "\n".join(c.source for c in release.cells)
    for marker in MARKERS:
        assert marker not in text, f"{name}: {marker!r} survives in the release"
    outside = "\n".join(
        re.sub(r"### BEGIN (SOLUTION|HIDDEN TESTS).*?### END \1", "", c.source, flags=re.S) for c in source.cells
    )
    secret = [line for c in source.cells for line in regions(c.source, "BEGIN SOLUTION", "END SOLUTION")
              + regions(c.source, "BEGIN HIDDEN TESTS", "END HIDDEN TESTS") if line not in outside]
    assert secret, f"{name}: no solution text found in the source"
    leaked = [line for line in secret if line in text]
    assert not leaked, f"{name}: solution / hidden-test text in the release: {leaked[:5]}"
    # the student gets a stub in every solution cell and the visible part of every test cell
    assert len(nbgrader_cells(release, "solution")) == len(nbgrader_cells(source, "solution"))
    assert all("raise NotImplementedError()" in c.source for c in nbgrader_cells(release, "solution"))
    points = {c.metadata["nbgrader"]["grade_id"]: c.metadata["nbgrader"]["points"] for c in nbgrader_cells(release, "grade")}
    assert points == {c.metadata["nbgrader"]["grade_id"]: c.metadata["nbgrader"]["points"] for c in nbgrader_cells(source, "grade")}
    visible = {c.metadata["nbgrader"]["grade_id"]: c.source for c in nbgrader_cells(release, "grade")}
    for cell in nbgrader_cells(source, "grade"):
        public = re.sub(r"### BEGIN HIDDEN TESTS.*?### END HIDDEN TESTS", "", cell.source, flags=re.S)
        public_lines = [line for line in public.splitlines() if line.strip()]
        assert public_lines and public_lines == [line for line in visible[cell.metadata["nbgrader"]["grade_id"]].splitlines()
                                                 if line.strip()], "the visible tests changed in the release"


@pytest.mark.parametrize("name", NAMES)
def test_solutions_pass_every_test(tmp_path, parameters, name):
    """The source version (solutions and hidden tests included) runs clean through papermill."""
    executed = run_notebook(f"assignments/{name}.ipynb", tmp_path, **parameters[name])
    nb = nbformat.read(executed, as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    graded = nbgrader_cells(nb, "grade")
    assert graded and all(c.get("execution_count") for c in graded), "a test cell did not run"


@pytest.mark.parametrize("name", NAMES)
def test_student_release_fails_and_autograder_survives(autograded, name, monkeypatch):
    """The release, executed unchanged, scores 0 under `nbgrader autograde`: every test cell fails,
    the first error raised is a solution stub's NotImplementedError, and grading completes."""
    from nbgrader.api import Gradebook

    monkeypatch.setenv("PATH", BIN_PATH)
    source = nbformat.read(ASSIGNMENTS / f"{name}.ipynb", as_version=4)
    with Gradebook(f"sqlite:///{autograded / 'gradebook.db'}") as gradebook:
        submission = gradebook.find_submission(name, STUDENT)
        assert submission.max_score == sum(c.metadata["nbgrader"]["points"] for c in nbgrader_cells(source, "grade"))
        assert submission.score == 0
    graded_nb = nbformat.read(autograded / "autograded" / STUDENT / name / f"{name}.ipynb", as_version=4)
    tests = nbgrader_cells(graded_nb, "grade")
    assert len(tests) == len(nbgrader_cells(source, "grade"))
    assert all("### BEGIN HIDDEN TESTS" in c.source for c in tests), "autograde did not restore the hidden tests"
    assert all(any(o.get("output_type") == "error" for o in c.outputs) for c in tests), f"{name}: a test cell passed"
    # the given code runs in the release: the first error of the notebook is a solution stub's
    first_error = next(o for c in graded_nb.cells if c.cell_type == "code" for o in c.outputs if o.get("output_type") == "error")
    assert first_error["ename"] == "NotImplementedError", f"{name}: the release fails before a stub: {first_error['ename']}"
