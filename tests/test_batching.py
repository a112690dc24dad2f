"""The one batching plan (taskspace_utils.batching): every row in exactly one batch, positions counted,
ranges and weights as the docstring states, and weighted sums equal to a one-sentence-at-a-time
float64 computation in both packings."""

import numpy as np
import pytest
import torch

from taskspace_utils.batching import plan_batches
from taskspace_utils.encoding import pad_token_id, prefix_token_id, tokenize_sentences
from taskspace_utils.padded import span_mask, span_weights, token_logprob_sums
from taskspace_utils.prefix_tree import prefix_tree_logprobs

SENTENCES = ["The cat is here.", "The cat was here.", "The cats are here.", "Dogs bark.", "Dogs barked.",
             "Who did Amy see?", "Who did Amy say that Bob saw?", "A", "The dog is here."]


def reference_weighted(model, ids, prefix, start, end, weight):
    """``weight * sum_{i=start}^{end-1} log p(t_i | BOS, t_<i)`` of one row, float64, alone."""
    full = [prefix] + list(ids)
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([full])).logits[0].double(), dim=-1)
    return weight * sum(logp[i, full[i + 1]].item() for i in range(start, end))


@pytest.fixture(scope="module")
def rows(tiny_tokenizer):
    ids = tokenize_sentences(tiny_tokenizer, SENTENCES)
    rng = np.random.default_rng(0)
    starts = np.array([rng.integers(0, len(x)) for x in ids])
    ends = np.array([rng.integers(s + 1, len(x) + 1) for s, x in zip(starts, ids)])
    weights = rng.choice([-0.25, 0.5, 1.0], size=len(ids))
    return ids, starts, ends, weights


@pytest.mark.parametrize("tree", [False, True])
@pytest.mark.parametrize("batch_tokens", [8, 40, 4096])
def test_every_row_once_and_positions_counted(tiny_tokenizer, rows, tree, batch_tokens):
    ids = rows[0]
    plan = plan_batches(ids, prefix_token_id(tiny_tokenizer), pad_token_id(tiny_tokenizer), tree=tree,
                        batch_tokens=batch_tokens, row_tokens=16)
    seen = np.concatenate([index for index, _ in plan])
    assert sorted(seen.tolist()) == list(range(len(ids)))
    assert len(plan) == len(plan.collated()) == len(plan.groups)
    if tree:  # each tree row's BOS plus its token positions (depth > 0; padding has depth 0)
        fed = sum(int((b["position_ids"] > 0).sum()) + b["input_ids"].shape[0] for _, b in plan)
        assert plan.n_positions == fed < sum(len(x) + 1 for x in ids)  # shared beginnings fed once
    else:
        assert plan.n_positions == sum(len(x) + 1 for x in ids)
        for _, batch in plan:  # at most batch_tokens padded positions, or a single row
            b, width = batch["input_ids"].shape
            assert b * width <= batch_tokens or b == 1


def test_padded_ranges_and_weights_as_stated(tiny_tokenizer, rows):
    ids, starts, ends, weights = rows
    plan = plan_batches(ids, prefix_token_id(tiny_tokenizer), pad_token_id(tiny_tokenizer), tree=False,
                        batch_tokens=64, ranges=(starts, ends), weights=weights, weight_dtype=torch.float64)
    for index, batch in plan:
        for j, r in enumerate(index):
            expected = np.zeros(batch["input_ids"].shape[1])
            expected[1 + starts[r]: 1 + ends[r]] = weights[r]  # collated position 1 + i holds token i
            assert batch["score_mask"][j].numpy().tolist() == (expected != 0).tolist()
            assert batch["token_weights"][j].numpy().tolist() == expected.tolist()
            assert batch["token_weights"].dtype == torch.float64


@pytest.mark.parametrize("tree", [False, True])
def test_weighted_sums_equal_one_row_at_a_time(tiny_lm64, rows, tree):
    model, tok = tiny_lm64
    ids, starts, ends, weights = rows
    prefix = prefix_token_id(tok)
    expected = [reference_weighted(model, x, prefix, s, e, w) for x, s, e, w in zip(ids, starts, ends, weights)]
    plan = plan_batches(ids, prefix, pad_token_id(tok), tree=tree, batch_tokens=48, row_tokens=20,
                        ranges=(starts, ends), weights=weights, weight_dtype=torch.float64)
    total = 0.0
    with torch.no_grad():
        for index, batch in plan:
            if tree:
                total += float((prefix_tree_logprobs(model, batch) * batch["node_weight"]).sum())
            else:
                total += float(token_logprob_sums(model, batch, token_weights=batch["token_weights"]).sum())
    assert total == pytest.approx(sum(expected), rel=1e-10, abs=1e-10)


def test_batch_size_is_for_padded_batches_only(tiny_tokenizer, rows):
    with pytest.raises(ValueError, match="batch_size"):
        plan_batches(rows[0], 0, 0, tree=True, batch_size=4)
    plan = plan_batches(rows[0], 0, 0, tree=False, batch_size=4)
    assert [len(index) for index, _ in plan] == [4, 4, 1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_span_weights_one_row_at_a_time(dtype):
    """The span weights every padded path uses (plan, encode_pairs, ghost norms, per-pair) equal a
    tensor filled row by row: values[r] at collated positions 1 + start .. end, 0 elsewhere."""
    starts, ends = [0, 2, 1, 3], [4, 5, 1, 6]  # row 2: an empty span
    values = [1.0, -0.1, 0.3, 1 / 3]
    width = 7
    expected = torch.zeros(len(starts), width, dtype=dtype)
    for row, (s, e, v) in enumerate(zip(starts, ends, values)):
        expected[row, 1 + s : 1 + e] = v
    got = span_weights(starts, ends, values, width, dtype)
    assert got.dtype == dtype and torch.equal(got, expected)
    assert torch.equal(span_mask(starts, ends, width), expected != 0)
