"""Live progress of the notebooks a run executes: cells, kernel output, and the kernel transport.

Papermill executes a notebook through an *engine*; :class:`ProgressEngine` (registered as
``"taskspace"``) is papermill's nbclient engine with three changes:

- **cells**: ``on_cell(index, n_cells)`` is called as each cell starts (papermill's
  ``NotebookExecutionManager.cell_start`` hook), which drives a :class:`CellReporter`;
- **kernel output**: ``on_output(line)`` receives the kernel's stdout/stderr line by line while
  the cell runs (papermill's ``stdout_file``/``stderr_file`` hooks, through :class:`LineWriter`);
  the runner streams the suite build's output this way;
- **transport**: the kernel listens on Unix-domain (IPC) sockets in a private temporary folder
  (:class:`IPCKernelManager`) instead of TCP on localhost. ipykernel >= 7 warns
  ``Kernel is running over TCP without encryption`` for every TCP kernel without CurveZMQ keys;
  over IPC only processes of the same user reach the sockets (the folder is mode 700), so the
  warning's cause is gone rather than filtered.

:class:`CellReporter` shows ``<label>: cell i/n, elapsed`` on one updating line when its stream
is a terminal; otherwise plain lines: when a cell starts at least ``min_interval`` s after the last
line, and a heartbeat line after ``heartbeat`` s without one (a long cell), so a log never stays
silent longer than ``heartbeat`` seconds (25 by default, checked every second: a new line at least
every 30 s).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
import time
from typing import Callable

from tqdm import tqdm

__all__ = ["CellReporter", "LineWriter", "IPCKernelManager", "ProgressEngine", "ENGINE", "register_engine"]

ENGINE = "taskspace"


class CellReporter:
    """Progress of one notebook's cells (see the module docstring); use :meth:`cell` as ``on_cell``."""

    def __init__(self, label: str, stream=None, tty: bool | None = None, heartbeat: float = 25.0,
                 min_interval: float = 10.0):
        self.label, self.stream = label, stream if stream is not None else sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self.heartbeat, self.min_interval = heartbeat, min_interval
        self.start = time.monotonic()
        self.last_line = -float("inf")
        self.index, self.n = 0, 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()

    def text(self) -> str:
        return f"{self.label}: cell {self.index}/{self.n}, {tqdm.format_interval(time.monotonic() - self.start)}"

    def cell(self, index: int, n_cells: int) -> None:
        """Cell ``index`` (0-based) of ``n_cells`` starts."""
        with self._lock:
            self.index, self.n = index + 1, n_cells
            if self.tty:
                self._write("\r\x1b[K" + self.text())
            elif time.monotonic() - self.last_line >= self.min_interval:
                self._write(self.text() + "\n")

    def clear(self) -> None:
        """Clear the updating line (on a terminal) so that another line can be printed; the next
        heartbeat draws it again."""
        if self.tty:
            with self._lock:
                self.stream.write("\r\x1b[K")
                self.stream.flush()

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()
        self.last_line = time.monotonic()

    def _beat(self) -> None:
        # checked every second (or sooner for a short heartbeat): a 5-s check let a silent log reach
        # heartbeat + 5 s (34.5 s measured with the 30-s heartbeat; the target is at most 30 s)
        while not self._stop.wait(min(1.0, self.heartbeat / 2)):
            with self._lock:
                if not self.n:
                    continue
                if self.tty:
                    self._write("\r\x1b[K" + self.text())
                elif time.monotonic() - self.last_line >= self.heartbeat:
                    self._write(self.text() + " (running)\n")

    def close(self) -> None:
        """Stop the heartbeat and clear the updating line (the caller prints the notebook's line)."""
        self._stop.set()
        self._thread.join()
        if self.tty:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


class LineWriter:
    """A file-like sink that calls ``callback(line)`` per complete line (``\\n`` or tqdm's ``\\r``)."""

    def __init__(self, callback: Callable[[str], None]):
        self.callback, self.buffer = callback, ""

    def write(self, text: str) -> int:
        self.buffer += str(text).replace("\r", "\n")
        *lines, self.buffer = self.buffer.split("\n")
        for line in lines:
            if line.strip():
                self.callback(line.rstrip())
        return len(text)

    def flush(self) -> None:
        pass


def _kernel_manager_class():
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import CaselessStrEnum, default

    class _IPCKernelManager(AsyncKernelManager):
        """A kernel manager whose kernels use IPC sockets in a private temporary folder."""

        transport = CaselessStrEnum(["tcp", "ipc"], default_value="ipc", config=True)

        @default("ip")
        def _ip_default(self) -> str:  # socket files <folder>/kernel-1 ... (path < 108 bytes)
            self._ipc_folder = tempfile.mkdtemp(prefix="tsk-")  # mode 700
            return os.path.join(self._ipc_folder, "kernel")

        async def _async_cleanup_resources(self, restart: bool = False) -> None:
            await super()._async_cleanup_resources(restart=restart)
            folder = getattr(self, "_ipc_folder", None)
            if folder and not restart:
                shutil.rmtree(folder, ignore_errors=True)

    return _IPCKernelManager


IPCKernelManager = None  # set by register_engine (jupyter_client is imported only when executing)


def register_engine() -> str:
    """Register :class:`ProgressEngine` with papermill (once) and return its name."""
    global IPCKernelManager, ProgressEngine
    from papermill.engines import NBClientEngine, papermill_engines

    if ProgressEngine is not None:
        return ENGINE
    IPCKernelManager = _kernel_manager_class()

    class _ProgressEngine(NBClientEngine):
        """Papermill's nbclient engine with cell and output callbacks over IPC kernels."""

        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, on_cell=None, on_output=None, **kwargs):
            if on_cell is not None:
                n_cells, cell_start = len(nb_man.nb.cells), nb_man.cell_start

                def start(cell, cell_index=None, **more):
                    on_cell(cell_index or 0, n_cells)
                    return cell_start(cell, cell_index, **more)

                nb_man.cell_start = start
            if on_output is not None:
                kwargs["stdout_file"] = kwargs["stderr_file"] = LineWriter(on_output)
            kwargs.setdefault("kernel_manager_class", IPCKernelManager)
            return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)

    ProgressEngine = _ProgressEngine
    papermill_engines.register(ENGINE, ProgressEngine)
    return ENGINE


ProgressEngine = None  # the engine class, set by register_engine
