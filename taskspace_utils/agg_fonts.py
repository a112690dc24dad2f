"""Matplotlib's PNG backend (Agg) reads its fonts from memory instead of from the font file for
every glyph.

Why: up to matplotlib 3.11, ``FT2Font`` gives FreeType a stream whose every read is a Python
``seek()`` and ``read()`` on the open font file, and FreeType reads the file again for every glyph
it loads, on every draw (matplotlib's own fix, PR #32064, maps the file instead; it is not in a
release at the time of writing). Saving one 67-task clustermap as PNG made 78,500 ``read``
(and more ``lseek``) system calls on ``DejaVuSans.ttf``; in the quick main job these calls were a
quarter of all the system time (perf: 2,729 of 11,045 kernel samples), in notebooks 02 and 04 and
in the report. With the font's bytes in memory FreeType's reads are copies: the same pixels, and
per figure 0.79x the time and 0.05x the system time (``benchmarks/bench_fonts.py``).

How: no matplotlib option does this and ``FT2Font`` cannot be subclassed, so
:func:`render_fonts_from_memory` rebinds matplotlib's own ``get_font`` and ``_get_font`` (the same
code, fallback fonts and all) to a namespace whose ``ft2font.FT2Font`` opens an in-memory copy of
the file, with their own cache, and hands them to ``backend_agg`` only. Fonts made this way report
a ``BytesIO`` as ``fname``; Agg never reads it, and the PDF and PS backends, which do, keep
matplotlib's file-backed fonts. It does nothing where matplotlib's functions do not have the
expected form, or from matplotlib 3.12 on.
"""

from __future__ import annotations

import functools
import inspect
import io
import os
import types
from pathlib import Path

import matplotlib
from matplotlib import font_manager
from matplotlib import ft2font as _ft2font
from matplotlib.backends import backend_agg

__all__ = ["render_fonts_from_memory", "fonts_from_memory_active"]

_FILE_GET_FONT = backend_agg.get_font
_LAST_AFFECTED = (3, 12)   # the first release that may carry matplotlib's own fix
_font_bytes: dict[str, bytes] = {}


def _ft2font_from_memory(filename, *args, **kwargs):
    """``FT2Font`` over an in-memory copy of the file ``filename`` (read once per process)."""
    if isinstance(filename, (str, bytes, os.PathLike)):
        path = os.fsdecode(filename)
        if path not in _font_bytes:
            _font_bytes[path] = Path(path).read_bytes()
        filename = io.BytesIO(_font_bytes[path])   # shares the bytes until written to
    return _ft2font.FT2Font(filename, *args, **kwargs)


def _rebound(function, namespace: dict):
    """The undecorated ``function`` with its global names looked up in ``namespace``."""
    raw = inspect.unwrap(function)
    new = types.FunctionType(raw.__code__, namespace, raw.__name__, raw.__defaults__, raw.__closure__)
    new.__kwdefaults__ = raw.__kwdefaults__
    return new


@functools.cache
def _get_font_from_memory():
    """matplotlib's ``get_font`` whose fonts are read from memory, or ``None`` where this
    matplotlib's ``get_font``/``_get_font`` are not the functions this module knows."""
    cached = getattr(font_manager, "_get_font", None)
    public = getattr(font_manager, "get_font", None)
    if (tuple(matplotlib.__version_info__[:2]) >= _LAST_AFFECTED or not hasattr(cached, "cache_clear")
            or public is None or {"ft2font", "FT2Font"} - set(inspect.unwrap(cached).__code__.co_names)
            or "_get_font" not in inspect.unwrap(public).__code__.co_names):
        return None
    namespace = dict(vars(font_manager))
    namespace["ft2font"] = types.SimpleNamespace(FT2Font=_ft2font_from_memory)
    namespace["_get_font"] = functools.lru_cache(64)(_rebound(cached, namespace))
    if hasattr(os, "register_at_fork"):   # FT2Font objects must not cross a fork (as matplotlib's)
        os.register_at_fork(after_in_child=namespace["_get_font"].cache_clear)
    return _rebound(public, namespace)


def render_fonts_from_memory(enable: bool = True) -> bool:
    """Make Agg (PNG output, the notebooks' inline figures) read fonts from memory; ``False``
    gives it matplotlib's own ``get_font`` back. Returns whether in-memory fonts are now in use.
    Idempotent; called when :mod:`taskspace_utils.plotting` is imported, which every
    figure of the notebooks and the report does."""
    replacement = _get_font_from_memory() if enable else None
    backend_agg.get_font = replacement or _FILE_GET_FONT
    return replacement is not None


def fonts_from_memory_active() -> bool:
    """Whether Agg currently uses the in-memory fonts."""
    return backend_agg.get_font is not _FILE_GET_FONT
