"""Tests of the kit in bfloat16 against float32 on the CPU: scores, margins, task differentials,
ghost norms, FTGD (its float32 master values) and a small transfer probe; no NaN/inf on a
suite-shaped model.

Tolerances. bf16 keeps 8 mantissa bits: one rounding is off by at most 2^-9 relative (half an
ulp), an operation by ~2^-8 ~ 0.4 %. A sentence log-probability goes through ~10 rounded ops per
layer, but the errors are not all aligned and the log-softmax and the sums run in float32, so we
allow ``2^-8`` of ``|log p|`` summed over a pair (one op's worth) for scores and margins, a cosine
of at least ``1 - 2^-8`` for task differentials (their entries carry ~2^-8 relative noise each, so
``1 - cos ~ (2^-8)^2 / 2`` in the mean; the margin is generous) and at least 95 % of the top-1 %
mask kept (entries near the threshold may swap; measured 99.6 %). Ghost norms: 4 x 2^-8 relative
(they are square roots of sums of products of two rounded Gram matrices). The models are the
tiny GPT-NeoX of the tests with ``initializer_range`` 0.2 (ten times the default), so that the
logits and weights have sizes where bf16 rounding matters.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from taskspace_utils.data import load_blimp
from taskspace_utils.ftgd import FTGDConfig, tune_task
from taskspace_utils.gradients import batch_margins, subnetwork_masks, task_differential
from taskspace_utils.gradients.ghost_norms import pair_differential_norms
from taskspace_utils.models import accumulation_dtype, dtype_identity, model_dtype
from taskspace_utils.probing import ProbingConfig, probe_transfer
from taskspace_utils.scoring import score_pairs, sentence_logprobs

EPS = 2.0 ** -8  # bf16: relative rounding of one operation
TASKS = ["anaphor_gender_agreement", "npi_present_1"]


def sharp_model(tokenizer, dtype=torch.float32):
    """The tests' tiny GPT-NeoX (hidden 32, 2 layers) with weights ~N(0, 0.2), in ``dtype``."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    config = GPTNeoXConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=128, max_position_embeddings=128, rotary_pct=0.25, initializer_range=0.2,
                           bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                           tie_word_embeddings=False)
    return GPTNeoXForCausalLM(config).to(dtype).eval()


@pytest.fixture(scope="module")
def models(tiny_tokenizer):
    return sharp_model(tiny_tokenizer), sharp_model(tiny_tokenizer, torch.bfloat16), tiny_tokenizer


@pytest.fixture(scope="module")
def pairs():
    frame = load_blimp(tasks=TASKS).groupby("task").head(40).reset_index(drop=True)
    return frame.assign(split=np.where(frame.groupby("task").cumcount() < 20, "train", "test"))


def flat(d):
    return torch.cat([v.reshape(-1).double() for v in d.values()])


def test_dtype_helpers(models):
    m32, m16, _ = models
    assert model_dtype(m16) is torch.bfloat16 and accumulation_dtype(torch.bfloat16) is torch.float32
    assert accumulation_dtype(torch.float64) is torch.float64
    assert dtype_identity(m32) == {} and dtype_identity(m16) == {"dtype": "bfloat16"}


def test_scores_and_margins(models, pairs):
    m32, m16, tok = models
    s32, s16 = score_pairs(m32, tok, pairs, progress=False), score_pairs(m16, tok, pairs, progress=False)
    for column in ("logp_good", "logp_bad"):
        assert np.isfinite(s16[column]).all()
        assert (np.abs(s16[column] - s32[column]) <= EPS * np.abs(s32[column])).all()
    scale = np.abs(s32["logp_good"]) + np.abs(s32["logp_bad"])
    assert (np.abs(s16["margin"] - s32["margin"]) <= EPS * scale).all()
    # the sign of every margin larger than its tolerance agrees
    clear = np.abs(s32["margin"]) > EPS * scale
    assert (np.sign(s16["margin"][clear]) == np.sign(s32["margin"][clear])).all()
    # packed as prefix trees or padded: the same bf16 numbers up to bf16 rounding, float64 out
    sentences = list(pairs["good"][:30])
    tree = sentence_logprobs(m16, tok, sentences, packing="tree")
    padded = sentence_logprobs(m16, tok, sentences, packing="padded")
    assert tree.dtype == np.float64 and np.allclose(tree, padded, rtol=EPS, atol=0)
    # differentiable margins (FTGD's objective) come out in float32
    margins = batch_margins(m16, tok, pairs.head(5))
    assert margins.dtype == torch.float32
    torch.testing.assert_close(margins.double(), torch.tensor(s16["margin"].head(5).to_numpy()),
                               rtol=0, atol=EPS * float(scale.head(5).max()))


