"""Tests of taskspace_utils.ftgd.delta: exact apply/revert (sparse and dense storage), saving and
loading, and the per-module summary of a delta.
"""

from __future__ import annotations

import pytest
import torch
from ftgd_reference import OTHER, TASK, assert_bitwise, snapshot, split, train  # noqa: F401  (fixtures)

from taskspace_utils.ftgd import (
    FTGDConfig,
    SparseDelta,
    applied,
    delta_by_module,
    tune_task,
)


def test_delta_applies_and_reverts_bitwise(tiny_lm, train):
    model, tokenizer = tiny_lm
    snap = snapshot(model)
    for control in ("ftgd", "all_params"):  # sparse storage, and dense storage (most entries change)
        delta = tune_task(model, tokenizer, train, FTGDConfig(control=control, steps=3, batch_size=4, k=0.05))
        layouts = {i is None for i in delta.indices.values()}
        assert (True in layouts) if control == "all_params" else (False in layouts)
        delta.apply(model)
        params = dict(model.named_parameters())
        for name, p in params.items():
            if name not in delta.tuned:
                assert torch.equal(p.detach(), snap[name])
            elif delta.indices[name] is None:
                assert torch.equal(p.detach(), delta.tuned[name])
            else:
                assert torch.equal(p.detach().reshape(-1)[delta.indices[name]], delta.tuned[name])
        with pytest.raises(ValueError, match="does not hold the base values"):
            delta.apply(model)  # applying twice is refused
        delta.revert(model)
        assert_bitwise(model, snap)
        with pytest.raises(ValueError, match="does not hold the tuned values"):
            delta.revert(model)
    with pytest.raises(RuntimeError):
        with applied(model, delta):
            raise RuntimeError("inside")
    assert_bitwise(model, snap)


def test_save_load_roundtrip(tiny_lm, train, tmp_path):
    model, tokenizer = tiny_lm
    snap = snapshot(model)
    for control in ("ftgd", "all_params"):
        delta = tune_task(model, tokenizer, train, FTGDConfig(control=control, steps=2, batch_size=4), task=TASK)
        path = delta.save(tmp_path / f"{control}.safetensors")
        loaded = SparseDelta.load(path)
        assert loaded.names == delta.names and loaded.n_changed == delta.n_changed
        assert loaded.meta["config"]["control"] == control and loaded.meta["task"] == TASK
        for name in delta.names:
            assert (loaded.indices[name] is None) == (delta.indices[name] is None)
            if delta.indices[name] is not None:
                assert torch.equal(loaded.indices[name], delta.indices[name])
            assert torch.equal(loaded.tuned[name], delta.tuned[name])
            assert torch.equal(loaded.original[name], delta.original[name])
        with applied(model, loaded):
            pass
        assert_bitwise(model, snap)


def test_delta_by_module_counts(tiny_lm, train):
    model, tokenizer = tiny_lm
    delta = tune_task(model, tokenizer, train, FTGDConfig(k=0.05, steps=2, batch_size=4))
    table = delta_by_module(delta, model)
    assert table["n_params"].sum() == sum(p.numel() for p in model.parameters())
    assert table["n_changed"].sum() == delta.n_changed
    expected_sq = sum(float(((delta.tuned[n].double() - delta.original[n].double()) ** 2).sum()) for n in delta.names)
    assert table["update_sq"].sum() == pytest.approx(expected_sq, rel=1e-12)
    assert {"embed", "head", "layer0.attention", "layer1.mlp"} <= set(table.index)
