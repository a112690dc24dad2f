"""Tests for taskspace_utils.results: atomic writes and their file mode."""

import os
import stat

import pandas as pd
import pytest

from taskspace_utils.results import atomic_write_csv, atomic_write_json, atomic_write_text, files_table


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_results_get_the_mode_of_the_users_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        paths = [atomic_write_json(tmp_path / "a.json", {"x": 1}), atomic_write_text(tmp_path / "b.txt", "hi"),
                 atomic_write_csv(tmp_path / "c.csv", pd.DataFrame({"x": [1]}))]
    finally:
        os.umask(old)
    for path in paths:
        assert stat.S_IMODE(path.stat().st_mode) == mode, path
    assert not list(tmp_path.glob(".*.tmp"))


def test_files_table_lists_what_a_stage_saved(tmp_path):
    atomic_write_text(tmp_path / "sub" / "b.txt", "hello")
    atomic_write_text(tmp_path / "a.txt", "x")
    table = files_table(tmp_path)
    assert list(table["file"]) == ["a.txt", "sub/b.txt"] and list(table["bytes"]) == [1, 5]


def test_folder_bytes_counts_files_once_and_a_missing_folder_as_empty(tmp_path):
    from taskspace_utils.results import folder_bytes

    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "x.bin").write_bytes(b"\0" * 10)
    (tmp_path / "a" / "b" / "y.bin").write_bytes(b"\0" * 5)
    (tmp_path / "a" / "link.bin").symlink_to(tmp_path / "a" / "x.bin")  # counted where it lies, not twice
    assert folder_bytes(tmp_path / "a") == 15
    assert folder_bytes(tmp_path / "missing") == 0
