"""The conda environment.yml pip section and pyproject.toml list the same requirements."""

import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parent.parent


def _norm(reqs):
    out = {}
    for text in reqs:
        r = Requirement(text)
        out[r.name.lower().replace("_", "-")] = str(r.specifier)
    return out


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = _norm(project["dependencies"] + project["optional-dependencies"]["test"])
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert _norm(pip_section) == wanted
    assert "python=3.11" in env["dependencies"]


def _fenced_after(text, marker):
    block = text[text.index(marker):].split("```")[1]
    return [line for line in block.splitlines()[1:] if line.strip() and not line.startswith("#")]


def test_readme_test_command_is_what_ci_runs():
    """.ci/run must call the test command written in README.md (one line, verbatim)."""
    readme = (REPO / "README.md").read_text()
    (command,) = _fenced_after(readme, "<!-- test-command -->")
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert command.strip() in ci_lines
    (main,) = _fenced_after(readme, "<!-- main-command -->")
    assert "run_all.py" in main and "setup.sh" in main
