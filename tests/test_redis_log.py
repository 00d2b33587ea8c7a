"""Several relays over one Redis (``replica.redis_log``), in one process: a
real ``redis-server`` on loopback (``redis_process``), real relays and
devices over websockets."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from redis_process import RedisServer
from replica import Replica, SyncState, registry
from replica.errors import ReplicaError
from replica.redis_log import SharedLog
from replica.relay import ID_FILE, KEY_FILE, Relay

HOUR = 3600.0
DOC = "c7/households"


def twin(first: Path, second: Path) -> None:
    """Give ``second`` the identity of ``first`` (what an operator copies)."""
    second.mkdir(parents=True, exist_ok=True)
    for name in (KEY_FILE, ID_FILE):
        shutil.copy(first / name, second / name)


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("the condition did not hold in time")
        await asyncio.sleep(0.02)


def run(main: Callable[[], Awaitable[None]], timeout: float = 60) -> None:
    asyncio.run(asyncio.wait_for(main(), timeout))


def records(replica: Replica) -> dict[str, object]:
    return dict(replica.doc(DOC).records("hh").items())


@pytest.fixture
def redis_server(tmp_path: Path) -> RedisServer:
    with RedisServer(tmp_path / "redis") as server:
        yield server


def test_a_delta_uploaded_through_one_relay_reaches_a_device_of_another(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async def main() -> None:
        async with Relay(tmp_path / "r1", port=0, redis=redis_server.url) as one:
            twin(tmp_path / "r1", tmp_path / "r2")
            async with Relay(tmp_path / "r2", port=0, redis=redis_server.url) as two:
                assert one.replica_id == two.replica_id
                writer_token = one.issue_credential("tab-a", ["c7/*"], expires_at=time.time() + HOUR)
                reader_token = one.issue_credential("tab-b", ["c7/*"], expires_at=time.time() + HOUR)
                with Replica.in_memory(replica_id="tab-a") as writer, Replica.in_memory(replica_id="tab-b") as reader:
                    for n in range(30):
                        writer.doc(DOC).records("hh").put(f"h{n}", {"n": n})
                    status = await writer.sync(one.url, credential=writer_token)
                    assert status.state is SyncState.SYNCED and writer.status().unsynced == 0
                    assert two.replica is not None
                    await until(lambda: two.replica is not None and two.replica.version_vector(DOC) == {"tab-a": 30})
                    assert two.follower is not None and two.follower.entries == 30
                    # Relay 1 moved its read position past its own appends: it reads nothing back.
                    assert one.follower is not None and one.follower.entries == 0
                    status = await reader.sync(two.url, credential=reader_token)
                    assert status.state is SyncState.SYNCED
                    assert records(reader) == records(writer)
                    # Live: a new record through relay 1 reaches a live device of relay 2.
                    live = asyncio.create_task(reader.sync(two.url, credential=reader_token, live=True))
                    await until(lambda: reader.status().connected)
                    writer.doc(DOC).records("hh").put("late", {"n": 99})
                    assert (await writer.sync(one.url, credential=writer_token)).state is SyncState.SYNCED
                    await until(lambda: reader.doc(DOC).records("hh").get("late") == {"n": 99})
                    live.cancel()
                    await asyncio.gather(live, return_exceptions=True)

    run(main)


def test_a_relay_with_another_identity_is_refused(tmp_path: Path, redis_server: RedisServer) -> None:
    async def main() -> None:
        async with Relay(tmp_path / "r1", port=0, redis=redis_server.url):
            with pytest.raises(ReplicaError) as caught:
                async with Relay(tmp_path / "r2", port=0, redis=redis_server.url):
                    pass
            assert caught.value.code == "relay_identity_mismatch" and not caught.value.retryable
            assert "relay-signing.key" in caught.value.message

    run(main)


def test_a_redis_that_does_not_fsync_each_write_is_refused(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "redis", durable=False) as server:

        async def main() -> None:
            with pytest.raises(ReplicaError) as caught:
                async with Relay(tmp_path / "r1", port=0, redis=server.url):
                    pass
            assert caught.value.code == "redis_not_durable"
            assert "appendfsync always" in caught.value.message

        run(main)


def test_a_relay_that_served_alone_adds_its_deltas_when_it_joins(tmp_path: Path, redis_server: RedisServer) -> None:
    async def main() -> None:
        with Replica.in_memory(replica_id="tab-a") as writer:
            async with Relay(tmp_path / "r1", port=0) as alone:
                token = alone.issue_credential("tab-a", ["c7/*"], expires_at=time.time() + HOUR)
                for n in range(5):
                    writer.doc(DOC).records("hh").put(f"h{n}", {"n": n})
                assert (await writer.sync(alone.url, credential=token)).state is SyncState.SYNCED
            async with Relay(tmp_path / "r1", port=0, redis=redis_server.url):
                twin(tmp_path / "r1", tmp_path / "r2")
                async with Relay(tmp_path / "r2", port=0, redis=redis_server.url) as two:
                    assert two.replica is not None and two.replica.version_vector(DOC) == {"tab-a": 5}

    run(main)


def test_trimmed_entries_are_in_the_stored_snapshot_and_a_cold_relay_reads_both(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async def main() -> None:
        with Replica.in_memory(replica_id="tab-a") as writer:
            async with Relay(tmp_path / "r1", port=0, redis=redis_server.url, keep=10) as one:
                token = one.issue_credential("tab-a", ["c7/*"], expires_at=time.time() + HOUR)
                for n in range(200):
                    writer.doc(DOC).records("hh").put(f"h{n % 50}", {"n": n})
                assert (await writer.sync(one.url, credential=token)).state is SyncState.SYNCED
                assert one.replica is not None
                assert one.replica.compact([DOC], bound=None, keep=10) == 190
                assert await one.trim_shared() == 190
                shared = SharedLog(redis_server.url)
                snapshot, tail = await shared.read(DOC, "0-0")
                await shared.aclose()
                assert snapshot is not None and snapshot.vv == {"tab-a": 190}
                assert [item.seq for _, item in tail] == list(range(191, 201))
                assert await one.trim_shared() == 0  # nothing more is covered
                twin(tmp_path / "r1", tmp_path / "r2")
                async with Relay(tmp_path / "r2", port=0, redis=redis_server.url) as two:
                    assert two.replica is not None
                    assert two.replica.version_vector(DOC) == {"tab-a": 200}
                    assert dict(two.replica.doc(DOC).records("hh").items()) == records(writer)

    run(main)


def test_a_device_of_another_relay_sees_an_upload_at_once(tmp_path: Path) -> None:
    """The relay a device connects to first reads the shared log up to the
    moment of the connection (``Follower.fresh``), whether or not its
    follower got there: here relay 2's follower is stopped, so that only
    that read can bring the upload through relay 1."""
    with RedisServer(tmp_path / "redis") as server:

        async def main() -> None:
            async with Relay(tmp_path / "r1", port=0, redis=server.url) as one:
                twin(tmp_path / "r1", tmp_path / "r2")
                async with Relay(tmp_path / "r2", port=0, redis=server.url) as two:
                    assert two.follower is not None
                    await two.follower.stop()
                    writer_token = one.issue_credential("tab-a", ["c7/*"], expires_at=time.time() + HOUR)
                    reader_token = one.issue_credential("tab-b", ["c7/*"], expires_at=time.time() + HOUR)
                    with (
                        Replica.in_memory(replica_id="tab-a") as writer,
                        Replica.in_memory(replica_id="tab-b") as reader,
                    ):
                        with writer.batch():
                            for n in range(500):
                                writer.doc(DOC).records("hh").put(f"h{n}", {"n": n})
                        assert (await writer.sync(one.url, credential=writer_token)).state is SyncState.SYNCED
                        status = await reader.sync(two.url, credential=reader_token)
                        assert status.state is SyncState.SYNCED
                        assert reader.version_vector(DOC) == {"tab-a": 500}
                        assert records(reader) == records(writer)

        run(main)


def test_a_failed_append_to_redis_stores_and_acknowledges_nothing(tmp_path: Path) -> None:
    """The append to the shared log comes before the relay's own commit: when
    Redis fails, the relay's copy holds nothing of the upload and the device
    is not acknowledged (retryable ``storage_error``)."""
    with RedisServer(tmp_path / "redis") as server:

        async def main() -> None:
            async with Relay(tmp_path / "r1", port=0, redis=server.url) as one:
                token = one.issue_credential("tab-a", ["c7/*"], expires_at=time.time() + HOUR)
                with Replica.in_memory(replica_id="tab-a") as writer:
                    writer.doc(DOC).records("hh").put("h1", {"n": 1})
                    server.kill()
                    status = await writer.sync(one.url, credential=token)
                    assert status.state is SyncState.FAILED and status.error is not None
                    assert status.error.code == "storage_error" and status.error.retryable
                    assert writer.status().unsynced == 1
                    assert one.replica is not None and one.replica.version_vector(DOC) == {}
                    server.start()
                    status = await writer.sync(one.url, credential=token)
                    assert status.state is SyncState.SYNCED, status.error
                    assert one.replica.version_vector(DOC) == {"tab-a": 1}

        run(main)


def test_a_revocation_on_one_relay_holds_on_every_relay(tmp_path: Path, redis_server: RedisServer) -> None:
    async def refusal_becomes(device: Replica, url: str, token: str, code: str | None) -> None:
        """Sync until the relay's answer is refused with ``code`` (None: admitted), within 10 s."""
        deadline = time.monotonic() + 10
        while True:
            status = await device.sync(url, credential=token)
            found = None if status.error is None else status.error.code
            if found == code or time.monotonic() > deadline:
                assert found == code
                return
            await asyncio.sleep(0.1)  # revocations travel on a one-second timer: no event to wait on

    async def main() -> None:
        async with Relay(tmp_path / "r1", port=0, redis=redis_server.url) as one:
            twin(tmp_path / "r1", tmp_path / "r2")
            async with Relay(tmp_path / "r2", port=0, redis=redis_server.url) as two:
                token = one.issue_credential("tab-a", ["c7/*"], expires_at=time.time() + HOUR)
                with Replica.in_memory(replica_id="tab-a") as device:
                    assert (await device.sync(two.url, credential=token)).error is None
                    registry.revoke(tmp_path / "r1", "tab-a")  # `replica relay revoke` on relay 1's directory
                    await refusal_becomes(device, two.url, token, "credential_revoked")
                    registry.restore(tmp_path / "r1", "tab-a")  # --undo, on relay 1 too
                    await refusal_becomes(device, two.url, token, None)

    run(main)


