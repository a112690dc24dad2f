"""Tests of taskspace_utils.gradients.summary and of the two storage modes of the gradient stage:
the summary folder (top entries + Gram matrices) gives the same tables as the full folder.

Tolerances. Same vectors, same code: the tables of the two modes are compared exactly
(``assert_frame_equal`` with ``check_exact``) when every differential stays in memory, because the
summary pass then runs :func:`~taskspace_utils.gradients.space._grams` on the very tensors the full
files hold, and the masks are provably identical (``top_entries`` docstring). When the memory
budget forces blocks, the Gram entries come from other float64 matrix products of the same float32
vectors (recomputed bit for bit: ghost norms), so they differ by float64 rounding only: ``1e-12``
relative (sums of ~1e4 products, float64 epsilon 2.2e-16).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from gradients_reference import TASKS, blimp3, random_diffs  # noqa: F401  (fixtures)
from taskspace_utils import gradients as G
from taskspace_utils.data import split_pairs
from taskspace_utils.gradients import stage, summary
from taskspace_utils.gradients.space import _grams
from taskspace_utils.results import folder_bytes

TABLES = ["task_space_gradient.csv", "mask_overlap.csv"]
LONG = ["task_space_gradient_modules.parquet", "mask_overlap_modules.parquet"]


@pytest.mark.parametrize("per_module", [False, True])
@pytest.mark.parametrize("ties", [False, True])
def test_top_entries_give_every_smaller_mask_exactly(per_module, ties):
    diffs = random_diffs(3, ties)
    diffs["layers.0.mlp.bias"][:3] = 0.0  # zeros: masks of large k reach them
    for kept in (0.05, 0.3, 0.9, 1.0):
        stored = summary.top_entries(diffs, kept, per_module)
        dense = summary.dense_from_summary(stored, {n: t.shape for n, t in diffs.items()})
        for k in (0.0, 0.02, kept / 2, kept):
            expected = G.subnetwork_masks(diffs, k, per_module)
            for order in (list(diffs), list(reversed(diffs))):  # the tie order of the reader
                got = G.subnetwork_masks({n: dense[n] for n in order}, k, per_module)
                want = G.subnetwork_masks({n: diffs[n] for n in order}, k, per_module)
                assert all(torch.equal(got[n], want[n]) for n in order), (kept, k, order)
            assert all(torch.equal(G.subnetwork_masks(dense, k, per_module)[n], expected[n]) for n in diffs)
        # the set: all entries at least the kept threshold, nonzero; nothing else
        flat = torch.cat([t.reshape(-1).abs() for t in diffs.values()])
        count = sum(len(stored[n + summary.INDEX_SUFFIX]) for n in diffs)
        if not per_module:
            level = torch.sort(flat, descending=True).values[round(kept * len(flat)) - 1]
            assert count == int(((flat >= level) & (flat > 0)).sum())
        for n, t in diffs.items():
            idx = stored[n + summary.INDEX_SUFFIX]
            assert idx.dtype == torch.int32 and torch.equal(stored[n], t.reshape(-1)[idx.long()])


def test_covers():
    meta = {"summary": {"top_k": 0.05, "per_module": False}}
    assert summary.covers(meta, 0.05) and summary.covers(meta, 0.01) and not summary.covers(meta, 0.1)
    assert not summary.covers(meta, 0.01, per_module=True) and not summary.covers(meta, None)
    assert summary.covers({}, None) and summary.covers({}, 0.5, per_module=True)


def test_gram_pass_in_blocks_equals_all_at_once():
    tasks = [f"t{i}" for i in range(7)]
    diffs = {t: {n: v.float() for n, v in random_diffs(i).items()} for i, t in enumerate(tasks)}
    names = sorted(diffs[tasks[0]])
    expected = _grams(lambda n: torch.stack([diffs[t][n].reshape(-1) for t in tasks]), names, "cosine")
    bytes_ = sum(v.numel() * 4 for v in diffs[tasks[0]].values())
    calls = []

    def recompute(t):
        calls.append(t)
        return diffs[t]

    for block in (1, 2, 3, 7):
        calls.clear()
        cache = {t: diffs[t] for t in tasks[:block]}  # what the stage still holds
        grams, sums, counts = summary.gram_pass(tasks, names, cache, recompute, bytes_, block * bytes_, progress=False)
        T = len(tasks)
        starts = range(0, T, block)
        assert len(calls) + min(block, T) == T + sum(max(0, T - s - block) for s in starts)  # module docstring's count
        for n in names:
            np.testing.assert_allclose(grams[n].numpy(), expected[0][n].numpy(), rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(sums[n].numpy(), expected[1][n].numpy(), rtol=1e-12)
            assert counts[n] == expected[2][n]


def _tables(folder):
    out = {name: pd.read_csv(folder / name, index_col=0) for name in TABLES}
    out.update({name: pd.read_parquet(folder / name) for name in LONG})
    out["stats"] = pd.read_parquet(folder / "differential_stats.parquet")
    return out


@pytest.mark.parametrize("per_module", [False, True])
def test_summary_and_full_folders_give_the_same_tables(tiny_lm, blimp3, tmp_path, monkeypatch, per_module):
    model, tok = tiny_lm
    pairs = split_pairs(blimp3, n_train=5, n_test=0, seed=0)
    full_config = G.GradientConfig(model="tiny-test", n_train=5, k=0.05, per_module=per_module, store="full")
    G.extract_task_differentials(model, tok, pairs, tmp_path / "full", full_config, progress=False)
    full = _tables(tmp_path / "full")
    config = G.GradientConfig(model="tiny-test", n_train=5, k=0.05, top_k=0.1, per_module=per_module)
    G.extract_task_differentials(model, tok, pairs, tmp_path / "summary", config, progress=False)
    for name, table in _tables(tmp_path / "summary").items():  # everything in memory: identical
        pd.testing.assert_frame_equal(table, full[name], check_exact=True, obj=name)
    # the files: a small fraction of the full ones; no full differential to load
    disk = {m: folder_bytes(tmp_path / m / "differentials") for m in ("full", "summary")}
    assert disk["summary"] < 0.3 * disk["full"], disk  # ~8 * 0.1 P + headers vs. 4 P bytes per task
    with pytest.raises(ValueError, match="store='summary'"):
        G.load_task_differentials(tmp_path / "summary")

    # a budget of one differential: blocks, every later task recomputed (bit for bit: ghost norms)
    calls = []
    original = stage.recompute_differential
    monkeypatch.setattr(stage, "recompute_differential", lambda *a: calls.append(a[2]["task"].iloc[0]) or original(*a))
    (tmp_path / "summary" / "gram.safetensors").unlink()
    bytes_per_task = sum(p.numel() * 4 for p in model.parameters())
    G.extract_task_differentials(model, tok, pairs, tmp_path / "summary", config, progress=False,
                                 memory_gb=1.5 * bytes_per_task / 2**30)
    assert len(calls) == 3 + 2 + 1  # T + (T - 1) + (T - 2) for blocks of one task
    for name, table in _tables(tmp_path / "summary").items():
        if name.startswith("task_space_gradient"):
            pd.testing.assert_frame_equal(table, full[name], rtol=1e-12, obj=name)
        else:
            pd.testing.assert_frame_equal(table, full[name], check_exact=True, obj=name)
    # summarise_run alone reads gram.safetensors; without it the model is needed
    G.summarise_run(tmp_path / "summary")
    (tmp_path / "summary" / "gram.safetensors").unlink()
    with pytest.raises(ValueError, match="rerun extract_task_differentials"):
        G.summarise_run(tmp_path / "summary")


def test_recompute_differential_is_the_stored_one(tiny_lm, blimp3):
    model, tok = tiny_lm
    pairs = split_pairs(blimp3, n_train=5, n_test=0, seed=0)
    frame = pairs[pairs.task == "wh_island"]
    for config in (G.GradientConfig(n_train=5), G.GradientConfig(n_train=5, per_pair=False)):
        first = stage._compute_task(model, tok, "wh_island", frame, config, None, False)[0]
        again = stage.recompute_differential(model, tok, frame, config)
        assert all(torch.equal(first[n], again[n]) for n in first)
