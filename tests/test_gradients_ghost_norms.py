"""Tests of taskspace_utils.gradients.ghost_norms: per-pair norms from the batched backward pass,
exact against the independent per-pair reference."""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pandas as pd
import pytest
import torch

from gradients_reference import blimp3, max_rel, reference  # noqa: F401  (fixtures)
from taskspace_utils import gradients as G
from taskspace_utils import lm_head


@pytest.mark.parametrize("variant,head_chunk", [("sentence", None), ("critical", None), ("sentence", 3)])
def test_ghost_norms_equal_the_per_pair_norms(tiny_lm64, blimp3, variant, head_chunk, monkeypatch):
    model, tok = tiny_lm64
    if head_chunk:  # the LM head runs in chunks of rows elsewhere; ghost norms need one call
        monkeypatch.setattr(lm_head, "_HEAD_CHUNK_ROWS", head_chunk)
    pairs = blimp3.groupby("task").head(3).reset_index(drop=True)
    pairs = pd.concat([pairs, pd.DataFrame({"good": ["Dogs bark."], "bad": ["Dogs bark."]})], ignore_index=True)
    mean, ref = reference(model, tok, pairs.head(9), critical=variant == "critical")
    with (pytest.warns(UserWarning) if variant == "critical" else contextlib.nullcontext()):
        total, norms = G.pair_differential_norms(model, tok, pairs, variant, batch_tokens=40)
    expected = [math.sqrt(sum(float(t.pow(2).sum()) for t in d.values())) for d in ref]
    np.testing.assert_allclose(norms[:9], expected, rtol=1e-10)
    if variant == "critical":  # the identical pair has no critical tokens
        assert np.isnan(norms[9])
        n = 9
    else:  # it has, and its differential is exactly zero
        assert norms[9] == 0
        n = 10
    assert max_rel({k: v / n for k, v in total.items()}, {k: v * 9 / n for k, v in mean.items()}) < 1e-10
    for p in model.parameters():
        assert p.grad is None


def test_by_pair_groups_positions_into_padded_slots():
    """Independent loop: pair p's positions, in order, then zeros; a view when all pairs are full."""
    from taskspace_utils.gradients.ghost_norms import _by_pair

    x = torch.arange(24, dtype=torch.float32).reshape(12, 2)
    pair = torch.tensor([0, 0, 0, 1, 2, 2, 2, 2, 3, 3, 4, 4])
    out = _by_pair(x, pair, 6)  # pair 5 has no position
    expected = torch.zeros(6, 4, 2)
    for p in range(6):
        rows = x[pair == p]
        expected[p, : len(rows)] = rows
    assert torch.equal(out, expected)
    full = torch.arange(6).repeat_interleave(4)
    view = _by_pair(x.repeat(2, 1), full, 6)
    assert view.shape == (6, 4, 2) and torch.equal(view.reshape(-1, 2), x.repeat(2, 1))
    with pytest.raises(ValueError, match="grouped by pair"):
        _by_pair(x, pair.flip(0), 6)
