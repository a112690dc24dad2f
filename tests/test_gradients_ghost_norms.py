"""Tests of taskspace_utils.gradients.ghost_norms: per-pair norms from the batched backward pass,
exact against the independent per-pair reference."""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pandas as pd
import pytest

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
