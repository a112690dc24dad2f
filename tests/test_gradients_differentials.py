"""Tests of taskspace_utils.gradients.differentials: spans, margins and the task differential,
exact against independent computations on a tiny model."""

from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch

from gradients_reference import blimp3, max_rel, pairs6, reference  # noqa: F401  (fixtures)
from taskspace_utils import gradients as G
from taskspace_utils import prefix_tree
from taskspace_utils.encoding import encode
from taskspace_utils.gradients.differentials import _pair_spans
from taskspace_utils.scoring import score_pairs

ODD = pd.DataFrame({"good": ["Dogs bark.", "Dogs bark", "Dogs bark loudly"],
                    "bad": ["Dogs bark.", "Dogs bark loudly", "Dogs bark"]})


def _old_pair_spans(tokenizer, pairs, variant):
    """The spans as computed before EncodedPairs: the tokenizer's own call, the common prefix,
    and for "critical" the token_alignment suffix and exclusion rules."""
    good_ids = tokenizer(list(pairs["good"]), add_special_tokens=False)["input_ids"]
    bad_ids = tokenizer(list(pairs["bad"]), add_special_tokens=False)["input_ids"]
    n_good = np.array([len(g) for g in good_ids])
    n_bad = np.array([len(b) for b in bad_ids])
    start = []
    for g, b in zip(good_ids, bad_ids):
        p = 0
        while p < min(len(g), len(b)) and g[p] == b[p]:
            p += 1
        start.append(p)
    start = np.array(start)
    if variant == "sentence":
        return good_ids, bad_ids, start, n_good, n_bad, [None] * len(good_ids)
    suffix, excluded = [], []
    for g, b, p in zip(good_ids, bad_ids, start):
        s = 0
        while s < min(len(g), len(b)) - p and g[-1 - s] == b[-1 - s]:
            s += 1
        suffix.append(s)
        excluded.append("identical tokens" if p == len(g) == len(b) else "good is a prefix of bad" if p == len(g)
                        else "bad is a prefix of good" if p == len(b) else None)
    suffix = np.array(suffix)
    end_good = n_good - np.minimum(suffix, n_good - start - 1).clip(min=0)
    end_bad = n_bad - np.minimum(suffix, n_bad - start - 1).clip(min=0)
    return good_ids, bad_ids, start, end_good, end_bad, excluded


@pytest.mark.parametrize("variant", ["sentence", "critical"])
def test_spans_from_encoded_pairs_equal_the_old_ones(tiny_tokenizer, blimp3, variant):
    pairs = pd.concat([blimp3, ODD], ignore_index=True)
    new, old = _pair_spans(tiny_tokenizer, pairs, variant), _old_pair_spans(tiny_tokenizer, pairs, variant)
    assert [list(x) for x in new[0]] == old[0] and [list(x) for x in new[1]] == old[1]
    for a, b in zip(new[2:5], old[2:5]):
        np.testing.assert_array_equal(a, b)
    assert new[5] == old[5]
    assert sum(r is not None for r in new[5]) >= (3 if variant == "critical" else 0)


def test_encoded_pairs_are_accepted_in_place_of_pairs(tiny_lm64, pairs6):
    model, tok = tiny_lm64
    enc = encode(tok, pairs6)
    for variant in ("sentence", "critical"):
        a = G.task_differential(model, tok, pairs6, variant=variant)
        b = G.task_differential(model, tok, enc, variant=variant)
        assert all(torch.equal(a[n], b[n]) for n in a)
    assert torch.equal(G.batch_margins(model, tok, enc), G.batch_margins(model, tok, pairs6))
    pd.testing.assert_series_equal(G.critical_exclusions(enc, tok), G.critical_exclusions(pairs6, tok))


