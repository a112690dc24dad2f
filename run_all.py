"""Rerun the notebooks headlessly for every model x revision of a profile (papermill batch runner).

    python run_all.py                          # profile `quick`, into runs/quick/
    python run_all.py --profile smoke --out /tmp/smoke
    python run_all.py --models tiny-s,tiny-m --revisions step0,final --tasks all --device cpu
    python run_all.py --set 02.n_train=64 --set all.seed=1 --dry-run
    python run_all.py --profile smoke --data my_pairs.csv --out /tmp/mine   # your minimal pairs
    python run_all.py --executor dask --scheduler tcp://head:8786

What it does (see :mod:`taskspace_utils.pipeline`): builds the missing offline-suite sizes by
executing ``notebooks/00_*`` into the run folder, executes ``notebooks/01_*`` ... ``04_*`` for each
unit (one model at one revision) into ``<out>/<unit>/`` with the executed notebooks, results and
``unit.json`` (parameters and resume hashes), then ``05_*`` over all complete units, rendered to
``<out>/report.html``. A rerun skips what is complete for the same parameters; a changed parameter
reruns the notebooks it affects. One progress line per notebook; a failure prints the notebook,
cell and error, the other units go on (``--fail-fast`` stops), and the exit code is 1.

Profiles live in ``profiles.yaml`` beside this file (schema documented there).

Functions
---------
- :func:`parse_args`: the command line.
- :func:`make_overrides`: arguments -> :class:`taskspace_utils.pipeline.Overrides`.
- :func:`main`: plan, print or run, exit code (0 ok, 1 a notebook failed, 2 a bad argument or
  profile, 130 interrupted).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from tqdm import tqdm

REPO = Path(__file__).resolve().parent


def _csv(text: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line (see the module docstring and ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="run_all.py",
        description="Execute the notebooks with papermill for every model x revision of a profile, "
                    "then the comparison notebook; resumable.")
    parser.add_argument("--profile", default="quick", help="profile name in the profile file (default: quick)")
    parser.add_argument("--out", default=None, help="run folder (default: runs/<profile>)")
    parser.add_argument("--models", type=_csv, help="model specs replacing the profile's: tiny-s,tiny-m@step0,EleutherAI/pythia-70m")
    parser.add_argument("--revisions", type=_csv, help="revisions for every model: step0,mid,final (suite) or hub revisions")
    parser.add_argument("--sizes", type=_csv, help="keep only these sizes of the profile's models: tiny-s,tiny-m or 70m,160m")
    parser.add_argument("--tasks", type=_csv, help="tasks for every notebook (or 'all'): BLiMP's, or those of --data")
    parser.add_argument("--data", help="your minimal pairs (CSV/JSONL file or folder; columns good, bad, optional task, "
                                       "phenomenon, field): notebooks 01-05 run on them, tasks taken from the file")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... for every notebook and the suite build")
    parser.add_argument("--notebooks", type=_csv, help="per-unit notebooks to run (01,02 or stems); the comparison "
                                                     "runs only when listed too")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="NOTEBOOK.param=value",
                        help="set one parameter of one notebook (02.n_train=64; 'all.seed=1'); repeatable")
    parser.add_argument("--dry-run", action="store_true", help="print the plan (units, notebooks, parameters, what is "
                                                              "complete) and exit without executing")
    parser.add_argument("--fail-fast", action="store_true", help="stop at the first failing notebook")
    parser.add_argument("--executor", choices=("local", "dask"), default="local",
                        help="local: units one after another here (default); dask: one task per unit on a Dask cluster")
    parser.add_argument("--scheduler", help="Dask scheduler address (tcp://host:8786); without it a LocalCluster")
    parser.add_argument("--workers", type=int, default=2, help="workers of the LocalCluster started by --executor "
                                                               "dask without --scheduler (default 2)")
    parser.add_argument("--profiles-file", default=str(REPO / "profiles.yaml"), help="profile file (default: profiles.yaml)")
    parser.add_argument("--notebooks-dir", default=str(REPO / "notebooks"), help="source notebooks (default: notebooks/)")
    args = parser.parse_args(argv)
    if args.scheduler and args.executor != "dask":
        parser.error("--scheduler needs --executor dask")
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    return args


def make_overrides(args: argparse.Namespace):
    """Turn the parsed arguments into :class:`taskspace_utils.pipeline.Overrides` (``--set`` parsed)."""
    from taskspace_utils.pipeline import Overrides, parse_set

    return Overrides(models=args.models, revisions=args.revisions, sizes=args.sizes, tasks=args.tasks,
                     device=args.device, notebooks=args.notebooks, sets=[parse_set(s) for s in args.sets],
                     data=args.data)


def main(argv: list[str] | None = None) -> int:
    """Plan the run, print it (``--dry-run``) or execute it; return the exit code."""
    args = parse_args(argv)
    from taskspace_utils import pipeline

    def log(line: str) -> None:
        print(line, flush=True)

    try:
        profiles = pipeline.load_profiles(args.profiles_file)
        out = args.out if args.out is not None else REPO / "runs" / args.profile
        plan = pipeline.build_plan(profiles, args.profile, notebooks_dir=args.notebooks_dir, out_dir=out,
                                   overrides=make_overrides(args))
        if args.dry_run:
            log(pipeline.describe_plan(plan))
            for line in pipeline.check_before_run(plan, args.executor, args.scheduler):  # what the run checks first
                log(f"run_all: {line}")
            return 0
        log(f"run_all: profile {plan.profile} -> {plan.run_dir} ({_count(len(plan.units), 'unit')}, "
            f"executor {args.executor})")
        start = time.monotonic()
        summary = pipeline.run(plan, executor=args.executor, scheduler=args.scheduler, workers=args.workers,
                               fail_fast=args.fail_fast, log=log)
    except pipeline.PlanError as err:
        print(f"run_all.py: error: {err}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print("run_all: interrupted; finished notebooks are kept, rerun the same command to resume",
              file=sys.stderr, flush=True)
        return 130
    elapsed = tqdm.format_interval(time.monotonic() - start)
    log(f"run_all: {_count(len(summary.executed), 'unit')} executed, {len(summary.skipped)} complete before, "
        f"{len(summary.failures)} failed, {elapsed}" + (f"; report: {summary.report}" if summary.report else ""))
    if summary.failures:
        print("run_all: failures:", file=sys.stderr)
        for failure in summary.failures:
            print(f"  {failure.describe()}", file=sys.stderr, flush=True)
    return summary.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
