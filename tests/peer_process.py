"""A real peer server process for tests: ``replica peer serve --data DIR --port 0``.

:class:`PeerProcess` starts ``python -m replica.cli peer serve`` on 127.0.0.1
with a free port, waits (with a deadline, never by sleeping) for its
``Device <id> serving peers on ws://...`` line, and always reaps the process::

    with PeerProcess(tmp_path / "a") as device:
        ...  # another device syncs with device.url (peer=True)
        device.kill()  # SIGKILL, like a dropped tablet
        device.start()  # again, on the same data directory (a new port)
        await device.stop()  # SIGTERM: exit status 0 and "Peer server stopped"

The data directory is locked by the process while it runs: open it in the
test only after :meth:`kill` or :meth:`stop`. Standard output is read by a
thread into a queue, so that waiting for a line has a deadline; standard
error goes to a temporary file, shown in failures.
"""

from __future__ import annotations

import asyncio
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
from typing import IO

#: The ``replica`` command line, run by the interpreter running the tests.
CLI = (sys.executable, "-m", "replica.cli")
HOST = "127.0.0.1"
SERVING = re.compile(r"Device (?P<id>\S+) serving peers on (?P<url>ws://127\.0\.0\.1:\d+)")
STOPPED = "Peer server stopped"
#: Longest wait for the server to start or to stop.
TIMEOUT = 30.0


class PeerProcessError(AssertionError):
    """The peer server process did not behave (did not start, did not stop cleanly)."""


class PeerProcess:
    """One device data directory, served to peers by at most one process at a time."""

    def __init__(self, data: str | os.PathLike[str], *, timeout: float = TIMEOUT) -> None:
        self.data = Path(data)
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

    def start(self, port: int = 0) -> PeerProcess:
        """Start serving the data directory and wait until it listens."""
        if self.running:
            raise RuntimeError("the peer server is already running")
        self._discard_stderr()
        self.output, self.returncode, self._url = [], None, None
        self._lines = queue.Queue()
        # Kept open for the life of the process (and read for diagnostics): no with-block.
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115
        command = [*CLI, "peer", "serve", "--data", str(self.data), "--host", HOST, "--port", str(port)]
        self._process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr)
        assert self._process.stdout is not None
        self._reader = threading.Thread(target=_pump, args=(self._process.stdout, self._lines), daemon=True)
        self._reader.start()
        try:
            line = self._wait_for_line(SERVING)
        except BaseException:
            self._reap(signal.SIGKILL)
            raise
        found = SERVING.search(line)
        assert found is not None
        self.replica_id, self._url = found["id"], found["url"]
        return self

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def url(self) -> str:
        """``ws://127.0.0.1:PORT`` of the running server."""
        if self._url is None or not self.running:
            raise RuntimeError("the peer server is not running")
        return self._url

    @property
    def pid(self) -> int:
        """Process id of the running server."""
        if self._process is None or not self.running:
            raise RuntimeError("the peer server is not running")
        return self._process.pid

    def kill(self) -> None:
        """SIGKILL the server (unless it is already dead) and reap it; idempotent."""
        if self._process is None:
            return
        self._reap(signal.SIGKILL)
        if self.returncode != -signal.SIGKILL:
            raise PeerProcessError(f"the peer server ended with status {self.returncode} before it was killed")

    async def stop(self) -> list[str]:
        """SIGTERM the server and wait (off the event loop, which may have to
        answer the server's closing handshakes); raise unless it exited 0
        after printing ``Peer server stopped``. Returns its output lines."""
        process = self._process
        if process is None or process.poll() is not None:
            raise RuntimeError("the peer server is not running")
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(process.wait, self.timeout)
        except subprocess.TimeoutExpired:
            self._reap(signal.SIGKILL)
            raise PeerProcessError(
                f"the peer server did not stop within {self.timeout} s{self.diagnostics()}"
            ) from None
        self._reap(None)
        if self.returncode != 0:
            raise PeerProcessError(f"the peer server exited with status {self.returncode}{self.diagnostics()}")
        if not any(line.startswith(STOPPED) for line in self.output):
            raise PeerProcessError(f"the peer server exited without saying {STOPPED!r}{self.diagnostics()}")
        return list(self.output)

    def close(self) -> None:
        """Make sure no process is left behind."""
        if self._process is not None:
            self._reap(signal.SIGKILL)
        self._discard_stderr()

    def __enter__(self) -> PeerProcess:
        if not self.running:
            self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

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
        return f"\n--- peer server stdout ---\n{out}\n--- peer server stderr ---\n{err}"

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
                raise PeerProcessError(
                    f"the peer server exited with status {self._process.returncode} before listening"
                    f"{self.diagnostics()}"
                )
            self.output.append(line)
            if pattern.search(line):
                return line
        raise PeerProcessError(f"no line matching {pattern.pattern!r} within {self.timeout} s{self.diagnostics()}")

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


def _pump(stream: IO[bytes], lines: queue.Queue[str | None]) -> None:
    for raw in iter(stream.readline, b""):
        lines.put(raw.decode(errors="replace").rstrip("\r\n"))
    lines.put(None)
