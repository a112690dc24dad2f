"""Tests for taskspace_utils.suite.training: a few-step pre-training of the smoke size (loss
decreases, everything recorded, step 0 is the seeded initialisation, bit-identical across runs and
across an interruption, finished sizes skipped and other configs refused) and the validation loss."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from taskspace_utils.results import ConfigMismatchError, read_json
from taskspace_utils.suite import build_suite, checkpoint_steps, checkpoint_table, default_config, is_built, records
from taskspace_utils.suite.training import validation_loss

from _suite_toy import toy_suite_roots


@pytest.fixture(scope="module")
def toy_suites(tmp_path_factory):
    """The smoke size built twice with the same seed: once through build_suite, once via the CLI."""
    return toy_suite_roots(tmp_path_factory.getbasetemp() / "toy_suites")


def test_toy_pretraining_lowers_the_loss_and_records_everything(toy_suites):
    root = toy_suites[0]
    record = read_json(root / "tiny-s" / "suite.json")
    cfg = default_config("tiny-s", smoke=True)
    assert record["steps"] == checkpoint_steps(cfg.max_steps, cfg.checkpoint_every) == [0, 1, 4, 8, 12]
    assert record["final_step"] == 12 and is_built("tiny-s", root)
    table = checkpoint_table("tiny-s", root)
    assert list(table["step"]) == record["steps"]
    # step 0 is the untrained initialisation: near-uniform predictions, loss ~ ln(V)
    assert table["validation_loss"].iloc[0] == pytest.approx(math.log(cfg.vocab_size), abs=0.05)
    assert table["validation_loss"].iloc[-1] < table["validation_loss"].iloc[0] - 0.3
    assert list(table["tokens_seen"]) == [s * cfg.batch_size * cfg.seq_len for s in record["steps"]]
    assert table["wall_time_s"].is_monotonic_increasing
    ckpt = read_json(root / "tiny-s" / "step12" / "checkpoint.json")
    for key in ("model_config", "training_config", "corpus_sha256", "tokenizer_sha256", "seed", "step",
                "tokens_seen", "validation_loss", "wall_time_s", "versions", "params"):
        assert key in ckpt
    assert ckpt["training_config"] == dataclasses.asdict(cfg)


def test_recorded_parameters_count_every_tensor_of_the_untied_model(toy_suites):
    from transformers import GPTNeoXForCausalLM

    folder = toy_suites[0] / "tiny-s" / "step12"
    model = GPTNeoXForCausalLM.from_pretrained(folder)
    assert not model.config.tie_word_embeddings
    assert read_json(folder / "checkpoint.json")["params"] == sum(p.numel() for p in model.parameters())


def test_step0_is_the_seeded_initialisation(toy_suites):
    from transformers import AutoConfig, GPTNeoXForCausalLM

    folder = toy_suites[0] / "tiny-s" / "step0"
    torch.manual_seed(default_config("tiny-s", smoke=True).seed)
    fresh = GPTNeoXForCausalLM(AutoConfig.from_pretrained(folder)).state_dict()
    saved = GPTNeoXForCausalLM.from_pretrained(folder).state_dict()
    assert saved.keys() == fresh.keys()
    for name, tensor in saved.items():
        assert torch.equal(tensor, fresh[name]), name


def test_same_seed_gives_bit_identical_checkpoints(toy_suites):
    first, second = toy_suites
    for step in (0, 4, 12):
        a = (first / "tiny-s" / f"step{step}" / "model.safetensors").read_bytes()
        b = (second / "tiny-s" / f"step{step}" / "model.safetensors").read_bytes()
        assert a == b, step
    assert (first / "tiny-s" / "step12" / "tokenizer.json").read_bytes() == \
        (second / "tiny-s" / "step12" / "tokenizer.json").read_bytes()


def test_interrupted_build_resumes_bit_identically(toy_suites, tmp_path, monkeypatch):
    original = records.save_resume_state

    def save_then_stop(size_dir, step, optimizer, wall_time):
        original(size_dir, step, optimizer, wall_time)
        if step == 8:
            raise KeyboardInterrupt("simulated interruption after checkpoint 8")

    monkeypatch.setattr(records, "save_resume_state", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        build_suite(("tiny-s",), suite_dir=tmp_path, smoke=True, device="cpu")
    assert not is_built("tiny-s", tmp_path) and (tmp_path / "tiny-s" / "step8").exists()
    assert not (tmp_path / "tiny-s" / "step12").exists()
    monkeypatch.setattr(records, "save_resume_state", original)
    build_suite(("tiny-s",), suite_dir=tmp_path, smoke=True, device="cpu")
    assert is_built("tiny-s", tmp_path)
    expected = (toy_suites[0] / "tiny-s" / "step12" / "model.safetensors").read_bytes()
    assert (tmp_path / "tiny-s" / "step12" / "model.safetensors").read_bytes() == expected


def test_finished_sizes_are_skipped_and_other_configs_refused(toy_suites):
    root = toy_suites[0]
    before = (root / "tiny-s" / "suite.json").stat().st_mtime_ns
    build_suite(("tiny-s",), suite_dir=root, smoke=True)
    assert (root / "tiny-s" / "suite.json").stat().st_mtime_ns == before
    with pytest.raises(ConfigMismatchError, match="lr"):
        build_suite(("tiny-s",), suite_dir=root, smoke=True, config={"tiny-s": {"lr": 1e-4}})


def test_validation_loss_equals_a_hand_loop(toy_suites):
    from taskspace_utils.models import load_model

    model, _ = load_model(str(toy_suites[0] / "tiny-s" / "step12"), device="cpu", dtype="float64")
    rows = torch.randint(0, 300, (5, 7))
    total = 0.0
    for row in rows:  # mean over rows of the per-row mean (all rows have 6 predictions)
        logp = torch.log_softmax(model(input_ids=row[None]).logits[0, :-1], dim=-1)
        total += -logp[torch.arange(6), row[1:]].mean().item()
    model.train()
    assert validation_loss(model, rows, batch_size=2) == pytest.approx(total / 5, rel=1e-10)
    assert model.training  # the caller's mode is restored
