"""The run's ``report.html``: what was run, the findings as a table, one section per question.

Read from the run folder only (files named by :mod:`taskspace_utils.layout`): the comparison
tables that notebook 05 wrote to ``<run>/comparison/`` (``claims.csv`` first when present), each
unit's ``data/model_info.json`` / ``unit.json``, the margin transfer and gradient spaces of every
unit, and the executed notebooks (linked, relative to the report). No code, no external resource.

The report leads with the headline: the margin transfer space and the subnetwork overlap over
non-embedding parameters; the accuracy transfer space appears as ``accuracy transfer (secondary)``
and the embedding (``embed_in``) and output (``embed_out``) matrices as rows of their own. Tables
written before these names (space ``transfer`` for the accuracy space, no sharing ``scope``) are
read with their meaning (:func:`read_tables`).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Sequence
from urllib.parse import quote

import numpy as np
import pandas as pd

from ..comparison.sharing import ALL_PARAMETERS, SCOPES, headline_sharing
from ..comparison.units import LEGACY_SPACE_NAMES, SECONDARY
from ..layout import RunLayout, run_layout
from ..results import atomic_write_text, folder_bytes
from . import findings as fd
from .html import esc, figure_html, page, paragraph, table_html

__all__ = ["TABLES", "CLAIMS", "SECTIONS", "read_tables", "sharing_at_final_step", "units_overview", "build_report",
           "write_report"]

#: The comparison tables the report reads from ``<run>/comparison/`` (``<name>.csv``).
TABLES = ("units", "accuracy", "alignment", "baseline", "generalisation", "sharing", "sharing_modules", "stability")
#: The claims table of the findings issue, led with when present.
CLAIMS = "claims"
#: Section ids of the report, in order.
SECTIONS = ("run", "findings", "premise", "blimp", "generalisation", "sharing", "stability", "task-spaces", "notebooks")
_CLAIM_ORDER = ("claim", "contrast", "statistic", "value", "ci_low", "ci_high", "p_value", "verdict", "min_detectable",
                "n_tasks", "n_seeds")  # the claims table's columns shown first, when present
_INDEXED = {"units", "accuracy", "generalisation", "sharing"}  # written with the unit as index
_CLAIM_RULE = ("Verdicts by the rule fixed in advance: 'supported' when the 95% interval excludes 0 in the claimed "
               "direction, 'contradicted' when it excludes 0 the other way, 'inconclusive' otherwise.")


def _read_csv(path: Path, indexed: bool) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, index_col=0 if indexed else None)
    except (pd.errors.EmptyDataError, FileNotFoundError):
        return pd.DataFrame()
    if not indexed and len(frame.columns) and str(frame.columns[0]).startswith("Unnamed"):
        frame = frame.drop(columns=frame.columns[0])
    return frame if len(frame) else pd.DataFrame()


def read_tables(run_dir) -> dict[str, pd.DataFrame]:
    """The comparison tables of a run (:data:`TABLES`, plus ``claims`` when written) as frames;
    an absent or empty file gives an empty frame. ``units``, ``accuracy``, ``generalisation`` and
    ``sharing`` are indexed by unit.

    Tables written before the spaces were renamed are read with their meaning: a ``space`` value
    ``transfer`` (the accuracy space then) becomes ``transfer_accuracy``, a ``generalisation``
    table without a ``space`` column was computed on that space, a ``sharing`` table without a
    ``scope`` column is over all parameters, and a ``sharing_modules`` ``space`` column is the
    ``module``."""
    folder = run_layout(run_dir).comparison
    tables = {name: _read_csv(folder / f"{name}.csv", name in _INDEXED) for name in TABLES}
    tables[CLAIMS] = _read_csv(folder / f"{CLAIMS}.csv", False)
    if "is_final" in tables["units"]:
        tables["units"]["is_final"] = tables["units"]["is_final"].astype(str).str.lower().eq("true")
    for name in ("alignment", "baseline", "stability", "generalisation"):
        if "space" in tables[name]:
            tables[name]["space"] = tables[name]["space"].replace(LEGACY_SPACE_NAMES)
    defaults = {"generalisation": ("space", SECONDARY), "sharing": ("scope", ALL_PARAMETERS)}
    for name, (column, value) in defaults.items():
        if not tables[name].empty and column not in tables[name]:
            tables[name][column] = value
    modules = tables["sharing_modules"]
    if "space" in modules and "module" not in modules:
        tables["sharing_modules"] = modules.rename(columns={"space": "module"})
    return tables


def sharing_at_final_step(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Subnetwork overlap at each family's final step, one row per unit and scope (the headline,
    non-embedding parameters, first; then the embedding and output matrices, all parameters):
    ``unit``, ``scope``, ``within``, ``across``, ``within − across`` with its 95% interval and the
    share of a task's subnetwork inside the scope."""
    share, units = tables.get("sharing", pd.DataFrame()), tables.get("units", pd.DataFrame())
    if share.empty or units.empty or "is_final" not in units:
        return pd.DataFrame()
    finals = share[share.index.isin(units.index[units["is_final"].astype(bool)])].reset_index()
    if finals.empty:
        return pd.DataFrame()
    head = headline_sharing(share)["scope"].iloc[0]
    rank = {s: i for i, s in enumerate([head] + [s for s in SCOPES if s != head])}
    finals = finals.iloc[np.argsort([rank.get(s, len(rank)) for s in finals["scope"]], kind="stable")]
    columns = {"unit": "unit", "scope": "scope", "within_mean": "within", "across_mean": "across",
               "difference": "within − across", "difference_ci_low": "ci_low", "difference_ci_high": "ci_high",
               "subnetwork_fraction": "share of subnetwork"}
    return finals[[c for c in columns if c in finals]].rename(columns=columns)


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def _notebook_links(run: RunLayout, unit: str) -> str:
    links = [f'<a href="{quote(f"{unit}/{p.name}")}">{esc(p.stem.split("_")[0] + (" (failed)" if "failed" in p.name else ""))}</a>'
             for p in sorted((run.root / unit).glob("[0-9][0-9]_*.ipynb"))]
    return " ".join(links) or "—"


