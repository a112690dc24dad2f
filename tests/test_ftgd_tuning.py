"""Tests of taskspace_utils.ftgd.tuning: the model left as it was, masks, the first update, the
explode guard, determinism, and the encoded pairs taken as training pairs.

References are computed independently of the batched code paths: sentence log-probabilities from a
plain full-model forward of one unpadded sentence at a time, gradients by ``torch.autograd.grad``.
"""

from __future__ import annotations

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
    FTGDDivergedError,
    applied,
    tune_task,
)
from taskspace_utils.gradients import subnetwork_masks


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


def test_encoded_pairs_tune_the_same(tiny_lm, train):
    """An EncodedPairs of the training pairs gives the delta of the frame, bitwise (both variants)."""
    model, tokenizer = tiny_lm
    for variant in ("sentence", "critical"):
        config = FTGDConfig(steps=2, batch_size=4, k=0.05, variant=variant)
        assert same_delta(tune_task(model, tokenizer, train, config), tune_task(model, tokenizer, encode(tokenizer, train), config))
