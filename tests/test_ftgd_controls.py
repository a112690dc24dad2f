"""Tests of taskspace_utils.ftgd.controls: perplexity against a per-sentence reference, the
controls table recomputed by hand, resuming, and the encoded test pairs taken for evaluation.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from ftgd_reference import (  # noqa: F401  (fixtures)
    OTHER,
    TASK,
    assert_bitwise,
    reference_logprob,
    snapshot,
    split,
    train,
)

from taskspace_utils.encoding import encode
from taskspace_utils.ftgd import (
    CONTROLS,
    FTGDConfig,
    applied,
    compare_controls,
    evaluate_model,
    perplexity,
    tune_task,
)


def test_perplexity_matches_reference(tiny_lm64):
    model, tokenizer = tiny_lm64
    texts = ["The cat sat on the mat.", "Every dog has barked.", "", "Who did she see yesterday at the park?"]
    with torch.no_grad():
        lps = [reference_logprob(model, tokenizer, t) for t in texts if t]
    n_tokens = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
    expected = math.exp(-float(sum(lps)) / n_tokens)
    assert perplexity(model, tokenizer, texts) == pytest.approx(expected, rel=1e-10)
    assert perplexity(model, tokenizer, texts, batch_tokens=8) == pytest.approx(expected, rel=1e-10)
    # truncation: only the first 3 tokens of each text are scored
    with torch.no_grad():
        cut = [tokenizer.decode(tokenizer(t, add_special_tokens=False)["input_ids"][:3]) for t in texts if t]
    assert perplexity(model, tokenizer, texts, max_tokens=3) == pytest.approx(perplexity(model, tokenizer, cut), rel=1e-10)
    with pytest.raises(ValueError, match="no non-empty texts"):
        perplexity(model, tokenizer, [""])


def test_compare_controls_table(tiny_lm, split, tmp_path, monkeypatch):
    from taskspace_utils.ftgd import controls
    from taskspace_utils.results import ConfigMismatchError
    from taskspace_utils.scoring import score_pairs

    model, tokenizer = tiny_lm
    snap = snapshot(model)
    config = FTGDConfig(steps=2, batch_size=4, k=0.05, lr=1e-2)
    val = ["The cat sat on the mat.", "Every dog has barked."]
    table = compare_controls(model, tokenizer, split, [TASK], config, val_text=val, out_dir=tmp_path)
    assert_bitwise(model, snap)
    assert list(table["control"]) == list(CONTROLS)
    for column in ("target_gain", "margin_gain", "other_acc_change", "ppl_change", "n_changed", "phenomenon"):
        assert column in table
    n_params = sum(p.numel() for p in model.parameters())
    by = table.set_index("control")
    assert by.loc["ftgd", "n_changed"] <= round(0.05 * n_params) >= by.loc["random_mask", "n_changed"]
    assert by.loc["all_params", "n_changed"] > round(0.05 * n_params)
    base_ppl = perplexity(model, tokenizer, val)
    assert by["ppl_base"].tolist() == pytest.approx([base_ppl] * 4)
    # the FTGD row, recomputed by hand
    delta = tune_task(model, tokenizer, split[(split.split == "train") & (split.task == TASK)], config)
    test = split[split.split == "test"]
    before = score_pairs(model, tokenizer, test).groupby("task")["correct"].mean()
    with applied(model, delta):
        after = score_pairs(model, tokenizer, test).groupby("task")["correct"].mean()
        ppl = perplexity(model, tokenizer, val)
    assert by.loc["ftgd", "target_gain"] == pytest.approx(after[TASK] - before[TASK])
    assert by.loc["ftgd", "other_acc_change"] == pytest.approx(after[OTHER] - before[OTHER])
    assert by.loc["ftgd", "ppl_change"] == pytest.approx(ppl / base_ppl - 1)
    # resumable: a rerun reads the finished rows instead of tuning again
    monkeypatch.setattr(controls, "tune_task", lambda *a, **k: pytest.fail("re-tuned a finished run"))
    again = compare_controls(model, tokenizer, split, [TASK], config, val_text=val, out_dir=tmp_path)
    pd.testing.assert_frame_equal(again, table)
    assert (tmp_path / "controls.csv").exists()
    with pytest.raises(ConfigMismatchError):
        compare_controls(model, tokenizer, split, [TASK], config.replace(lr=1.0), val_text=val, out_dir=tmp_path)


def test_evaluate_model_takes_encoded_pairs(tiny_lm, split):
    model, tokenizer = tiny_lm
    test = split[split.split == "test"]
    a = evaluate_model(model, tokenizer, test, None)
    b = evaluate_model(model, tokenizer, encode(tokenizer, test), None)
    pd.testing.assert_frame_equal(a["per_task"], b["per_task"])
    assert math.isnan(a["perplexity"]) and math.isnan(b["perplexity"])
