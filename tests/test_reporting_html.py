"""Tests for taskspace_utils.reporting.html: escaped tables that scroll, inline figures with their
axis limits, a page without external resources."""

from __future__ import annotations

import base64
import json
import re

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from taskspace_utils.reporting import html as rh  # noqa: E402


def test_table_html_escapes_rounds_and_marks_verdicts():
    frame = pd.DataFrame({"name": ["<b>x</b>", "y"], "value": [0.123456, np.nan], "n": [1200, 3],
                          "verdict": ["supported", "inconclusive"], "link": ['<a href="u/01.ipynb">01</a>', ""]})
    text = rh.table_html(frame, "t", digits=2, raw=["link"], verdict="verdict")
    assert text.startswith('<div class="table-wrap"><table id="t">')
    assert "&lt;b&gt;x&lt;/b&gt;" in text and "<b>" not in text
    assert '<td class="num">0.12</td>' in text and '<td class="num"></td>' in text  # NaN: empty cell
    assert '<td class="num">1,200</td>' in text
    assert '<td class="verdict-supported">supported</td>' in text and '<a href="u/01.ipynb">01</a>' in text
    assert text.count("<tr>") == 3


def test_figure_html_inlines_png_and_records_axis_limits():
    fig, axes = plt.subplots(1, 2)
    axes[0].plot([1, 2, 3], [4, 5, 6])
    axes[0].set_xlim(0, 10)
    axes[1].set_yscale("log")
    axes[1].set_ylim(1, 100)
    text = rh.figure_html(fig, "a <caption>", "demo")
    assert not plt.fignum_exists(fig.number)  # closed
    attrs = dict(re.findall(r'(data-[a-z]+)="([^"]*)"', text))
    limits = json.loads(attrs["data-axes"].replace("&quot;", '"'))
    assert [lim["x"] for lim in limits][0] == [0.0, 10.0]
    assert limits[1]["y"] == [1.0, 100.0] and limits[1]["yscale"] == "log"
    src = re.search(r'src="data:image/png;base64,([^"]+)"', text).group(1)
    assert base64.b64decode(src)[:4] == b"\x89PNG"
    assert "a &lt;caption&gt;" in text


def test_axes_limits_writes_non_finite_as_null():
    fig, ax = plt.subplots()
    ax.set_xlim(0, 1)
    ax.dataLim.x1 = np.inf
    ax.viewLim.x1 = np.nan
    assert rh.axes_limits(fig)[0]["x"] == [0.0, None]
    plt.close(fig)


def test_page_is_self_contained():
    text = rh.page("T & t", "<p>x</p>")
    assert text.startswith("<!DOCTYPE html>") and "<title>T &amp; t</title>" in text
    assert "<style>" in text and "<script" not in text and not re.search(r"https?:|url\(|@import", text)
    assert "overflow-x:auto" in rh.CSS  # tables scroll in their own box
