"""Tests of taskspace_utils.gradients: exact against independent computations on a tiny model."""

from __future__ import annotations

import contextlib
import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from taskspace_utils import gradients as G
from taskspace_utils import scoring
from taskspace_utils.data import load_blimp, split_pairs, task_metadata
from taskspace_utils.results import ConfigMismatchError
from taskspace_utils.scoring import score_pairs

TASKS = ["anaphor_gender_agreement", "npi_present_1", "wh_island"]


@pytest.fixture(scope="module")
def blimp3():
    return load_blimp(tasks=TASKS)


@pytest.fixture(scope="module")
def pairs6(blimp3):
    return blimp3[blimp3["task"] == "wh_island"].head(6).reset_index(drop=True)


# --- independent reference: one plain forward/backward per sentence, no kit helpers ---------


def _ids(tokenizer, sentence):
    return [tokenizer.bos_token_id] + tokenizer(sentence, add_special_tokens=False)["input_ids"]


def _logp(model, ids, first=0, last=None):
    """sum_{first <= i < last} log p(t_i | BOS, t_<i) of one unpadded sentence (t_0 = first word)."""
    x = torch.tensor([ids])
    logp = torch.log_softmax(model(input_ids=x).logits[0, :-1], dim=-1)
    token_lp = logp[torch.arange(len(ids) - 1), x[0, 1:]]
    return token_lp[first:last].sum()


def _critical_spans(g, b):
    """Independent critical spans: common prefix p, common suffix s of the rest, each sentence
    keeping at least one token after p."""
    p = 0
    while p < min(len(g), len(b)) and g[p] == b[p]:
        p += 1
    s = 0
    while s < min(len(g), len(b)) - p and g[-1 - s] == b[-1 - s]:
        s += 1
    return (p, len(g) - min(s, len(g) - p - 1)), (p, len(b) - min(s, len(b) - p - 1))


def _reference(model, tokenizer, pairs, critical=False):
    params = [p for _, p in model.named_parameters()]
    names = [n for n, _ in model.named_parameters()]
    per_pair = []
    for good, bad in zip(pairs["good"], pairs["bad"]):
        g, b = _ids(tokenizer, good), _ids(tokenizer, bad)
        span_g, span_b = _critical_spans(g[1:], b[1:]) if critical else ((0, None), (0, None))
        margin = _logp(model, g, *span_g) - _logp(model, b, *span_b)
        grads = torch.autograd.grad(margin, params, allow_unused=True)
        per_pair.append({n: (gr if gr is not None else torch.zeros_like(p)) for n, gr, p in zip(names, grads, params)})
    mean = {n: torch.stack([d[n] for d in per_pair]).mean(0) for n in names}
    return mean, per_pair


def _max_rel(a, b):
    scale = max(float(t.abs().max()) for t in b.values())
    return max(float((a[n] - b[n]).abs().max()) for n in b) / scale


# --- the task differential ------------------------------------------------------------------


def test_task_differential_equals_per_pair_autograd_loop(tiny_lm64, pairs6):
    model, tok = tiny_lm64
    ref, _ = _reference(model, tok, pairs6)
    got = G.task_differential(model, tok, pairs6)
    assert list(got) == [n for n, _ in model.named_parameters()]
    assert all(got[n].shape == p.shape and got[n].dtype == torch.float64 for n, p in model.named_parameters())
    assert _max_rel(got, ref) < 1e-10


def test_critical_variant_equals_per_pair_loop(tiny_lm64, pairs6):
    model, tok = tiny_lm64
    ref, _ = _reference(model, tok, pairs6, critical=True)
    got = G.task_differential(model, tok, pairs6, variant="critical")
    assert _max_rel(got, ref) < 1e-10
    whole = G.task_differential(model, tok, pairs6, variant="sentence")
    assert _max_rel(got, whole) > 1e-3  # the variants differ


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
        assert _max_rel(other, base) < 1e-12


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
    assert _max_rel({n: t * 7 for n, t in b.items()}, {n: t * 6 for n, t in a.items()}) < 1e-12


