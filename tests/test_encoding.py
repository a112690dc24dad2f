"""EncodedPairs and the tokenisation memo, against an independent computation from the tokenizer."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from taskspace_utils import encoding
from taskspace_utils.data import load_blimp, token_alignment
from taskspace_utils.encoding import EncodedPairs, encode, pairs_hash, tokenize_sentences


@pytest.fixture(scope="module")
def pairs():
    frame = load_blimp(tasks=["determiner_noun_agreement_1", "npi_present_1", "wh_island"])
    return frame.groupby("task", group_keys=False).head(40).reset_index(drop=True)


def _reference(tokenizer, good: str, bad: str):
    """Prefix, suffix and critical ends computed from scratch with the transformers call."""
    g = tokenizer(good, add_special_tokens=False)["input_ids"]
    b = tokenizer(bad, add_special_tokens=False)["input_ids"]
    p = 0
    while p < min(len(g), len(b)) and g[p] == b[p]:
        p += 1
    s = 0
    while s < min(len(g), len(b)) - p and g[len(g) - 1 - s] == b[len(b) - 1 - s]:
        s += 1
    end_g = len(g) - min(s, max(len(g) - p - 1, 0))
    end_b = len(b) - min(s, max(len(b) - p - 1, 0))
    return g, b, p, s, end_g, end_b


def test_ids_alignment_and_spans_equal_a_direct_computation(tiny_tokenizer, pairs):
    enc = encode(tiny_tokenizer, pairs)
    start_c, end_g, end_b = enc.spans("critical")
    start_s, n_g, n_b = enc.spans("sentence")
    for i, (good, bad) in enumerate(zip(pairs["good"], pairs["bad"])):
        g, b, p, s, eg, eb = _reference(tiny_tokenizer, good, bad)
        assert enc.good_ids[i] == g and enc.bad_ids[i] == b
        assert (enc.prefix_len[i], enc.suffix_len[i]) == (p, s)
        assert (start_c[i], end_g[i], end_b[i]) == (p, eg, eb)
        assert (start_s[i], n_g[i], n_b[i]) == (p, len(g), len(b))
    align = enc.alignment()
    assert list(align.columns) == ["prefix_len", "suffix_len", "n_good_tokens", "n_bad_tokens", "good_diff",
                                   "bad_diff", "single_substitution", "same_length"]
    pd.testing.assert_frame_equal(token_alignment(pairs, tiny_tokenizer), align)


def test_exclusions_name_the_reason(tiny_tokenizer):
    frame = pd.DataFrame({"good": ["the cat sleeps .", "the cat", "the dog barks"],
                          "bad": ["the cat sleeps .", "the cat sleeps", "the dog"]})
    assert list(encode(tiny_tokenizer, frame).excluded) == [
        "identical tokens", "good is a prefix of bad", "bad is a prefix of good"]


def test_select_keeps_encodings_and_order(tiny_tokenizer, pairs):
    enc = encode(tiny_tokenizer, pairs.assign(split=np.where(np.arange(len(pairs)) % 2, "test", "train")))
    sub = enc.select(tasks=["npi_present_1"], split="test")
    want = enc.pairs[(enc.pairs["task"] == "npi_present_1") & (enc.pairs["split"] == "test")]
    assert list(sub.pairs.index) == list(want.index)
    for k, i in enumerate(want.index):
        assert sub.good_ids[k] == enc.good_ids[i] and sub.prefix_len[k] == enc.prefix_len[i]
    picked = enc.select([5, 2, 7, 2])  # order and repeats kept (a batch may hold a pair twice)
    assert list(picked.pairs.index) == [5, 2, 7, 2]
    assert picked.good_ids[3] == enc.good_ids[2]
    assert picked.bad_ids[0] == enc.bad_ids[5]
    assert len(enc.select(np.arange(len(enc)) < 3)) == 3


def test_pairs_hash_depends_on_task_and_sentences(pairs):
    h = pairs_hash(pairs)
    assert h == pairs_hash(pairs.copy()) and len(h) == 16
    assert pairs_hash(pairs.assign(task="other")) != h
    swapped = pairs.assign(good=pairs["bad"], bad=pairs["good"])
    assert pairs_hash(swapped) != h


def test_each_distinct_sentence_is_tokenised_once_per_tokenizer(pairs):
    from conftest import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    seen: list[str] = []
    backend = tok.backend_tokenizer
    original = backend.encode_batch

    class Counting:
        padding = truncation = None

        def encode_batch(self, sentences, add_special_tokens=False):
            seen.extend(sentences)
            return original(sentences, add_special_tokens=add_special_tokens)

        def __getattr__(self, name):
            return getattr(backend, name)

    tok._tokenizer = Counting()  # what backend_tokenizer returns
    first = tokenize_sentences(tok, list(pairs["good"]) * 2)
    encode(tok, pairs)
    token_alignment(pairs, tok)
    assert sorted(seen) == sorted(set(pairs["good"]) | set(pairs["bad"]))
    assert first[0] == encoding._raw_tokenize(build_tiny_tokenizer(), [pairs["good"].iloc[0]])[0]


def test_tuple_input_and_bad_frames(tiny_tokenizer):
    enc = encode(tiny_tokenizer, (["a b", "c d"], ["a c", "c e"]))
    assert isinstance(enc, EncodedPairs) and len(enc) == 2
    assert encode(tiny_tokenizer, enc) is enc
    with pytest.raises(ValueError, match="2 good but 1 bad"):
        encode(tiny_tokenizer, (["a", "b"], ["c"]))
    with pytest.raises(ValueError, match=r"missing column\(s\) \['bad'\]"):
        encode(tiny_tokenizer, pd.DataFrame({"good": ["a"]}))
    with pytest.raises(ValueError, match="variant='words'"):
        enc.spans("words")


def test_pairs_hash_without_task_is_the_gradient_stage_key(pairs):
    """One function, two keys: with the task (results of several tasks) and without (one task's file)."""
    import hashlib

    one = pairs[pairs.task == "wh_island"]
    text = "\n".join(f"{g}\t{b}" for g, b in zip(one.good, one.bad))
    assert pairs_hash(one, with_task=False) == hashlib.sha256(text.encode()).hexdigest()[:16]
    assert pairs_hash(one, with_task=False) == pairs_hash(one.assign(task="other"), with_task=False)
    assert pairs_hash(one) != pairs_hash(one, with_task=False)
