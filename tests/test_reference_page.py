"""The reference-results page refuses a folder that is not a finished run, naming the missing file
(the page itself is checked on the smoke run in tests/test_run_all.py)."""

from __future__ import annotations

import json

import pytest

from taskspace_utils.reporting.reference import main, write_reference


def test_a_folder_without_a_plan_or_claims_is_refused_by_name(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="plan.json"):
        write_reference(tmp_path, tmp_path / "docs")
    (tmp_path / "plan.json").write_text(json.dumps({"profile": "x", "units": {}}))
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path), "--out", str(tmp_path / "docs")])
    assert exit_info.value.code == 2 and "claims.csv" in capsys.readouterr().err
    assert not (tmp_path / "docs" / "index.md").exists()
