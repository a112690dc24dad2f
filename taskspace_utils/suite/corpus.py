"""Pre-training corpus and tokenizer for the offline model suite (stage 00, before paper section 3).

The paper compares the authors' own models of three sizes (about 27M, 70M and 203M parameters, not
released) and their checkpoints; Pythia is the kit's public stand-in, and the kit reproduces the
setting offline by pre-training a small GPT-NeoX suite in Pythia's design (:mod:`taskspace_utils.suite`) on the
corpus built here. This module turns the raw sources into a cleaned, bit-reproducible corpus that
ships in the repository (``data/corpus/``), splits segments for training, and trains the byte-level
BPE tokenizer.

Corpus layout (``data/corpus/``)
--------------------------------
- ``train.txt.gz`` / ``valid.txt.gz``: one paragraph per line, UTF-8, gzip with a zero timestamp (so
  the bytes depend only on the text). Brown has no paragraph marks; each of its sentences is a line.
- ``manifest.json``: per source the files, paragraphs and words; the SHA-256 of both files; the
  :class:`CorpusConfig` that built them.
- ``SOURCES.md``: provenance and licences.

Cleaning rules (:func:`clean_paragraph`, :func:`detag_brown`)
--------------------------------------------------------------
- byte-order marks and control characters removed; Unicode NFKC (ligatures, ``…`` → ``...``);
- curly quotes → straight (``‘’`` → ``'``, ``“”`` → ``"``), en/em dashes → ``-``;
- Gutenberg italics ``_word_`` → ``word``; hard line breaks inside a paragraph → one space;
- paragraphs without a lowercase letter (``THE END``, ``* * *``) or opening with an uppercase
  heading (``CHAPTER IV. ...``) dropped, as is the title/author paragraph of each children's book;
- Brown: ``word/tag`` → ``word``, ``` `` ``` / ``''`` → ``"``, no space before closing punctuation,
  a comma or full stop that Brown puts after a closing quote moved inside it (``"x," he said``);
- OneStopEnglish: only the ``Adv`` and ``Ele`` versions; the ``Int`` files of the source lost every
  apostrophe and dash (``whats``, ``the citys Mayor``), which would teach wrong possessives.

Validation split: the last ``valid_fraction`` of the paragraphs of every text (at least one), so
every source and genre is represented and no paragraph is in both splits.

Public functions
----------------
- :func:`build_corpus`: sources → ``data/corpus/`` (the ``train``/``valid`` files and manifest).
- :func:`read_corpus`: the paragraphs of one split.
- :func:`split_sentences`: paragraph → sentences, the training segments that follow BOS.
- :func:`train_tokenizer`: byte-level BPE with ``<|endoftext|>`` as BOS = EOS = pad.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from ..results import atomic_path, atomic_write_json

__all__ = [
    "CORPUS_DIR",
    "CorpusConfig",
    "clean_paragraph",
    "detag_brown",
    "split_paragraphs",
    "split_sentences",
    "build_corpus",
    "read_corpus",
    "corpus_sha256",
    "train_tokenizer",
    "EOT_TOKEN",
]

#: Where the built corpus ships inside the repository.
CORPUS_DIR = Path(__file__).resolve().parents[2] / "data" / "corpus"
#: The one special token: begin- and end-of-text and padding, as in Pythia.
EOT_TOKEN = "<|endoftext|>"


@dataclass(frozen=True)
class CorpusConfig:
    """How the corpus is built.

    Attributes
    ----------
    sources:
        Sub-folders of the source directory to read, in this order: ``chilit`` (children's books),
        ``brown`` (Brown corpus, tagged), ``onestop`` (OneStopEnglish).
    onestop_levels:
        OneStopEnglish reading levels to keep (``Int`` is damaged in the source; see module notes).
    valid_fraction:
        Fraction of each text's paragraphs, taken from its end, held out for validation.
    min_words:
        Paragraphs with fewer words are dropped (headings that do have lowercase letters, e.g.
        ``Lewis Carroll`` lines, are mostly short).
    """

    sources: tuple[str, ...] = ("chilit", "brown", "onestop")
    onestop_levels: tuple[str, ...] = ("Adv", "Ele")
    valid_fraction: float = 0.02
    min_words: int = 2


# ----------------------------------------------------------------------------------------- cleaning
_QUOTES = str.maketrans({
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"',
    "\u2013": "-", "\u2014": "-", "\u2012": "-", "\u2015": "-",
    "\ufeff": None, "\u00ad": None, "\u200b": None,
})
_ITALICS = re.compile(r"(?<![A-Za-z0-9])_+([^_\n]+?)_+(?![A-Za-z0-9])")
_SPACES = re.compile(r"\s+")
_HEADING = re.compile(r"(CHAPTER|BOOK|PART|STAVE|VOLUME)\s+([IVXLC]+|\d+)\b")


def clean_paragraph(text: str) -> str:
    """Apply the character-level cleaning rules to one paragraph; return '' to drop it.

    ``text`` may hold hard line breaks (they become spaces). The result is one line with single
    spaces, straight quotes and ASCII dashes; it is ``''`` when no lowercase letter is left
    (headings, separators), so the caller drops it.
    """
    text = text.translate(_QUOTES)
    text = unicodedata.normalize("NFKC", text)
    text = "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch)[0] != "C")
    text = _ITALICS.sub(r"\1", text)
    text = _SPACES.sub(" ", text).strip()
    if not any(ch.islower() for ch in text) or _HEADING.match(text):
        return ""
    return text


_OPEN = {"``": '"', "`": "'"}
_CLOSE = {"''": '"', "'": "'"}
_NO_SPACE_BEFORE = {".", ",", ";", ":", "?", "!", ")", "]", "}", "%", "'s", "n't", "'re", "'ll", "'ve", "'d", "'m"}
_NO_SPACE_AFTER = {"(", "[", "{", "$"}


def detag_brown(line: str) -> str:
    """One tagged Brown sentence (``The/at jury/nn said/vbd ``/`` ...``) → plain text.

    Each whitespace-separated token is ``word/tag``; the tag is what follows the last ``/``
    (``1/2/cd`` is the word ``1/2``). Opening quotes ``` `` ``` and closing ``''`` become ``"``
    attached to the quoted words; punctuation attaches to the word before it, brackets and ``$``
    to the word after them.
    """
    words = [tok.rsplit("/", 1)[0] if "/" in tok else tok for tok in line.split()]
    for i in range(len(words) - 1):  # Brown writes `` x '' , and `` x '' . ; English puts them inside
        if words[i] == "''" and words[i + 1] in (",", "."):
            words[i], words[i + 1] = words[i + 1], words[i]
    out: list[str] = []
    glue_next = True  # no space before the first word
    for word in words:
        if word in _OPEN:
            piece, glue_this, glue_after = _OPEN[word], glue_next, True
        elif word in _CLOSE:
            piece, glue_this, glue_after = _CLOSE[word], True, False
        else:
            piece = word
            glue_this = glue_next or word in _NO_SPACE_BEFORE
            glue_after = word in _NO_SPACE_AFTER
        if out and not glue_this:
            out.append(" ")
        out.append(piece)
        glue_next = glue_after
    return "".join(out)


def split_paragraphs(text: str) -> list[str]:
    """Split raw text at blank lines into paragraphs (each still holding its line breaks)."""
    return [p for p in re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n").replace("\r", "\n")) if p.strip()]


_ABBREVIATIONS = {"Mr.", "Mrs.", "Dr.", "St.", "Mt.", "Messrs.", "Jr.", "Sr.", "Prof.", "Capt.", "Col.",
                  "Gen.", "Lt.", "Rev.", "Gov.", "Sen.", "Rep.", "vs.", "etc.", "i.e.", "e.g.", "No.", "Co."}
_SENTENCE_END = re.compile(r"""(?<=[.!?])\s+(?=["'(\[]?[A-Z0-9])|(?<=[.!?]["')\]])\s+(?=["'(\[]?[A-Z0-9])""")


def split_sentences(paragraph: str) -> list[str]:
    """Split a cleaned paragraph into sentences (the segments that follow BOS in training).

    A boundary is whitespace after ``.``, ``!`` or ``?`` (optionally followed by a closing quote or
    bracket) and before an uppercase letter or digit (optionally after an opening quote). A piece
    ending in a common abbreviation (``Mr.``) or a single capital (``J.``) is joined to the next.
    """
    pieces = _SENTENCE_END.split(paragraph)
    out: list[str] = []
    for piece in pieces:
        if out:
            last = out[-1].rsplit(" ", 1)[-1]
            if last in _ABBREVIATIONS or re.fullmatch(r"[A-Z]\.", last):
                out[-1] = f"{out[-1]} {piece}"
                continue
        out.append(piece)
    return out


# ------------------------------------------------------------------------------------------ sources
def _read_chilit(folder: Path) -> Iterator[tuple[str, list[str]]]:
    for path in sorted(folder.glob("*.txt")):
        paragraphs = split_paragraphs(path.read_text(encoding="utf-8-sig"))
        yield f"chilit/{path.name}", paragraphs[1:]  # the first paragraph is title and author


def _read_brown(folder: Path) -> Iterator[tuple[str, list[str]]]:
    for path in sorted(folder.iterdir()):
        if not re.fullmatch(r"c[a-r]\d\d", path.name):
            continue  # CONTENTS, README
        lines = path.read_text(encoding="latin-1").splitlines()
        yield f"brown/{path.name}", [detag_brown(line) for line in lines if line.strip()]


def _read_onestop(folder: Path, levels: Iterable[str]) -> Iterator[tuple[str, list[str]]]:
    headers = {"Elementary", "Intermediate", "Advanced", "Ele", "Int", "Adv"}
    for level in levels:
        for path in sorted((folder / level).glob("*.txt")):
            lines = path.read_text(encoding="utf-8-sig", errors="strict").splitlines()
            lines = [ln for ln in lines if ln.strip() and ln.strip() not in headers]
            yield f"onestop/{level}/{path.name}", lines


def _read_sources(source_dir: Path, config: CorpusConfig) -> Iterator[tuple[str, str, list[str]]]:
    readers = {
        "chilit": lambda: _read_chilit(source_dir / "chilit"),
        "brown": lambda: _read_brown(source_dir / "brown"),
        "onestop": lambda: _read_onestop(source_dir / "onestop", config.onestop_levels),
    }
    for source in config.sources:
        if source not in readers:
            raise ValueError(f"CorpusConfig.sources: unknown source {source!r}; known: {sorted(readers)}")
        if not (source_dir / source).is_dir():
            raise FileNotFoundError(f"{source_dir / source}: source folder missing (see data/corpus/SOURCES.md)")
        for name, paragraphs in readers[source]():
            yield source, name, paragraphs


def _write_gzip_lines(path: Path, lines: list[str]) -> str:
    """Write lines to ``path`` as gzip with mtime 0 and no file name (reproducible); return sha256."""
    raw = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as gz:
        gz.write(("\n".join(lines) + "\n").encode("utf-8"))
    data = raw.getvalue()
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def build_corpus(source_dir: str | Path, out_dir: str | Path = CORPUS_DIR,
                 config: CorpusConfig = CorpusConfig()) -> dict:
    """Clean the sources in ``source_dir`` and write ``train.txt.gz``, ``valid.txt.gz``, ``manifest.json``.

    Texts are read in a fixed order (sources in ``config.sources`` order, files sorted by name), each
    is cleaned paragraph by paragraph, and its last ``max(1, round(valid_fraction * n))`` kept
    paragraphs go to validation. The output bytes depend only on the sources and ``config``.
    Returns the manifest.
    """
    source_dir, out_dir = Path(source_dir), Path(out_dir)
    train: list[str] = []
    valid: list[str] = []
    stats: dict[str, dict] = {}
    for source, _name, raw_paragraphs in _read_sources(source_dir, config):
        kept = [p for p in map(clean_paragraph, raw_paragraphs) if len(p.split()) >= config.min_words]
        if not kept:
            continue
        n_valid = max(1, round(config.valid_fraction * len(kept))) if len(kept) > 1 else 0
        train.extend(kept[: len(kept) - n_valid])
        valid.extend(kept[len(kept) - n_valid:])
        entry = stats.setdefault(source, {"texts": 0, "paragraphs": 0, "words": 0, "valid_paragraphs": 0})
        entry["texts"] += 1
        entry["paragraphs"] += len(kept)
        entry["valid_paragraphs"] += n_valid
        entry["words"] += sum(len(p.split()) for p in kept)
    manifest = {
        "config": dataclasses.asdict(config),
        "sources": stats,
        "train": {"file": "train.txt.gz", "paragraphs": len(train), "sha256": _write_gzip_lines(out_dir / "train.txt.gz", train)},
        "valid": {"file": "valid.txt.gz", "paragraphs": len(valid), "sha256": _write_gzip_lines(out_dir / "valid.txt.gz", valid)},
    }
    atomic_write_json(out_dir / "manifest.json", manifest)
    return manifest


def read_corpus(split: str = "train", corpus_dir: str | Path = CORPUS_DIR) -> list[str]:
    """The paragraphs of ``split`` (``"train"`` or ``"valid"``), one string each."""
    if split not in ("train", "valid"):
        raise ValueError(f"read_corpus: split must be 'train' or 'valid', got {split!r}")
    path = Path(corpus_dir) / f"{split}.txt.gz"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} missing: build it with taskspace_utils.corpus.build_corpus(<source dir>) "
            "(see data/corpus/SOURCES.md)")
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return handle.read().splitlines()


def corpus_sha256(corpus_dir: str | Path = CORPUS_DIR) -> str:
    """SHA-256 over both split files (train bytes then valid bytes): the corpus identity."""
    digest = hashlib.sha256()
    for split in ("train", "valid"):
        digest.update((Path(corpus_dir) / f"{split}.txt.gz").read_bytes())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------- tokenizer
def train_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int = 2):
    """Train a byte-level BPE tokenizer and wrap it as a ``PreTrainedTokenizerFast``.

    GPT-2/Pythia style: bytes are mapped to printable characters, text is pre-split by the GPT-2
    regex with *no* added prefix space (so a sentence after BOS is tokenised as written), and the
    single special token ``<|endoftext|>`` (id 0) is BOS, EOS and pad. The 256 byte symbols are in
    the initial alphabet, so every string round-trips: ``decode(encode(s)) == s``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 257 + 1:
        raise ValueError(f"train_tokenizer: vocab_size={vocab_size} must exceed 257 (256 bytes + <|endoftext|>)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[EOT_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOT_TOKEN, eos_token=EOT_TOKEN, pad_token=EOT_TOKEN,
        unk_token=None, add_prefix_space=False, clean_up_tokenization_spaces=False)
