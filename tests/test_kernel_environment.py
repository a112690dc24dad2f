"""The runner's kernel environment (taskspace_utils.pipeline.kernel_env.kernel_environment): the malloc
settings (and that they keep a large block's pages from one use to the next), Intel's OpenMP runtime
preloaded on Linux x86-64, the user's own settings left alone, and the same numbers under either
OpenMP runtime."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from taskspace_utils.pipeline.kernel_env import KERNEL_MALLOC_ENV, intel_openmp_library, kernel_environment

INTEL = intel_openmp_library() is not None and platform.system() == "Linux" and platform.machine() == "x86_64"

# Two threads, as the runner's kernels on CI: a matrix product (MKL), a large reduction and a
# softmax (torch's own parallel loops), a backward pass; every result as its float64 bytes.
_PROBE = r"""
import json, os, torch
torch.set_num_threads(2)
torch.manual_seed(0)
a, b = torch.randn(300, 200), torch.randn(200, 500, requires_grad=True)
c = a @ b
s = torch.log_softmax(c, dim=-1).sum()
s.backward()
maps = open("/proc/self/maps").read()
print(json.dumps({"values": [c.double().sum().item(), s.item(), b.grad.double().sum().item(), c[7, 11].item()],
                  "iomp": "libiomp5" in maps, "threads": torch.get_num_threads()}))
"""


def _run(env: dict[str, str], code: str = _PROBE) -> dict:
    """``code`` in a fresh interpreter with ``env`` over this one's environment, less the settings
    under test (preload, OpenMP block time, glibc malloc); its last line of output as JSON."""
    base = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "KMP_BLOCKTIME") and not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", code], env=base | env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_malloc_settings_and_user_values_kept(monkeypatch):
    for key in KERNEL_MALLOC_ENV:
        monkeypatch.delenv(key, raising=False)
    assert kernel_environment().items() >= KERNEL_MALLOC_ENV.items()
    monkeypatch.setenv("MALLOC_TOP_PAD_", "123")
    assert "MALLOC_TOP_PAD_" not in kernel_environment()  # the user's value is inherited, not replaced


# A block larger than glibc's largest mmap threshold (32 MB), used again and again as the
# pre-training logits are: minor page faults of the last uses, and the values as float64 bytes.
_LARGE_BLOCK = r"""
import json, resource, torch
torch.set_num_threads(1)
torch.manual_seed(0)
x = torch.randn(2048, 8192)  # 64 MiB, as one step's logits of the suite (32 x 64 tokens, V = 8,192)
faults, values = [], []
for _ in range(20):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    y = torch.log_softmax(x, dim=-1) * 2.0
    values.append(y[5, 7].item())
    del y
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"faults": faults, "values": values}))
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc malloc settings")
def test_malloc_settings_reuse_the_pages_of_large_blocks():
    """Without the settings every use of a 64 MiB block maps fresh pages (2 x 16,384 page faults: the
    log-softmax and the product); with them, after the heap has grown, the same pages are reused
    and the numbers are the same.

    "Most of the last ten uses", not all: the heap stops growing after 6-8 uses, but in some runs one
    later use faults one block's pages in again (16,384 faults, as late as the 17th use of 40 in 58
    runs on 2026-11-30, and at the 10th of 12 once on CI), while glibc's default faults at every use."""
    plain, tuned = _run({}, _LARGE_BLOCK), _run(KERNEL_MALLOC_ENV, _LARGE_BLOCK)
    pages = 2048 * 8192 * 4 // 4096
    assert min(plain["faults"][-10:]) >= pages  # glibc's default: mapped and unmapped at every use
    assert sum(f < pages // 10 for f in tuned["faults"][-10:]) >= 8, tuned["faults"]
    assert tuned["values"] == plain["values"]


@pytest.mark.skipif(not INTEL, reason="intel-openmp is a dependency on Linux x86-64 only")
def test_intel_openmp_preloaded_unless_opted_out(monkeypatch):
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.delenv("KMP_BLOCKTIME", raising=False)
    monkeypatch.delenv("TASKSPACE_OPENMP", raising=False)
    env = kernel_environment()
    assert env["LD_PRELOAD"] == intel_openmp_library() and os.path.isfile(env["LD_PRELOAD"])
    assert env["KMP_BLOCKTIME"] == "1"
    monkeypatch.setenv("TASKSPACE_OPENMP", "gnu")
    assert "LD_PRELOAD" not in kernel_environment() and "KMP_BLOCKTIME" not in kernel_environment()
    monkeypatch.delenv("TASKSPACE_OPENMP")
    monkeypatch.setenv("LD_PRELOAD", "/some/user/lib.so")  # the user's preload is never replaced
    assert "LD_PRELOAD" not in kernel_environment()


@pytest.mark.skipif(not INTEL, reason="intel-openmp is a dependency on Linux x86-64 only")
def test_same_numbers_under_either_openmp_runtime(monkeypatch):
    """A process started with the kernel environment runs on Intel's runtime and computes the same
    float32 numbers, bit for bit, as one on torch's GNU runtime (same thread count, same partition)."""
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.delenv("TASKSPACE_OPENMP", raising=False)
    gnu = _run({})
    intel = _run({k: v for k, v in kernel_environment().items() if k in ("LD_PRELOAD", "KMP_BLOCKTIME")})
    assert not gnu["iomp"] and intel["iomp"]
    assert gnu["threads"] == intel["threads"] == 2
    assert intel["values"] == gnu["values"]
