"""Tests for taskspace_utils.suite.records: the suite layout that models.load_model relies on, the
checkpoint table of an unbuilt size, and BLiMP per checkpoint."""

from __future__ import annotations

import pytest
import torch

from taskspace_utils.suite import checkpoint_table, evaluate_checkpoints, is_built
from taskspace_utils.suite.records import resolve_suite_dir, resume_step

from _suite_toy import toy_suite_roots


@pytest.fixture(scope="module")
def toy_suites(tmp_path_factory):
    return toy_suite_roots(tmp_path_factory.getbasetemp() / "toy_suites")


def test_checkpoints_load_through_models_load_model(toy_suites, monkeypatch):
    from taskspace_utils.models import load_model
    from taskspace_utils.scoring import sentence_logprobs

    monkeypatch.setenv("TASKSPACE_SUITE_DIR", str(toy_suites[0]))
    final, tokenizer = load_model("tiny-s", device="cpu")
    early, _ = load_model("tiny-s@step4", device="cpu")
    assert tokenizer.bos_token == "<|endoftext|>" and not final.training
    scores = sentence_logprobs(final, tokenizer, ["The cat sat.", "Alice was tired."])
    assert scores.shape == (2,) and (scores < 0).all()
    assert not torch.equal(final.gpt_neox.embed_in.weight, early.gpt_neox.embed_in.weight)


def test_suite_dir_defaults_to_the_suite_root_and_resume_state_points_at_the_last_checkpoint(toy_suites, monkeypatch):
    monkeypatch.setenv("TASKSPACE_SUITE_DIR", str(toy_suites[0]))
    assert resolve_suite_dir(None) == toy_suites[0] and is_built("tiny-s")
    assert resume_step(toy_suites[0] / "tiny-s") == 12


def test_checkpoint_table_names_an_unbuilt_size(tmp_path):
    with pytest.raises(FileNotFoundError, match="tiny-m"):
        checkpoint_table(("tiny-m",), tmp_path)


def test_evaluate_checkpoints_adds_the_blimp_mean_of_each_checkpoint(toy_suites):
    from taskspace_utils.data import load_blimp

    pairs = load_blimp(tasks=["anaphor_gender_agreement", "wh_island"]).groupby("task").head(3)
    table = checkpoint_table("tiny-s", toy_suites[0]).iloc[[0, -1]]
    scored = evaluate_checkpoints(table, pairs, device="cpu", progress=False)
    assert list(scored["step"]) == [0, 12] and (scored["blimp_pairs_per_task"] == 3).all()
    assert scored["blimp_mean"].between(0, 1).all() and (scored["eval_time_s"] > 0).all()


def test_a_suite_built_with_other_settings_is_detected(toy_suites):
    """A suite built earlier with another budget is not the one the code would build now."""
    from dataclasses import replace

    from taskspace_utils.suite import default_config
    from taskspace_utils.suite.records import settings_differ

    first, _ = toy_suites
    current = default_config("tiny-s", smoke=True)
    assert settings_differ("tiny-s", first, current) == []
    assert settings_differ("tiny-s", first, replace(current, max_steps=current.max_steps + 1)) == ["max_steps"]
    assert settings_differ("tiny-m", first, default_config("tiny-m", smoke=True)) == []  # nothing recorded


def test_sizes_share_the_token_stream_and_seeds_change_it(tmp_path, monkeypatch):
    """Pythia's design, recorded: two smoke sizes with one seed read the same tokens in the same order
    (equal ``data_order_sha256``, recomputed here from the batch order); an extra seed reads another
    order and its initialisation differs; all share steps and tokens; a seed model loads by name."""
    import hashlib

    import torch

    from taskspace_utils import suite
    from taskspace_utils.models import load_model
    from taskspace_utils.suite.data import batch_indices, cut_rows, prepare_data

    names = ["tiny-s", "tiny-m", "tiny-s-seed1"]
    suite.build_suite(names, suite_dir=tmp_path, smoke=True, device="cpu", num_threads=1)
    table = suite.suite_table(names, tmp_path)
    assert suite.token_design_problems(table) == []
    digests = dict(zip(table["size"], table["data_order_sha256"]))
    assert digests["tiny-s"] == digests["tiny-m"] != digests["tiny-s-seed1"]
    assert table["seed"].tolist() == [1234, 1234, 1235] and table["tokens_seen"].nunique() == 1
    config = suite.default_config("tiny-s-seed1", smoke=True)
    _, _, streams = prepare_data(config, tmp_path)
    rows = cut_rows(streams["train"], config.seq_len)
    expected = hashlib.sha256(b"".join(rows[batch_indices(s, config, rows.shape[0])].numpy().tobytes()
                                       for s in range(config.max_steps))).hexdigest()
    assert digests["tiny-s-seed1"] == expected

    monkeypatch.setenv("TASKSPACE_SUITE_DIR", str(tmp_path))
    base, _ = load_model("tiny-s@step0")
    other, _ = load_model("tiny-s-seed1@step0")
    assert not torch.equal(base.gpt_neox.embed_in.weight, other.gpt_neox.embed_in.weight)
    checkpoints = suite.checkpoint_table(names, tmp_path)
    assert set(checkpoints.loc[checkpoints["size"] == "tiny-s-seed1", "base_size"]) == {"tiny-s"}

    # a broken design is named: another step budget, and two seeds with one order
    broken = table.copy()
    broken.loc[2, "final_step"] = 99
    broken.loc[1, "seed"] = 7
    problems = suite.token_design_problems(broken)
    assert any(p.startswith("final_step differs") for p in problems)
    assert any("different seeds but the same token order" in p for p in problems)
