"""Tests of taskspace_utils.pipeline.profiles: the profile file's schema and ``--set`` parsing."""

from __future__ import annotations

import pytest

from taskspace_utils import pipeline
from taskspace_utils.pipeline import PlanError, load_profiles


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
