"""A real ``redis-server`` for tests, on 127.0.0.1 and a free port, with its
own data directory and the durable settings the relays require
(``appendonly yes``, ``appendfsync always``)::

    with RedisServer(tmp_path / "redis") as server:
        ...  # Relay(..., redis=server.url)
        server.kill()  # SIGKILL
        server.start()  # again, from its AOF, on the same port

Tests that need it skip, with the reason, where ``redis-server`` is not
installed (``.ci/run`` installs it, so nothing skips there).
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import pytest

HOST = "127.0.0.1"
TIMEOUT = 20.0


def redis_server_or_skip() -> str:
    """The path of ``redis-server``, or skip the test saying why."""
    found = shutil.which("redis-server")
    if found is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server; .ci/run installs it)")
    return found


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


class RedisServer:
    """One Redis data directory, served by at most one process at a time."""

    def __init__(self, data: str | Path, *, durable: bool = True) -> None:
        self.program = redis_server_or_skip()
        self.data = Path(data)
        self.data.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.durable = durable
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:port/0``."""
        return f"redis://{HOST}:{self.port}/0"

    @property
    def pid(self) -> int:
        """The process id of the running server."""
        assert self._process is not None
        return self._process.pid

    def start(self) -> Self:
        """Start (or restart, from the AOF in its directory) and wait until it answers."""
        fsync = ["--appendonly", "yes", "--appendfsync", "always"] if self.durable else ["--appendonly", "no"]
        command = [self.program, "--port", str(self.port), "--bind", HOST, "--dir", str(self.data), "--save", ""]
        command += [*fsync, "--protected-mode", "no", "--logfile", str(self.data / "redis.log")]
        self._process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + TIMEOUT
        while not self._answers():
            if self._process.poll() is not None:
                raise AssertionError(f"redis-server exited with {self._process.returncode}: {self._log()}")
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"redis-server did not answer within {TIMEOUT} s: {self._log()}")
            time.sleep(0.02)
        return self

    def _answers(self) -> bool:
        try:
            with socket.create_connection((HOST, self.port), timeout=1) as link:
                link.sendall(b"PING\r\n")
                return link.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def _log(self) -> str:
        path = self.data / "redis.log"
        return path.read_text()[-2000:] if path.exists() else "(no log)"

    def kill(self) -> None:
        """SIGKILL and reap; idempotent."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGKILL)
        self._process.wait(TIMEOUT)
        self._process = None

    def stop(self) -> None:
        """SIGTERM and reap."""
        if self._process is None:
            return
        self._process.terminate()
        self._process.wait(TIMEOUT)
        self._process = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.kill()
