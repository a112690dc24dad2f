"""Tests of taskspace_utils.gradients.space: the gradient task space (cosine, Pearson, dot; whole
model and per module) and the module grouping of parameter names."""

from __future__ import annotations

import numpy as np
import pytest

from gradients_reference import random_diffs
from taskspace_utils import gradients as G


def test_gradient_space_cosine_pearson_and_modules():
    diffs = {f"t{i}": random_diffs(i) for i in range(4)}
    flat = np.stack([np.concatenate([t.reshape(-1).numpy() for t in d.values()]) for d in diffs.values()])
    unit = flat / np.linalg.norm(flat, axis=1, keepdims=True)
    np.testing.assert_allclose(G.gradient_space(diffs).to_numpy(), unit @ unit.T, atol=1e-12)
    np.testing.assert_allclose(G.gradient_space(diffs, metric="pearson").to_numpy(), np.corrcoef(flat), atol=1e-12)
    np.testing.assert_allclose(G.gradient_space(diffs, metric="dot").to_numpy(), flat @ flat.T, atol=1e-10)
    modules = G.gradient_space(diffs, metric="dot", by="module")
    assert list(modules) == ["embed", "layer0.attention", "layer0.mlp"]
    np.testing.assert_allclose(sum(m.to_numpy() for m in modules.values()), flat @ flat.T, atol=1e-10)
    emb = np.stack([d["embed_in.weight"].reshape(-1).numpy() for d in diffs.values()])
    np.testing.assert_allclose(modules["embed"].to_numpy(), emb @ emb.T, atol=1e-12)
    with pytest.raises(ValueError, match="metric"):
        G.gradient_space(diffs, metric="l2")


def test_module_groups_of_gpt_neox(tiny_lm):
    model, _ = tiny_lm
    groups = G.module_groups(model)
    assert set(groups.values()) == {"embed", "layer0.attention", "layer0.mlp", "layer1.attention", "layer1.mlp", "final_norm", "head"}
    assert groups["gpt_neox.layers.1.input_layernorm.weight"] == "layer1.attention"
    assert groups["gpt_neox.layers.0.post_attention_layernorm.bias"] == "layer0.mlp"
    assert groups["lm_head.weight"] == "head" and groups["gpt_neox.final_layer_norm.bias"] == "final_norm"
    gpt2 = G.module_groups(["transformer.wte.weight", "transformer.h.2.attn.c_attn.weight", "transformer.h.2.ln_2.weight",
                            "transformer.ln_f.bias", "lm_head.weight"])
    assert list(gpt2.values()) == ["embed", "layer2.attention", "layer2.mlp", "final_norm", "head"]
