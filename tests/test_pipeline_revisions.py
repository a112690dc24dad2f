"""Tests of taskspace_utils.pipeline.revisions: symbolic suite revisions."""

from __future__ import annotations

import pytest

from taskspace_utils import pipeline
from taskspace_utils.pipeline import PlanError


def test_resolve_suite_revision():
    record = {"size": "tiny-m", "steps": [0, 1, 4, 16, 64, 256, 500, 1000, 1500], "final_step": 1500}
    resolve = pipeline.resolve_suite_revision
    assert [resolve(r, record) for r in (None, "final", "mid", "early", "step0", "step256")] == [
        1500, 1500, 500, 64, 0, 256]
    with pytest.raises(PlanError, match=r"no checkpoint at step 3; saved steps: \[0, 1, 4"):
        resolve("step3", record)
