"""Tests for taskspace_utils.suite.corpus: cleaning rules, Brown de-tagging, sentence splitting, the
bit-reproducible corpus build, the shipped corpus's integrity, and the tokenizer round trip."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import pytest

from taskspace_utils.suite import corpus
from taskspace_utils.suite.corpus import (
    EOT_TOKEN, CorpusConfig, build_corpus, clean_paragraph, detag_brown, read_corpus, split_sentences,
    train_tokenizer,
)
from taskspace_utils.results import read_json

SHARED_SOURCES = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "corpus"


# ------------------------------------------------------------------------------------ cleaning
@pytest.mark.parametrize("raw, expected", [
    ("\ufeffWhen you see it", "When you see it"),
    ("\u2018and what is the use of a book,\u2019 thought Alice", "'and what is the use of a book,' thought Alice"),
    ("\u201cPoison,\u201d she said", '"Poison," she said'),
    ("the world\u2019s biggest forest \u2013 the longest river", "the world's biggest forest - the longest river"),
    ("it was _very_ odd and _quite_ so", "it was very odd and quite so"),
    ("snake_case stays intact", "snake_case stays intact"),
    ("one line\nbroken   here\n\tand here", "one line broken here and here"),
    ("\ufb01ne \ufb02ow and so\u2026", "fine flow and so..."),
    ("a\u00adb and soft\u200bhyphen", "ab and softhyphen"),
])
def test_clean_paragraph_rules(raw, expected):
    assert clean_paragraph(raw) == expected


@pytest.mark.parametrize("heading", [
    "CHAPTER I. Down the Rabbit-Hole", "CHAPTER XII. Alice's Evidence", "THE END",
    "*    *    *    *", "BOOK 2 The return", "PART IV", "   ",
])
def test_clean_paragraph_drops_headings(heading):
    assert clean_paragraph(heading) == ""


def test_clean_paragraph_keeps_sentences_that_start_like_headings():
    text = "Part of the ritual consists in offerings of rice."
    assert clean_paragraph(text) == text


def test_detag_brown_restores_words_quotes_and_punctuation():
    line = ("The/at jury/nn said/vbd ``/`` no/at evidence/nn ''/'' ,/, that/cs any/dti "
            "irregularities/nns (/( 1/2/cd )/) took/vbd place/nn ./.")
    assert detag_brown(line) == 'The jury said "no evidence," that any irregularities (1/2) took place.'


def test_detag_brown_full_stop_moves_inside_closing_quote_and_contractions_attach():
    line = "He/pps said/vbd it/pps ``/`` isn't/bez* fair/jj ''/'' ./. $/$ 5/cd"
    assert detag_brown(line) == 'He said it "isn\'t fair." $5'


def test_split_sentences_handles_quotes_and_abbreviations():
    paragraph = ('"Come here!" said Mr. Smith. She came. Was it J. B. Brady? '
                 "'Yes,' said she. 3 more followed.")
    assert split_sentences(paragraph) == [
        '"Come here!" said Mr. Smith.', "She came.", "Was it J. B. Brady?", "'Yes,' said she.",
        "3 more followed."]


def test_split_sentences_keeps_a_single_sentence_whole():
    assert split_sentences("no capital after this. so no split") == ["no capital after this. so no split"]


# ------------------------------------------------------------------------------------- build
def _write_sources(root: Path) -> None:
    (root / "chilit").mkdir(parents=True)
    (root / "chilit" / "book.txt").write_text(
        "A Book Title\nSome Author\n\nCHAPTER I. The Start\n\nThe \u2018first\u2019 line\nwraps here.\n\n"
        "Second paragraph is here.\n\nThird paragraph ends it.\n", encoding="utf-8")
    (root / "brown").mkdir()
    (root / "brown" / "ca01").write_text(
        "\n\n\tThe/at jury/nn said/vbd so/rb ./.\n\n\n\tIt/pps was/bedz late/jj ./.\n", encoding="latin-1")
    (root / "brown" / "CONTENTS").write_text("not/a corpus/file\n", encoding="latin-1")
    for level, text in (("Adv", "\ufeffThe advanced text.\nIts second paragraph.\n"),
                        ("Ele", "\ufeffThe easy text.\nIts last part.\n"),
                        ("Int", "Intermediate\nThe citys text.\nIts end.\n")):
        (root / "onestop" / level).mkdir(parents=True)
        (root / "onestop" / level / f"News-{level.lower()}.txt").write_text(text, encoding="utf-8")


def test_build_corpus_splits_cleans_and_is_bit_reproducible(tmp_path):
    _write_sources(tmp_path / "src")
    config = CorpusConfig(valid_fraction=0.34)
    manifest = build_corpus(tmp_path / "src", tmp_path / "a", config)
    build_corpus(tmp_path / "src", tmp_path / "b", config)
    for name in ("train.txt.gz", "valid.txt.gz", "manifest.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    train, valid = read_corpus("train", tmp_path / "a"), read_corpus("valid", tmp_path / "a")
    # chilit: title and chapter heading dropped; last of 3 paragraphs (round(0.34 * 3) = 1) held out.
    assert train[:2] == ["The 'first' line wraps here.", "Second paragraph is here."]
    assert valid == ["Third paragraph ends it.", "It was late.", "Its second paragraph.", "Its last part."]
    assert train[2:] == ["The jury said so.", "The advanced text.", "The easy text."]
    assert not any("citys" in line for line in train + valid)  # the damaged Int level is left out
    assert manifest["sources"]["brown"]["texts"] == 1  # CONTENTS is not a text
    assert manifest["train"]["sha256"] == hashlib.sha256((tmp_path / "a" / "train.txt.gz").read_bytes()).hexdigest()


def test_build_corpus_names_missing_source(tmp_path):
    with pytest.raises(FileNotFoundError, match="chilit"):
        build_corpus(tmp_path, tmp_path / "out")


def test_shipped_corpus_matches_its_manifest():
    manifest = read_json(corpus.CORPUS_DIR / "manifest.json")
    for split in ("train", "valid"):
        data = (corpus.CORPUS_DIR / manifest[split]["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == manifest[split]["sha256"]
        assert len(gzip.decompress(data).decode("utf-8").splitlines()) == manifest[split]["paragraphs"]
    assert manifest["sources"]["chilit"]["words"] > 4_000_000
    assert (corpus.CORPUS_DIR / "SOURCES.md").exists()


@pytest.mark.skipif(not SHARED_SOURCES.is_dir(), reason="raw sources (../shared/data/corpus) not present")
def test_rebuilding_from_sources_reproduces_the_shipped_corpus(tmp_path):
    manifest = build_corpus(SHARED_SOURCES, tmp_path)
    shipped = read_json(corpus.CORPUS_DIR / "manifest.json")
    assert manifest["train"]["sha256"] == shipped["train"]["sha256"]
    assert manifest["valid"]["sha256"] == shipped["valid"]["sha256"]


# ---------------------------------------------------------------------------------- tokenizer
@pytest.fixture(scope="module")
def corpus_tokenizer():
    sentences = [s for p in read_corpus("train")[:3000] for s in split_sentences(p)]
    return train_tokenizer(sentences, vocab_size=600)


@pytest.mark.parametrize("text", [
    "The cat sat on the mat.", " leading space and  double  spaces", "Caf\u00e9 na\u00efve \u00a35 \u2014 \U0001f600",
    "line\nbreak\ttab", "Who did Alice's friends see?",
])
def test_tokenizer_round_trip(corpus_tokenizer, text):
    ids = corpus_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert corpus_tokenizer.decode(ids) == text


def test_tokenizer_special_tokens_and_no_prefix_space(corpus_tokenizer):
    tok = corpus_tokenizer
    assert len(tok) == 600
    assert tok.bos_token == tok.eos_token == tok.pad_token == EOT_TOKEN
    assert tok.convert_tokens_to_ids(EOT_TOKEN) == 0
    assert tok("The dog.")["input_ids"] == tok("The dog.", add_special_tokens=False)["input_ids"]
    first = tok.convert_ids_to_tokens(tok("The dog.")["input_ids"])[0]
    assert not first.startswith("\u0120")  # no space added before a sentence's first word
    assert tok.convert_ids_to_tokens(tok(" dog")["input_ids"])[0].startswith("\u0120")


def test_tokenizer_training_is_deterministic_and_saves_in_hf_format(corpus_tokenizer, tmp_path):
    from transformers import AutoTokenizer

    sentences = [s for p in read_corpus("train")[:3000] for s in split_sentences(p)]
    again = train_tokenizer(sentences, vocab_size=600)
    assert again.backend_tokenizer.to_str() == corpus_tokenizer.backend_tokenizer.to_str()
    corpus_tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "Many girls were insulted by themselves."
    assert loaded(text)["input_ids"] == corpus_tokenizer(text)["input_ids"]
    assert loaded.bos_token == EOT_TOKEN


def test_tokenizer_rejects_too_small_vocabulary():
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(["a b c"], vocab_size=200)
