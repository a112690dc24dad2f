"""The report in a real browser: headless Chromium (Debian's ``chromium``) opens the report of a
synthetic run (tests/report_run.py) and a probe script, added to a copy of the page, records every
script error, failed resource and ``console.error`` into the DOM that ``--dump-dom`` prints, with
each figure's axis limits (its ``data-axes``), whether its image decoded, and the page width.
Chromium's own console log (``--enable-logging=stderr``) must hold no page message either.
Skipped where Chromium is absent; CI installs it (``.ci/run``)."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess

import pytest
from report_run import UNITS, make_run

from taskspace_utils import reporting

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed (apt-get install chromium)")

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--enable-logging=stderr", "--v=0", "--virtual-time-budget=15000"]

PROBE = """<script>
window.__errors = [];
window.addEventListener('error', function (e) {
  var t = e.target;
  __errors.push(t && t !== window && (t.src || t.href)
    ? 'resource failed: ' + String(t.src || t.href).slice(0, 60) : 'error: ' + e.message);
}, true);
var __consoleError = console.error;
console.error = function () {
  __errors.push('console.error: ' + Array.prototype.join.call(arguments, ' '));
  return __consoleError.apply(console, arguments);
};
window.addEventListener('load', function () {
  var figures = Array.prototype.map.call(document.querySelectorAll('figure'), function (f) {
    var img = f.querySelector('img'), axes = null;
    try { axes = JSON.parse(f.getAttribute('data-axes')); } catch (err) { __errors.push('data-axes: ' + err); }
    var finite = Array.isArray(axes) && axes.length > 0 && axes.every(function (a) {
      return [a.x[0], a.x[1], a.y[0], a.y[1]].every(function (v) { return typeof v === 'number' && isFinite(v); });
    });
    return {name: f.getAttribute('data-name'), finite: finite,
            decoded: !!img && img.complete && img.naturalWidth > 0};
  });
  var out = document.createElement('pre');
  out.id = 'probe';
  out.textContent = JSON.stringify({errors: __errors, figures: figures, images: document.images.length,
    sections: Array.prototype.map.call(document.querySelectorAll('section'), function (s) { return s.id; }),
    scrollWidth: document.documentElement.scrollWidth, innerWidth: window.innerWidth});
  document.body.appendChild(out);
});
</script>"""


def open_in_chromium(page: str, folder, width: int) -> tuple[dict, list[str]]:
    """Open ``page`` (HTML text, probe added) from ``folder`` in headless Chromium at ``width`` px;
    return (the probe's record, the page's console lines from Chromium's log)."""
    path = folder / f"probe_{width}.html"
    path.write_text(page.replace("<head>", "<head>" + PROBE, 1), encoding="utf-8")
    profile = folder / f"profile_{width}"
    proc = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},800",
                           "--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="probe">(.*?)</pre>', proc.stdout, re.S)
    assert found, f"no probe output (exit {proc.returncode}): {proc.stderr[-2000:]}"
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line]
    return json.loads(html.unescape(found.group(1))), console


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = make_run(tmp_path_factory.mktemp("run"))
    return root, reporting.write_report(root).read_text(encoding="utf-8")


@pytest.mark.parametrize("width", [1280, 760])
def test_report_renders_without_errors_and_every_figure_has_finite_axes(report, width):
    root, text = report
    probe, console = open_in_chromium(text, root, width)
    assert probe["errors"] == [] and console == []
    assert probe["sections"] == list(reporting.SECTIONS)
    assert probe["images"] == len(probe["figures"]) >= 7 + 2 * len(UNITS)
    assert all(f["decoded"] for f in probe["figures"]), [f["name"] for f in probe["figures"] if not f["decoded"]]
    assert all(f["finite"] for f in probe["figures"]), [f["name"] for f in probe["figures"] if not f["finite"]]
    assert probe["scrollWidth"] <= probe["innerWidth"]  # wide tables scroll in their own box, not the page


def test_the_probe_sees_script_errors_broken_images_and_infinite_axes(report, tmp_path):
    """The same check on a page with a failing script, an undecodable image and a figure whose
    axis limit is not finite: each is reported (so the test above can fail)."""
    _, text = report
    bad = ('<figure data-name="bad" data-axes="[{&quot;x&quot;: [0, null], &quot;y&quot;: [0, 1]}]">'
           '<img alt="bad" src="data:image/png;base64,AAAA"></figure><script>notAFunction();</script>')
    probe, console = open_in_chromium(text.replace("</main>", bad + "</main>"), tmp_path, 1280)
    assert any("notAFunction" in e for e in probe["errors"])
    assert any("resource failed: data:image/png" in e for e in probe["errors"])
    (figure,) = [f for f in probe["figures"] if f["name"] == "bad"]
    assert figure == {"name": "bad", "finite": False, "decoded": False}
    assert any("notAFunction" in line for line in console)