def test_a_long_stream_is_trimmed_behind_the_whole_state(tmp_path: Path, redis_server: RedisServer) -> None:
    """Over ``shared_tail`` entries, Redis gets the document's whole state and
    keeps none of the entries it covers; a cold relay then starts from it."""

    async def main() -> None:
        with Replica.in_memory(replica_id="tab-a") as writer:
            async with Relay(tmp_path / "r1", port=0, redis=redis_server.url, shared_tail=50) as one:
                token = one.issue_credential("tab-a", ["c7/*"], expires_at=time.time() + HOUR)
                for n in range(200):
                    writer.doc(DOC).records("hh").put(f"h{n % 50}", {"n": n})
                assert (await writer.sync(one.url, credential=token)).state is SyncState.SYNCED
                assert await one.trim_shared() == 200  # nothing compacted on the relay: its whole state
                shared = SharedLog(redis_server.url)
                snapshot, tail = await shared.read(DOC, "0-0")
                assert await shared.length(DOC) == 0
                await shared.aclose()
                assert snapshot is not None and snapshot.vv == {"tab-a": 200} and tail == []
                twin(tmp_path / "r1", tmp_path / "r2")
                async with Relay(tmp_path / "r2", port=0, redis=redis_server.url) as two:
                    assert two.replica is not None and two.replica.version_vector(DOC) == {"tab-a": 200}
                    assert dict(two.replica.doc(DOC).records("hh").items()) == records(writer)

    run(main)


