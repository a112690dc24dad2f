"""HTML pieces of the report: escaped text, tables that scroll, figures inlined as base64 PNG.

Everything here is self-contained: no external stylesheet, script, font or image; the only URLs
written are ``data:`` images and relative links given by the caller. Each figure carries the
limits of its axes as a ``data-axes`` attribute (JSON list of ``{"x": [lo, hi], "y": [lo, hi],
"xscale": …, "yscale": …}``, one per matplotlib axes, read after drawing), so a test — or a reader
with the browser's inspector — can check that every plotted axis is finite.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

__all__ = ["esc", "paragraph", "table_html", "figure_html", "axes_limits", "page", "CSS"]

#: The report's only stylesheet (inline): readable at laptop width, tables scroll in their own box.
CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;line-height:1.5;
 color:#1d1d1f;margin:0;background:#fafafa}
main{max-width:1100px;margin:0 auto;padding:1rem 1.25rem 3rem}
h1{font-size:1.6rem;margin:.5rem 0}h2{font-size:1.3rem;margin-top:2.2rem;border-bottom:1px solid #ddd}
h3{font-size:1.05rem;margin-top:1.4rem}
p{max-width:50rem}.meta{color:#555;font-size:.9rem}
nav ul{display:flex;flex-wrap:wrap;gap:.4rem 1rem;list-style:none;padding:0;margin:.5rem 0}
.table-wrap{overflow-x:auto;max-width:100%;margin:.6rem 0;border:1px solid #e3e3e3;background:#fff}
table{border-collapse:collapse;font-size:.85rem;min-width:100%}
th,td{padding:.3rem .55rem;border-bottom:1px solid #eee;text-align:left;vertical-align:top}
th,td.num{white-space:nowrap}td{min-width:4rem}
th{background:#f2f2f2;position:sticky;top:0}td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:.8rem 0;max-width:100%}figure img{max-width:100%;height:auto;display:block;background:#fff}
figcaption{font-size:.85rem;color:#555}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(100%,430px),1fr));gap:1rem}
details{margin:.6rem 0;background:#fff;border:1px solid #e3e3e3;padding:.4rem .8rem}
summary{cursor:pointer;font-weight:600}
.verdict-supported,.verdict-above{color:#0a6b2d;font-weight:600}
.verdict-contradicted,.verdict-below{color:#a4161a;font-weight:600}
.note{background:#fff8e1;border-left:3px solid #e0b000;padding:.4rem .8rem}
"""


def esc(value) -> str:
    """``value`` as HTML text (``&``, ``<``, ``>``, quotes escaped)."""
    return html.escape(str(value), quote=True)


def paragraph(text: str, cls: str | None = None) -> str:
    """One ``<p>`` of escaped ``text``."""
    return f'<p class="{esc(cls)}">{esc(text)}</p>' if cls else f"<p>{esc(text)}</p>"


def _cell(value, digits: int) -> tuple[str, bool]:
    """(text, is_number) of one table cell: floats rounded to ``digits``, NaN as an empty cell."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "", True
    if isinstance(value, (bool, np.bool_)):
        return ("yes" if value else "no"), False
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}", True
    if isinstance(value, (float, np.floating)):
        return (f"{value:.{digits}f}" if abs(value) >= 10 ** -digits or value == 0 else f"{value:.2e}"), True
    return esc(value), False


def table_html(frame: pd.DataFrame, table_id: str | None = None, digits: int = 3, raw: Iterable[str] = (),
               verdict: str | None = None, index: bool = False) -> str:
    """``frame`` as an HTML table inside a horizontally scrolling box.

    Floats are rounded to ``digits``; columns in ``raw`` hold ready HTML (e.g. links) and are not
    escaped; the cells of column ``verdict`` get the class ``verdict-<first word>`` so verdicts are
    coloured; ``index=True`` writes the index as the first column."""
    raw = set(raw)
    frame = frame.reset_index() if index else frame
    head = "".join(f"<th>{esc(c)}</th>" for c in frame.columns)
    rows = []
    for record in frame.itertuples(index=False, name=None):
        cells = []
        for column, value in zip(frame.columns, record):
            if column in raw:
                cells.append(f"<td>{'' if value is None else value}</td>")
                continue
            text, number = _cell(value, digits)
            cls = "num" if number else ""
            if column == verdict and text:
                cls = f"verdict-{esc(text.split()[0].lower())}"
            cells.append(f'<td class="{cls}">{text}</td>' if cls else f"<td>{text}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    ident = f' id="{esc(table_id)}"' if table_id else ""
    return (f'<div class="table-wrap"><table{ident}><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


def axes_limits(fig) -> list[dict]:
    """``[{"x": [lo, hi], "y": [lo, hi], "xscale": str, "yscale": str}, …]``, one per axes of the
    drawn ``fig`` (non-finite limits are written as ``null``, so they can be found)."""
    def finite(pair: Sequence[float]) -> list:
        return [float(v) if np.isfinite(v) else None for v in pair]

    return [{"x": finite(ax.get_xlim()), "y": finite(ax.get_ylim()), "xscale": ax.get_xscale(),
             "yscale": ax.get_yscale()} for ax in fig.axes]


def figure_html(fig, caption: str, name: str, dpi: int = 90) -> str:
    """``fig`` (a matplotlib figure, or anything with ``.figure``, e.g. a seaborn ``ClusterGrid``)
    as an inline base64 PNG inside ``<figure data-name=… data-axes=…>`` with ``caption``; the
    figure is closed afterwards."""
    import matplotlib.pyplot as plt

    fig = getattr(fig, "figure", fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    limits = axes_limits(fig)
    plt.close(fig)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return (f'<figure data-name="{esc(name)}" data-axes="{esc(json.dumps(limits))}">'
            f'<img alt="{esc(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def page(title: str, body: str) -> str:
    """A complete HTML5 document: ``title``, the inline :data:`CSS`, ``body`` inside ``<main>``."""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{esc(title)}</title><style>{CSS}</style></head>"
            f"<body><main>{body}</main></body></html>\n")
