"""SIGTERM with 1,000 open connections: a real relay process stops in under
2 s, closing websocket links with 1001 (going away) and aborting the silent
and half-open ones; what it acknowledged is on disk; a live device takes the
close as retryable, backs off and reconnects to the restarted relay."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

from websockets.asyncio.client import ClientConnection, connect

from relay_process import RelayProcess
from replica import Replica
from replica.status import SyncState, SyncStatus

HALF_OPEN = 300  #: TCP connected, not a byte sent
PARTIAL = 100  #: an HTTP request line, never finished
SILENT = 600  #: websocket open, no hello


async def _wait_for(replica: Replica, check: object, timeout: float = 20.0) -> SyncStatus:
    """The first status of ``replica`` for which ``check(status)`` holds."""
    assert callable(check)

    async def first() -> SyncStatus:
        async for status in replica.statuses():
            if check(status):
                return status
        raise AssertionError("statuses ended")

    return await asyncio.wait_for(first(), timeout)


def test_sigterm_with_a_thousand_connections_stops_quickly_and_loses_nothing(tmp_path: Path) -> None:
    relay = RelayProcess(tmp_path / "relay")
    relay.start()
    try:
        token = relay.issue("tablet-1", ["c7/*"])
        reader_token = relay.issue("phone-1", ["c7/*"])
        asyncio.run(_scenario(relay, tmp_path, token, reader_token))
    finally:
        relay.close()


async def _scenario(relay: RelayProcess, tmp_path: Path, token: str, reader_token: str) -> None:
    url = relay.url
    host, port = "127.0.0.1", int(url.rsplit(":", 1)[1])
    with Replica.open(tmp_path / "tablet", replica_id="tablet-1") as device:
        live = asyncio.ensure_future(device.sync(url, credential=token, live=True, timeout=10))
        rows = device.doc("c7/households").records("households")
        for number in range(50):
            rows.put(f"h{number}", {"name": f"household {number}"})
        await _wait_for(device, lambda s: s.connected and s.unsynced == 0)  # all 50 acknowledged

        streams = [await asyncio.open_connection(host, port) for _ in range(HALF_OPEN + PARTIAL)]
        for _, writer in streams[HALF_OPEN:]:
            writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the blank line
        silent: list[ClientConnection] = list(
            await asyncio.gather(*(connect(url, open_timeout=20, close_timeout=5) for _ in range(SILENT)))
        )

        started = time.monotonic()
        relay.send_signal(signal.SIGTERM)
        await asyncio.to_thread(relay.wait_stopped)
        took = time.monotonic() - started
        print(f"SIGTERM with {HALF_OPEN + PARTIAL + SILENT + 1} connections: stopped in {took:.3f} s")
        assert took < 2.0, f"the relay took {took:.2f} s to stop{relay.diagnostics()}"

        await asyncio.wait_for(asyncio.gather(*(ws.wait_closed() for ws in silent)), 10)
        codes = {ws.close_code for ws in silent}
        assert codes == {1001}, codes
        for _, writer in streams:
            writer.close()

        dropped = await _wait_for(device, lambda s: not s.connected and s.retry_at is not None)
        # a live sync that had caught up stays SYNCED through a drop (the status rules); any error is retryable
        assert dropped.error is None or dropped.error.retryable, dropped.error
        assert not live.done()  # a live sync goes on: it waits and retries

        relay.start(port)  # the same port: the device reconnects by itself
        rows.put("h50", {"name": "after the restart"})
        await _wait_for(device, lambda s: s.connected and s.unsynced == 0)
        assert device.status().state is SyncState.SYNCED
        await device.stop_sync()

    with Replica.open(tmp_path / "phone", replica_id="phone-1") as reader:
        status = await reader.sync(relay.url, credential=reader_token, timeout=10)
        assert status.state is SyncState.SYNCED, status.error
        got = reader.doc("c7/households").records("households")
        assert len(got) == 51
