"""Tests for taskspace_utils.agg_fonts: PNG figures drawn with in-memory fonts are the same pixels
as with matplotlib's file-backed fonts, without reading the font file per glyph; PDF output keeps
file-backed fonts."""

from __future__ import annotations

import io
import sys
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from matplotlib import font_manager  # noqa: E402
from matplotlib.backends import backend_agg  # noqa: E402

from taskspace_utils import agg_fonts  # noqa: E402

LABELS = [f"{i}: existential_there_quantifiers_{i} — ☃ 漢" for i in range(40)]


@pytest.fixture(autouse=True)
def _restore():
    """Each test starts and ends with in-memory fonts on (what importing the plotting module does)."""
    agg_fonts.render_fonts_from_memory()
    yield
    agg_fonts.render_fonts_from_memory()
    plt.close("all")


def _png() -> bytes:
    """A figure of labelled ticks (one glyph, 漢, comes from matplotlib's fallback font), a title
    and a legend, as PNG bytes."""
    fig, ax = plt.subplots(figsize=(6, 8))
    ax.barh(range(len(LABELS)), range(len(LABELS)), label="bars")
    ax.set_yticks(range(len(LABELS)), LABELS, fontsize=6)
    ax.set_title("transfer ∆ margin", fontweight="bold")
    ax.legend()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # the fallback font warns that it stands in for 漢
        fig.savefig(buffer, format="png", dpi=72, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _read_calls() -> int:
    """This process's read system calls so far (Linux ``/proc/self/io``)."""
    text = Path("/proc/self/io").read_text()
    return int(next(line.split()[1] for line in text.splitlines() if line.startswith("syscr:")))


def test_png_pixels_are_the_same_with_in_memory_fonts():
    if not agg_fonts.fonts_from_memory_active():
        pytest.skip(f"matplotlib {matplotlib.__version__} is not patched (see agg_fonts)")
    from_memory = _png()
    assert agg_fonts.render_fonts_from_memory(False) is False
    assert not agg_fonts.fonts_from_memory_active()
    from_files = _png()
    assert from_memory == from_files


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts system calls via /proc")
def test_in_memory_fonts_do_not_read_the_font_file_per_glyph():
    if not agg_fonts.fonts_from_memory_active():
        pytest.skip(f"matplotlib {matplotlib.__version__} is not patched (see agg_fonts)")
    _png()                                   # fonts loaded and cached in both modes
    agg_fonts.render_fonts_from_memory(False)
    _png()
    before = _read_calls()
    _png()
    file_reads = _read_calls() - before
    agg_fonts.render_fonts_from_memory(True)
    before = _read_calls()
    _png()
    memory_reads = _read_calls() - before
    assert file_reads > 1000                 # one or more per glyph drawn
    assert memory_reads < 50, (memory_reads, file_reads)


def test_only_agg_uses_in_memory_fonts_and_pdf_still_embeds_from_the_file():
    if not agg_fonts.fonts_from_memory_active():
        pytest.skip(f"matplotlib {matplotlib.__version__} is not patched (see agg_fonts)")
    path = font_manager.findfont("DejaVu Sans")
    assert isinstance(backend_agg.get_font(path).fname, io.BytesIO)
    assert font_manager.get_font(path).fname == str(Path(path).resolve())
    fig, ax = plt.subplots()
    ax.set_title("a title")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="pdf")
    assert b"DejaVuSans" in buffer.getvalue()


def test_no_patch_from_the_release_with_matplotlibs_own_fix(monkeypatch):
    agg_fonts.render_fonts_from_memory(False)
    agg_fonts._get_font_from_memory.cache_clear()
    monkeypatch.setattr(matplotlib, "__version_info__", (3, 12, 0, "final", 0))
    try:
        assert agg_fonts.render_fonts_from_memory() is False
        assert backend_agg.get_font is agg_fonts._FILE_GET_FONT
    finally:
        agg_fonts._get_font_from_memory.cache_clear()
        monkeypatch.undo()
