"""Tests for taskspace_utils.scoring against independent computations (a per-sentence loop over full
log-softmax logits, and the minicons library)."""

import numpy as np
import pandas as pd
import pytest
import torch

from taskspace_utils import lm_head, scoring
from taskspace_utils.scoring import (
    blimp_accuracy, encode_batch, score_pairs, sentence_logprobs, token_logprob_sums,
)

SENTENCES = ["The cat is here.", "Dogs bark.", "Who did Amy see?", "Some actress was astounded by Lucille.",
             "A", "The cat is here.", "These books aren't yellowing.", "Each of the men hugs himself."]


def reference_logprob(model, tokenizer, sentence):
    """Plain loop: one sentence, no padding, full log-softmax over all logits, sum from token 1 on."""
    ids = [tokenizer.bos_token_id] + tokenizer(sentence, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), dim=-1)
    return sum(logp[i, ids[i + 1]].item() for i in range(len(ids) - 1))


def test_matches_per_sentence_loop_float64(tiny_lm64):
    model, tok = tiny_lm64
    got = sentence_logprobs(model, tok, SENTENCES)
    want = np.array([reference_logprob(model, tok, s) for s in SENTENCES])
    assert got.dtype == np.float64 and got.shape == (len(SENTENCES),)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)


def test_matches_per_sentence_loop_float32(tiny_lm):
    model, tok = tiny_lm
    got = sentence_logprobs(model, tok, SENTENCES)
    want = np.array([reference_logprob(model, tok, s) for s in SENTENCES])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


@pytest.mark.parametrize("batch_size", [1, 2, 3, 100])
def test_batch_size_and_padding_do_not_change_scores(tiny_lm64, batch_size):
    model, tok = tiny_lm64
    base = sentence_logprobs(model, tok, SENTENCES, batch_size=None, batch_tokens=16)
    np.testing.assert_allclose(sentence_logprobs(model, tok, SENTENCES, batch_size=batch_size), base, rtol=0, atol=1e-10)


def test_fast_head_path_equals_full_logits(tiny_lm64, monkeypatch):
    model, tok = tiny_lm64
    fast = sentence_logprobs(model, tok, SENTENCES)
    monkeypatch.setattr(lm_head, "HEAD_ON_HIDDEN", set())
    full = sentence_logprobs(model, tok, SENTENCES)
    np.testing.assert_allclose(fast, full, rtol=0, atol=1e-10)


@pytest.mark.parametrize("packing", ["tree", "padded"])
def test_head_in_chunks_of_rows_equals_one_call(tiny_lm64, monkeypatch, packing):
    model, tok = tiny_lm64
    whole = sentence_logprobs(model, tok, SENTENCES, packing=packing)
    monkeypatch.setattr(lm_head, "_HEAD_CHUNK_ROWS", 3)
    np.testing.assert_allclose(sentence_logprobs(model, tok, SENTENCES, packing=packing), whole, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_head_without_autograd_equals_the_differentiable_head(dtype):
    """Without autograd the log-softmax overwrites the head's logits: the same numbers bit for bit
    as with autograd (and as log_softmax + gather written out), in chunks or not; a head that
    returns its input (the full-logits fallback) leaves the caller's tensor untouched."""
    gen = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(8, 50, bias=False).to(dtype)
    hidden = torch.randn(37, 8, generator=gen).to(dtype)
    targets = torch.randint(0, 50, (37,), generator=gen)
    expected = torch.log_softmax(head(hidden).float(), dim=-1)[torch.arange(37), targets]
    for chunk in (None, 5, 0):
        differentiable = lm_head.head_logprobs(head, hidden, targets, chunk)
        assert differentiable.requires_grad and torch.equal(differentiable.detach(), expected)
        with torch.no_grad():
            assert torch.equal(lm_head.head_logprobs(head, hidden, targets, chunk), expected)
        with torch.inference_mode():
            assert torch.equal(lm_head.head_logprobs(head, hidden, targets, chunk), expected)
    logits = head(hidden).float().detach()
    kept = logits.clone()
    with torch.no_grad():
        assert torch.equal(lm_head.head_logprobs(torch.nn.Identity(), logits, targets, 5), expected)
    assert torch.equal(logits, kept)


def test_prefix_falls_back_to_eos(tiny_lm64):
    model, tok = tiny_lm64
    tok2 = tok.__class__(tokenizer_object=tok.backend_tokenizer, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    assert tok2.bos_token is None
    np.testing.assert_allclose(sentence_logprobs(model, tok2, SENTENCES), sentence_logprobs(model, tok, SENTENCES), atol=1e-12)


def test_first_token_is_scored(tiny_lm64):
    """The BOS prefix means a one-token sentence still gets a (negative) score: log p(t1 | BOS)."""
    model, tok = tiny_lm64
    ids = tok("A", add_special_tokens=False)["input_ids"]
    assert len(ids) == 1
    with torch.no_grad():
        want = torch.log_softmax(model(torch.tensor([[tok.bos_token_id]])).logits[0, 0], -1)[ids[0]].item()
    assert sentence_logprobs(model, tok, ["A"])[0] == pytest.approx(want, abs=1e-12)


def test_token_weights_select_tokens_and_gradients_flow(tiny_lm64):
    model, tok = tiny_lm64
    batch = encode_batch(tok, ["The cat is here.", "Dogs bark."])
    weights = batch["score_mask"].double().clone()
    weights[0, 1:3] = 0  # drop the first two tokens of sentence 0
    got = token_logprob_sums(model, batch, token_weights=weights)
    ids = batch["input_ids"][0][batch["attention_mask"][0].bool()].tolist()
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0], -1)
    want0 = sum(logp[i, ids[i + 1]].item() for i in range(2, len(ids) - 1))
    assert got[0].item() == pytest.approx(want0, abs=1e-10)
    assert got.requires_grad
    got.sum().backward()
    assert model.gpt_neox.embed_in.weight.grad is not None
    model.zero_grad(set_to_none=True)