def test_a_live_sync_moves_to_the_next_relay_when_its_relay_goes_away(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Live, with two relays given: after relay 1 stops, the device's
    reconnection to it fails and the next run goes to relay 2, where it
    receives what another device uploads there."""

    async def main() -> None:
        one = Relay(tmp_path / "r1", port=0, redis=redis_server.url)
        await one.start()
        twin(tmp_path / "r1", tmp_path / "r2")
        async with Relay(tmp_path / "r2", port=0, redis=redis_server.url) as two:
            token = one.issue_credential("tab-b", ["c7/*"], expires_at=time.time() + HOUR)
            writer_token = one.issue_credential("tab-a", ["c7/*"], expires_at=time.time() + HOUR)
            with Replica.in_memory(replica_id="tab-b") as reader, Replica.in_memory(replica_id="tab-a") as writer:
                urls = [one.url, two.url]
                live = asyncio.create_task(reader.sync(urls, credential=token, live=True))
                await until(lambda: reader.status().connected and reader.status().relay == urls[0])
                await one.stop()
                await until(lambda: reader.status().connected and reader.status().relay == urls[1], timeout=20)
                writer.doc(DOC).records("hh").put("h1", {"n": 1})
                assert (await writer.sync(two.url, credential=writer_token)).state is SyncState.SYNCED
                await until(lambda: reader.doc(DOC).records("hh").get("h1") == {"n": 1})
                live.cancel()
                await asyncio.gather(live, return_exceptions=True)

    run(main)
