"""A reference-results page in ``docs/``: what a run of the kit shows, with the command that made it.

``python -m taskspace_utils.reporting.reference RUN_DIR --out docs/reference/suite-full`` writes
``index.md`` and ``figures/`` there, from the run folder only (files named by
:mod:`taskspace_utils.layout`):

- *How it was made*: the command and the code version (``git describe --dirty``) recorded in
  ``<run>/plan.json`` by the runner, the profile, the date and the machine's CPU count;
- *The suite*: for a run on the offline suite, one row per model of the suite record
  (:func:`taskspace_utils.suite.suite_table`: size, seed, parameters, steps, tokens, final validation
  loss, build time) with the BLiMP mean accuracy of its final unit (the unit's
  ``data/eval_blimp.csv``: the pairs notebook 01 scored) and whether Pythia's design holds
  (:func:`taskspace_utils.suite.token_design_problems`);
- *The claims*: the verdict rule, the verdicts counted per claim (:func:`verdict_counts`), then
  ``comparison/claims.csv`` (C1-C3 with 95 % CIs, permutation p, the verdict by the rule fixed in
  advance, the smallest detectable difference), then the units table (without machine paths);
- *Figures*: the comparison figures of notebook 05 (``comparison/figures/*.png``), copied.

Tables are Markdown through ``pandas.DataFrame.to_markdown`` (``tabulate``). Nothing is computed
here that the run did not compute: the page is a view of the run's files.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from ..comparison.claim_statistics import RULE
from ..layout import run_layout, unit_layout
from ..results import atomic_write_text, read_json

__all__ = ["CLAIM_COLUMNS", "suite_rows", "verdict_counts", "run_seconds", "write_reference", "main"]

#: The claims table's columns shown on the page, in order.
CLAIM_COLUMNS = ["claim", "contrast", "statistic", "value", "ci_low", "ci_high", "p_value", "verdict",
                 "min_detectable", "n_tasks", "n_seeds", "note"]


def _markdown(frame: pd.DataFrame, digits: int = 3) -> str:
    if frame.empty:
        return "_(none)_"
    frame = frame.astype(object).where(frame.notna(), None)  # a missing value is blank, not "nan"
    return frame.to_markdown(index=False, floatfmt=f".{digits}g", missingval="")


def suite_rows(run_dir) -> pd.DataFrame | None:
    """The suite table of a run on the offline suite (module docstring), or ``None`` when the run
    used no suite model or its suite record is gone."""
    from ..suite.records import suite_table

    plan = read_json(Path(run_dir) / "plan.json")
    suite = plan.get("suite") or {}
    if not suite.get("sizes") or not Path(suite.get("dir", "")).is_dir():
        return None
    try:
        table = suite_table(suite["sizes"], suite["dir"])
    except FileNotFoundError:
        return None
    blimp = {}
    for name, unit in (plan.get("units") or {}).items():
        model, _, revision = str(unit.get("requested", "")).partition("@")
        path = unit_layout(Path(run_dir) / name).data / "eval_blimp.csv"
        if revision == "final" and path.exists():
            scores = pd.read_csv(path)
            blimp[model] = (float(scores["accuracy"].mean()), int(scores["n_pairs"].sum()) if "n_pairs" in scores else np.nan)
    table["blimp_final"] = [blimp.get(s, (np.nan, np.nan))[0] for s in table["size"]]
    table["blimp_pairs"] = [blimp.get(s, (np.nan, np.nan))[1] for s in table["size"]]
    table["build_min"] = table["wall_time_s"] / 60
    return table


def verdict_counts(claims: pd.DataFrame) -> pd.DataFrame:
    """Rows of ``claims.csv`` per claim (index) and verdict (columns ``supported``, ``contradicted``,
    ``inconclusive``, then any other verdict), ``reference`` rows left out."""
    rows = claims[claims["verdict"] != "reference"]
    table = pd.crosstab(rows["claim"], rows["verdict"])
    order = [v for v in ("supported", "contradicted", "inconclusive") if v in table.columns]
    return table[order + sorted(set(table.columns) - set(order))].rename_axis(columns=None)


def run_seconds(run_dir) -> dict[str, float]:
    """Seconds the run's notebooks took, as the runner recorded them: ``units`` (the sum over every
    unit's ``unit.json``), ``comparison`` (``run.json``), ``total`` and the number of ``notebooks``.
    On one machine with the local executor the units run one after another, so ``total`` is about
    the run's wall time (kernel start-up between notebooks not counted); with Dask it is the work done."""
    run = run_layout(run_dir)
    plan = read_json(run.plan)
    units, count = 0.0, 0
    for name in plan.get("units") or {}:
        record = run.unit(name).record
        for entry in (read_json(record).get("notebooks") or {}).values() if record.exists() else ():
            units += float(entry.get("seconds") or 0.0)
            count += 1
    comparison = sum(float(e.get("seconds") or 0.0) for e in
                     ((read_json(run.record).get("comparison") or {}).values() if run.record.exists() else ()))
    return {"units": units, "comparison": comparison, "total": units + comparison, "notebooks": count}


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 3600)}:{int(seconds % 3600 // 60):02d}:{int(seconds % 60):02d}"


def write_reference(run_dir, out_dir) -> Path:
    """Write ``out_dir/index.md`` and ``out_dir/figures/`` for the run in ``run_dir`` (module
    docstring); returns the page's path. ``FileNotFoundError`` naming the file when the run has no
    ``plan.json`` or no ``comparison/claims.csv`` (run notebook 05 first)."""
    run = run_layout(run_dir)
    plan_path = run.root / "plan.json"
    claims_path = run.comparison / "claims.csv"
    for path in (plan_path, claims_path):
        if not path.exists():
            raise FileNotFoundError(f"{path} missing: the reference page is made from a finished run "
                                    "(run_all.py with the comparison notebook)")
    plan = read_json(plan_path)
    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)

    lines = [f"# Reference result: the `{plan.get('profile')}` profile", "",
             "Generated by `python -m taskspace_utils.reporting.reference` from the run folder; nothing on this "
             "page is computed beyond what the run wrote.", "",
             "## How it was made", "",
             f"- command: `{plan.get('command') or 'python run_all.py --profile ' + str(plan.get('profile'))}`",
             f"- code: `{plan.get('commit') or 'unknown (not a git checkout)'}`",
             f"- run planned {plan.get('written', '?')}; page written {_dt.datetime.now().isoformat(timespec='seconds')}",
             f"- machine: {os.cpu_count()} CPU cores (wall times depend on the machine and its load)",
             f"- units: {len(plan.get('units') or {})}", f"- time: {_time_line(run.root)}", ""]

    suite = suite_rows(run.root)
    if suite is not None:
        from ..suite.records import token_design_problems

        problems = token_design_problems(suite)
        shown = suite[["size", "base_size", "seed", "params", "final_step", "tokens_seen", "validation_loss",
                       "blimp_final", "blimp_pairs", "build_min"]]
        lines += ["## The suite", "",
                  "One row per pre-trained model: the final step's validation loss (nats per token), the BLiMP mean "
                  "accuracy of its final unit over the pairs notebook 01 scored (`blimp_pairs` in all), the "
                  "training time in minutes (checkpoints included). Pythia's design (same tokens, order and steps; "
                  "seeds differ in order): " + ("**holds**." if not problems else "**broken**: " + "; ".join(problems)),
                  "", _markdown(shown), ""]

    claims = pd.read_csv(claims_path)
    lines += ["## The claims", "", f"{RULE}", "",
              "Verdicts per claim (contrasts only; `reference` rows give the noise floors and ceilings):", "",
              _markdown(verdict_counts(claims).reset_index()), "",
              _markdown(claims[[c for c in CLAIM_COLUMNS if c in claims.columns]]), ""]
    units_csv = run.comparison / "units.csv"
    if units_csv.exists():  # without the folder column: a path on the machine that ran it
        lines += ["## Units", "", _markdown(pd.read_csv(units_csv).drop(columns=["folder"], errors="ignore")), ""]

    figures = sorted((run.comparison / "figures").glob("*.png"))
    if figures:
        lines += ["## Figures", ""]
        for figure in figures:
            shutil.copyfile(figure, out / "figures" / figure.name)
            lines += [f"### {figure.stem.replace('_', ' ')}", "", f"![{figure.stem}](figures/{figure.name})", ""]
    page = out / "index.md"
    atomic_write_text(page, "\n".join(lines))
    return page


def _time_line(run_dir) -> str:
    t = run_seconds(run_dir)
    return (f"{_minutes(t['total'])} (h:mm:ss) in {t['notebooks']} unit notebooks ({_minutes(t['units'])}) and the "
            f"comparison ({_minutes(t['comparison'])}), the sum of the times the runner recorded")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Write a reference-results page (Markdown + figures) from a run folder.")
    parser.add_argument("run_dir", help="a finished run folder (run_all.py --out)")
    parser.add_argument("--out", required=True, help="folder for index.md and figures/, e.g. docs/reference/suite-full")
    args = parser.parse_args(argv)
    try:
        page = write_reference(args.run_dir, args.out)
    except FileNotFoundError as err:
        parser.exit(2, f"error: {err}\n")
    print(f"wrote {page}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
