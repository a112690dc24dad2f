"""Tests of taskspace_utils.pipeline.estimate: the work counts, the formula of the module docstring,
and recorded times taking precedence."""

from __future__ import annotations

import json

from pipeline_workspace import workspace  # noqa: F401 (a fixture)

from taskspace_utils.pipeline import Overrides, build_plan, resolve_revisions
from taskspace_utils.pipeline import estimate as est


def test_work_counts():
    assert est.work("01_build_data", {"tasks": ["a", "b"], "score_pairs_per_task": 200}, 67) == 400
    assert est.work("01_build_data", {"tasks": None, "smoke": True}, 67) == 67 * 20
    assert est.work("02_gradient_extraction", {"n_train": 100}, 10) == 3 * 10 * 100
    assert est.work("03_ftgd", {"tasks": ["a"], "steps": 50, "batch_size": 16, "n_test": 100}, 4) == \
        4 * (3 * 50 * 16 + 4 * 100)
    assert est.work("04_similarity_probing", {"tasks": ["a", "b"], "steps": 10, "seed2": None}, 67) == \
        2 * (3 * 2 * 10 * 16 + 4 * 100)  # batch 16: FTGDConfig's default, which the probe uses


def test_estimate_follows_the_formula_and_prefers_records(workspace):  # noqa: F811
    notebooks, profiles, counter, tmp = workspace
    plan = build_plan(profiles, "pair", notebooks_dir=notebooks, out_dir=tmp / "r",
                      overrides=Overrides(models=["org/model-70m"], tasks=["wh_island", "npi_present_1"]))
    resolve_revisions(plan)
    unit = plan.units[0]
    per = est.estimate_unit(unit, plan, 67)
    work = est.work("01_build_data", unit.jobs[0].parameters, 67)
    ref_work = est.work("01_build_data", est.REFERENCE_PARAMS, 3)
    expected = est.REFERENCE["01"][0] + est.RATE_S * (70e6 * work - est.REFERENCE_PARAMETERS * ref_work)
    assert abs(per["01_build_data"][0] - expected) < 1e-9 and per["01_build_data"][2] is False
    assert per["02_gradient_extraction"][1] == est.REFERENCE["02"][1] + int(8 * 0.01 * 70_000_000 * 2)  # top 1 % of D_t: value + index
    unit.out_dir.mkdir(parents=True)
    (unit.out_dir / "unit.json").write_text(json.dumps({"notebooks": {"01_build_data": {"seconds": 12.5}}}))
    assert est.estimate_unit(unit, plan, 67)["01_build_data"][:1] == (12.5,)
    lines = est.describe_estimate(plan, 67)
    assert lines[1].startswith("  org--model-70m ") and "01 00:12*" in lines[1] and lines[-1].startswith("  total: ")
