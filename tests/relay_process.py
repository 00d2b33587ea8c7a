"""A real relay process for tests: ``replica relay --data DIR --port 0``.

:class:`RelayProcess` starts ``python -m replica.cli relay`` on 127.0.0.1 with
a free port, waits (with a timeout, never by sleeping) for its
``Relay <id> listening on ws://...`` line, and always reaps the process::

    with RelayProcess(tmp_path / "relay") as relay:
        token = relay.issue("tablet-1", ["campaign-7/*"])
        ...  # sync against relay.url
        relay.kill()  # SIGKILL, like a power cut
        relay.start()  # again, on the same data directory (a new port)
        relay.terminate()  # SIGTERM: exit status 0 and "Relay stopped"

Standard output is read by a thread into a queue, so that waiting for a line
has a deadline; standard error goes to a temporary file, shown in failures.
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
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

#: The ``replica`` command line, run by the interpreter running the tests.
CLI = (sys.executable, "-m", "replica.cli")
HOST = "127.0.0.1"
LISTENING = re.compile(r"Relay (?P<id>\S+) listening on (?P<url>ws://127\.0\.0\.1:\d+)")
STOPPED = "Relay stopped"
#: Longest wait for the relay to start, to stop, or for a credential.
TIMEOUT = 30.0


class RelayProcessError(AssertionError):
    """The relay process did not behave (did not start, did not stop cleanly)."""


class RelayProcess:
    """One relay data directory, served by at most one process at a time."""

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

    # -- lifecycle -----------------------------------------------------------

    def start(self, port: int = 0) -> RelayProcess:
        """Start serving the data directory and wait until it listens."""
        if self.running:
            raise RuntimeError("the relay is already running")
        self._discard_stderr()
        self.output, self.returncode, self._url = [], None, None
        self._lines = queue.Queue()
        # Kept open for the life of the process (and read for diagnostics): no with-block.
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115
        command = [*CLI, "relay", "--data", str(self.data), "--host", HOST, "--port", str(port)]
        self._process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr)
        assert self._process.stdout is not None
        self._reader = threading.Thread(target=pump_lines, args=(self._process.stdout, self._lines), daemon=True)
        self._reader.start()
        try:
            line = self._wait_for_line(LISTENING)
        except BaseException:
            self._reap(signal.SIGKILL)
            raise
        found = LISTENING.search(line)
        assert found is not None
        self.replica_id, self._url = found["id"], found["url"]
        return self

    def kill(self) -> None:
        """SIGKILL the relay (a power cut) and reap it; idempotent."""
        if self._process is None:
            return
        self._reap(signal.SIGKILL)
        if self.returncode != -signal.SIGKILL:
            raise RelayProcessError(f"the relay ended with status {self.returncode} before it was killed")

    def send_signal(self, number: int) -> None:
        """Send a signal without waiting (for example SIGTERM from inside an
        event loop that the relay's shutdown needs to keep running)."""
        if self._process is None or self._process.poll() is not None:
            raise RuntimeError("the relay is not running")
        self._process.send_signal(number)

    def terminate(self) -> list[str]:
        """SIGTERM the relay, wait, and check a clean stop; see :meth:`wait_stopped`."""
        self.send_signal(signal.SIGTERM)
        return self.wait_stopped()

    def wait_stopped(self) -> list[str]:
        """Wait for the relay to exit after SIGTERM/SIGINT; raise unless it
        exited 0 after printing ``Relay stopped``. Returns its output lines."""
        process = self._process
        if process is None:
            raise RuntimeError("the relay was not started")
        try:
            process.wait(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            self._reap(signal.SIGKILL)
            raise RelayProcessError(f"the relay did not stop within {self.timeout} s{self._diagnostics()}") from None
        self._reap(None)
        if self.returncode != 0:
            raise RelayProcessError(f"the relay exited with status {self.returncode}{self._diagnostics()}")
        if not any(line.startswith(STOPPED) for line in self.output):
            raise RelayProcessError(f"the relay exited without saying {STOPPED!r}{self._diagnostics()}")
        return list(self.output)

    def restart(self, port: int = 0) -> RelayProcess:
        """Kill the running process (if any) and start a new one on the same
        data directory."""
        if self.running:
            self.kill()
        return self.start(port)

    def close(self) -> None:
        """Make sure no process is left behind."""
        if self._process is not None:
            self._reap(signal.SIGKILL)
        self._discard_stderr()

    def __enter__(self) -> RelayProcess:
        if not self.running:
            self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # -- what tests use ------------------------------------------------------

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def url(self) -> str:
        """``ws://127.0.0.1:PORT`` of the running relay."""
        if self._url is None or not self.running:
            raise RuntimeError("the relay is not running")
        return self._url

    @property
    def pid(self) -> int:
        """Process id of the running relay."""
        if self._process is None or not self.running:
            raise RuntimeError("the relay is not running")
        return self._process.pid

    def issue(self, replica_id: str, docs: Sequence[str], expires: str = "30d") -> str:
        """A credential from ``replica relay issue-credential`` (which works
        while the relay runs)."""
        command = [*CLI, "relay", "issue-credential", "--data", str(self.data), "--replica-id", replica_id]
        command += ["--docs", *docs, "--expires", expires]
        done = subprocess.run(command, capture_output=True, text=True, timeout=self.timeout, check=False)
        if done.returncode != 0 or not done.stdout.strip():
            raise RelayProcessError(f"issue-credential exited with {done.returncode}: {done.stderr.strip()}")
        return done.stdout.splitlines()[0].strip()

    def stderr_text(self) -> str:
        """What the current (or last) process wrote to standard error."""
        if self._stderr is None:
            return ""
        self._stderr.flush()
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    # -- internals -----------------------------------------------------------

    def _wait_for_line(self, pattern: re.Pattern[str]) -> str:
        remaining = self.timeout
        deadline = time.monotonic() + remaining
        while remaining > 0:
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                assert self._process is not None
                self._process.wait(timeout=self.timeout)
                raise RelayProcessError(
                    f"the relay exited with status {self._process.returncode} before listening{self._diagnostics()}"
                )
            self.output.append(line)
            if pattern.search(line):
                return line
            remaining = deadline - time.monotonic()
        raise RelayProcessError(f"no line matching {pattern.pattern!r} within {self.timeout} s{self._diagnostics()}")

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

    def _diagnostics(self) -> str:
        out = "\n".join(self.output[-20:])
        err = self.stderr_text()[-3000:]
        return f"\n--- relay stdout ---\n{out}\n--- relay stderr ---\n{err}"


def pump_lines(stream: IO[bytes], lines: queue.Queue[str | None]) -> None:
    """Put each line of ``stream`` into ``lines`` (None at the end); run it in a thread."""
    for raw in iter(stream.readline, b""):
        lines.put(raw.decode(errors="replace").rstrip("\r\n"))
    lines.put(None)
