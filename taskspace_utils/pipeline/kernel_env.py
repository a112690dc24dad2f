"""The environment the runner gives its notebook kernels (:func:`kernel_environment`): glibc
malloc settings and, on Linux x86-64, Intel's OpenMP runtime in place of torch's GNU one. Used by
:func:`~taskspace_utils.pipeline.plan.build_plan` (``Plan.env``) and by ``benchmarks/`` so that they
time the kit as the main job runs it."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path

__all__ = ["KERNEL_MALLOC_ENV", "intel_openmp_library", "kernel_environment"]


#: glibc malloc settings for the kernels (unless the user set them): no block comes from its own
#: ``mmap`` (``MALLOC_MMAP_MAX_=0``: every block comes from the heap) and freed memory is kept (not
#: trimmed), so the next batch's tensors reuse pages instead of mapping and faulting in fresh ones.
#: Why not a smaller change: glibc caps ``MALLOC_MMAP_THRESHOLD_`` at 32 MB, so before 2026-11-29 (when
#: the threshold was that cap) every larger block was still mapped and unmapped per use: the
#: pre-training logits and their gradients (32 x 64 tokens x 8,192 x 4 B = 67 MB each), hence ~55,000
#: faults per training step. Measured 2026-11-29 in one process (2 threads, the rest of this
#: environment), 80 steps of tiny-s: 4.39-4.44 M faults, 7.2-7.5 s system, 22.5-23.8 s wall ->
#: 0.25 M, 0.6-0.7 s, 18.6-19.3 s; 40 steps of tiny-l: 3.17 M -> 0.37 M faults, 5.45 -> 0.89 s
#: system, peak memory 1.49 -> 1.76 GB; the trained weights bitwise the same. Notebooks 01, 02 and 04
#: of tiny-s (no block over 32 MB that recurs) are unchanged: 1.06-1.13 M faults, 4.1-4.4 s system
#: either way, every result the same. The first setting (2026-11-25, the 32 MB threshold and
#: no trimming) took 30 pre-training steps of tiny-l from 11.0 to 6.1 s system, 4.39 to 2.51 M faults.
KERNEL_MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "4294967296",
                     "MALLOC_TOP_PAD_": "268435456"}


def intel_openmp_library() -> str | None:
    """Path of Intel's OpenMP runtime (``libiomp5.so`` of the ``intel-openmp`` package, a dependency
    on Linux x86-64), or ``None`` when it is not installed."""
    try:
        files = importlib.metadata.files("intel-openmp") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    found = [Path(f.locate()).resolve() for f in files if f.name == "libiomp5.so"]
    return str(found[0]) if found and found[0].is_file() else None


def kernel_environment() -> dict[str, str]:
    """What the runner adds to its kernels' environment (variables the user set are left alone).

    - :data:`KERNEL_MALLOC_ENV` (glibc malloc settings).
    - On Linux x86-64, Intel's OpenMP runtime preloaded in place of torch's GNU one (unless
      ``TASKSPACE_OPENMP=gnu``): GNU's ``libgomp`` ends every parallel region (each matrix product
      of MKL, each large elementwise op) with a futex wake system call, and its worker with a futex
      wait, whatever ``OMP_WAIT_POLICY`` says; Intel's runtime implements the same ``GOMP_*`` entry
      points with spinning barriers (``KMP_BLOCKTIME=1``: a worker sleeps after 1 ms idle, as
      Intel's ``ipexrun`` sets for PyTorch). Measured on tiny-m probing 4 tasks (2 threads):
      3,847,893 futex calls and 2.97 s system time -> 2,664 calls and 1.37 s, of 41-45 s CPU;
      every result file bitwise the same (the thread count, hence MKL's and torch's partitions of
      the work, is unchanged).
    """
    env = {k: v for k, v in KERNEL_MALLOC_ENV.items() if k not in os.environ}
    wanted = (platform.system() == "Linux" and platform.machine() == "x86_64"
              and os.environ.get("TASKSPACE_OPENMP", "intel") != "gnu" and "LD_PRELOAD" not in os.environ)
    library = intel_openmp_library() if wanted else None
    if library:
        env["LD_PRELOAD"] = library
        if "KMP_BLOCKTIME" not in os.environ:
            env["KMP_BLOCKTIME"] = "1"
    return env
