"""Tests of taskspace_utils.gradients.subnetworks: top-k masks of exactly the requested size and
their Jaccard space."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gradients_reference import random_diffs
from taskspace_utils import gradients as G


def _order_statistic_values(seed, zeros):
    """5,000 non-negative float32 values, the fraction ``zeros`` of them 0 and the last 40 tied
    (ties among the positive entries too), shuffled."""
    rng = np.random.default_rng(seed)
    values = np.abs(rng.standard_normal(5000)).astype(np.float32)
    values[: int(zeros * values.size)] = 0
    values[-40:] = values[-1]
    rng.shuffle(values)
    return values


def _mostly_zero_diffs(dtype=torch.float32):
    """A summary's zero-filled differential: 40 nonzero entries among 2,600."""
    torch.manual_seed(0)
    diffs = {"a": torch.zeros(300, 7, dtype=dtype), "b": torch.zeros(500, dtype=dtype)}
    diffs["a"].view(-1)[torch.randperm(2100)[:30]] = torch.randn(30).to(dtype)
    diffs["b"][torch.randperm(500)[:10]] = torch.randn(10).to(dtype)
    return diffs


@pytest.mark.parametrize("k", [0.0, 0.03, 0.1, 0.25, 0.5, 1.0])
@pytest.mark.parametrize("ties", [False, True])
def test_subnetwork_masks_have_exactly_the_requested_size(k, ties):
    diffs = random_diffs(0, ties)
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


@pytest.mark.parametrize("zeros", [0.0, 0.5, 0.98, 1.0])
def test_kth_largest_is_the_sorted_order_statistic(zeros):
    values = _order_statistic_values(1, zeros)
    before = values.copy()
    descending = np.sort(values)[::-1]
    for count in (1, 7, 40, 41, 100, 2500, 4999, 5000):
        assert G.subnetworks.kth_largest(values, count) == descending[count - 1]
    np.testing.assert_array_equal(values, before)  # the input is not reordered


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_masks_of_mostly_zero_differentials_follow_the_stable_sort(dtype):
    """A summary's zero-filled differential: ties at zero go to the lower flat index."""
    diffs = _mostly_zero_diffs(dtype)
    flat = np.concatenate([t.reshape(-1).abs().float().numpy() for t in diffs.values()])
    for k in (0.005, 0.01, 0.05):
        expected = np.zeros(flat.size, dtype=bool)
        expected[np.argsort(-flat, kind="stable")[: round(k * flat.size)]] = True
        masks = G.subnetwork_masks(diffs, k)
        np.testing.assert_array_equal(np.concatenate([m.reshape(-1).numpy() for m in masks.values()]), expected)


def test_mask_overlap_space_is_jaccard():
    masks = {f"t{i}": G.subnetwork_masks(random_diffs(i), 0.3) for i in range(4)}
    space = G.mask_overlap_space(masks)
    sets = {t: set(np.flatnonzero(np.concatenate([m.reshape(-1).numpy() for m in ms.values()]))) for t, ms in masks.items()}
    for a in sets:
        for b in sets:
            assert space.loc[a, b] == pytest.approx(len(sets[a] & sets[b]) / len(sets[a] | sets[b]))
    assert list(space.index) == list(masks) and np.allclose(np.diag(space), 1)


def test_overlap_counts_per_module_give_the_jaccard_of_any_set_of_modules():
    """Counts summed over modules = the Jaccard of the masks restricted to those modules (by hand)."""
    import numpy as np
    import torch

    from taskspace_utils.gradients import pack_masks
    from taskspace_utils.gradients.subnetworks import packed_jaccard_space, packed_overlap_counts

    gen = torch.Generator().manual_seed(0)
    names = {"embed": ["e"], "layer0.mlp": ["m1", "m2"], "head": ["h"]}
    masks = {t: {n: torch.rand(5, 7, generator=gen) > 0.6 for ns in names.values() for n in ns} for t in "abc"}
    packed = {m: {t: pack_masks(masks[t], ns) for t in masks} for m, ns in names.items()}
    counts = packed_overlap_counts(packed)
    assert len(counts) == 3 * 9 and list(counts.columns) == ["module", "task", "other", "intersection", "size_task",
                                                            "size_other"]
    inner = counts[counts.module == "layer0.mlp"].set_index(["task", "other"])
    jac = packed_jaccard_space(packed["layer0.mlp"])
    row = inner.loc[("a", "b")]
    assert row.intersection / (row.size_task + row.size_other - row.intersection) == jac.loc["a", "b"]
    # non-embedding Jaccard from the counts equals the one of the concatenated non-embedding masks
    sums = counts[~counts.module.isin(["embed", "head"])].groupby(["task", "other"])[
        ["intersection", "size_task", "size_other"]].sum().loc[("a", "c")]
    flat = {t: torch.cat([masks[t][n].reshape(-1) for n in ("m1", "m2")]) for t in "ac"}
    want = (flat["a"] & flat["c"]).sum().item() / (flat["a"] | flat["c"]).sum().item()
    assert sums.intersection / (sums.size_task + sums.size_other - sums.intersection) == want
    assert int(inner.loc[("b", "b")].intersection) == int(np.sum([masks["b"][n].sum().item() for n in ("m1", "m2")]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("zeros", [0.0, 0.5, 0.98, 1.0])
def test_the_accelerators_selection_returns_the_same_entry(dtype, zeros):
    """``kth_largest_on_device`` (``topk``, used off the CPU) against numpy's ``kth_largest``, run
    on the CPU: the same entry for every count, ties and zeros included."""
    tensor = torch.from_numpy(_order_statistic_values(2, zeros)).to(dtype)
    exact = G.subnetworks._numpy_exact(tensor)
    for count in (1, 7, 40, 41, 100, 2500, 4999, 5000):
        got = G.subnetworks.kth_largest_on_device(tensor, count)
        assert got.dtype == dtype and got.shape == ()
        assert float(got) == G.subnetworks.kth_largest(exact, count)


@pytest.mark.parametrize("per_module", [False, True])
def test_masks_are_the_same_whichever_selection_runs(monkeypatch, per_module):
    """The masks with the accelerators' selection forced on the CPU equal the numpy ones, bit for
    bit, on dense, tied and mostly-zero differentials."""
    cases = [random_diffs(0, False), random_diffs(1, True), _mostly_zero_diffs()]
    ks = (0.0, 0.005, 0.01, 0.1, 0.5, 1.0)
    expected = [[G.subnetwork_masks(d, k, per_module) for k in ks] for d in cases]
    monkeypatch.setattr(G.subnetworks, "_threshold", G.subnetworks.kth_largest_on_device)
    for d, want in zip(cases, expected):
        for k, masks in zip(ks, want):
            got = G.subnetwork_masks(d, k, per_module)
            assert all(torch.equal(got[n], masks[n]) for n in d)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_masks_on_cuda_equal_the_cpu_masks():
    for diffs in (random_diffs(0, False), random_diffs(1, True)):
        on_gpu = {n: t.cuda() for n, t in diffs.items()}
        for k in (0.01, 0.1):
            for per_module in (False, True):
                want = G.subnetwork_masks(diffs, k, per_module)
                got = G.subnetwork_masks(on_gpu, k, per_module)
                assert all(got[n].is_cuda and torch.equal(got[n].cpu(), want[n]) for n in diffs)
