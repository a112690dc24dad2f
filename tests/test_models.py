"""Tests for taskspace_utils.models: spec parsing, local folders, the offline suite layout, and the
no-network error path (no hub is ever contacted)."""

import json
import time

import pytest
import torch

from taskspace_utils import models
from taskspace_utils.models import ModelNotAvailableError, load_model, parse_spec, resolve_dtype


def test_parse_spec():
    assert parse_spec("EleutherAI/pythia-70m@step3000") == ("EleutherAI/pythia-70m", "step3000")
    assert parse_spec("gpt2") == ("gpt2", None)
    for bad in ["", "  ", "name@", "@rev"]:
        with pytest.raises(ValueError):
            parse_spec(bad)


def test_resolve_dtype():
    assert resolve_dtype("bf16") is torch.bfloat16 and resolve_dtype("float64") is torch.float64
    assert resolve_dtype(None) is None and resolve_dtype(torch.float16) is torch.float16
    with pytest.raises(ValueError, match="dtype='int8'"):
        resolve_dtype("int8")


def test_load_local_folder_roundtrip(tiny_model_dir, tiny_lm):
    model, tok = load_model(str(tiny_model_dir), device="cpu")
    ref, _ = tiny_lm
    assert not model.training and tok.pad_token is not None
    ids = torch.tensor([[tok.bos_token_id, 5, 6, 7]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref(ids).logits)
    m64, _ = load_model(tiny_model_dir, device="cpu", dtype="float64")
    assert next(m64.parameters()).dtype == torch.float64


def test_local_folder_without_config(tmp_path):
    with pytest.raises(ModelNotAvailableError, match="no config.json"):
        load_model(str(tmp_path))


def _fake_suite(root, model, tok, size="tiny-x", steps=(0, 10)):
    for step in steps:
        folder = root / size / f"step{step}"
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
        (folder / "checkpoint.json").write_text(json.dumps({"step": step}))
    (root / size / "suite.json").write_text(json.dumps({"size": size, "steps": list(steps), "final_step": steps[-1]}))


def test_suite_specs(tmp_path, monkeypatch, tiny_lm):
    model, tok = tiny_lm
    _fake_suite(tmp_path, model, tok)
    monkeypatch.setenv("TASKSPACE_SUITE_DIR", str(tmp_path))
    assert models.suite_root() == tmp_path
    assert models.suite_checkpoint_dir("tiny-x") == tmp_path / "tiny-x" / "step10"
    assert models.suite_checkpoint_dir("tiny-x", 0) == tmp_path / "tiny-x" / "step0"
    loaded, _ = load_model("tiny-x@step0", device="cpu")
    assert isinstance(loaded, type(model))
    assert list(models.list_suite()) == ["tiny-x"]
    with pytest.raises(ModelNotAvailableError, match=r"no checkpoint at step 5; saved steps: \[0, 10\]"):
        load_model("tiny-x@step5")


def test_missing_suite_says_how_to_build(tmp_path, monkeypatch):
    monkeypatch.setenv("TASKSPACE_SUITE_DIR", str(tmp_path))
    with pytest.raises(ModelNotAvailableError, match=r"not built.*run_all\.py.*taskspace_utils\.suite --size tiny-m"):
        load_model("tiny-m")


def test_uncached_hub_model_fails_fast_without_network(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    start = time.monotonic()
    with pytest.raises(ModelNotAvailableError, match=r"not in the local Hugging Face cache.*no network.*load_model\('tiny-m'\)") as err:
        load_model("EleutherAI/pythia-70m@step3000")
    assert time.monotonic() - start < 10
    assert err.value.__cause__ is None  # no traceback soup: the message stands alone
    assert "revision 'step3000'" in str(err.value)


def test_unreachable_hub_detected(monkeypatch):
    """With offline mode unset, an unreachable endpoint is detected by a short TCP connect."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    import huggingface_hub.constants as c
    monkeypatch.setattr(c, "ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    assert models._hub_reachable(timeout=1.0) is False


def test_nonexistent_local_path():
    with pytest.raises(ModelNotAvailableError, match="no such local folder"):
        load_model("./no/such/folder")


def test_count_parameters(tiny_lm):
    model, _ = tiny_lm
    assert models.count_parameters(model) == sum(p.numel() for p in model.parameters())


def test_describe_model(tmp_path, monkeypatch, tiny_lm):
    model, tok = tiny_lm
    _fake_suite(tmp_path, model, tok)
    monkeypatch.setenv("TASKSPACE_SUITE_DIR", str(tmp_path))
    info = models.describe_model("tiny-x", model)
    assert (info["source"], info["family"], info["step"], info["revision"]) == ("suite", "tiny-x", 10, "step10")
    assert models.describe_model("tiny-x@step0")["step"] == 0
    hub = models.describe_model("EleutherAI/pythia-160m@step3000")
    assert (hub["source"], hub["family"], hub["step"]) == ("hub", "EleutherAI/pythia-160m", 3000)
    assert models.describe_model("EleutherAI/pythia-160m")["step"] is None
    emb = model.get_input_embeddings().weight.numel() + model.get_output_embeddings().weight.numel()
    assert info["n_parameters"] - info["n_non_embedding_parameters"] == emb
    local = models.describe_model(str(tmp_path / "tiny-x" / "step0"))
    assert local["source"] == "local" and local["step"] == 0
