"""Shared by the tests of taskspace_utils.gradients: an independent reference (one plain
forward/backward per sentence, no kit helpers) and BLiMP fixtures (import them into a test module
to use them)."""

from __future__ import annotations

import pytest
import torch

from taskspace_utils.data import load_blimp

TASKS = ["anaphor_gender_agreement", "npi_present_1", "wh_island"]


def _ids(tokenizer, sentence):
    return [tokenizer.bos_token_id] + tokenizer(sentence, add_special_tokens=False)["input_ids"]


def _logp(model, ids, first=0, last=None):
    """sum_{first <= i < last} log p(t_i | BOS, t_<i) of one unpadded sentence (t_0 = first word)."""
    x = torch.tensor([ids])
    logp = torch.log_softmax(model(input_ids=x).logits[0, :-1], dim=-1)
    token_lp = logp[torch.arange(len(ids) - 1), x[0, 1:]]
    return token_lp[first:last].sum()


def critical_spans(g, b):
    """Independent critical spans: common prefix p, common suffix s of the rest, each sentence
    keeping at least one token after p."""
    p = 0
    while p < min(len(g), len(b)) and g[p] == b[p]:
        p += 1
    s = 0
    while s < min(len(g), len(b)) - p and g[-1 - s] == b[-1 - s]:
        s += 1
    return (p, len(g) - min(s, len(g) - p - 1)), (p, len(b) - min(s, len(b) - p - 1))


def reference(model, tokenizer, pairs, critical=False):
    """(mean differential, [per-pair differentials]) by one autograd call per pair."""
    params = [p for _, p in model.named_parameters()]
    names = [n for n, _ in model.named_parameters()]
    per_pair = []
    for good, bad in zip(pairs["good"], pairs["bad"]):
        g, b = _ids(tokenizer, good), _ids(tokenizer, bad)
        span_g, span_b = critical_spans(g[1:], b[1:]) if critical else ((0, None), (0, None))
        margin = _logp(model, g, *span_g) - _logp(model, b, *span_b)
        grads = torch.autograd.grad(margin, params, allow_unused=True)
        per_pair.append({n: (gr if gr is not None else torch.zeros_like(p)) for n, gr, p in zip(names, grads, params)})
    mean = {n: torch.stack([d[n] for d in per_pair]).mean(0) for n in names}
    return mean, per_pair


def max_rel(a, b):
    """Largest absolute difference of two {name: tensor} mappings over the largest entry of ``b``."""
    scale = max(float(t.abs().max()) for t in b.values())
    return max(float((a[n] - b[n]).abs().max()) for n in b) / scale


@pytest.fixture(scope="module")
def blimp3():
    return load_blimp(tasks=TASKS)


@pytest.fixture(scope="module")
def pairs6(blimp3):
    return blimp3[blimp3["task"] == "wh_island"].head(6).reset_index(drop=True)


def random_diffs(seed, ties=False):
    """Three small parameter tensors named like GPT-NeoX's (embedding, attention, MLP)."""
    gen = torch.Generator().manual_seed(seed)
    shapes = {"embed_in.weight": (10, 4), "layers.0.attention.dense.weight": (4, 4), "layers.0.mlp.bias": (7,)}
    out = {n: torch.randn(s, generator=gen, dtype=torch.float64) for n, s in shapes.items()}
    if ties:
        out = {n: t.round() for n, t in out.items()}  # many equal |values|
    return out
