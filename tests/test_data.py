"""Tests for taskspace_utils.data: BLiMP loading, user pair sets, validation."""

import gzip
import json

import numpy as np
import pandas as pd
import pytest

from taskspace_utils.data import PairsError, load_blimp, load_pairs


@pytest.fixture(scope="module")
def blimp():
    return load_blimp()


def test_blimp_shape_and_metadata(blimp):
    assert len(blimp) == 67_000
    assert blimp["task"].nunique() == 67
    assert blimp["phenomenon"].nunique() == 13
    assert set(blimp["field"]) == {"syntax", "morphology", "semantics", "syntax_semantics"}
    assert (blimp.groupby("task").size() == 1000).all()
    for col in ["task", "phenomenon", "field", "pair_id", "good", "bad", "simple_LM_method",
                "one_prefix_method", "two_prefix_method", "lexically_identical"]:
        assert col in blimp.columns
    # the one paradigm spelled syntax/semantics is normalised
    assert (blimp["field"] != "syntax/semantics").all()
    assert blimp.duplicated(["task", "pair_id"]).sum() == 0


def test_blimp_identical_pairs_are_flagged_not_dropped(blimp):
    ident = blimp[blimp["identical"]]
    got = sorted(zip(ident["task"], ident["pair_id"]))
    assert got == [("passive_1", 324), ("passive_1", 810), ("principle_A_case_2", 105), ("principle_A_case_2", 287),
                   ("principle_A_case_2", 372), ("principle_A_case_2", 816), ("principle_A_case_2", 967)]
    assert (ident["good"] == ident["bad"]).all()


def test_blimp_matches_raw_file_line(blimp):
    from taskspace_utils.data import BLIMP_DIR
    with gzip.open(BLIMP_DIR / "wh_island.jsonl.gz", "rt", encoding="utf-8") as f:
        first = json.loads(f.readline())
    row = blimp[(blimp.task == "wh_island") & (blimp.pair_id == int(first["pairID"]))].iloc[0]
    assert row["good"] == first["sentence_good"] and row["bad"] == first["sentence_bad"]
    assert row["phenomenon"] == first["linguistics_term"] and row["line"] == 1


def test_load_blimp_subset_and_unknown_task():
    sub = load_blimp(tasks=["wh_island", "passive_1"])
    assert set(sub.task) == {"wh_island", "passive_1"} and len(sub) == 2000
    with pytest.raises(KeyError, match="no_such_task"):
        load_blimp(tasks=["no_such_task"])


def test_load_pairs_csv_jsonl_and_folder(tmp_path):
    (tmp_path / "agr.csv").write_text("good,bad,phenomenon\nThe cat is here.,The cat are here.,agreement\n"
                                      "Dogs bark.,Dogs barks.,agreement\n", encoding="utf-8")
    (tmp_path / "npi.jsonl").write_text(json.dumps({"sentence_good": "No one ever left.", "sentence_bad": "Someone ever left.",
                                                    "field": "semantics", "pair_id": 7}) + "\n", encoding="utf-8")
    one = load_pairs(tmp_path / "agr.csv")
    assert list(one["task"]) == ["agr", "agr"] and list(one["pair_id"]) == [0, 1]
    assert list(one["phenomenon"]) == ["agreement"] * 2 and list(one["field"]) == ["agreement"] * 2
    assert list(one["line"]) == [2, 3]
    both = load_pairs(tmp_path)
    assert set(both["task"]) == {"agr", "npi"}
    npi = both[both.task == "npi"].iloc[0]
    assert npi["pair_id"] == 7 and npi["field"] == "semantics" and npi["phenomenon"] == "npi"
    # same columns as BLiMP, so later stages work unchanged
    assert set(load_blimp(tasks=["wh_island"]).columns[:13]) <= set(both.columns)


def test_malformed_json_names_file_and_line(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"good": "A b.", "bad": "B a."}\n{"good": "oops"\n', encoding="utf-8")
    with pytest.raises(PairsError, match=r"x\.jsonl: line 2: malformed JSON"):
        load_pairs(p)


def test_missing_columns(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("good,other\nA b.,c\n", encoding="utf-8")
    with pytest.raises(PairsError, match=r"missing column\(s\) \['bad'\]"):
        load_pairs(p)


@pytest.mark.parametrize("rows,problem", [
    ("A b.,\nC d.,D c.\n", "empty sentence"),
    ("A b.,A b.\nC d.,D c.\n", "identical good and bad"),
])
def test_invalid_rows_strict_and_lenient(tmp_path, rows, problem):
    p = tmp_path / "t.csv"
    p.write_text("good,bad\n" + rows, encoding="utf-8")
    with pytest.raises(PairsError, match=rf"1 pair\(s\) with {problem}.*t\.csv: line 2"):
        load_pairs(p)
    kept = load_pairs(p, strict=False)
    assert list(kept["good"]) == ["C d."]


def test_duplicate_ids_and_empty_task(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("good,bad,pair_id,task\nA b.,B a.,1,x\nC d.,D c.,1,x\nE f.,F e.,2, \n", encoding="utf-8")
    with pytest.raises(PairsError) as err:
        load_pairs(p)
    assert "duplicate pair id within task: t.csv: line 3" in str(err.value)
    assert "empty task name: t.csv: line 4" in str(err.value)
    assert len(load_pairs(p, strict=False)) == 1


def test_missing_file_and_bad_type(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        load_pairs(tmp_path / "nope.csv")
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(PairsError, match="unsupported file type"):
        load_pairs(tmp_path / "a.txt")


@pytest.mark.parametrize("task", ["../../x", ".hidden", "a/b", "with space", "a..b"])
def test_unsafe_task_names_are_rejected_with_file_and_line(tmp_path, task):
    p = tmp_path / "t.jsonl"
    rows = [{"good": "The cat is here.", "bad": "The cat are here.", "task": "fine_task"},
            {"good": "The dogs are here.", "bad": "The dogs is here.", "task": task}]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(PairsError, match=r"not a safe file name.*t\.jsonl: line 2"):
        load_pairs(p)
    assert list(load_pairs(p, strict=False)["task"]) == ["fine_task"]