def test_critical_exclusions_are_reported(tiny_lm64, pairs6):
    model, tok = tiny_lm64
    odd = pd.DataFrame({"good": ["Dogs bark.", "Dogs bark", "Dogs bark loudly"],
                        "bad": ["Dogs bark.", "Dogs bark loudly", "Dogs bark"]})
    reasons = G.critical_exclusions(odd, tok)
    assert list(reasons) == ["identical tokens", "good is a prefix of bad", "bad is a prefix of good"]
    assert G.critical_exclusions(pairs6, tok).isna().all()
    mixed = pd.concat([pairs6, odd], ignore_index=True)
    with pytest.warns(UserWarning, match="3 of 9 pair"):
        got = G.task_differential(model, tok, mixed, variant="critical")
    assert _max_rel(got, G.task_differential(model, tok, pairs6, variant="critical")) < 1e-12
    with pytest.raises(ValueError, match="no critical tokens"):
        G.batch_margins(model, tok, mixed, variant="critical")
    with pytest.raises(ValueError, match="all excluded"), pytest.warns(UserWarning):
        G.task_differential(model, tok, odd, variant="critical")


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
    assert _max_rel(dict(zip(ref, grads)), ref) < 1e-10


# --- per-pair differentials, streamed ---------------------------------------------------------


@pytest.mark.parametrize("method", ["loop", "vmap"])
def test_per_pair_differentials_equal_the_reference(tiny_lm64, pairs6, method):
    model, tok = tiny_lm64
    _, ref = _reference(model, tok, pairs6, critical=True)
    seen = []
    for positions, chunk in G.iter_pair_differentials(model, tok, pairs6, "critical", method=method, chunk_pairs=4):
        for j, pos in enumerate(positions):
            assert _max_rel({n: t[j] for n, t in chunk.items()}, ref[pos]) < 1e-10
            seen.append(pos)
    assert seen == list(range(6))


def test_pair_differential_stats_streamed_reductions(tiny_lm64, pairs6):
    model, tok = tiny_lm64
    mean, ref = _reference(model, tok, pairs6)
    groups = [0, 1, 0, 1, 1, 0]
    stats = G.pair_differential_stats(model, tok, pairs6, groups=groups, chunk_pairs=4)
    assert _max_rel(stats["mean"], mean) < 1e-10
    norms = [math.sqrt(sum(float(t.pow(2).sum()) for t in d.values())) for d in ref]
    np.testing.assert_allclose(stats["norms"], norms, rtol=1e-10)
    assert stats["mean_norm"] == pytest.approx(np.mean(norms), rel=1e-10)
    assert stats["norm_of_mean"] <= stats["mean_norm"]
    half0 = {n: torch.stack([ref[i][n] for i in (0, 2, 5)]).mean(0) for n in mean}
    assert _max_rel(stats["group_means"][0], half0) < 1e-10


@pytest.mark.parametrize("variant,head_chunk", [("sentence", None), ("critical", None), ("sentence", 3)])
def test_ghost_norms_equal_the_per_pair_norms(tiny_lm64, blimp3, variant, head_chunk, monkeypatch):
    model, tok = tiny_lm64
    if head_chunk:  # scoring's LM head runs in chunks of rows elsewhere; ghost norms need one call
        monkeypatch.setattr(scoring, "_HEAD_CHUNK_ROWS", head_chunk)
    pairs = blimp3.groupby("task").head(3).reset_index(drop=True)
    pairs = pd.concat([pairs, pd.DataFrame({"good": ["Dogs bark."], "bad": ["Dogs bark."]})], ignore_index=True)
    mean, ref = _reference(model, tok, pairs.head(9), critical=variant == "critical")
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
    assert _max_rel({k: v / n for k, v in total.items()}, {k: v * 9 / n for k, v in mean.items()}) < 1e-10
    for p in model.parameters():
        assert p.grad is None


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
    _, ref = _reference(model, tok, pairs6)
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


# --- masks and spaces ---------------------------------------------------------------------------


