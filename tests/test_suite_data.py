"""Tests for taskspace_utils.suite.data: rows of a token stream and the seeded batch order."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from taskspace_utils.suite import PretrainConfig
from taskspace_utils.suite.data import batch_indices, cut_rows


def test_batches_visit_every_row_once_per_epoch_in_a_seeded_order():
    cfg = PretrainConfig(size="tiny-s", hidden_size=8, num_hidden_layers=1, num_attention_heads=1, batch_size=4)
    n_rows = 10  # 2.5 steps per epoch, so steps straddle epochs
    rows = torch.cat([batch_indices(s, cfg, n_rows) for s in range(5)]).tolist()  # 20 = 2 epochs
    assert sorted(rows[:10]) == list(range(10)) and sorted(rows[10:]) == list(range(10))
    assert rows[:10] != rows[10:]  # a new permutation each epoch
    assert batch_indices(3, cfg, n_rows).tolist() == rows[12:16]  # a function of the step only
    other = dataclasses.replace(cfg, seed=cfg.seed + 1)
    assert batch_indices(0, other, n_rows).tolist() != rows[:4]


def test_rows_drop_the_short_tail_and_refuse_a_short_stream():
    rows = cut_rows(torch.arange(10, dtype=torch.int32), 4)
    assert rows.dtype == torch.int64 and rows.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    with pytest.raises(ValueError, match="seq_len=4"):
        cut_rows(torch.arange(3, dtype=torch.int32), 4)
