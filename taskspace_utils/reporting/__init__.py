"""The run's report (``<run>/report.html``): a page people read, not a converted notebook.

It opens with what was run (one row per unit: model, revision, step, parameters, BLiMP accuracy,
disk, links to the unit's executed notebooks) and the findings as a table (the claims table of
``comparison/claims.csv`` when the run has it, else :func:`findings_table`), read on the margin
transfer space and the non-embedding subnetwork overlap (the accuracy transfer space a secondary
view, the embedding and output matrices reported apart), then one section per
question — BLiMP accuracy, generalisation to phenomena, parameter sharing, stability — each with its
figures (:mod:`taskspace_utils.comparison.figures`) and a paragraph generated from the numbers, the
margin-transfer and gradient task-space heatmaps of every unit, and links to the run-level
notebooks. Self-contained: images are inline base64 PNG with their axis limits in ``data-axes``,
the CSS is inline, there is no script and no external URL.

Modules: :mod:`.html` (escaping, tables, figures, the page), :mod:`.findings` (the findings table
and paragraphs), :mod:`.build` (reading a run and assembling the page).
"""

from .build import (
    CLAIMS,
    SECTIONS,
    TABLES,
    build_report,
    read_tables,
    sharing_at_final_step,
    units_overview,
    write_report,
)
from .findings import (
    READING_RULE,
    blimp_paragraph,
    findings_table,
    generalisation_paragraph,
    headline_space,
    sharing_paragraph,
    stability_paragraph,
)
from .html import axes_limits, figure_html, table_html

__all__ = [
    "CLAIMS",
    "SECTIONS",
    "TABLES",
    "READING_RULE",
    "build_report",
    "write_report",
    "read_tables",
    "sharing_at_final_step",
    "units_overview",
    "findings_table",
    "headline_space",
    "blimp_paragraph",
    "generalisation_paragraph",
    "sharing_paragraph",
    "stability_paragraph",
    "axes_limits",
    "figure_html",
    "table_html",
]
