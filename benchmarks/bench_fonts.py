"""Benchmark PNG figures with in-memory fonts (:mod:`taskspace_utils.agg_fonts`) against
matplotlib's own file-backed fonts, in the same run.

The figure is the notebooks' most common one: a clustered heatmap of a random 67 x 67 task space
with BLiMP's task names and phenomenon/field colour bars (:func:`taskspace_utils.plotting.plot_space`),
saved as PNG at 120 dpi with ``bbox_inches="tight"`` as notebooks 02 and 04 do. The two modes
alternate, ``--reps`` figures each, after one warm-up figure each (fonts loaded, caches filled).
Per figure it reports wall milliseconds, user and system CPU seconds (``getrusage``), read system
calls (``/proc/self/io``, Linux), and the ratio in-memory / file-backed; it checks that the two PNGs
are the same bytes.

    python benchmarks/bench_fonts.py [--reps 3] [--tasks 67]
"""

from __future__ import annotations

import argparse
import io
import resource
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from taskspace_utils import agg_fonts, data  # noqa: E402
from taskspace_utils.plotting import plot_space  # noqa: E402
from taskspace_utils.task_data import task_metadata  # noqa: E402


def _read_calls() -> int:
    """Read system calls of this process so far (0 where ``/proc/self/io`` is missing)."""
    proc = Path("/proc/self/io")
    if not proc.exists():
        return 0
    return int(next(line.split()[1] for line in proc.read_text().splitlines() if line.startswith("syscr:")))


def _figure(space: pd.DataFrame, meta: pd.DataFrame) -> tuple[bytes, dict]:
    """PNG bytes of ``plot_space(space, meta)`` and the time, CPU and read calls it took."""
    before = resource.getrusage(resource.RUSAGE_SELF)
    reads = _read_calls()
    start = time.perf_counter()
    grid = plot_space(space, meta, title="random task space")
    buffer = io.BytesIO()
    grid.figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(grid.figure)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    return buffer.getvalue(), {"ms": wall * 1e3, "user_s": after.ru_utime - before.ru_utime,
                               "sys_s": after.ru_stime - before.ru_stime, "read_calls": _read_calls() - reads}


def main(argv=None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=67)
    args = parser.parse_args(argv)
    meta = task_metadata(data.load_blimp()).head(args.tasks)
    space = pd.DataFrame(np.random.default_rng(0).normal(size=(len(meta), len(meta))),
                         index=meta.index, columns=meta.index)
    if not agg_fonts.render_fonts_from_memory():
        raise SystemExit(f"matplotlib {matplotlib.__version__}: agg_fonts does not apply, nothing to compare")
    rows, reference = [], {}
    for rep in range(args.reps + 1):
        for mode in ("file", "memory"):
            agg_fonts.render_fonts_from_memory(mode == "memory")
            png, row = _figure(space, meta)
            if png != reference.setdefault("png", png):   # the first figure, file-backed
                raise AssertionError(f"{mode}: the PNG differs from the file-backed one")
            if rep:  # rep 0 warms up
                rows.append({"mode": mode, **row})
    agg_fonts.render_fonts_from_memory()
    table = pd.DataFrame(rows).groupby("mode").mean()
    ratio = table.loc["memory"] / table.loc["file"]
    table.loc["memory / file"] = ratio
    print(f"{len(meta)}-task clustermap, {args.reps} figures per mode, matplotlib {matplotlib.__version__}")
    print(table.to_string(float_format="%.3f"))
    return table


if __name__ == "__main__":
    main()
