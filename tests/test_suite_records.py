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
