"""Tests of taskspace_utils.ftgd: masks, exact apply/revert, the first update, the explode guard,
determinism, saving, perplexity and the controls table.

References are computed independently of the batched code paths: sentence log-probabilities from a
plain full-model forward of one unpadded sentence at a time, gradients by ``torch.autograd.grad``.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from taskspace_utils.data import load_blimp, split_pairs
from taskspace_utils.ftgd import (
    CONTROLS,
    FTGDConfig,
    FTGDDivergedError,
    SparseDelta,
    applied,
    compare_controls,
    perplexity,
    tune_task,
)
from taskspace_utils.gradients import subnetwork_masks

TASK = "anaphor_gender_agreement"
OTHER = "npi_present_1"


@pytest.fixture(scope="module")
def split():
    return split_pairs(load_blimp(tasks=[TASK, OTHER]), n_train=8, n_test=8, seed=0)


@pytest.fixture(scope="module")
def train(split):
    return split[(split["split"] == "train") & (split["task"] == TASK)].reset_index(drop=True)


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def assert_bitwise(model, snap):
    for name, p in model.named_parameters():
        a, b = p.detach(), snap[name]
        ints = {8: torch.int64, 4: torch.int32}[a.element_size()]
        assert torch.equal(a.view(ints), b.view(ints)), f"parameter {name} changed"


def reference_logprob(model, tokenizer, sentence):
    """log p(sentence) = sum_i log p(t_i | BOS, t_<i), one unpadded sentence through the full model."""
    ids = [tokenizer.bos_token_id] + tokenizer(sentence, add_special_tokens=False)["input_ids"]
    x = torch.tensor([ids])
    logp = torch.log_softmax(model(input_ids=x).logits[0, :-1].double(), dim=-1)
    return logp.gather(-1, x[0, 1:, None]).sum()


def reference_grads(model, tokenizer, pairs, weight=None):
    """grad of mean_i w_i * [log p(g_i) - log p(b_i)] (w_i = 1 unless ``weight(margin_i)`` given)."""
    params = dict(model.named_parameters())
    total = 0
    for good, bad in zip(pairs["good"], pairs["bad"]):
        margin = reference_logprob(model, tokenizer, good) - reference_logprob(model, tokenizer, bad)
        total = total + (margin if weight is None else weight(margin.detach()) * margin)
    grads = torch.autograd.grad(total / len(pairs), list(params.values()), allow_unused=True)
    return {n: (g if g is not None else torch.zeros_like(p)) for (n, p), g in zip(params.items(), grads)}


def same_delta(a, b):
    """Bitwise equality of two SparseDeltas (names, layouts, indices, values)."""
    if a.names != b.names:
        return False
    for name in a.names:
        ia, ib = a.indices[name], b.indices[name]
        if (ia is None) != (ib is None) or (ia is not None and not torch.equal(ia, ib)):
            return False
        if not torch.equal(a.tuned[name], b.tuned[name]) or not torch.equal(a.original[name], b.original[name]):
            return False
    return True


def dense_delta(model, delta):
    """{name: full tensor of tuned - original} from a SparseDelta, for comparisons."""
    out = {}
    for name, p in model.named_parameters():
        full = torch.zeros_like(p).reshape(-1)
        if name in delta.tuned:
            values = delta.values[name]
            if delta.indices[name] is None:
                full = values.reshape(-1).clone()
            else:
                full[delta.indices[name]] = values
        out[name] = full.view(p.shape)
    return out


def test_model_left_exactly_as_it_was(tiny_lm, train):
    model, tokenizer = tiny_lm
    snap = snapshot(model)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    model.eval()
    for control in CONTROLS:
        tune_task(model, tokenizer, train, FTGDConfig(control=control, steps=3, batch_size=4, k=0.05))
        assert_bitwise(model, snap)
    assert not model.training
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())


def test_only_masked_parameters_change(tiny_lm, train):
    model, tokenizer = tiny_lm
    k = 0.02
    config = FTGDConfig(k=k, steps=4, batch_size=4, lr=1e-2)
    grads = reference_grads(model, tokenizer, train)
    masks = subnetwork_masks(grads, k)
    delta = tune_task(model, tokenizer, train, config, differential=grads)
    n_params = sum(p.numel() for p in model.parameters())
    assert delta.meta["n_masked"] == round(k * n_params)
    assert 0 < delta.n_changed <= round(k * n_params)
    snap = snapshot(model)
    with applied(model, delta):
        for name, p in model.named_parameters():
            changed = p.detach() != snap[name]
            assert not (changed & ~masks[name]).any(), f"{name}: entries outside the mask changed"
    # random mask of the same size: also at most round(k * n) entries, and not the FTGD entries
    rand = tune_task(model, tokenizer, train, config.replace(control="random_mask"))
    assert 0 < rand.n_changed <= round(k * n_params)
    # per-step masks: one SGD step on the full batch changes exactly the fixed mask's entries
    one = FTGDConfig(k=k, steps=1, batch_size=len(train), optimizer="sgd", lr=1e-3)
    fixed = tune_task(model, tokenizer, train, one)
    per_step = tune_task(model, tokenizer, train, one.replace(mask_mode="per_step"))
    for name in fixed.tuned:
        assert torch.equal(dense_delta(model, fixed)[name] != 0, dense_delta(model, per_step)[name] != 0)


def test_delta_applies_and_reverts_bitwise(tiny_lm, train):
    model, tokenizer = tiny_lm
    snap = snapshot(model)
    for control in ("ftgd", "all_params"):  # sparse storage, and dense storage (most entries change)
        delta = tune_task(model, tokenizer, train, FTGDConfig(control=control, steps=3, batch_size=4, k=0.05))
        layouts = {i is None for i in delta.indices.values()}
        assert (True in layouts) if control == "all_params" else (False in layouts)
        delta.apply(model)
        params = dict(model.named_parameters())
        for name, p in params.items():
            if name not in delta.tuned:
                assert torch.equal(p.detach(), snap[name])
            elif delta.indices[name] is None:
                assert torch.equal(p.detach(), delta.tuned[name])
            else:
                assert torch.equal(p.detach().reshape(-1)[delta.indices[name]], delta.tuned[name])
        with pytest.raises(ValueError, match="does not hold the base values"):
            delta.apply(model)  # applying twice is refused
        delta.revert(model)
        assert_bitwise(model, snap)
        with pytest.raises(ValueError, match="does not hold the tuned values"):
            delta.revert(model)
    with pytest.raises(RuntimeError):
        with applied(model, delta):
            raise RuntimeError("inside")
    assert_bitwise(model, snap)


def test_first_sgd_step_is_lr_times_masked_differential(tiny_lm64, train):
    model, tokenizer = tiny_lm64
    lr, k = 1e-3, 0.03
    grads = reference_grads(model, tokenizer, train)  # the differential, computed independently
    masks = subnetwork_masks(grads, k)
    config = FTGDConfig(optimizer="sgd", lr=lr, steps=1, batch_size=len(train), k=k)
    for differential in (None, grads):  # mask from the module's own differential, or passed in
        delta = dense_delta(model, tune_task(model, tokenizer, train, config, differential=differential))
        for name, d in grads.items():
            expected = torch.where(masks[name], lr * d, torch.zeros_like(d))
            torch.testing.assert_close(delta[name], expected, rtol=1e-9, atol=1e-15)


def test_first_sgd_step_logsigmoid_and_lm_good(tiny_lm64, train):
    model, tokenizer = tiny_lm64
    lr, beta = 1e-3, 2.0
    config = FTGDConfig(optimizer="sgd", lr=lr, steps=1, batch_size=len(train), control="all_params",
                        objective="logsigmoid", beta=beta)
    # d/dtheta log sigmoid(beta m) = beta * sigmoid(-beta m) * dm/dtheta
    grads = reference_grads(model, tokenizer, train, weight=lambda m: beta * torch.sigmoid(-beta * m))
    delta = dense_delta(model, tune_task(model, tokenizer, train, config))
    for name, g in grads.items():
        torch.testing.assert_close(delta[name], lr * g, rtol=1e-9, atol=1e-15)
    # plain LM fine-tuning: gradient of the mean log-probability of the good sentences
    params = dict(model.named_parameters())
    total = sum(reference_logprob(model, tokenizer, s) for s in train["good"]) / len(train)
    lm_grads = torch.autograd.grad(total, list(params.values()), allow_unused=True)
    delta = dense_delta(model, tune_task(model, tokenizer, train, config.replace(control="lm_good")))
    for (name, p), g in zip(params.items(), lm_grads):
        torch.testing.assert_close(delta[name], lr * (g if g is not None else torch.zeros_like(p)), rtol=1e-9, atol=1e-15)


def test_diverging_run_stops_naming_task_and_step(tiny_lm, train):
    model, tokenizer = tiny_lm
    snap = snapshot(model)
    blowup = FTGDConfig(control="all_params", optimizer="sgd", lr=1e30, steps=5, batch_size=4)
    with pytest.raises(FTGDDivergedError, match=rf"task '{TASK}' at step [2-5]/5"):
        tune_task(model, tokenizer, train, blowup)
    assert_bitwise(model, snap)
    with pytest.raises(FTGDDivergedError, match=r"task 'mine' at step 1/5: loss .* exceeds max_abs_loss"):
        tune_task(model, tokenizer, train, FTGDConfig(steps=5, max_abs_loss=1e-9), task="mine")
    assert_bitwise(model, snap)


def test_same_seed_same_result(tiny_lm, train):
    model, tokenizer = tiny_lm
    for control in ("ftgd", "random_mask"):
        config = FTGDConfig(control=control, steps=3, batch_size=3, k=0.05)
        a, b = (tune_task(model, tokenizer, train, config) for _ in range(2))
        c = tune_task(model, tokenizer, train, config.replace(seed=1))
        assert same_delta(a, b)
        assert not same_delta(a, c), f"{control}: seed 1 gave the same delta as seed 0"


def test_save_load_roundtrip(tiny_lm, train, tmp_path):
    model, tokenizer = tiny_lm
    snap = snapshot(model)
    for control in ("ftgd", "all_params"):
        delta = tune_task(model, tokenizer, train, FTGDConfig(control=control, steps=2, batch_size=4), task=TASK)
        path = delta.save(tmp_path / f"{control}.safetensors")
        loaded = SparseDelta.load(path)
        assert loaded.names == delta.names and loaded.n_changed == delta.n_changed
        assert loaded.meta["config"]["control"] == control and loaded.meta["task"] == TASK
        for name in delta.names:
            assert (loaded.indices[name] is None) == (delta.indices[name] is None)
            if delta.indices[name] is not None:
                assert torch.equal(loaded.indices[name], delta.indices[name])
            assert torch.equal(loaded.tuned[name], delta.tuned[name])
            assert torch.equal(loaded.original[name], delta.original[name])
        with applied(model, loaded):
            pass
        assert_bitwise(model, snap)


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
    from taskspace_utils import ftgd
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
    monkeypatch.setattr(ftgd, "tune_task", lambda *a, **k: pytest.fail("re-tuned a finished run"))
    again = compare_controls(model, tokenizer, split, [TASK], config, val_text=val, out_dir=tmp_path)
    pd.testing.assert_frame_equal(again, table)
    assert (tmp_path / "controls.csv").exists()
    with pytest.raises(ConfigMismatchError):
        compare_controls(model, tokenizer, split, [TASK], config.replace(lr=1.0), val_text=val, out_dir=tmp_path)


@pytest.mark.parametrize("field, value", [("objective", "hinge"), ("control", "lora"), ("k", 0.0), ("k", 1.5),
                                          ("mask_mode", "each"), ("optimizer", "rmsprop"), ("steps", 0)])
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        FTGDConfig(**{field: value})


def test_delta_by_module_counts(tiny_lm, train):
    from taskspace_utils.ftgd import delta_by_module

    model, tokenizer = tiny_lm
    delta = tune_task(model, tokenizer, train, FTGDConfig(k=0.05, steps=2, batch_size=4))
    table = delta_by_module(delta, model)
    assert table["n_params"].sum() == sum(p.numel() for p in model.parameters())
    assert table["n_changed"].sum() == delta.n_changed
    expected_sq = sum(float(((delta.tuned[n].double() - delta.original[n].double()) ** 2).sum()) for n in delta.names)
    assert table["update_sq"].sum() == pytest.approx(expected_sq, rel=1e-12)
    assert {"embed", "head", "layer0.attention", "layer1.mlp"} <= set(table.index)
