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
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence

from server_process import CLI, HOST, ServerProcess, ServerProcessError, pump_lines

__all__ = ["CLI", "RelayProcess", "RelayProcessError", "pump_lines"]


class RelayProcessError(ServerProcessError):
    """The relay process did not behave (did not start, did not stop cleanly)."""


class RelayProcess(ServerProcess):
    """One relay data directory, served by at most one process at a time."""

    NAME = "relay"
    READY = re.compile(r"Relay (?P<id>\S+) listening on (?P<url>wss?://127\.0\.0\.1:\d+)")
    STOPPED = "Relay stopped"
    Error = RelayProcessError

    def command(self, port: int) -> list[str]:
        return [*CLI, "relay", "--data", str(self.data), "--host", HOST, "--port", str(port), *self.extra]

    def restart(self, port: int = 0) -> RelayProcess:
        """Kill the running process (if any) and start a new one on the same data directory."""
        if self.running:
            self.kill()
        return self.start(port)

    def issue(self, replica_id: str, docs: Sequence[str], expires: str = "30d") -> str:
        """A credential from ``replica relay issue-credential`` (which works while the relay runs)."""
        command = [*CLI, "relay", "issue-credential", "--data", str(self.data), "--replica-id", replica_id]
        command += ["--docs", *docs, "--expires", expires]
        done = subprocess.run(command, capture_output=True, text=True, timeout=self.timeout, check=False)
        if done.returncode != 0 or not done.stdout.strip():
            raise RelayProcessError(f"issue-credential exited with {done.returncode}: {done.stderr.strip()}")
        return done.stdout.splitlines()[0].strip()