def _random_diffs(seed, ties=False):
    gen = torch.Generator().manual_seed(seed)
    shapes = {"embed_in.weight": (10, 4), "layers.0.attention.dense.weight": (4, 4), "layers.0.mlp.bias": (7,)}
    out = {n: torch.randn(s, generator=gen, dtype=torch.float64) for n, s in shapes.items()}
    if ties:
        out = {n: t.round() for n, t in out.items()}  # many equal |values|
    return out


@pytest.mark.parametrize("k", [0.0, 0.03, 0.1, 0.25, 0.5, 1.0])
@pytest.mark.parametrize("ties", [False, True])
def test_subnetwork_masks_have_exactly_the_requested_size(k, ties):
    diffs = _random_diffs(0, ties)
    masks = G.subnetwork_masks(diffs, k)
    total = sum(t.numel() for t in diffs.values())
    assert sum(int(m.sum()) for m in masks.values()) == round(k * total)
    flat = np.concatenate([t.reshape(-1).abs().numpy() for t in diffs.values()])
    expected = np.zeros(total, dtype=bool)
    expected[np.argsort(-flat, kind="stable")[: round(k * total)]] = True
    got = np.concatenate([m.reshape(-1).numpy() for m in masks.values()])
    np.testing.assert_array_equal(got, expected)
    per = G.subnetwork_masks(diffs, k, per_module=True)
    for n, t in diffs.items():
        assert per[n].shape == t.shape and int(per[n].sum()) == round(k * t.numel())
        if 0 < per[n].sum() < t.numel():
            assert t.abs()[per[n]].min() >= t.abs()[~per[n]].max()


def test_mask_overlap_space_is_jaccard():
    masks = {f"t{i}": G.subnetwork_masks(_random_diffs(i), 0.3) for i in range(4)}
    space = G.mask_overlap_space(masks)
    sets = {t: set(np.flatnonzero(np.concatenate([m.reshape(-1).numpy() for m in ms.values()]))) for t, ms in masks.items()}
    for a in sets:
        for b in sets:
            assert space.loc[a, b] == pytest.approx(len(sets[a] & sets[b]) / len(sets[a] | sets[b]))
    assert list(space.index) == list(masks) and np.allclose(np.diag(space), 1)


def test_gradient_space_cosine_pearson_and_modules():
    diffs = {f"t{i}": _random_diffs(i) for i in range(4)}
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


# --- all tasks to disk ------------------------------------------------------------------------------


