"""Benchmark the top-k threshold against its peer, ``torch.kthvalue``, on model-sized vectors.

Every task file of the gradient stage (summary storage) and every FTGD mask needs the
``round(k * P)``-th largest ``|D_i|`` over all ``P`` parameters. The kit takes it with
:func:`taskspace_utils.gradients.subnetworks.kth_largest` (``numpy.partition`` over the positive
entries); ``torch.kthvalue`` gives the same value. For each shape (``P`` of the suite sizes and of
Pythia-160m / 410m) and each zero share (unused embedding rows; a summary's zero-filled
differential, 99 % zeros) this script times both on the same ``|D|``-like vector (absolute
normal values, the zero share at random places, ``k`` = 1 %), checks that the two values are
equal, and reports per call: milliseconds, minor page faults (``getrusage``) and the ratio
kit / peer (below 1: the kit is faster). Run from the command line it re-executes itself in the
environment the runner gives its kernels (glibc malloc settings, Intel OpenMP), as the main job runs.

    python benchmarks/bench_selection.py [--sizes 2.3e6 4.9e6 8.0e6] [--zeros 0.3 0.99] [--reps 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from taskspace_utils.gradients.subnetworks import kth_largest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _shapes import use_kernel_environment  # noqa: E402

#: Parameter counts: tiny-s, tiny-m, tiny-l (the suite), Pythia-160m, Pythia-410m.
SIZES = [2.3e6, 4.9e6, 8.0e6, 162e6, 405e6]
ZEROS = [0.3, 0.99]


def _per_call(fn, reps: int) -> tuple[float, float, float]:
    """``(value, ms per call, minor faults per call)`` of ``fn()`` after one warm-up call."""
    value = fn()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    seconds = (time.perf_counter() - start) / reps
    return float(value), seconds * 1e3, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / reps


def main(argv=None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=SIZES)
    parser.add_argument("--zeros", type=float, nargs="+", default=ZEROS)
    parser.add_argument("--k", type=float, default=0.01)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if argv is None:  # run from the command line: the kernels' malloc settings decide the peer's page faults
        use_kernel_environment()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    rows = []
    for size in args.sizes:
        n = int(size)
        for zeros in args.zeros:
            values = np.abs(rng.standard_normal(n, dtype=np.float32))
            values[rng.random(n) < zeros] = 0
            count = round(args.k * n)
            tensor = torch.from_numpy(values)
            kit = _per_call(lambda: kth_largest(values, count), args.reps)
            peer = _per_call(lambda: torch.kthvalue(tensor, n - count + 1).values, max(1, args.reps))
            if kit[0] != peer[0]:
                raise AssertionError(f"P={n}, zeros={zeros}: kth_largest {kit[0]!r} != torch.kthvalue {peer[0]!r}")
            rows.append({"P": n, "zeros": zeros, "kit_ms": kit[1], "kthvalue_ms": peer[1], "ratio": kit[1] / peer[1],
                         "kit_faults": kit[2], "kthvalue_faults": peer[2]})
            print(f"P={n:,} zeros={zeros}: kit {kit[1]:.1f} ms, torch.kthvalue {peer[1]:.1f} ms", flush=True)
    table = pd.DataFrame(rows)
    print(table.to_string(index=False, float_format="%.2f"))
    return table


if __name__ == "__main__":
    main()
