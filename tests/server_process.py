"""A real ``replica`` server process for tests (relay or peer server).

:class:`ServerProcess` runs one ``python -m replica.cli ...`` command on
127.0.0.1 with a free port, waits (with a deadline, never by sleeping) for the
line saying it listens, and always reaps the process. Standard output is read
by a thread into a queue, so that waiting for a line has a deadline; standard
error goes to a temporary file, shown in failures. Subclasses say which
command to run and which lines to expect (``relay_process``, ``peer_process``).
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import IO, ClassVar, Self

#: The ``replica`` command line, run by the interpreter running the tests.
CLI = (sys.executable, "-m", "replica.cli")
HOST = "127.0.0.1"
#: Longest wait for a server to start or to stop.
TIMEOUT = 30.0


class ServerProcessError(AssertionError):
    """The server process did not behave (did not start, did not stop cleanly)."""


class ServerProcess:
    """One data directory, served by at most one process at a time."""

    NAME: ClassVar[str]  #: what the messages call the server
    READY: ClassVar[re.Pattern[str]]  #: the line saying it listens, with groups ``id`` and ``url``
    STOPPED: ClassVar[str]  #: how a clean stop's line starts
    Error: ClassVar[type[ServerProcessError]] = ServerProcessError

    def __init__(self, data: str | os.PathLike[str], *extra: str, timeout: float = TIMEOUT) -> None:
        self.data = Path(data)
        self.extra = extra  #: more options of the command (``--relay URL``, say)
        self.timeout = timeout
        self.replica_id: str | None = None
        #: Standard output of the current (or last) process, line by line.
        self.output: list[str] = []
        self.returncode: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader: threading.Thread | None = None
        self._stderr: IO[bytes] | None = None
        self._url: str | None = None

    def command(self, port: int) -> list[str]:
        """The command line that serves ``self.data`` on ``port``."""
        raise NotImplementedError

    # -- lifecycle -----------------------------------------------------------

    def start(self, port: int = 0) -> Self:
        """Start serving the data directory and wait until it listens."""
        if self.running:
            raise RuntimeError(f"the {self.NAME} is already running")
        self._discard_stderr()
        self.output, self.returncode, self._url = [], None, None
        self._lines = queue.Queue()
        # Kept open for the life of the process (and read for diagnostics): no with-block.
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115
        self._process = subprocess.Popen(
            self.command(port), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr
        )
        assert self._process.stdout is not None
        self._reader = threading.Thread(target=pump_lines, args=(self._process.stdout, self._lines), daemon=True)
        self._reader.start()
        try:
            line = self._wait_for_line(self.READY)
        except BaseException:
            self._reap(signal.SIGKILL)
            raise
        found = self.READY.search(line)
        assert found is not None
        self.replica_id, self._url = found["id"], found["url"]
        return self

    def kill(self) -> None:
        """SIGKILL the server (a power cut, a dropped tablet) and reap it; idempotent."""
        if self._process is None:
            return
        self._reap(signal.SIGKILL)
        if self.returncode != -signal.SIGKILL:
            raise self.Error(f"the {self.NAME} ended with status {self.returncode} before it was killed")

    def send_signal(self, number: int) -> None:
        """Send a signal without waiting (for example SIGTERM from inside an
        event loop that the server's shutdown needs to keep running)."""
        if self._process is None or self._process.poll() is not None:
            raise RuntimeError(f"the {self.NAME} is not running")
        self._process.send_signal(number)

    def terminate(self) -> list[str]:
        """SIGTERM the server, wait, and check a clean stop; see :meth:`wait_stopped`."""
        self.send_signal(signal.SIGTERM)
        return self.wait_stopped()

    def wait_stopped(self) -> list[str]:
        """Wait for the server to exit after SIGTERM/SIGINT; raise unless it
        exited 0 after printing its stop line. Returns its output lines."""
        if self.wait_exit() != 0:
            raise self.Error(f"the {self.NAME} exited with status {self.returncode}{self.diagnostics()}")
        if not any(line.startswith(self.STOPPED) for line in self.output):
            raise self.Error(f"the {self.NAME} exited without saying {self.STOPPED!r}{self.diagnostics()}")
        return list(self.output)

    def wait_exit(self) -> int:
        """Wait (with the deadline) for the process to end by itself; its exit status."""
        process = self._process
        if process is None:
            raise RuntimeError(f"the {self.NAME} was not started")
        try:
            process.wait(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            self._reap(signal.SIGKILL)
            raise self.Error(f"the {self.NAME} did not end within {self.timeout} s{self.diagnostics()}") from None
        self._reap(None)
        assert self.returncode is not None
        return self.returncode

    def close(self) -> None:
        """Make sure no process is left behind."""
        if self._process is not None:
            self._reap(signal.SIGKILL)
        self._discard_stderr()

    def __enter__(self) -> Self:
        if not self.running:
            self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # -- what tests use ------------------------------------------------------

    def expect(self, pattern: str | re.Pattern[str]) -> str:
        """Wait (with the deadline) for the next line of standard output that
        matches ``pattern`` (a regular expression); the lines before it are
        kept in :attr:`output`. Raises if the process ends first."""
        return self._wait_for_line(re.compile(pattern) if isinstance(pattern, str) else pattern)

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def url(self) -> str:
        """``ws://127.0.0.1:PORT`` of the running server."""
        if self._url is None or not self.running:
            raise RuntimeError(f"the {self.NAME} is not running")
        return self._url

    @property
    def pid(self) -> int:
        """Process id of the running server."""
        if self._process is None or not self.running:
            raise RuntimeError(f"the {self.NAME} is not running")
        return self._process.pid

    def stderr_text(self) -> str:
        """What the current (or last) process wrote to standard error."""
        if self._stderr is None:
            return ""
        self._stderr.flush()
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def diagnostics(self) -> str:
        """The last output lines and standard error, for assertion messages."""
        out = "\n".join(self.output[-20:])
        err = self.stderr_text()[-3000:]
        return f"\n--- {self.NAME} stdout ---\n{out}\n--- {self.NAME} stderr ---\n{err}"

    # -- internals -----------------------------------------------------------

    def _wait_for_line(self, pattern: re.Pattern[str]) -> str:
        deadline = time.monotonic() + self.timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                assert self._process is not None
                self._process.wait(timeout=self.timeout)
                raise self.Error(
                    f"the {self.NAME} exited with status {self._process.returncode} before printing {pattern.pattern!r}"
                    f"{self.diagnostics()}"
                )
            self.output.append(line)
            if pattern.search(line):
                return line
        raise self.Error(f"no line matching {pattern.pattern!r} within {self.timeout} s{self.diagnostics()}")

    def _reap(self, number: int | None) -> None:
        """Signal (unless None), wait for the exit and for the end of stdout."""
        process, self._process = self._process, None
        if process is None:
            return
        if number is not None and process.poll() is None:
            process.send_signal(number)
        process.wait(timeout=self.timeout)
        self.returncode = process.returncode
        if self._reader is not None:
            self._reader.join(timeout=self.timeout)
            self._reader = None
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.output.append(line)
        if process.stdout is not None:
            process.stdout.close()

    def _discard_stderr(self) -> None:
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None


def pump_lines(stream: IO[bytes], lines: queue.Queue[str | None]) -> None:
    """Put each line of ``stream`` into ``lines`` (None at the end); run it in a thread."""
    for raw in iter(stream.readline, b""):
        lines.put(raw.decode(errors="replace").rstrip("\r\n"))
    lines.put(None)
