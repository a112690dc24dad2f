"""Tests of taskspace_utils.gradients.per_pair: per-pair differentials (loop, vmap), their streamed
statistics and the CountSketch, exact against the independent per-pair reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gradients_reference import blimp3, max_rel, pairs6, reference  # noqa: F401  (fixtures)
from taskspace_utils import gradients as G
from taskspace_utils.encoding import encode


@pytest.mark.parametrize("method", ["loop", "vmap"])
def test_per_pair_differentials_equal_the_reference(tiny_lm64, pairs6, method):
    model, tok = tiny_lm64
    _, ref = reference(model, tok, pairs6, critical=True)
    seen = []
    for positions, chunk in G.iter_pair_differentials(model, tok, pairs6, "critical", method=method, chunk_pairs=4):
        for j, pos in enumerate(positions):
            assert max_rel({n: t[j] for n, t in chunk.items()}, ref[pos]) < 1e-10
            seen.append(pos)
    assert seen == list(range(6))


def test_pair_differential_stats_streamed_reductions(tiny_lm64, pairs6):
    model, tok = tiny_lm64
    mean, ref = reference(model, tok, pairs6)
    groups = [0, 1, 0, 1, 1, 0]
    stats = G.pair_differential_stats(model, tok, pairs6, groups=groups, chunk_pairs=4)
    assert max_rel(stats["mean"], mean) < 1e-10
    norms = [math.sqrt(sum(float(t.pow(2).sum()) for t in d.values())) for d in ref]
    np.testing.assert_allclose(stats["norms"], norms, rtol=1e-10)
    assert stats["mean_norm"] == pytest.approx(np.mean(norms), rel=1e-10)
    assert stats["norm_of_mean"] <= stats["mean_norm"]
    half0 = {n: torch.stack([ref[i][n] for i in (0, 2, 5)]).mean(0) for n in mean}
    assert max_rel(stats["group_means"][0], half0) < 1e-10
    again = G.pair_differential_stats(model, tok, encode(tok, pairs6), groups=groups, chunk_pairs=4)
    np.testing.assert_array_equal(again["norms"], stats["norms"])  # EncodedPairs in place of pairs


def test_parameter_sketch_is_a_seeded_linear_projection(tiny_lm64, pairs6):
    model, tok = tiny_lm64
    shapes = {n: p.shape for n, p in model.named_parameters()}
    sketch = G.ParameterSketch(shapes, dim=16, seed=3)
    p_total = sum(p.numel() for p in model.parameters())
    dense = torch.zeros(16, p_total, dtype=torch.float64)
    cols = torch.arange(p_total)
    buckets = torch.cat([sketch.buckets[n] for n in shapes])
    signs = torch.cat([sketch.signs[n] for n in shapes]).double()
    dense[buckets, cols] = signs
    stats = G.pair_differential_stats(model, tok, pairs6, sketch=sketch)
    _, ref = reference(model, tok, pairs6)
    flat = torch.stack([torch.cat([d[n].reshape(-1) for n in shapes]) for d in ref])
    torch.testing.assert_close(stats["sketches"], flat @ dense.T, rtol=1e-10, atol=1e-12)
    again = G.ParameterSketch(shapes, dim=16, seed=3)
    assert all(torch.equal(again.buckets[n], sketch.buckets[n]) for n in shapes)
    other = G.ParameterSketch(shapes, dim=16, seed=4)
    assert not all(torch.equal(other.buckets[n], sketch.buckets[n]) for n in shapes)
    # inner products are preserved in expectation: with a wide sketch, closely
    wide = G.ParameterSketch(shapes, dim=8192, seed=0)
    x = {n: torch.randn(s, dtype=torch.float64) for n, s in shapes.items()}
    assert wide.project(x, batched=False).norm() == pytest.approx(math.sqrt(sum(float(t.pow(2).sum()) for t in x.values())), rel=0.05)
