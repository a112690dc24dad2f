"""Tests for taskspace_utils.pretrain: schedule and data order, a few-step pre-training of the smoke
size (loss decreases, checkpoints load, bit-identical across runs and across an interruption), the
suite layout that models.load_model relies on, and the notebook."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from taskspace_utils import pretrain
from taskspace_utils.pretrain import (
    PretrainConfig, build_suite, checkpoint_steps, checkpoint_table, default_config, is_built, learning_rate,
)
from taskspace_utils.results import ConfigMismatchError, read_json

from conftest import run_notebook


# --------------------------------------------------------------------------- schedule and data
def test_checkpoint_steps_are_log_spaced_then_even_and_end_at_the_final_step():
    assert checkpoint_steps(1200, 500) == [0, 1, 4, 16, 64, 256, 500, 1000, 1200]
    assert checkpoint_steps(12, 8) == [0, 1, 4, 8, 12]
    assert checkpoint_steps(1000, 500) == [0, 1, 4, 16, 64, 256, 500, 1000]


def test_learning_rate_warmup_then_cosine_to_the_floor():
    cfg = PretrainConfig(size="tiny-s", hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
                         max_steps=100, lr=1.0, warmup_fraction=0.1, min_lr_ratio=0.1)
    assert learning_rate(0, cfg) == pytest.approx(0.1)   # (0 + 1) / 10
    assert learning_rate(9, cfg) == pytest.approx(1.0)   # end of warm-up
    assert learning_rate(10, cfg) == pytest.approx(1.0)  # cosine starts at the peak
    assert learning_rate(55, cfg) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way: cos(pi / 2) = 0
    assert learning_rate(100, cfg) == pytest.approx(0.1)


def test_batches_visit_every_row_once_per_epoch_in_a_seeded_order():
    cfg = PretrainConfig(size="tiny-s", hidden_size=8, num_hidden_layers=1, num_attention_heads=1, batch_size=4)
    n_rows = 10  # 2.5 steps per epoch, so steps straddle epochs
    rows = torch.cat([pretrain._batch_indices(s, cfg, n_rows) for s in range(5)]).tolist()  # 20 = 2 epochs
    assert sorted(rows[:10]) == list(range(10)) and sorted(rows[10:]) == list(range(10))
    assert rows[:10] != rows[10:]  # a new permutation each epoch
    assert pretrain._batch_indices(3, cfg, n_rows).tolist() == rows[12:16]  # a function of the step only
    other = dataclasses.replace(cfg, seed=cfg.seed + 1)
    assert pretrain._batch_indices(0, other, n_rows).tolist() != rows[:4]


def test_default_configs_grow_with_size_and_respect_the_parameter_cap():
    from transformers import GPTNeoXForCausalLM

    params = []
    for size in pretrain.SUITE_SIZES:
        cfg = default_config(size)
        tok = type("T", (), {"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0})
        with torch.device("meta"):
            params.append(pretrain.count_parameters(GPTNeoXForCausalLM(pretrain._model_config(cfg, tok))))
    assert params == sorted(params) and params[-1] <= 20_000_000
    assert default_config("tiny-l", device="cuda").max_steps > default_config("tiny-l").max_steps
    with pytest.raises(ValueError, match="tiny-xl"):
        default_config("tiny-xl")


# ------------------------------------------------------------------------------- toy training
@pytest.fixture(scope="module")
def toy_suites(tmp_path_factory):
    """The smoke size built twice with the same seed: once through build_suite, once via the CLI."""
    first = tmp_path_factory.mktemp("suite_a")
    second = tmp_path_factory.mktemp("suite_b")
    build_suite(("tiny-s",), suite_dir=first, smoke=True, device="cpu")
    assert pretrain.main(["--size", "tiny-s", "--smoke", "--suite-dir", str(second), "--device", "cpu"]) == 0
    return first, second


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


def test_interrupted_build_resumes_bit_identically(toy_suites, tmp_path, monkeypatch):
    original = pretrain._save_resume_state

    def save_then_stop(size_dir, step, optimizer, wall_time):
        original(size_dir, step, optimizer, wall_time)
        if step == 8:
            raise KeyboardInterrupt("simulated interruption after checkpoint 8")

    monkeypatch.setattr(pretrain, "_save_resume_state", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        build_suite(("tiny-s",), suite_dir=tmp_path, smoke=True, device="cpu")
    assert not is_built("tiny-s", tmp_path) and (tmp_path / "tiny-s" / "step8").exists()
    assert not (tmp_path / "tiny-s" / "step12").exists()
    monkeypatch.setattr(pretrain, "_save_resume_state", original)
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
    assert pretrain.validation_loss(model, rows, batch_size=2) == pytest.approx(total / 5, rel=1e-10)


def test_checkpoint_table_names_an_unbuilt_size(tmp_path):
    with pytest.raises(FileNotFoundError, match="tiny-m"):
        checkpoint_table(("tiny-m",), tmp_path)


# ---------------------------------------------------------------------------------- notebook
def test_notebook_builds_and_evaluates_a_smoke_suite(tmp_path):
    import nbformat

    suite = tmp_path / "suite"
    out = run_notebook("00_pretrain_suite.ipynb", tmp_path / "out", smoke=True, suite_dir=str(suite),
                       sizes=["tiny-s"], blimp_pairs_per_task=4, blimp_tasks=3)
    assert is_built("tiny-s", suite)
    nb = nbformat.read(out, as_version=4)
    text = "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
                   for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "blimp_mean" in text and "validation_loss" in text  # the figure cells ran (papermill raises on errors)