def test_task_differential_and_ghost_norms(models, pairs):
    m32, m16, tok = models
    train = pairs[(pairs.task == "npi_present_1") & (pairs.split == "train")]
    d32, d16 = task_differential(m32, tok, train), task_differential(m16, tok, train)
    assert all(v.dtype == torch.float32 for v in d16.values())  # accumulated and returned in float32
    a, b = flat(d32), flat(d16)
    assert torch.isfinite(b).all()
    assert float(a @ b / (a.norm() * b.norm())) >= 1 - EPS
    x, y = (torch.cat([v.reshape(-1) for v in subnetwork_masks(d, 0.01).values()]) for d in (d32, d16))
    assert float((x & y).sum() / x.sum()) >= 0.95
    (_, n32), (total16, n16) = (pair_differential_norms(m, tok, train) for m in (m32, m16))
    assert all(v.dtype == torch.float32 for v in total16.values())
    assert np.allclose(n16, n32, rtol=4 * EPS, atol=0)
    c = flat(total16) / len(train)
    assert float(c @ b / (c.norm() * b.norm())) >= 1 - EPS  # the ghost pass's sum is the same differential


def test_ftgd_bf16_master_values(models, pairs):
    """Adam at lr 2e-4, 8 full-batch steps: every step (<= 1.03 lr for t <= 8: Adam's bias-corrected
    ratio) is below half an ulp of a weight in [1/4, 1/2) (ulp 2^-9), so bf16 arithmetic alone would
    never move it; the float32 masters accumulate the steps and move it by exactly one ulp."""
    m32, m16, tok = models
    train = pairs[(pairs.task == "npi_present_1") & (pairs.split == "train")]
    config = FTGDConfig(steps=8, batch_size=len(train), lr=2e-4, k=0.05)
    snap = {n: p.detach().clone() for n, p in m16.named_parameters()}
    deltas = {m.dtype: tune_task(m, tok, train, config) for m in (m32, m16)}
    assert all(torch.equal(p, snap[n]) for n, p in m16.named_parameters())  # restored bitwise
    d16, d32 = deltas[torch.bfloat16], deltas[torch.float32]
    assert 0 < d16.n_changed <= d16.meta["n_masked"] == d32.meta["n_masked"]
    assert all(d16.tuned[n].dtype == torch.bfloat16 for n in d16.names)
    moved = 0  # changed entries in the band: each moved by sub-ulp steps that only a master can add up
    for name in d16.names:
        orig, tuned = d16.original[name].float(), d16.tuned[name].float()
        band = (orig.abs() >= 0.25) & (orig.abs() < 0.5)
        assert torch.equal((orig[band] + 1.03 * config.lr).bfloat16().float(), orig[band])  # one step rounds away
        assert ((tuned - orig)[band].abs() == 2.0 ** -9).all()  # one ulp, never more
        moved += int(band.sum())
    assert moved >= 10
    # same direction as the float32 run on the entries both changed, and a gain on the target
    common = [(n, i) for n in d16.names if n in d32.names and d16.indices[n] is not None and d32.indices[n] is not None
              for i in [np.intersect1d(d16.indices[n].numpy(), d32.indices[n].numpy())]]
    sign16 = np.concatenate([np.sign(_values_at(d16, n, i)) for n, i in common])
    sign32 = np.concatenate([np.sign(_values_at(d32, n, i)) for n, i in common])
    assert len(sign16) > 20 and (sign16 == sign32).mean() >= 0.95
    for model, delta in ((m32, d32), (m16, d16)):
        with torch.no_grad():
            before = float(batch_margins(model, tok, train).mean())
            delta.apply(model)
            after = float(batch_margins(model, tok, train).mean())
            delta.revert(model)
        assert after > before


