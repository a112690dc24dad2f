"""Tests for taskspace_utils.task_data: seeded splits, metadata, alignment, saved task data, stage_pairs."""

import json

import numpy as np
import pandas as pd
import pytest

from taskspace_utils.data import load_blimp
from taskspace_utils.results import ConfigMismatchError
from taskspace_utils.task_data import (
    DataConfig, load_task_data, save_task_data, split_pairs, stage_pairs, task_metadata, token_alignment,
)


@pytest.fixture(scope="module")
def blimp():
    return load_blimp()


def test_split_is_seeded_disjoint_and_stable(blimp):
    sub = blimp[blimp.task.isin(["wh_island", "passive_1", "npi_present_1"])]
    a = split_pairs(sub, n_train=30, n_test=20, seed=3)
    b = split_pairs(sub.sample(frac=1.0, random_state=1), n_train=30, n_test=20, seed=3)  # input order irrelevant
    pd.testing.assert_frame_equal(a[["task", "pair_id", "split"]].reset_index(drop=True),
                                  b[["task", "pair_id", "split"]].reset_index(drop=True))
    c = split_pairs(sub, n_train=30, n_test=20, seed=4)
    assert not a["pair_id"].equals(c["pair_id"])
    for task, g in a.groupby("task"):
        tr, te = set(g[g.split == "train"].pair_id), set(g[g.split == "test"].pair_id)
        assert len(tr) == 30 and len(te) == 20 and not tr & te
    # independent recomputation of the documented rule for one task
    import hashlib
    seed = int.from_bytes(hashlib.sha256(b"3:wh_island").digest()[:8], "little")
    ids = np.sort(sub[sub.task == "wh_island"].pair_id.to_numpy())
    perm = np.random.Generator(np.random.PCG64(seed)).permutation(len(ids))
    assert list(a[(a.task == "wh_island") & (a.split == "train")].pair_id) == list(ids[perm[:30]])
    with pytest.raises(ValueError, match="npi_present_1.*fewer than"):
        split_pairs(sub, 900, 200, 0)


def test_task_metadata(blimp):
    meta = task_metadata(blimp)
    assert meta.shape[0] == 67 and (meta.n_pairs == 1000).all()
    assert meta.loc["wh_island", "phenomenon"] == "island_effects"
    assert meta.loc["wh_island", "field"] == "syntax"


def test_token_alignment_against_hand_cases(tiny_tokenizer):
    pairs = pd.DataFrame({"good": ["The cat is here.", "The cats are here.", "Who left?"],
                          "bad": ["The cat are here.", "The cats are here now.", "Who left?"]})
    al = token_alignment(pairs, tiny_tokenizer)
    for i, row in al.iterrows():
        g = tiny_tokenizer(pairs.good[i], add_special_tokens=False)["input_ids"]
        b = tiny_tokenizer(pairs.bad[i], add_special_tokens=False)["input_ids"]
        assert row.n_good_tokens == len(g) and row.n_bad_tokens == len(b)
        p = row.prefix_len
        assert g[:p] == b[:p]
        assert p == min(len(g), len(b)) or g[p] != b[p]
        s = row.suffix_len
        assert s == 0 or g[len(g) - s:] == b[len(b) - s:]
        assert row.good_diff == len(g) - p - s and row.bad_diff == len(b) - p - s
    assert al.loc[2, "good_diff"] == 0 and al.loc[2, "bad_diff"] == 0 and not al.loc[2, "single_substitution"]
    # "is" vs "are": a single aligned substitution iff each is one token with this tokenizer
    is_one = len(tiny_tokenizer(" is", add_special_tokens=False)["input_ids"]) == 1
    are_one = len(tiny_tokenizer(" are", add_special_tokens=False)["input_ids"]) == 1
    assert al.loc[0, "single_substitution"] == (is_one and are_one)
    assert al.loc[1, "good_diff"] == 0 and al.loc[1, "bad_diff"] > 0  # pure insertion at the end


def test_save_and_load_task_data(tmp_path, blimp):
    sub = split_pairs(blimp[blimp.task == "wh_island"], 5, 5, 0)
    save_task_data(sub, tmp_path, DataConfig(n_train=5, n_test=5))
    back = load_task_data(tmp_path)
    assert list(back.good) == list(sub.good) and list(back.split) == list(sub.split)
    rec = json.loads((tmp_path / "config.json").read_text())
    assert rec["n_train"] == 5 and rec["source"] == "blimp"
    assert not list(tmp_path.glob(".*tmp"))
    with pytest.raises(ConfigMismatchError, match="n_train"):  # another config's data never mixes in
        save_task_data(sub, tmp_path, DataConfig(n_train=6, n_test=5))


def test_stage_pairs_reads_saved_data_else_splits_the_same_way(tmp_path, blimp):
    tasks = ["wh_island", "npi_present_1"]
    fresh, saved = stage_pairs(tmp_path, tasks, n_train=4, n_test=3, seed=2)
    assert not saved
    want = split_pairs(load_blimp(tasks=tasks), 4, 3, seed=2)
    pd.testing.assert_frame_equal(fresh.reset_index(drop=True), want.reset_index(drop=True))
    part = pd.concat([want[want.task == "wh_island"].iloc[:3], want[want.task == "npi_present_1"].iloc[:2]])
    save_task_data(part, tmp_path / "data", DataConfig(n_train=4, n_test=3, seed=2))
    back, saved = stage_pairs(tmp_path, ["wh_island"], n_train=99)  # the saved pairs, not a new split
    assert saved and list(back.good) == list(part.good[part.task == "wh_island"])
    with pytest.raises(KeyError, match="not_a_task"):
        stage_pairs(tmp_path, ["not_a_task"])


def test_stage_pairs_from_a_user_file(tmp_path):
    rows = [{"good": f"the cat sleeps {i} .", "bad": f"the cat sleep {i} .", "task": "t1"} for i in range(6)]
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    pairs, saved = stage_pairs(tmp_path / "unit", data_source=str(path), n_train=2, n_test=2)
    assert not saved and list(pairs.split) == ["train", "train", "test", "test"] and set(pairs.task) == {"t1"}
