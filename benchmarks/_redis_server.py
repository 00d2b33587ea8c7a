"""A real ``redis-server`` for the scale-out benchmark: 127.0.0.1, a free port,
its own directory, and the durable settings the relays require (``appendonly
yes``, ``appendfsync always``). The approach of ``tests/redis_process.py``;
benchmarks do not import from the tests."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from benchmarks._common import BenchmarkFailed
from benchmarks.relay import _die_with_parent as die_with_parent

HOST = "127.0.0.1"
START_TIMEOUT = 20.0


@dataclass(frozen=True)
class RedisUsage:
    """Redis's own account of itself at one moment (``INFO cpu``, ``INFO memory``) and its disk use."""

    cpu: float  # used_cpu_sys + used_cpu_user, seconds (the server process, not its forked children)
    children_cpu: float  # used_cpu_sys_children + used_cpu_user_children (AOF rewrites)
    memory: int  # used_memory, bytes
    disk: int  # bytes of its append-only files


class RedisServer:
    """One ``redis-server`` process on a fresh port, started and stopped by its owner."""

    def __init__(self, data: Path) -> None:
        program = shutil.which("redis-server")
        if program is None:
            raise BenchmarkFailed("redis-server is not installed (Debian: apt-get install redis-server)")
        self.program = program
        self.data = data
        data.mkdir(parents=True, exist_ok=True)
        with socket.socket() as probe:
            probe.bind((HOST, 0))
            self.port = int(probe.getsockname()[1])
        self._process: subprocess.Popen[bytes] | None = None
        self._client: Any = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:port/0``."""
        return f"redis://{HOST}:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def start(self) -> RedisServer:
        """Start and wait until it answers PING."""
        command = [self.program, "--port", str(self.port), "--bind", HOST, "--dir", str(self.data), "--save", ""]
        command += ["--appendonly", "yes", "--appendfsync", "always", "--protected-mode", "no"]
        # No automatic AOF rewrite: the file's growth per delta is one of the figures.
        command += ["--auto-aof-rewrite-percentage", "0"]
        command += ["--logfile", str(self.data / "redis.log")]
        self._process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, preexec_fn=die_with_parent
        )
        self._client = redis.Redis(host=HOST, port=self.port, socket_timeout=30)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                if self._client.ping():
                    return self
            except redis.exceptions.ConnectionError:
                pass  # not listening yet: the loop waits for it, up to the deadline
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise BenchmarkFailed(f"redis-server did not start; see {self.data / 'redis.log'}")
            time.sleep(0.02)

    def flush(self) -> None:
        """Empty it (between runs, with no relay connected)."""
        self._client.flushall()

    def stream_entries(self, prefix: str) -> int:
        """Entries held in the streams whose keys start with ``prefix``."""
        return sum(int(self._client.xlen(key)) for key in self._client.scan_iter(match=prefix + "*", count=1000))

    def memory_by_kind(self) -> dict[str, int]:
        """Bytes held per kind of key (``replica:log:*`` -> ``log``), by ``MEMORY USAGE``."""
        kinds: dict[str, int] = {}
        for key in self._client.scan_iter(count=1000):
            kind = key.decode().split(":")[1] if b":" in key else key.decode()
            kinds[kind] = kinds.get(kind, 0) + int(self._client.memory_usage(key, samples=0) or 0)
        return kinds

    def usage(self) -> RedisUsage:
        """CPU and memory as Redis reports them, and the bytes of its directory."""
        cpu = self._client.info("cpu")
        memory = self._client.info("memory")
        disk = sum(path.stat().st_size for path in (self.data / "appendonlydir").rglob("*") if path.is_file())
        return RedisUsage(
            cpu=float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]),
            children_cpu=float(cpu["used_cpu_sys_children"]) + float(cpu["used_cpu_user_children"]),
            memory=int(memory["used_memory"]),
            disk=disk,
        )

    def stop(self) -> None:
        """SIGTERM and reap (SIGKILL after 20 s)."""
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(START_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
