"""Shared pieces of the FTGD tests: a small split of two tasks, and references computed without the
kit's batched code (bitwise snapshots, one unpadded sentence at a time through the full model)."""

from __future__ import annotations

import pytest
import torch

from taskspace_utils.data import load_blimp, split_pairs

TASK = "anaphor_gender_agreement"
OTHER = "npi_present_1"


@pytest.fixture(scope="module")
def split():
    return split_pairs(load_blimp(tasks=[TASK, OTHER]), n_train=8, n_test=8, seed=0)


@pytest.fixture(scope="module")
def train(split):
    return split[(split["split"] == "train") & (split["task"] == TASK)].reset_index(drop=True)


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def assert_bitwise(model, snap):
    for name, p in model.named_parameters():
        a, b = p.detach(), snap[name]
        ints = {8: torch.int64, 4: torch.int32}[a.element_size()]
        assert torch.equal(a.view(ints), b.view(ints)), f"parameter {name} changed"


def reference_logprob(model, tokenizer, sentence):
    """log p(sentence) = sum_i log p(t_i | BOS, t_<i), one unpadded sentence through the full model."""
    ids = [tokenizer.bos_token_id] + tokenizer(sentence, add_special_tokens=False)["input_ids"]
    x = torch.tensor([ids])
    logp = torch.log_softmax(model(input_ids=x).logits[0, :-1].double(), dim=-1)
    return logp.gather(-1, x[0, 1:, None]).sum()