def test_task_differential_equals_per_pair_autograd_loop(tiny_lm64, pairs6):
    model, tok = tiny_lm64
    ref, _ = reference(model, tok, pairs6)
    got = G.task_differential(model, tok, pairs6)
    assert list(got) == [n for n, _ in model.named_parameters()]
    assert all(got[n].shape == p.shape and got[n].dtype == torch.float64 for n, p in model.named_parameters())
    assert max_rel(got, ref) < 1e-10


def test_critical_variant_equals_per_pair_loop(tiny_lm64, pairs6):
    model, tok = tiny_lm64
    ref, _ = reference(model, tok, pairs6, critical=True)
    got = G.task_differential(model, tok, pairs6, variant="critical")
    assert max_rel(got, ref) < 1e-10
    whole = G.task_differential(model, tok, pairs6, variant="sentence")
    assert max_rel(got, whole) > 1e-3  # the variants differ


def test_task_differential_matches_central_finite_difference(tiny_lm64, pairs6):
    model, tok = tiny_lm64
    diff = G.task_differential(model, tok, pairs6)
    gen = torch.Generator().manual_seed(1)
    for _ in range(2):
        direction = {n: torch.randn(p.shape, generator=gen, dtype=p.dtype) for n, p in model.named_parameters()}
        norm = math.sqrt(sum(float(v.pow(2).sum()) for v in direction.values()))
        direction = {n: v / norm for n, v in direction.items()}  # unit step: truncation error ~ eps^2
        eps = 1e-4
        margins = []
        for sign in (1, -1):
            moved = copy.deepcopy(model)
            with torch.no_grad():
                for n, p in moved.named_parameters():
                    p.add_(sign * eps * direction[n])
            margins.append(score_pairs(moved, tok, pairs6)["margin"].mean())
        fd = (margins[0] - margins[1]) / (2 * eps)
        analytic = sum(float((diff[n] * direction[n]).sum()) for n in diff)
        assert fd == pytest.approx(analytic, rel=1e-7, abs=1e-10)


@pytest.mark.parametrize("variant", ["sentence", "critical"])
def test_batching_and_padding_do_not_change_the_differential(tiny_lm64, pairs6, variant):
    model, tok = tiny_lm64
    base = G.task_differential(model, tok, pairs6, variant=variant, batch_size=1)
    for kwargs in (dict(batch_size=3), dict(batch_size=None), dict(batch_tokens=24)):
        other = G.task_differential(model, tok, pairs6, variant=variant, **kwargs)
        assert max_rel(other, base) < 1e-12


def test_model_state_is_left_unchanged(tiny_lm, pairs6):
    model, tok = tiny_lm
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    try:
        G.task_differential(model, tok, pairs6)
        assert model.training
        list(G.iter_pair_differentials(model, tok, pairs6, method="loop"))
        assert model.training
    finally:
        model.eval()
    G.task_differential(model, tok, pairs6)
    assert not model.training
    for n, p in model.named_parameters():
        assert p.grad is None
        assert torch.equal(p, before[n])


def test_identical_pair_contributes_exactly_zero(tiny_lm64, pairs6):
    model, tok = tiny_lm64
    extra = pd.concat([pairs6, pd.DataFrame({"good": ["Who ate?"], "bad": ["Who ate?"]})], ignore_index=True)
    a = G.task_differential(model, tok, pairs6)
    b = G.task_differential(model, tok, extra)
    assert max_rel({n: t * 7 for n, t in b.items()}, {n: t * 6 for n, t in a.items()}) < 1e-12


def test_critical_exclusions_are_reported(tiny_lm64, pairs6):
    model, tok = tiny_lm64
    reasons = G.critical_exclusions(ODD, tok)
    assert list(reasons) == ["identical tokens", "good is a prefix of bad", "bad is a prefix of good"]
    assert G.critical_exclusions(pairs6, tok).isna().all()
    mixed = pd.concat([pairs6, ODD], ignore_index=True)
    with pytest.warns(UserWarning, match="3 of 9 pair"):
        got = G.task_differential(model, tok, mixed, variant="critical")
    assert max_rel(got, G.task_differential(model, tok, pairs6, variant="critical")) < 1e-12
    with pytest.raises(ValueError, match="no critical tokens"):
        G.batch_margins(model, tok, mixed, variant="critical")
    with pytest.raises(ValueError, match="no pairs"):
        G.batch_margins(model, tok, pairs6.head(0))
    with pytest.raises(ValueError, match="all excluded"), pytest.warns(UserWarning):
        G.task_differential(model, tok, ODD, variant="critical")


