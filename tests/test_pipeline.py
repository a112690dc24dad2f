"""Tests of taskspace_utils.pipeline on tiny synthetic notebooks (written here, independent of the
kit's notebooks): profile parsing and overrides, symbolic suite revisions, resume hashes, the
suite build step and the comparison report.

The synthetic notebooks (:func:`write_synthetic_notebooks`) have the real stems, declare the
contract's parameters, append one line per execution to a ``counter`` file (so a test sees what
was executed), raise on demand (``fail_on``) and sleep on demand (``slow_models``).
"""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import nbformat
import pytest

from taskspace_utils import pipeline
from taskspace_utils.pipeline import Overrides, PlanError, build_plan, load_profiles

REPO = Path(__file__).resolve().parent.parent

_CELLS = {
    "00_pretrain_suite": (
        """sizes = ["tiny-s"]\nsuite_dir = None\nsmoke = False\ndevice = None\ncounter = ''""",
        """
        import json, pathlib
        if counter:
            with open(counter, "a") as f:
                f.write(f"00 {','.join(sizes)}\\n")
        for size in sizes:
            folder = pathlib.Path(suite_dir) / size
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "suite.json").write_text(json.dumps(
                {"size": size, "steps": [0, 1, 4, 16, 64, 100], "final_step": 100, "smoke": smoke}))
        """),
    "01_build_data": (
        """model = "m"\nout_dir = "."\nsmoke = False\nseed = 0\ndevice = None\ntasks = None\n"""
        """fail_on = []\nslow_models = []\nsleep = 0.0\ncounter = ''""",
        """
        import json, os, pathlib, time
        out = pathlib.Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if counter:
            with open(counter, "a") as f:
                f.write(f"01 {model}\\n")
        if model in slow_models:
            time.sleep(sleep)
        if model in fail_on:
            raise ValueError(f"asked to fail on {model}")
        (out / "first.json").write_text(json.dumps(
            {"model": model, "seed": seed, "tasks": tasks, "suite": os.environ.get("TASKSPACE_SUITE_DIR")}))
        """),
    "02_gradient_extraction": (
        """model = "m"\nout_dir = "."\nsmoke = False\nseed = 0\nscale = 1\ncounter = ''""",
        """
        import json, pathlib
        out = pathlib.Path(out_dir)
        if counter:
            with open(counter, "a") as f:
                f.write(f"02 {model}\\n")
        data = json.loads((out / "first.json").read_text())
        (out / "grads").mkdir(exist_ok=True)
        (out / "grads" / f"scale{scale}.json").write_text(json.dumps({**data, "scale": scale}))
        """),
    "05_scale_and_checkpoints": (
        """run_dir = "."\nunits = []\nsmoke = False\ncounter = ''""",
        """
        import json, pathlib
        if counter:
            with open(counter, "a") as f:
                f.write(f"05 {','.join(units)}\\n")
        (pathlib.Path(run_dir) / "compare.json").write_text(json.dumps({"units": units}))
        print("compared", len(units), "units")
        """),
}


