"""Several relay processes over one real Redis: failover of devices when a
relay is SIGKILLed mid-upload, Redis SIGKILLed and restarted from its AOF
during a sync, and a relay started late serving what the others stored.
Real processes on 127.0.0.1 (``relay_process``, ``redis_process``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path

import redis

from redis_process import RedisServer
from relay_process import RelayProcess
from replica import Replica, SyncState, SyncStatus
from replica.delta import Delta
from replica.names import RELAY
from replica.redis_log import PREFIX, decode
from test_redis_log import DOC, twin

PER_DEVICE = 3_000


def write(device: Replica, count: int) -> None:
    with device.batch():
        for n in range(count):
            device.doc(DOC).records("hh").put(f"{device.id}-{n}", {"n": n})


def contents(device: Replica) -> dict[str, object]:
    return dict(device.doc(DOC).records("hh").items())


def stream_entries(url: str) -> list[tuple[str, int]]:
    """``(origin, seq)`` of every delta in the document's Redis stream."""
    client = redis.Redis.from_url(url)
    try:
        return [
            (item.origin, item.seq)
            for _, fields in client.xrange(PREFIX + "log:" + DOC)
            if isinstance(item := decode(DOC, fields[b"e"]), Delta)
        ]
    finally:
        client.close()


def start_pair(tmp_path: Path, url: str) -> tuple[RelayProcess, RelayProcess]:
    one = RelayProcess(tmp_path / "r1", "--redis", url).start()
    twin(tmp_path / "r1", tmp_path / "r2")
    two = RelayProcess(tmp_path / "r2", "--redis", url).start()
    return one, two


def test_devices_of_a_killed_relay_fail_over_and_nothing_acknowledged_is_lost(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "redis") as server:
        one, two = start_pair(tmp_path, server.url)
        with one, two:
            ids = [f"tab-{n}" for n in range(6)]
            tokens = {name: one.issue(name, ["c7/*"]) for name in ids}
            devices = [Replica.in_memory(replica_id=name) for name in ids]
            first, second = one.url, two.url
            order: dict[str, Sequence[str]] = {
                name: [first, second] if n < 3 else [second, first] for n, name in enumerate(ids)
            }
            for device in devices:
                write(device, PER_DEVICE)

            def kill_midway(status: SyncStatus) -> None:
                # SIGKILL relay 1 at the first acknowledgement of part of an upload through it.
                if one.running and 0 < status.unsynced < PER_DEVICE:
                    one.kill()

            unsubscribe = [device.subscribe(kill_midway) for device in devices[:3]]

            async def main() -> list[SyncStatus]:
                syncs = [
                    asyncio.ensure_future(device.sync(order[device.id], credential=tokens[device.id], timeout=10))
                    for device in devices
                ]
                return list(await asyncio.gather(*syncs))

            finals = asyncio.run(asyncio.wait_for(main(), 60))
            for stop in unsubscribe:
                stop()
            assert not one.running, "relay 1 was never seen acknowledging part of an upload"
            for device, final in zip(devices, finals, strict=True):
                assert final.state is SyncState.SYNCED, (device.id, final.error)
                assert device.status().unsynced == 0
            failed_over = [d.id for d, f in zip(devices[:3], finals[:3], strict=True) if f.relay == second]
            assert failed_over, "no device of the killed relay had to fail over: the kill came too late"

            async def receive() -> None:  # everyone reads everything through the relay still up
                for device in devices:
                    status = await device.sync(second, credential=tokens[device.id], timeout=10)
                    assert status.state is SyncState.SYNCED, (device.id, status.error)

            asyncio.run(asyncio.wait_for(receive(), 60))
            everything = {name: PER_DEVICE for name in ids}
            for device in devices:
                assert device.version_vector(DOC) == everything
                assert contents(device) == contents(devices[0])
            entries = stream_entries(server.url)
            assert sorted(entries) == sorted((name, seq) for name in ids for seq in range(1, PER_DEVICE + 1))

            # A relay started cold after the others serves exactly what they stored.
            twin(tmp_path / "r1", tmp_path / "r3")
            late = RelayProcess(tmp_path / "r3", "--redis", server.url)
            with late.start(), Replica.in_memory(replica_id="tab-new") as fresh:
                token = late.issue("tab-new", ["c7/*"])
                status = fresh.sync_blocking(late.url, credential=token, timeout=20)
                assert status.state is SyncState.SYNCED, status.error
                assert fresh.version_vector(DOC) == everything
                assert contents(fresh) == contents(devices[0])
            for device in devices:
                device.close()


def test_redis_killed_during_a_sync_fails_it_retryably_and_loses_nothing(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "redis") as server:
        one, two = start_pair(tmp_path, server.url)
        with one, two, Replica.in_memory(replica_id="tab-a") as device:
            token = one.issue("tab-a", ["c7/*"])
            write(device, 4 * PER_DEVICE)

            def kill_midway(status: SyncStatus) -> None:  # at the first partial acknowledgement
                if 0 < status.unsynced < 4 * PER_DEVICE:
                    server.kill()

            unsubscribe = device.subscribe(kill_midway)
            final = device.sync_blocking(one.url, credential=token, timeout=10)
            unsubscribe()
            assert final.state is SyncState.FAILED
            assert final.error.code == "storage_error" and final.error.retryable
            acknowledged = device.watermark(RELAY, DOC).get("tab-a", 0)
            assert 0 < acknowledged < 4 * PER_DEVICE
            server.start()  # from its AOF
            held = [seq for origin, seq in stream_entries(server.url) if origin == "tab-a"]
            assert held[:acknowledged] == list(range(1, acknowledged + 1))  # every acknowledged delta survived

            status = device.sync_blocking([one.url, two.url], credential=token, timeout=20)
            assert status.state is SyncState.SYNCED, status.error
            assert device.status().unsynced == 0
            held = [seq for origin, seq in stream_entries(server.url) if origin == "tab-a"]
            assert held == list(range(1, 4 * PER_DEVICE + 1))
            with Replica.in_memory(replica_id="tab-b") as reader:
                other = one.issue("tab-b", ["c7/*"])
                status = reader.sync_blocking(two.url, credential=other, timeout=20)
                assert status.state is SyncState.SYNCED, status.error
                assert contents(reader) == contents(device)


def test_health_says_503_while_redis_is_down(tmp_path: Path) -> None:
    """No upload needed: the health probe asks Redis too."""
    from test_relay_http import get

    with RedisServer(tmp_path / "redis") as server:
        one = RelayProcess(tmp_path / "r1", "--redis", server.url).start()
        with one:
            health = one.url.replace("ws://", "http://") + "/health"

            def wait_for(status: int) -> str:
                deadline = time.monotonic() + 15
                while True:
                    found, _, body = get(health)
                    if found == status or time.monotonic() > deadline:
                        assert found == status, body
                        return body
                    time.sleep(0.25)

            wait_for(200)
            server.kill()
            assert "Redis" in wait_for(503)
            server.start()
            wait_for(200)
