"""Tests of taskspace_utils.pipeline.progress (cell progress, streamed kernel output, IPC kernels)
and of the suite build's plain progress line."""

from __future__ import annotations

import io
import re
import time

from pipeline_workspace import write_synthetic_notebooks

from taskspace_utils.pipeline.execution import execute_notebook
from taskspace_utils.pipeline.progress import CellReporter, LineWriter


def test_cell_reporter_plain_lines_and_heartbeat():
    """Not a terminal: a line when a cell starts (throttled by min_interval), a heartbeat line
    after `heartbeat` seconds of silence, nothing written by close()."""
    stream = io.StringIO()
    reporter = CellReporter("u 01_build_data", stream=stream, tty=False, heartbeat=0.3, min_interval=0.0)
    reporter.cell(0, 3)
    reporter.cell(1, 3)
    time.sleep(1.2)
    reporter.close()
    lines = stream.getvalue().splitlines()
    assert lines[0] == "u 01_build_data: cell 1/3, 00:00" and lines[1] == "u 01_build_data: cell 2/3, 00:00"
    assert any(re.fullmatch(r"u 01_build_data: cell 2/3, 00:0\d \(running\)", line) for line in lines[2:]), lines
    throttled = io.StringIO()
    reporter = CellReporter("u", stream=throttled, tty=False, heartbeat=60, min_interval=60)
    for i in range(5):
        reporter.cell(i, 5)
    reporter.close()
    assert throttled.getvalue() == "u: cell 1/5, 00:00\n"


def test_cell_reporter_updates_one_line_on_a_terminal():
    stream = io.StringIO()
    reporter = CellReporter("u", stream=stream, tty=True)
    reporter.cell(0, 2)
    reporter.cell(1, 2)
    reporter.close()
    text = stream.getvalue()
    assert "\n" not in text and text.startswith("\r\x1b[Ku: cell 1/2, 00:00\r\x1b[Ku: cell 2/2, 00:00")
    assert text.endswith("\r\x1b[K")


def test_line_writer_splits_newlines_and_carriage_returns():
    lines = []
    writer = LineWriter(lines.append)
    writer.write("a 1/3\ra 2/3")
    writer.write("\rb\n\nc")
    assert lines == ["a 1/3", "a 2/3", "b"]
    writer.write("\n")
    assert lines[-1] == "c"


def test_notebook_runs_over_ipc_with_cell_progress_and_streamed_output(tmp_path, capfd):
    """A real kernel: the cell lines go to stdout, the kernel's output reaches on_output while
    running, and the kernel prints no TCP-encryption warning (it listens on IPC sockets)."""
    notebooks = write_synthetic_notebooks(tmp_path / "nb")
    lines = []
    execute_notebook(notebooks / "05_scale_and_checkpoints.ipynb", tmp_path / "out" / "05.ipynb",
                     {"run_dir": str(tmp_path / "out"), "units": ["a", "b"]}, cwd=notebooks, label="run 05",
                     on_output=lines.append)
    captured = capfd.readouterr()
    assert lines == ["compared 2 units"]
    assert "run 05: cell 1/" in captured.out
    assert "without encryption" not in captured.err and "IPKernelApp" not in captured.err, captured.err
    assert (tmp_path / "out" / "05.ipynb").exists()


def test_suite_progress_line():
    from taskspace_utils.suite import default_config
    from taskspace_utils.suite.training import _progress_line

    config = default_config("tiny-m", smoke=True)
    done = config.max_steps // 2
    seconds = 10.0
    rate = done * config.tokens_per_step / seconds
    eta = (config.max_steps - done) * seconds / done
    from tqdm import tqdm

    assert _progress_line(config, done, 0, 4.12345, seconds) == (
        f"pre-train tiny-m: step {done}/{config.max_steps}, loss 4.123, {rate:,.0f} tokens/s, "
        f"eta {tqdm.format_interval(eta)}")