def units_overview(run_dir, tables: dict[str, pd.DataFrame], units: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per unit: ``unit``, ``model``, ``revision``, ``step``, ``parameters``,
    ``non-embedding``, ``BLiMP accuracy``, ``disk`` and ``notebooks`` (relative links, HTML).

    From ``comparison/units.csv`` when notebook 05 wrote it, else from ``units`` (folder names)
    with each unit's ``data/model_info.json`` or, failing that, its runner record ``unit.json``."""
    run = run_layout(run_dir)
    known = tables.get("units", pd.DataFrame())
    names = list(known.index) if not known.empty else list(units or [u.root.name for u in run.units()])
    acc = tables.get("accuracy", pd.DataFrame())
    rows = []
    for name in names:
        layout = run.unit(name)
        info = dict(known.loc[name]) if name in known.index else {}
        for path in (layout.model_info, layout.record):
            if not info and path.exists():
                record = json.loads(path.read_text(encoding="utf-8"))
                info = {"spec": record.get("spec", record.get("model")), **record}
        blimp = acc.loc[name, "blimp_accuracy"] if not acc.empty and name in acc.index else np.nan
        rows.append({"unit": name, "model": info.get("family", info.get("spec", "")),
                     "revision": info.get("revision", info.get("requested", "")),
                     "step": info.get("step", np.nan), "parameters": info.get("n_parameters", np.nan),
                     "non-embedding": info.get("n_non_embedding_parameters", np.nan), "BLiMP accuracy": blimp,
                     "disk": _size(folder_bytes(layout.root)), "notebooks": _notebook_links(run, name)})
    frame = pd.DataFrame(rows, columns=["unit", "model", "revision", "step", "parameters", "non-embedding",
                                        "BLiMP accuracy", "disk", "notebooks"])
    for column in ("step", "parameters", "non-embedding"):
        if frame[column].notna().all():
            frame[column] = frame[column].astype("int64")
    return frame


def _figure_section(tables, makers, captions) -> str:
    """The figures of one question (``makers`` from :mod:`taskspace_utils.comparison.figures`)."""
    out = []
    for maker, caption in zip(makers, captions):
        fig, _ = maker(tables)
        if fig is not None:
            out.append(figure_html(fig, caption, maker.__name__))
    return "".join(out)


def _findings_section(tables) -> str:
    table = fd.findings_table(tables)
    body = table_html(table, "findings-table", verdict="reading") if not table.empty else \
        paragraph("No comparable statistics in this run (too few units or tasks).", "note")
    space = fd.headline_space(tables)
    rule = paragraph(fd.READING_RULE, "meta") + paragraph(
        f"Findings are read on the {fd.SPACE_NAMES.get(space, space)} space (the headline task space; the accuracy "
        "transfer space is a secondary view) and on the subnetwork overlap over non-embedding parameters (the "
        "embedding and output matrices reported apart).", "meta")
    claims = tables.get(CLAIMS, pd.DataFrame())
    if claims.empty:
        return body + rule
    try:
        from ..comparison import claims as claims_module
        rule_text = getattr(claims_module, "VERDICT_RULE", _CLAIM_RULE)
    except ImportError:
        rule_text = _CLAIM_RULE
    first = [c for c in _CLAIM_ORDER if c in claims]
    claims = claims[first + [c for c in claims.columns if c not in first]]
    return (paragraph("The paper's claims as tested contrasts (comparison/claims.csv):")
            + table_html(claims, "claims", verdict="verdict" if "verdict" in claims else None)
            + paragraph(str(rule_text), "meta")
            + (paragraph("min_detectable: the smallest difference the contrast could detect with this run's tasks "
                         "and seeds; an 'inconclusive' contrast whose value is below it may be too small to see here.",
                         "meta") if "min_detectable" in claims else "")
            + f"<details><summary>Descriptive findings of this run</summary>{body}{rule}</details>")


def _sharing_table(tables) -> str:
    table = sharing_at_final_step(tables)
    return table_html(table, "sharing-table") if not table.empty else ""


def _task_space_section(run: RunLayout, names: Sequence[str]) -> str:
    """Per unit: heatmaps of its margin transfer space and its gradient space (fixed task order:
    field, phenomenon, name, so units can be compared)."""
    from tqdm.auto import tqdm

    from ..comparison.units import load_unit_spaces, unit_pairs
    from ..plotting import plot_space
    from ..task_data import task_metadata

    parts = []
    for name in tqdm(list(names), desc="report: task spaces", unit="unit"):
        layout = run.unit(name)
        spaces = load_unit_spaces(layout.root) if layout.root.is_dir() else {}
        shown = {k: spaces[k] for k in ("transfer_margin", "gradient") if k in spaces}
        if not shown or not layout.pairs.exists():
            parts.append(f"<details><summary>{esc(name)}</summary>"
                         + paragraph("No margin transfer or gradient space in this unit.") + "</details>")
            continue
        meta = task_metadata(unit_pairs(layout.root))
        figs = []
        for key, space in shown.items():
            label = fd.SPACE_NAMES[key] + " space"
            grid = plot_space(space, meta, title=f"{name}: {label}", cluster=False)
            figs.append(figure_html(grid, f"{name}: {label} ({len(space)} tasks; rows tuned, columns evaluated)",
                                    f"{name} {key}", dpi=70))
        parts.append(f"<details><summary>{esc(name)}</summary><div class=\"grid\">{''.join(figs)}</div></details>")
    return "".join(parts)


def _premise_section(run_root: Path) -> str:
    """Did the probe's tuned models learn their task without damaging the language model? One row
    per unit of :func:`~taskspace_utils.comparison.premise.premise_table` and the rule it applies."""
    from ..comparison.premise import PREMISE_MAX_MEDIAN_CHANGE, premise_table

    table = premise_table(run_root)
    if table.empty:
        return paragraph("No unit of this run has probing rows (notebook 04 did not run).", "note")
    kept = int((table["verdict"] == "kept").sum())
    measured = int((table["verdict"] != "not measured").sum())
    text = (f"The transfer space is read from models tuned on one task each; it measures the task, not a general "
            f"disruption, only while tuning leaves the language model intact. Every probe records the validation "
            f"perplexity of held-out corpus sentences before and after each tuning (change = tuned / base − 1). Rule, "
            f"fixed in advance: the premise is kept when the median change over a unit's tuned tasks is at most "
            f"{PREMISE_MAX_MEDIAN_CHANGE:.0%}. Kept in {kept} of {measured} measured units.")
    shown = table.rename(columns={"val_ppl_change_median": "ppl change (median)", "val_ppl_change_max": "ppl change (max)",
                                  "self_margin_mean": "self-transfer (margin)", "self_accuracy_mean": "self-transfer (acc.)"})
    return paragraph(text) + table_html(shown.drop(columns=["premise_kept"], errors="ignore"), "premise")


def build_report(run_dir, units: Sequence[str] | None = None) -> str:
    """The report of a run as one self-contained HTML string (sections :data:`SECTIONS`).

    Opens with what was run (:func:`units_overview`), then the findings: the claims table when
    ``comparison/claims.csv`` exists (the descriptive findings folded below it), else
    :func:`~taskspace_utils.reporting.findings.findings_table`; then BLiMP, generalisation, sharing
    and stability, each with its figures and a paragraph generated from the numbers; the task-space
    heatmaps of every unit; links to the executed notebooks."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from ..comparison import figures as cf

    run = run_layout(run_dir)
    tables = read_tables(run.root)
    overview = units_overview(run.root, tables, units)
    plan = json.loads(run.plan.read_text(encoding="utf-8")) if run.plan.exists() else {}
    have = not tables["units"].empty
    none = paragraph("The comparison tables (comparison/*.csv) are not in this run folder: notebook 05 did not "
                     "write them.", "note")
    run_nbs = " ".join(f'<a href="{quote(p.name)}">{esc(p.name)}</a>' for p in sorted(run.root.glob("[0-9][0-9]_*.ipynb")))
    sections = {
        "run": ("What was run", table_html(overview, "units", raw=["notebooks"])
                + paragraph(f"Disk used by the units: {_size(sum(folder_bytes(run.unit(u).root) for u in overview['unit']))}.", "meta")),
        "findings": ("Findings", _findings_section(tables) if have else none),
        "premise": ("FTGD's premise at the probing settings", _premise_section(run.root)),
        "blimp": ("BLiMP accuracy", (paragraph(fd.blimp_paragraph(tables))
                                     + _figure_section(tables, [cf.accuracy_figure], ["BLiMP accuracy vs. size and step"]))
                  if have else none),
        "generalisation": ("1. Generalisation to phenomena", (paragraph(fd.generalisation_paragraph(tables)) + _figure_section(
            tables, [cf.alignment_figure, cf.baseline_figure, cf.generalisation_figure],
            ["Phenomenon alignment over pre-training: margin transfer (left), secondary views (right)",
             "Trained − step 0 (95% CI): margin transfer (left), secondary views (right)",
             "Generalisation index: margin transfer (left), accuracy transfer (secondary, right)"])) if have else none),
        "sharing": ("2. Parameter sharing", (paragraph(fd.sharing_paragraph(tables)) + _sharing_table(tables)
                                             + _figure_section(tables, [cf.sharing_figure, cf.module_sharing_figure], [
                                                 ("Subnetwork overlap within − across phenomena: non-embedding "
                                                  "parameters (left), embedding and output matrices apart (right)"),
                                                 "Per module: same phenomenon − other field"])) if have else none),
        "stability": ("3. Stability", (paragraph(fd.stability_paragraph(tables)) + _figure_section(
            tables, [cf.stability_figure],
            ["Agreement with the final checkpoint: margin transfer (left), secondary views (right)"])) if have else none),
        "task-spaces": ("Task spaces per unit", _task_space_section(run, list(overview["unit"]))),
        "notebooks": ("Executed notebooks", paragraph("Run level: ") + f"<p>{run_nbs or '—'}</p>"
                      + paragraph("Per unit: the links in the table above (01 data, 02 gradients, 03 FTGD, 04 probing).")),
    }
    nav = "<nav><ul>" + "".join(f'<li><a href="#{k}">{esc(t)}</a></li>' for k, (t, _) in sections.items()) + "</ul></nav>"
    body = "".join(f'<section id="{k}"><h2>{esc(t)}</h2>{content}</section>' for k, (t, content) in sections.items())
    stamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    meta = paragraph(f"Run folder {run.root.name} · profile {plan.get('profile', 'n/a')} · {len(overview)} units · "
                     f"report written {stamp}", "meta")
    return page(f"Task spaces — {run.root.name}", f"<h1>Task spaces of {esc(run.root.name)}</h1>{meta}{nav}{body}")


def write_report(run_dir, units: Sequence[str] | None = None, path: str | os.PathLike | None = None) -> Path:
    """:func:`build_report` written atomically to ``path`` (default ``<run>/report.html``)."""
    target = Path(path) if path is not None else run_layout(run_dir).report
    atomic_write_text(target, build_report(run_dir, units))
    return target
