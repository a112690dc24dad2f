"""Shared by the tests of taskspace_utils.suite: the smoke size ``tiny-s`` built twice with the same
seed, once through ``build_suite`` and once through the command line, once per test session."""

from __future__ import annotations

import functools
from pathlib import Path


@functools.lru_cache(maxsize=None)
def toy_suite_roots(base: Path) -> tuple[Path, Path]:
    """Build the smoke ``tiny-s`` into ``base/suite_a`` (``build_suite``) and ``base/suite_b`` (CLI)."""
    from taskspace_utils.suite import build_suite
    from taskspace_utils.suite.__main__ import main

    first, second = base / "suite_a", base / "suite_b"
    build_suite(("tiny-s",), suite_dir=first, smoke=True, device="cpu")
    assert main(["--size", "tiny-s", "--smoke", "--suite-dir", str(second), "--device", "cpu"]) == 0
    return first, second
