"""Tests for taskspace_utils.spaces.lexical: critical words and lexical overlap spaces."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from taskspace_utils import spaces as sp
from taskspace_utils.spaces import lexical


@pytest.fixture
def tiny_pairs():
    rows = [
        ("A", "The cat is here.", "The cat are here."),
        ("A", "The dog is old.", "The dog are old."),
        ("B", "Cats are here.", "Cats is here."),
        ("C", "She saw herself.", "She saw himself."),
        ("D", "He saw himself.", "He saw herself."),
        ("D", "The cats are here.", "The cats is here."),
    ]
    pairs = pd.DataFrame(rows, columns=["task", "good", "bad"])
    pairs["pair_id"] = range(len(pairs))
    return pairs


def test_critical_words():
    assert sp.critical_words("The cat is here.", "The cat are here.") == {"is", "are"}
    assert sp.critical_words("Katherine can't help herself.", "Katherine can't help himself.") == {"herself", "himself"}
    # a transposition: difflib keeps "who ... did see" aligned, so the moved word is "john"
    assert sp.critical_words("Who did John see?", "Who John did see?") == {"john"}
    assert sp.critical_words([1, 2, 3], [1, 5, 3]) == {2, 5}


def test_lexical_spaces_exact_jaccard(tiny_pairs):
    lex = sp.lexical_spaces(tiny_pairs)
    assert set(lex) == {"critical_words", "vocabulary"}
    crit = lex["critical_words"]
    # C_A = C_B = {is, are}; C_C = {herself, himself}; C_D = {himself, herself, are, is}
    expected = [[1, 1, 0, 0.5], [1, 1, 0, 0.5], [0, 0, 1, 0.5], [0.5, 0.5, 0.5, 1]]
    np.testing.assert_allclose(crit.loc[list("ABCD"), list("ABCD")].to_numpy(), expected)
    vocab = lex["vocabulary"]
    # V_A = {the cat is are here dog old}, V_B = {cats are is here}, V_D = {he saw himself herself the cats are is here}
    assert vocab.at["A", "B"] == pytest.approx(3 / 8)
    assert vocab.at["A", "D"] == pytest.approx(4 / 12)
    assert vocab.at["B", "D"] == pytest.approx(4 / 9)
    assert vocab.at["A", "C"] == 0.0
    np.testing.assert_array_equal(np.diag(vocab), 1.0)


def test_lexical_spaces_weighted_and_cosine(tiny_pairs):
    lex = sp.lexical_spaces(tiny_pairs, weighted=True, vocabulary_measure="cosine")
    # critical-word frequencies: A {is .5, are .5}; D {himself, herself, are, is: .25 each}
    assert lex["critical_words"].at["A", "D"] == pytest.approx(0.5 / 1.5)
    assert lex["critical_words"].at["A", "B"] == pytest.approx(1.0)
    # word counts: A the 4, cat/dog/here/old/is/are 2; B cats 2, here 2, are 1, is 1
    # -> (2 * 2 + 2 * 1 + 2 * 1) / (sqrt(40) * sqrt(10)) = 8 / 20
    assert lex["vocabulary"].at["A", "B"] == pytest.approx(0.4)


def test_lexical_spaces_on_token_ids(tiny_pairs):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for s in pd.concat([tiny_pairs.good, tiny_pairs.bad]) for w in s.lower().rstrip(".").split()})
    ids = {w: i for i, w in enumerate(words)}
    as_ids = lambda s: [ids[w] for w in s.lower().rstrip(".").split()]  # noqa: E731
    by_callable = sp.lexical_spaces(tiny_pairs, tokenizer=as_ids)
    # a word-level tokenizer is a bijection of words, so token overlap == word overlap
    pd.testing.assert_frame_equal(by_callable["critical_tokens"], by_callable["critical_words"])
    pd.testing.assert_frame_equal(by_callable["token_vocabulary"], by_callable["vocabulary"])

    tok = Tokenizer(models.WordLevel({**ids, ".": len(ids), "[UNK]": len(ids) + 1}, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    for tokenizer in (tok, PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")):
        lex = sp.lexical_spaces(tiny_pairs, tokenizer=tokenizer)
        # lower-cased word-level ids; "." is a token but never differs between good and bad
        pd.testing.assert_frame_equal(lex["critical_tokens"], by_callable["critical_words"])
        assert lex["token_vocabulary"].at["A", "B"] == pytest.approx(4 / 9)  # word vocabulary plus "."


def test_lexical_spaces_tokenise_through_the_shared_memo(tiny_pairs, tiny_tokenizer, monkeypatch):
    """A transformers tokenizer goes through encoding.tokenize_sentences (memoised), with the same
    ids as calling it on each sentence; a plain callable is called once per sentence, as before."""
    calls = []
    real = lexical.tokenize_sentences
    monkeypatch.setattr(lexical, "tokenize_sentences", lambda tok, texts: calls.append(len(texts)) or real(tok, texts))
    lex = sp.lexical_spaces(tiny_pairs, tokenizer=tiny_tokenizer)
    assert calls == [len(tiny_pairs), len(tiny_pairs)]  # good, then bad sentences
    calls.clear()
    by_call = sp.lexical_spaces(tiny_pairs, tokenizer=lambda s: tiny_tokenizer(s, add_special_tokens=False)["input_ids"])
    assert calls == []
    for name in ("critical_tokens", "token_vocabulary"):
        pd.testing.assert_frame_equal(lex[name], by_call[name])