def _values_at(delta, name, flat_indices):
    where = np.searchsorted(delta.indices[name].numpy(), flat_indices)
    return (delta.tuned[name].float() - delta.original[name].float()).numpy()[where]


def test_ftgd_dense_controls_in_bf16(models, pairs):
    """all_params, lm_good and per-step masks in bf16: float32 masters for the whole tensors; the
    model is restored bitwise and the update is not lost to rounding."""
    _, m16, tok = models
    train = pairs[(pairs.task == "npi_present_1") & (pairs.split == "train")]
    snap = {n: p.detach().clone() for n, p in m16.named_parameters()}
    n_params = sum(p.numel() for p in m16.parameters())
    for extra in ({"control": "all_params"}, {"control": "lm_good"}, {"mask_mode": "per_step"}):
        delta = tune_task(m16, tok, train, FTGDConfig(steps=4, batch_size=10, lr=1e-3, k=0.05, **extra))
        assert all(torch.equal(p, snap[n]) for n, p in m16.named_parameters())
        limit = n_params if "control" in extra else 4 * round(0.05 * n_params)
        assert 0.1 * min(limit, n_params) < delta.n_changed <= limit, (extra, delta.n_changed)
        assert all(torch.isfinite(v).all() for v in delta.tuned.values())


def test_small_probe_bf16_vs_fp32(models, pairs, tmp_path):
    m32, m16, tok = models
    config = ProbingConfig(tasks=tuple(TASKS), n_train=20, n_test=20,
                           ftgd=FTGDConfig(steps=5, batch_size=10, lr=1e-3, k=0.02))
    r32 = probe_transfer(m32, tok, pairs, tmp_path / "fp32", config, progress=False)
    r16 = probe_transfer(m16, tok, pairs, tmp_path / "bf16", config, progress=False)
    assert "dtype" not in json.loads((tmp_path / "fp32" / "config.json").read_text())
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"
    diag32, diag16 = (np.diag(r.margin.to_numpy()) for r in (r32, r16))
    assert (diag32 > 0).all() and (diag16 > 0).all()  # tuning on a task raises its own margin in both
    # the baseline agrees within the score tolerance; the transfer entries within 25 % of the
    # float32 self-transfer (different rounding steers 5 Adam steps slightly differently)
    base_scale = float(np.abs(r32.baseline["mean_margin"]).max())
    assert np.allclose(r16.baseline["mean_margin"], r32.baseline["mean_margin"], rtol=0, atol=4 * EPS * base_scale + 1e-3)
    assert np.allclose(r16.margin.to_numpy(), r32.margin.to_numpy(), rtol=0, atol=0.25 * float(diag32.min()))


def test_suite_shaped_model_bf16_is_finite(tiny_tokenizer):
    """tiny-s's shape (hidden 128, 4 layers, vocabulary 8,192) in bf16: scores of a pair from every
    BLiMP task, a task differential and a few FTGD steps are finite."""
    from transformers import GPTNeoXForCausalLM

    from taskspace_utils.suite import default_config
    from taskspace_utils.suite.training import model_config

    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(model_config(default_config("tiny-s"), tiny_tokenizer)).to(torch.bfloat16).eval()
    blimp = load_blimp().groupby("task").head(2).reset_index(drop=True)
    scored = score_pairs(model, tiny_tokenizer, blimp, progress=False)
    assert blimp.task.nunique() == 67 and np.isfinite(scored[["logp_good", "logp_bad", "margin"]].to_numpy()).all()
    train = blimp[blimp.task == "npi_present_1"]
    diff = task_differential(model, tiny_tokenizer, blimp.head(40))
    assert all(torch.isfinite(v).all() for v in diff.values())
    delta = tune_task(model, tiny_tokenizer, train, FTGDConfig(steps=2, batch_size=2), differential=None)
    assert math.isfinite(delta.meta["losses"][-1]) and delta.n_changed > 0
