"""Tests for taskspace_utils.reporting.build on a synthetic run folder (tests/report_run.py): the
report's sections in order, the units table first, no code, no external URL, every image inline
with finite axes, working relative links, numbers equal to an independent computation."""

from __future__ import annotations

import base64
import html
import json
import re
from html.parser import HTMLParser
from urllib.parse import unquote

import numpy as np
import pandas as pd
import pytest
from report_run import UNITS, accuracy_of, make_run

from taskspace_utils import reporting


class Page(HTMLParser):
    """Every start tag with its attributes, in document order, and the text of each table cell."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.tables: dict[str, list[list[str]]] = {}
        self._table, self._cell = None, None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "table":
            self._table = attrs.get("id", f"table{len(self.tables)}")
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def attr(self, tag: str, name: str) -> list[str]:
        return [a[name] for t, a in self.tags if t == tag and name in a]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = make_run(tmp_path_factory.mktemp("run"))
    path = reporting.write_report(root)
    assert path == root / "report.html"
    return root, path.read_text(encoding="utf-8")


def test_sections_in_order_units_table_first_then_findings(run):
    _, text = run
    page = Page(text)
    ids = [a["id"] for t, a in page.tags if t == "section"]
    assert ids == list(reporting.SECTIONS)
    tables = [a.get("id") for t, a in page.tags if t == "table"]
    assert tables[:3] == ["units", "claims", "findings-table"]  # compare_units wrote claims.csv
    assert text.index('id="units"') < text.index('id="claims"') < text.index('id="blimp"')


def test_no_code_no_script_no_external_url(run):
    _, text = run
    page = Page(text)
    assert not {t for t, _ in page.tags} & {"script", "pre", "code", "link", "iframe", "object", "embed"}
    assert "n_permutations" not in text and "import " not in text  # no parameters or code cell
    bare = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", text)
    assert not re.search(r"(?i)(https?|ftp):|//[a-z0-9]|url\(|@import", bare)
    for url in page.attr("a", "href") + page.attr("img", "src"):
        assert url.startswith(("#", "data:image/png;base64,")) or not re.match(r"^[a-z][a-z0-9+.-]*:|^/", url), url


def test_every_image_is_an_inline_png_and_every_figure_has_finite_axes(run):
    _, text = run
    page = Page(text)
    sources = page.attr("img", "src")
    assert len(sources) == len(page.attr("figure", "data-axes")) >= 7 + 2 * len(UNITS)
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    for axes in page.attr("figure", "data-axes"):
        limits = json.loads(axes)
        assert limits and all(np.isfinite(a[k]).all() for a in limits for k in ("x", "y"))
    names = page.attr("figure", "data-name")
    for family, step, _ in UNITS:
        assert {f"{family}@step{step} transfer_margin", f"{family}@step{step} gradient"} <= set(names)


def test_units_table_numbers_and_relative_notebook_links(run):
    root, text = run
    page = Page(text)
    head, *rows = page.tables["units"]
    assert head[:8] == ["unit", "model", "revision", "step", "parameters", "non-embedding", "BLiMP accuracy", "disk"]
    by_unit = {r[0]: r for r in rows}
    assert set(by_unit) == {f"{f}@step{s}" for f, s, _ in UNITS}
    for family, step, n in UNITS:
        row = by_unit[f"{family}@step{step}"]
        assert row[1:6] == [family, f"step{step}", f"{step:,}", f"{n:,}", f"{n // 2:,}"]
        assert float(row[6]) == pytest.approx(accuracy_of(step).mean(), abs=5e-4)
        assert row[8].split() == ["01", "02", "04"]
    hrefs = [h for h in page.attr("a", "href") if not h.startswith("#")]
    assert len([h for h in hrefs if h.endswith(".ipynb")]) == 3 * len(UNITS) + 1
    for href in hrefs:
        assert (root / unquote(href)).is_file(), href


def test_findings_and_paragraphs_are_the_numbers_of_the_tables(run):
    root, text = run
    tables = reporting.read_tables(root)
    table = reporting.findings_table(tables)
    # trained - step 0 of the margin space at tiny-a's final step, as baseline.csv holds it
    base = pd.read_csv(root / "comparison" / "baseline.csv")
    want = base[(base.unit == "tiny-a@step100") & (base.space == "transfer_margin") & (base.hypothesis == "phenomenon")
                & (base.controlled != "none")].iloc[0]
    row = table[table.comparison == "phenomenon alignment, trained − step 0, tiny-a@step100"].iloc[0]
    assert row.value == pytest.approx(want.difference) and row.ci_low == pytest.approx(want.ci_low)
    assert row.reading == ("above 0" if want.ci_low > 0 else "below 0" if want.ci_high < 0 else "includes 0")
    # the sharing trend of tiny-a over its three checkpoints: a Spearman over (step, difference)
    from scipy import stats

    from taskspace_utils.comparison import headline_sharing

    share = headline_sharing(pd.read_csv(root / "comparison" / "sharing.csv", index_col=0))
    assert set(share["scope"]) == {"all parameters"}  # the synthetic stage stored no per-module counts
    share = share.loc[["tiny-a@step0", "tiny-a@step10", "tiny-a@step100"]]
    rho = stats.spearmanr([0, 10, 100], share["difference"]).statistic
    trend = table[table.comparison == "within − across overlap (all parameters) vs. step (Spearman), tiny-a"].iloc[0]
    assert trend.value == pytest.approx(rho) and trend.n == 3
    # two final models: a size trend cannot be tested, and the table says so
    assert table[table.comparison.str.contains("parameter count")].reading.item() == "not testable"
    assert f"tiny-b@step100 {accuracy_of(100).mean():.3f}" in text
    al = pd.read_csv(root / "comparison" / "alignment.csv")
    final = al[(al.unit == "tiny-a@step100") & (al.space == "transfer_margin") & (al.hypothesis == "phenomenon")
               & (al.controlled != "none")].statistic.item()
    assert f"tiny-a@step100 {final:+.3f}" in reporting.generalisation_paragraph(tables)
    assert reporting.headline_space(tables) == "transfer_margin"


def test_claims_table_leads_and_findings_table_without_it(run):
    root, text = run
    claims = pd.read_csv(root / "comparison" / "claims.csv")
    head, *rows = Page(text).tables["claims"]
    assert set(head) == set(claims.columns) and head[:4] == ["claim", "contrast", "statistic", "value"]
    assert [r[head.index("verdict")] for r in rows] == list(claims["verdict"])
    assert [float(r[head.index("value")]) for r in rows] == pytest.approx(list(claims["value"]), abs=5e-4)
    from taskspace_utils.comparison import claims as claims_module

    assert f'class="verdict-{claims.verdict.iloc[0]}"' in text
    assert html.escape(claims_module.VERDICT_RULE)[:60] in text
    moved = root / "claims.csv.away"
    (root / "comparison" / "claims.csv").rename(moved)
    try:
        text = reporting.build_report(root)
    finally:
        moved.rename(root / "comparison" / "claims.csv")
    assert [a.get("id") for t, a in Page(text).tags if t == "table"][:2] == ["units", "findings-table"]
    assert "<details><summary>Descriptive findings" not in text and reporting.READING_RULE[:40] in text


def test_report_without_comparison_tables_lists_units_from_their_records(tmp_path):
    """What the pipeline's synthetic notebooks leave: unit folders with unit.json, no tables."""
    for name in ("m@a", "m@b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "unit.json").write_text(json.dumps({"model": name, "requested": f"{name}-req"}))
        (tmp_path / name / "01_build_data.ipynb").write_text("{}")
    text = reporting.build_report(tmp_path, units=["m@a", "m@b"])
    page = Page(text)
    assert [r[:3] for r in page.tables["units"][1:]] == [["m@a", "m@a", "m@a-req"], ["m@b", "m@b", "m@b-req"]]
    assert [a["id"] for t, a in page.tags if t == "section"] == list(reporting.SECTIONS)
    assert "not in this run folder" in text and not page.attr("img", "src")