def test_extract_task_differentials_writes_resumes_and_refuses_mixing(tiny_lm, blimp3, tmp_path, monkeypatch):
    model, tok = tiny_lm
    pairs = split_pairs(blimp3, n_train=4, n_test=2, seed=0)
    config = G.GradientConfig(model="tiny-test", n_train=4, k=0.1, projection_dim=8)
    stats = G.extract_task_differentials(model, tok, pairs, tmp_path, config, progress=False)
    assert list(stats.index) == sorted(TASKS)
    assert (stats["n_pairs"] == 4).all() and (stats["n_excluded"] == 0).all()
    assert (stats["norm_of_mean"] <= stats["mean_norm"] + 1e-6).all()
    for name in ("config.json", "differential_stats.parquet", "task_space_gradient.csv", "mask_overlap.csv",
                 "task_space_gradient_modules.parquet"):
        assert (tmp_path / name).exists(), name
    loaded = G.load_task_differentials(tmp_path)
    train = pairs[pairs["split"] == "train"]
    direct = G.task_differential(model, tok, train[train["task"] == "wh_island"])
    assert _max_rel(loaded["wh_island"], direct) < 1e-5
    space = pd.read_csv(tmp_path / "task_space_gradient.csv", index_col=0)
    np.testing.assert_allclose(space.to_numpy(), G.gradient_space(loaded).to_numpy(), atol=1e-6)
    overlap = pd.read_csv(tmp_path / "mask_overlap.csv", index_col=0)
    masks = {t: G.subnetwork_masks(d, 0.1) for t, d in loaded.items()}
    np.testing.assert_allclose(overlap.to_numpy(), G.mask_overlap_space(masks).to_numpy(), atol=1e-12)
    pd.testing.assert_frame_equal(G.load_gradient_spaces(tmp_path), space)
    modules = G.load_gradient_spaces(tmp_path, by="module")
    expected = G.gradient_space(loaded, by="module")
    assert list(modules) == list(expected) and {"embed", "layer1.mlp", "head"} <= set(modules)
    for m in expected:
        np.testing.assert_allclose(modules[m].to_numpy(), expected[m].to_numpy(), atol=1e-6)
    meta = task_metadata(pairs)
    summary = G.summarise_module_spaces(modules, meta)
    emb = modules["embed"].to_numpy()
    assert summary.loc["embed", "all_pairs"] == pytest.approx(np.mean([emb[0, 1], emb[0, 2], emb[1, 2]]))
    same = [(a, b) for i, a in enumerate(TASKS) for b in TASKS[i + 1:] if meta.loc[a, "field"] != meta.loc[b, "field"]]
    assert summary.loc["embed", "other_field"] == pytest.approx(np.mean([modules["embed"].loc[a, b] for a, b in same]))
    sketches = load_file(str(tmp_path / "sketches" / "wh_island.safetensors"))["sketch"]
    assert sketches.shape == (4, 8)

    # a rerun skips finished tasks
    def fail(*args, **kwargs):
        raise AssertionError("recomputed a finished task")

    monkeypatch.setattr(G, "_compute_task", fail)
    again = G.extract_task_differentials(model, tok, pairs, tmp_path, config, progress=False)
    pd.testing.assert_frame_equal(again, stats)
    monkeypatch.undo()
    with pytest.raises(ConfigMismatchError):
        G.extract_task_differentials(model, tok, pairs, tmp_path, G.GradientConfig(model="tiny-test", n_train=4, k=0.2))
    other = split_pairs(blimp3, n_train=4, n_test=2, seed=1)
    with pytest.raises(ConfigMismatchError, match="other pairs"):
        G.extract_task_differentials(model, tok, other, tmp_path, config, progress=False)


def test_extract_without_per_pair_uses_split_halves(tiny_lm, blimp3, tmp_path):
    model, tok = tiny_lm
    pairs = split_pairs(blimp3, n_train=5, n_test=0, seed=0)
    config = G.GradientConfig(model="tiny-test", n_train=5, per_pair=False, variant="critical")
    stats = G.extract_task_differentials(model, tok, pairs, tmp_path, config, tasks=["wh_island"], progress=False)
    assert list(stats.index) == ["wh_island"] and np.isnan(stats.loc["wh_island", "mean_norm"])
    train = pairs[(pairs["task"] == "wh_island")]
    direct = G.task_differential(model, tok, train, variant="critical")
    assert _max_rel(G.load_task_differentials(tmp_path, ["wh_island"])["wh_island"], direct) < 1e-5
    assert -1 <= stats.loc["wh_island", "split_half_cosine"] <= 1


def test_config_validation():
    with pytest.raises(ValueError, match="variant"):
        G.GradientConfig(variant="token")
    with pytest.raises(ValueError, match="k="):
        G.GradientConfig(k=1.5)


def test_extract_with_ghost_norms_matches_the_vmap_path(tiny_lm64, blimp3, tmp_path):
    model, tok = tiny_lm64
    pairs = split_pairs(blimp3, n_train=5, n_test=0, seed=0)
    stats = {}
    for method in ("auto", "vmap"):  # auto: ghost norms for this model
        config = G.GradientConfig(model="tiny-test", n_train=5, per_pair_method=method)
        stats[method] = G.extract_task_differentials(model, tok, pairs, tmp_path / method, config, tasks=TASKS[:2], progress=False)
    cols = ["n_pairs", "mean_norm", "norm_of_mean", "consistency", "split_half_cosine"]
    pd.testing.assert_frame_equal(stats["auto"][cols], stats["vmap"][cols], rtol=1e-9)
    a, b = G.load_task_differentials(tmp_path / "auto"), G.load_task_differentials(tmp_path / "vmap")
    assert all(_max_rel(a[t], b[t]) < 1e-10 for t in a)
    with pytest.raises(ValueError, match="ghost"):
        G.GradientConfig(per_pair_method="ghost", projection_dim=8)
