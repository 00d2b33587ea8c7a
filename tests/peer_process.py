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
test only after :meth:`kill` or :meth:`stop`.
"""

from __future__ import annotations

import asyncio
import re
import signal

from server_process import CLI, HOST, ServerProcess, ServerProcessError

__all__ = ["CLI", "PeerProcess", "PeerProcessError"]


class PeerProcessError(ServerProcessError):
    """The peer server process did not behave (did not start, did not stop cleanly)."""


class PeerProcess(ServerProcess):
    """One device data directory, served to peers by at most one process at a time."""

    NAME = "peer server"
    READY = re.compile(r"Device (?P<id>\S+) serving peers on (?P<url>wss?://127\.0\.0\.1:\d+)")
    STOPPED = "Peer server stopped"
    Error = PeerProcessError

    def command(self, port: int) -> list[str]:
        return [*CLI, "peer", "serve", "--data", str(self.data), "--host", HOST, "--port", str(port), *self.extra]

    async def stop(self) -> list[str]:
        """SIGTERM the server and wait off the event loop (which may have to
        answer the server's closing handshakes); raise unless it exited 0
        after printing ``Peer server stopped``. Returns its output lines."""
        self.send_signal(signal.SIGTERM)
        return await asyncio.to_thread(self.wait_stopped)
