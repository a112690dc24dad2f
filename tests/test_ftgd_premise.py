"""FTGD's premise at the probing settings: the validation-perplexity columns of the probe rows
against an independent computation, ``n_val_texts = 0``, resuming with the base perplexity kept,
and :func:`taskspace_utils.comparison.premise_table` on a synthetic run folder with known numbers.

The reference perplexity is computed directly with the model, one text at a time:
``exp(sum_s sum_i -log p(t_i | BOS, t_<i) / sum_s n_s)``, tokens from the tokenizer without special
tokens (the kit's convention), not through :mod:`taskspace_utils.ftgd.validation`.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from taskspace_utils.comparison import plot_premise, premise_table, probe_premise
from taskspace_utils.data import load_blimp, split_pairs
from taskspace_utils.ftgd import FTGDConfig, applied, perplexity, prepare_texts, validation_texts
from taskspace_utils.ftgd import validation as validation_module
from taskspace_utils.probing import ProbingConfig, load_transfer, load_transfer_deltas, probe, probe_transfer
from taskspace_utils.results import ConfigMismatchError

from probe_helpers import kill_after_first_tune  # noqa: E402 (tests/ helper)

TASKS = ["anaphor_gender_agreement", "anaphor_number_agreement", "npi_present_1"]
FAST = FTGDConfig(steps=2, batch_size=4, lr=1e-2, k=0.05)
VAL = ["The cat sat on the mat.", "Some dogs were barking at the postman.", "She has never seen it.",
       "Every child who came to the party ate cake.", "Why did the teacher leave early?", "They are here."]


@pytest.fixture(scope="module")
def pairs():
    return split_pairs(load_blimp(tasks=TASKS), n_train=6, n_test=5, seed=0)


def reference_perplexity(model, tokenizer, texts) -> float:
    """exp of the mean token negative log-likelihood, each text scored alone after BOS."""
    nll, count = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            inputs = torch.tensor([[tokenizer.bos_token_id, *ids]])
            logprobs = torch.log_softmax(model(input_ids=inputs).logits[0, :-1].double(), dim=-1)
            nll -= float(logprobs[torch.arange(len(ids)), torch.tensor(ids)].sum())
            count += len(ids)
    return math.exp(nll / count)


def test_probe_rows_carry_the_validation_perplexity(tiny_lm64, pairs, tmp_path):
    model, tok = tiny_lm64
    config = ProbingConfig(tasks=TASKS, n_train=6, n_test=5, ftgd=FAST, n_val_texts=5)
    result = probe_transfer(model, tok, pairs, tmp_path, config, progress=False, val_texts=VAL)
    texts = VAL[:5]  # only the first n_val_texts are used
    base = reference_perplexity(model, tok, texts)
    deltas = load_transfer_deltas(tmp_path, TASKS)
    for task in TASKS:
        row = json.loads((tmp_path / "rows" / f"{task}.json").read_text())
        with applied(model, deltas[task]):
            tuned = reference_perplexity(model, tok, texts)
        assert row["val_ppl_base"] == pytest.approx(base, rel=1e-10)
        assert row["val_ppl_tuned"] == pytest.approx(tuned, rel=1e-10)
        assert row["val_ppl_change"] == pytest.approx(tuned / base - 1, rel=1e-8, abs=1e-12)
        assert row["val_ppl_tuned"] != row["val_ppl_base"]  # the tuned model differs
        assert row["ppl_seconds"] >= 0
    stored = json.loads((tmp_path / "val_perplexity.json").read_text())
    assert stored["val_ppl_base"] == pytest.approx(base, rel=1e-10) and stored["n_val_texts"] == 5
    table = pd.read_csv(tmp_path / "transfer_timings.csv", index_col=0)  # the per-task table
    for column in ("val_ppl_base", "val_ppl_tuned", "val_ppl_change", "ppl_seconds"):
        assert table[column].notna().all()
    np.testing.assert_allclose(table["val_ppl_change"], result.timings["val_ppl_change"], rtol=1e-12)
    premise = result.premise
    assert list(premise.index) == TASKS
    np.testing.assert_allclose(premise["margin"], np.diag(result.margin.loc[TASKS, TASKS]))
    pd.testing.assert_frame_equal(probe_premise(tmp_path), premise, check_exact=False, rtol=1e-12)
    pd.testing.assert_frame_equal(load_transfer(tmp_path).premise, premise, check_exact=False, rtol=1e-12)
    assert result.config["val_texts_sha"]  # the texts are part of the run's identity
    with pytest.raises(ConfigMismatchError, match="val_texts_sha"):
        probe_transfer(model, tok, pairs, tmp_path, config, progress=False, val_texts=VAL[1:])


def test_prepared_texts_match_perplexity_and_reference(tiny_lm64):
    model, tok = tiny_lm64
    prepared = prepare_texts(tok, VAL + [""], max_tokens=127, batch_tokens=16)
    assert len(prepared) == 7 and len(prepared.lengths) == 6  # the empty text is skipped
    reference = reference_perplexity(model, tok, VAL)
    assert prepared.perplexity(model) == pytest.approx(reference, rel=1e-10)
    assert perplexity(model, tok, prepared) == pytest.approx(reference, rel=1e-10)
    assert perplexity(model, tok, VAL) == pytest.approx(reference, rel=1e-10)
    with pytest.raises(ValueError, match="scores at most"):
        prepare_texts(tok, ["word " * 200]).perplexity(model)  # longer than the model's 127 positions


def test_zero_val_texts_gives_nan_columns(tiny_lm, pairs, tmp_path):
    model, tok = tiny_lm
    config = ProbingConfig(tasks=TASKS[:2], n_train=3, n_test=2, ftgd=FAST, n_val_texts=0)
    result = probe_transfer(model, tok, pairs, tmp_path, config, progress=False)
    assert not (tmp_path / "val_perplexity.json").exists() and "val_texts_sha" not in result.config
    for column in ("val_ppl_base", "val_ppl_tuned", "val_ppl_change", "ppl_seconds"):
        assert result.timings[column].isna().all() and result.timings[column].dtype == float
    row = json.loads((tmp_path / "rows" / f"{TASKS[0]}.json").read_text())
    assert row["val_ppl_change"] is None
    assert pd.read_csv(tmp_path / "transfer_timings.csv", index_col=0)["val_ppl_change"].isna().all()
    fig = plot_premise(result.premise)  # says it was not measured, does not fail
    assert "not measured" in fig.axes[0].get_title()


def test_resume_keeps_the_base_perplexity(tiny_lm, pairs, tmp_path, monkeypatch):
    model, tok = tiny_lm
    config = ProbingConfig(tasks=TASKS, n_train=6, n_test=5, ftgd=FAST, n_val_texts=4)
    full = probe_transfer(model, tok, pairs, tmp_path / "full", config, progress=False, val_texts=VAL)
    real_tune = probe.tune_task
    kill_after_first_tune(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        probe_transfer(model, tok, pairs, tmp_path / "resumed", config, progress=False, val_texts=VAL)
    stored = json.loads((tmp_path / "resumed" / "val_perplexity.json").read_text())["val_ppl_base"]
    monkeypatch.setattr(probe, "tune_task", real_tune)
    real_ppl, calls = validation_module.PreparedTexts.perplexity, []

    def counting(self, *args, **kwargs):
        calls.append(1)
        return real_ppl(self, *args, **kwargs)

    monkeypatch.setattr(validation_module.PreparedTexts, "perplexity", counting)
    resumed = probe_transfer(model, tok, pairs, tmp_path / "resumed", config, progress=False, val_texts=VAL)
    assert len(calls) == 2, "the base perplexity is read back, only the two remaining tuned models are scored"
    assert resumed.timings["resumed"].tolist() == [True, False, False]
    assert (resumed.timings["val_ppl_base"] == stored).all()
    for column in ("val_ppl_base", "val_ppl_tuned", "val_ppl_change"):
        np.testing.assert_allclose(resumed.timings[column], full.timings[column], rtol=1e-12)


def test_config_and_validation_texts_reject_bad_counts():
    for bad in (-1, 2.5, True, "100"):
        with pytest.raises(ValueError, match="n_val_texts"):
            ProbingConfig(n_val_texts=bad)
    assert validation_texts(0) == []
    texts = validation_texts(3)
    assert len(texts) == 3 and all(isinstance(t, str) and t for t in texts)
    with pytest.raises(ValueError, match="n_val_texts"):
        validation_texts(10**7)
    with pytest.raises(ValueError, match="n_val_texts"):
        validation_texts(-2)


def _write_probe(folder, lr, rows, n_val_texts=100):
    """A probe folder with config.json and rows/<task>.json of known self-transfer and ppl change."""
    tasks = list(rows)
    (folder / "rows").mkdir(parents=True)
    config = {"probing": {"tasks": tasks, "eval_tasks": tasks, "n_val_texts": n_val_texts,
                          "ftgd": {"lr": lr, "steps": 20, "batch_size": 20}}}
    (folder / "config.json").write_text(json.dumps(config))
    for task, (acc, margin, change) in rows.items():
        row = {"task": task, "accuracy": {t: (acc if t == task else 0.01) for t in tasks},
               "margin": {t: (margin if t == task else 0.5) for t in tasks},
               "val_ppl_base": None if change is None else 100.0,
               "val_ppl_tuned": None if change is None else 100.0 * (1 + change),
               "val_ppl_change": change}
        (folder / "rows" / f"{task}.json").write_text(json.dumps(row))


def test_premise_table_on_a_synthetic_run(tmp_path):
    run = tmp_path / "run"
    _write_probe(run / "tiny-s" / "probing", 3e-4, {"a": (0.2, 4.0, 0.02), "b": (0.1, 2.0, 0.08), "c": (0.3, 6.0, 0.30)})
    _write_probe(run / "tiny-m" / "probing", 1e-3, {"a": (0.4, 8.0, 0.50), "b": (0.2, 9.0, 0.12)})
    _write_probe(run / "tiny-l" / "probing", 1e-3, {"a": (0.1, 1.0, None)}, n_val_texts=0)
    (run / "tiny-x" / "probing" / "rows").mkdir(parents=True)  # a probe without a finished row
    (run / "tiny-x" / "probing" / "config.json").write_text(json.dumps(
        {"probing": {"tasks": ["a"], "eval_tasks": ["a"], "ftgd": {"lr": 1e-3, "steps": 1, "batch_size": 1}}}))
    table = premise_table(run).set_index("unit")
    assert sorted(table.index) == ["tiny-l", "tiny-m", "tiny-s"]
    s, m, l = table.loc["tiny-s"], table.loc["tiny-m"], table.loc["tiny-l"]
    assert s.n_tasks == 3 and s.lr == 3e-4 and s.steps == 20 and s.n_val_texts == 100
    assert s.self_accuracy_mean == pytest.approx(0.2) and s.self_margin_mean == pytest.approx(4.0)
    assert s.val_ppl_change_median == pytest.approx(0.08) and s.val_ppl_change_max == pytest.approx(0.30)
    assert s.val_ppl_base == 100.0 and bool(s.premise_kept) and s.verdict == "kept"
    assert m.val_ppl_change_median == pytest.approx(0.31) and not bool(m.premise_kept) and m.verdict == "damaged"
    assert pd.isna(l.premise_kept) and l.verdict == "not measured" and np.isnan(l.val_ppl_change_median)
    assert str(table["premise_kept"].dtype) == "boolean"
    # the same from a {unit: folder} mapping, a list of folders, with another threshold
    again = premise_table({"small": run / "tiny-s"}, max_median_change=0.05)
    assert again["unit"].tolist() == ["small"] and again["verdict"].tolist() == ["damaged"]
    assert premise_table([run / "tiny-m"])["unit"].tolist() == ["tiny-m"]
    assert premise_table(run / "tiny-s")["n_tasks"].tolist() == [3]  # one unit folder
    assert premise_table(tmp_path / "run" / "tiny-x").empty
    with pytest.raises(ValueError, match="max_median_change"):
        premise_table(run, max_median_change=-1)
    fig = plot_premise(run / "tiny-s" / "probing", meta=pd.DataFrame({"phenomenon": ["p", "p", "q"]}, index=["a", "b", "c"]))
    assert "premise kept" in fig.axes[0].get_title()


def test_the_report_shows_the_premise_table(tmp_path):
    """report.html's premise section: the rule, the count of kept units and each unit's verdict."""
    from taskspace_utils.reporting.build import _premise_section

    run = tmp_path / "run"
    _write_probe(run / "tiny-s" / "probing", 1e-4, {"a": (0.2, 4.0, 0.02), "b": (0.1, 2.0, 0.04)})
    _write_probe(run / "tiny-m" / "probing", 1e-3, {"a": (0.4, 8.0, 0.50), "b": (0.2, 9.0, 0.70)})
    html = _premise_section(run)
    assert "at most 10%" in html and "Kept in 1 of 2 measured units" in html
    assert html.count(">kept<") == 1 and html.count(">damaged<") == 1
    (tmp_path / "empty").mkdir()
    assert "No unit of this run has probing rows" in _premise_section(tmp_path / "empty")