def test_score_pairs_columns_ties_and_correct(tiny_lm64):
    model, tok = tiny_lm64
    pairs = pd.DataFrame({"task": ["t"] * 3, "phenomenon": ["p"] * 3, "field": ["f"] * 3,
                          "good": ["The cat is here.", "Dogs bark.", "Who left?"],
                          "bad": ["The cat are here.", "Dogs barks.", "Who left?"]})
    scored = score_pairs(model, tok, pairs)
    lp = sentence_logprobs(model, tok, list(pairs.good) + list(pairs.bad))
    np.testing.assert_allclose(scored.logp_good, lp[:3], atol=0)
    np.testing.assert_allclose(scored.margin, lp[:3] - lp[3:], atol=0)
    assert scored.loc[2, "tie"] and not scored.loc[2, "correct"] and scored.loc[2, "margin"] == 0.0
    assert list(scored.correct[:2]) == list(scored.margin[:2] > 0)


def test_blimp_accuracy_macro_means():
    scored = pd.DataFrame({"task": ["a", "a", "a", "a", "b", "b"], "phenomenon": ["p"] * 6, "field": ["f"] * 6,
                           "correct": [True, True, False, False, True, True], "tie": [False, False, True, False, False, False],
                           "margin": [1.0, 2.0, 0.0, -1.0, 3.0, 1.0]})
    per_task = blimp_accuracy(scored)
    assert per_task.loc["a", "accuracy"] == 0.5 and per_task.loc["b", "accuracy"] == 1.0
    assert per_task.loc["a", "ties"] == 1 and per_task.loc["a", "mean_margin"] == 0.5
    per_phen = blimp_accuracy(scored, by="phenomenon")
    assert per_phen.loc["p", "accuracy"] == 0.75  # macro mean over tasks, not 5/6
    with pytest.raises(ValueError, match="by="):
        blimp_accuracy(scored, by="nope")


def test_empty_sentence_is_an_error(tiny_lm):
    model, tok = tiny_lm
    with pytest.raises(ValueError, match="no tokens"):
        sentence_logprobs(model, tok, ["ok.", ""])


def test_agrees_with_minicons(tiny_lm):
    """Peer library: minicons' sequence_score with bos_token=True and a sum reduction."""
    minicons_scorer = pytest.importorskip("minicons.scorer")
    model, tok = tiny_lm
    lm = minicons_scorer.IncrementalLMScorer(model, device="cpu", tokenizer=tok)
    theirs = np.array(lm.sequence_score(SENTENCES, reduction=lambda x: x.sum(0).item(), bos_token=True))
    np.testing.assert_allclose(sentence_logprobs(model, tok, SENTENCES), theirs, rtol=0, atol=1e-4)


def test_tokenizer_padding_state_left_by_other_code_is_ignored(tiny_lm64):
    """transformers leaves padding/truncation switched on in the Rust backend after a padded call;
    scoring must not pick that up (found when minicons ran before us)."""
    model, tok = tiny_lm64
    clean = sentence_logprobs(model, tok, SENTENCES)
    tok(SENTENCES, padding="max_length", max_length=20, truncation=True)
    try:
        np.testing.assert_allclose(sentence_logprobs(model, tok, SENTENCES), clean, atol=0)
    finally:
        tok(["x"])  # leave the session tokenizer clean


def test_sentences_longer_than_the_context_fail_before_scoring_naming_file_and_line(tmp_path, tiny_tokenizer):
    """A GPT-2 with 16 positions: the long pair is named by file and line with the limit, and the
    model is never run (before this check: IndexError from inside torch's embedding)."""
    import json

    from transformers import GPT2Config, GPT2LMHeadModel

    from taskspace_utils.data import load_pairs

    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tiny_tokenizer), n_positions=16, n_embd=16, n_layer=1, n_head=2))
    calls = []
    model.transformer.register_forward_pre_hook(lambda *a: calls.append(1))
    long = "the cat " * 20 + "sleeps ."
    rows = [{"good": "the cat sleeps .", "bad": "the cat sleep .", "task": "t"},
            {"good": long, "bad": long.replace("sleeps", "sleep"), "task": "t"}]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    pairs = load_pairs(path)
    with pytest.raises(ValueError, match=r"longer than the model's context of 16 positions.*pairs\.jsonl: line 2"):
        score_pairs(model, tiny_tokenizer, pairs)
    with pytest.raises(ValueError, match="context of 16 positions"):
        sentence_logprobs(model, tiny_tokenizer, [long])
    assert not calls
    assert len(score_pairs(model, tiny_tokenizer, pairs.iloc[:1])) == 1 and calls