def write_synthetic_notebooks(folder: Path, stems=("01_build_data", "02_gradient_extraction",
                                                    "05_scale_and_checkpoints")) -> Path:
    """Write the synthetic notebooks ``stems`` (see the module docstring) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for stem in stems:
        params, body = _CELLS[stem]
        notebook = nbformat.v4.new_notebook()
        notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        notebook.metadata["language_info"] = {"name": "python"}
        cell = nbformat.v4.new_code_cell(params)
        cell.metadata["tags"] = ["parameters"]
        notebook.cells = [nbformat.v4.new_markdown_cell(f"# {stem}"), cell,
                          nbformat.v4.new_code_cell(textwrap.dedent(body).strip())]
        nbformat.write(notebook, str(folder / f"{stem}.ipynb"))
    return folder


def write_profiles(path: Path, counter: Path, extra: str = "") -> Path:
    """A profile file with a `pair` profile (two hub-like models, never loaded) and `suite`;
    ``extra`` (profiles indented by two spaces) is appended under ``profiles``."""
    path.write_text(textwrap.dedent(f"""
        defaults:
          params: {{seed: 0, counter: "{counter}"}}
        profiles:
          pair:
            description: two units
            models: [test/alpha, test/beta]
            notebooks:
              02: {{scale: 1}}
          suite:
            suite: {{dir: run, smoke: true}}
            models:
              - {{model: tiny-s, revisions: [final, mid]}}
        """) + extra)
    return path


def read_counter(counter: Path) -> list[str]:
    return counter.read_text().splitlines() if counter.exists() else []


@pytest.fixture
def workspace(tmp_path):
    """(notebooks folder, profiles dict, counter file, tmp folder)."""
    notebooks = write_synthetic_notebooks(tmp_path / "notebooks")
    counter = tmp_path / "counter.txt"
    profiles = load_profiles(write_profiles(tmp_path / "profiles.yaml", counter))
    return notebooks, profiles, counter, tmp_path


def quiet(lines):
    return lambda line: lines.append(line)


# ----------------------------------------------------------------------------- planning
def test_repo_profiles_plan(tmp_path, monkeypatch):
    """The repo's smoke, quick and paper profiles plan over notebooks with the real stems."""
    monkeypatch.setenv("TASKSPACE_SUITE_DIR", str(tmp_path / "suite"))
    notebooks = write_synthetic_notebooks(tmp_path / "nb")
    profiles = load_profiles(REPO / "profiles.yaml")
    assert {"smoke", "quick", "paper"} <= set(profiles["profiles"])
    quick = build_plan(profiles, "quick", notebooks_dir=notebooks, out_dir=tmp_path / "q")
    assert [u.name for u in quick.units] == ["tiny-s@final", "tiny-m@step0", "tiny-m@early", "tiny-m@mid",
                                             "tiny-m@final", "tiny-l@final"]
    # the synthetic notebooks have no 03/04: the units restricted to [01, 02, 04] keep 01 and 02 (noted)
    assert all([j.name for j in u.jobs] == ["01_build_data", "02_gradient_extraction"] for u in quick.units)
    assert any("'tiny-s': 04 is not in" in note for note in quick.notes)
    assert quick.suite.sizes == ["tiny-s", "tiny-m", "tiny-l"]
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
    assert paper.suite is None and len(paper.units) == 15
    assert paper.units[0].name == "EleutherAI--pythia-70m@step1000"


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


@pytest.mark.parametrize("text, expected", [
    ("02.n_train=64", ("02", "n_train", 64)),
    ("02_gradient_extraction.tasks=[a, b]", ("02_gradient_extraction", "tasks", ["a", "b"])),
    ("all.smoke=true", ("all", "smoke", True)),
    ("01.device=null", ("01", "device", None)),
    ("01.name=tiny-m@step0", ("01", "name", "tiny-m@step0")),
])
def test_parse_set(text, expected):
    assert pipeline.parse_set(text) == expected


@pytest.mark.parametrize("text", ["n_train=64", "02.=1", "02.n-train=1", "02.x"])
def test_parse_set_rejects_bad_syntax(text):
    with pytest.raises(PlanError, match="expected NOTEBOOK.param=value"):
        pipeline.parse_set(text)


def test_load_profiles_rejects_unknown_keys(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("profiles:\n  a:\n    models: [x]\n    modles: [y]\n")
    with pytest.raises(PlanError, match=r"profile 'a' has unknown keys \['modles'\]"):
        load_profiles(path)


def test_resolve_suite_revision():
    record = {"size": "tiny-m", "steps": [0, 1, 4, 16, 64, 256, 500, 1000, 1500], "final_step": 1500}
    resolve = pipeline.resolve_suite_revision
    assert [resolve(r, record) for r in (None, "final", "mid", "early", "step0", "step256")] == [
        1500, 1500, 500, 64, 0, 256]
    with pytest.raises(PlanError, match=r"no checkpoint at step 3; saved steps: \[0, 1, 4"):
        resolve("step3", record)


def test_declared_parameters(tmp_path):
    notebooks = write_synthetic_notebooks(tmp_path)
    assert pipeline.declared_parameters(notebooks / "02_gradient_extraction.ipynb") == [
        "model", "out_dir", "smoke", "seed", "scale", "counter"]


# ------------------------------------------------------------------------------ execution
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
    assert any(line.startswith("[2/2] test--alpha 02_gradient_extraction ok") and "| eta 0s" in line for line in lines)

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
    assert summary.report == run_dir / "report.html" and "compared 2 units" in summary.report.read_text()
    assert read_counter(counter)[0] == "00 tiny-s"

    lines = []
    summary = pipeline.run(plan(), log=quiet(lines))
    assert len(read_counter(counter)) == 4  # 00, two 01s, 05: nothing again
    assert summary.skipped == ["tiny-s@step100", "tiny-s@step64"]
    assert any("up to date" in line for line in lines)
    assert "tiny-s@step64" in pipeline.describe_plan(plan()) and "complete" in pipeline.describe_plan(plan())