def test_batch_margins_equal_scores_and_are_differentiable(tiny_lm64, pairs6):
    model, tok = tiny_lm64
    margins = G.batch_margins(model, tok, pairs6)
    assert margins.shape == (6,) and margins.requires_grad
    expected = score_pairs(model, tok, pairs6)["margin"].to_numpy()
    np.testing.assert_allclose(margins.detach().numpy(), expected, rtol=0, atol=1e-10)
    lists = G.batch_margins(model, tok, (list(pairs6["good"]), list(pairs6["bad"])))
    assert torch.allclose(lists, margins, atol=1e-12)
    grads = torch.autograd.grad(margins.mean(), [p for _, p in model.named_parameters()], allow_unused=True)
    ref = G.task_differential(model, tok, pairs6)
    assert max_rel(dict(zip(ref, grads)), ref) < 1e-10


def _margins_and_forward_kinds(model, tok, pairs, variant):
    """batch_margins, and per forward pass of the base model whether it got tree positions."""
    fed = []
    handle = model.gpt_neox.register_forward_pre_hook(
        lambda module, args, kwargs: fed.append(kwargs.get("position_ids") is not None), with_kwargs=True)
    try:
        return G.batch_margins(model, tok, pairs, variant=variant), fed
    finally:
        handle.remove()


@pytest.mark.parametrize("variant", ["sentence", "critical"])
@pytest.mark.parametrize("packing", ["tree", "padded"])
def test_batch_margins_give_each_pair_its_own_gradient_differential(tiny_lm64, pairs6, variant, packing, monkeypatch):
    """Both packings of batch_margins (prefix trees for GPT-NeoX, the padded batch of encode_pairs
    for models without tree support): the gradient of margin i is pair i's differential of the
    one-sentence-at-a-time reference (float64, 1e-10), and the margins equal the padded ones."""
    model, tok = tiny_lm64
    if packing == "padded":
        monkeypatch.setattr(prefix_tree, "_TREE_MODEL_TYPES", set())
    margins, fed = _margins_and_forward_kinds(model, tok, pairs6, variant)
    assert fed and fed == [packing == "tree"] * len(fed)
    padded = G.pair_margins(model, G.encode_pairs(tok, pairs6, variant))
    np.testing.assert_allclose(margins.detach().numpy(), padded.detach().numpy(), rtol=0, atol=1e-10)
    _, per_pair = reference(model, tok, pairs6, critical=variant == "critical")
    params = [p for _, p in model.named_parameters()]
    for i, expected in enumerate(per_pair):
        grads = torch.autograd.grad(margins[i], params, retain_graph=True, allow_unused=True)
        got = {n: g if g is not None else torch.zeros_like(p) for n, g, p in zip(expected, grads, params)}
        assert max_rel(got, expected) < 1e-10


def test_batch_margins_over_several_tree_batches_equal_the_scores(tiny_lm64, blimp3):
    """More pairs than one tree batch holds (1,024 positions): the per-batch sums land on their own
    pairs (float64, against score_pairs' margins)."""
    model, tok = tiny_lm64
    pairs = blimp3.groupby("task").head(60).reset_index(drop=True)
    with torch.no_grad():
        margins, fed = _margins_and_forward_kinds(model, tok, pairs, "sentence")
    assert len(fed) >= 2 and all(fed)
    expected = score_pairs(model, tok, pairs)["margin"].to_numpy()
    np.testing.assert_allclose(margins.numpy(), expected, rtol=0, atol=1e-10)
