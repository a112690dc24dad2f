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


#: glibc malloc settings for the kernels (unless the user set them): blocks up to 32 MB come from the
#: heap and freed memory is kept (not trimmed), so the next batch's tensors reuse pages instead of
#: mapping and faulting in fresh ones. Measured on 30 pre-training steps of tiny-l (2 threads):
#: system time 11.0 -> 6.1 s, minor page faults 4.39M -> 2.51M; allocations over 32 MB (the
#: pre-training logits) are still mapped by glibc whatever the setting. Results are unchanged.
KERNEL_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "4294967296",
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
