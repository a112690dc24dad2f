"""Within one process each distinct sentence is tokenised once per tokenizer, over a whole smoke unit.

Notebooks 01-04 are executed in this process, in order, on one unit folder (code cells in one
namespace per notebook, the parameters injected after the ``parameters`` cell as papermill does).
Every tokenizer that ``load_model`` hands out has its Rust backend wrapped by a counter that records
each sentence the backend is asked to encode, whichever path asks (the kit's memo, a direct
``tokenizer(...)`` call, ``tokenizer.encode``); no (tokenizer, sentence) may be encoded twice.
"""

from __future__ import annotations

import collections

import matplotlib
import nbformat
import pytest

from conftest import NOTEBOOKS

matplotlib.use("Agg")

TASKS = ["anaphor_gender_agreement", "anaphor_number_agreement", "npi_present_1"]


class CountingBackend:
    """Wraps a ``tokenizers.Tokenizer``: counts ``(owner, sentence)`` for every encode call."""

    def __init__(self, backend, owner: int, counts: collections.Counter):
        self._backend, self._owner, self._counts = backend, owner, counts

    def encode_batch(self, inputs, *args, **kwargs):
        for text in inputs:
            self._counts[(self._owner, text if isinstance(text, str) else repr(text))] += 1
        return self._backend.encode_batch(inputs, *args, **kwargs)

    def encode(self, sequence, *args, **kwargs):
        self._counts[(self._owner, sequence if isinstance(sequence, str) else repr(sequence))] += 1
        return self._backend.encode(sequence, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._backend, name)


def _run_in_process(name: str, parameters: dict) -> dict:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    namespace: dict = {"display": lambda *a, **k: None, "__name__": "__main__"}
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        exec(compile(cell.source, f"{name}:{cell.source[:40]!r}", "exec"), namespace)  # noqa: S102
        if "parameters" in cell.metadata.get("tags", []):
            namespace.update(parameters)
    import matplotlib.pyplot as plt

    plt.close("all")
    return namespace


def test_a_smoke_unit_tokenises_each_sentence_once_per_tokenizer(tmp_path, tiny_model_dir, monkeypatch):
    from taskspace_utils import models

    counts: collections.Counter = collections.Counter()
    handed_out = []
    original = models.load_model

    def counting_load_model(*args, **kwargs):
        model, tokenizer = original(*args, **kwargs)
        tokenizer._tokenizer = CountingBackend(tokenizer.backend_tokenizer, len(handed_out), counts)
        handed_out.append(tokenizer)
        return model, tokenizer

    monkeypatch.setattr(models, "load_model", counting_load_model)
    monkeypatch.chdir(NOTEBOOKS)
    unit = str(tmp_path / "unit")
    common = dict(model=str(tiny_model_dir), out_dir=unit, smoke=True, tasks=TASKS)
    _run_in_process("01_build_data.ipynb", dict(common, device="cpu"))
    _run_in_process("02_gradient_extraction.ipynb", dict(common, device="cpu"))
    _run_in_process("03_ftgd.ipynb", dict(common, tasks=TASKS[:2], n_train=4, n_test=4, steps=2, batch_size=2))
    _run_in_process("04_similarity_probing.ipynb", dict(common, device="cpu", baseline_model=None, seed2=1,
                                                        n_permutations=20, n_boot=20))
    assert len(handed_out) == 4  # one model and tokenizer per notebook
    per_tokenizer = collections.Counter(owner for owner, _ in counts)
    assert all(per_tokenizer[i] > 0 for i in range(4)), per_tokenizer  # every notebook tokenised something
    repeated = {key: n for key, n in counts.items() if n > 1}
    assert not repeated, f"{len(repeated)} sentence(s) tokenised more than once, e.g. {list(repeated.items())[:3]}"


def test_the_counter_sees_a_second_tokenisation(tiny_tokenizer):
    """The check above can fail: without the memo, the same sentence twice is counted twice."""
    from taskspace_utils import encoding

    counts: collections.Counter = collections.Counter()
    backend = CountingBackend(tiny_tokenizer.backend_tokenizer, 0, counts)

    class Tok:
        backend_tokenizer = backend

    encoding._raw_tokenize(Tok(), ["the cat sleeps ."])
    encoding._raw_tokenize(Tok(), ["the cat sleeps ."])
    assert counts[(0, "the cat sleeps .")] == 2
    with pytest.raises(AssertionError):
        assert not {k: n for k, n in counts.items() if n > 1}
