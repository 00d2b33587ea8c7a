"""Device-side sync API against a real relay on 127.0.0.1 (in this process)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from replica import Replica, SyncState, SyncStatus
from replica.relay import Relay

T = TypeVar("T")
DOC = "c7/households"
HOUR = 3600.0


def run(main: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(asyncio.wait_for(main(), 60))  # type: ignore[arg-type]


async def until(replica: Replica, check: Callable[[SyncStatus], bool], timeout: float = 10.0) -> SyncStatus:
    """Wait for a status (or a document change) that satisfies ``check``."""
    seen = asyncio.Event()
    unsubscribe = replica.subscribe(lambda s: seen.set())
    stop = replica.on_change(lambda d: seen.set())
    try:
        async with asyncio.timeout(timeout):
            while not check(replica.status()):
                await seen.wait()
                seen.clear()
        return replica.status()
    finally:
        unsubscribe()
        stop()


def fill(replica: Replica, count: int, document: str = DOC) -> None:
    with replica.batch():
        for i in range(count):
            replica.doc(document).records("r").put(f"{replica.id}-{i}", {"i": i})


def test_one_shot_sync_reports_progress_and_persists_last_synced(tmp_path: Path) -> None:
    async def main() -> None:
        async with Relay(tmp_path / "relay", port=0) as relay:
            token = relay.issue_credential("dev-a", ["c7/*"], expires_at=time.time() + HOUR)
            with Replica.open(tmp_path / "a", replica_id="dev-a") as replica:
                fill(replica, 300)
                assert replica.status().label == "Data unsynced: 300"
                seen: list[SyncStatus] = []
                unsubscribe = replica.subscribe(seen.append)
                final = await replica.sync(relay.url, credential=token)
                unsubscribe()
                assert final.state is SyncState.SYNCED and final.unsynced == 0 and final.error is None
                assert final.label == "Data Synced" and final.last_synced_at is not None
                assert seen[0].state is SyncState.SYNCING
                assert seen[-1].state is SyncState.SYNCED
                assert any(s.progress.to_send == 300 for s in seen)
                assert final.progress.sent == 300
                synced_at = final.last_synced_at
        with Replica.open(tmp_path / "a") as replica:
            assert replica.status().last_synced_at == synced_at
            assert replica.status().unsynced == 0

    run(main)


def test_a_second_sync_joins_the_running_one(tmp_path: Path) -> None:
    async def main() -> None:
        async with Relay(tmp_path / "relay", port=0) as relay:
            token = relay.issue_credential("dev-a", ["*"], expires_at=time.time() + HOUR)
            with Replica.open(tmp_path / "a", replica_id="dev-a") as replica:
                fill(replica, 2000)
                first = asyncio.create_task(replica.sync(relay.url, credential=token))
                await asyncio.sleep(0)
                task = replica._sync_tasks[(relay.url,)]
                second = await replica.sync(relay.url)
                assert replica._sync_tasks[(relay.url,)] is task
                assert (await first) is second
                assert second.state is SyncState.SYNCED

    run(main)


def test_statuses_async_iterator(tmp_path: Path) -> None:
    async def main() -> None:
        async with Relay(tmp_path / "relay", port=0) as relay:
            token = relay.issue_credential("dev-a", ["*"], expires_at=time.time() + HOUR)
            with Replica.open(tmp_path / "a", replica_id="dev-a") as replica:
                fill(replica, 10)
                states = []

                async def watch() -> None:
                    async for status in replica.statuses():
                        states.append(status.state)
                        if status.state is SyncState.SYNCED:
                            return

                watcher = asyncio.create_task(watch())
                await asyncio.sleep(0)
                await replica.sync(relay.url, credential=token)
                await asyncio.wait_for(watcher, 5)
                assert states[0] is SyncState.IDLE and SyncState.SYNCING in states and states[-1] is SyncState.SYNCED

    run(main)


def test_out_of_scope_documents_are_rejected_not_unsynced_and_the_run_fails(tmp_path: Path) -> None:
    async def main() -> None:
        async with Relay(tmp_path / "relay", port=0) as relay:
            token = relay.issue_credential("dev-a", ["c7/*"], expires_at=time.time() + HOUR)
            with Replica.open(tmp_path / "a", replica_id="dev-a") as replica:
                fill(replica, 5)
                fill(replica, 3, "hr/salaries")
                final = await replica.sync(relay.url, credential=token)
                assert final.state is SyncState.FAILED and (final.unsynced, final.rejected) == (0, 3)
                assert final.error is not None and (final.error.code, final.error.retryable) == (
                    "changes_refused",
                    False,
                )
                assert final.error.message.startswith("the relay refused 3 changes to hr/salaries: ")
                assert "ask the relay operator for a credential that covers them" in final.error.message
                assert final.label.startswith("Sync Failed: the relay refused 3 changes to hr/salaries")
                assert final.label != "Data Synced" and final.last_synced_at is None
                assert final.rejections[0].document == "hr/salaries"
                assert "Refused by the relay: 3 changes to hr/salaries" in final.lines[-1]
                assert replica.status() == final  # the home screen says the same
                again = await replica.sync(relay.url, credential=token)  # still refused: still not "Data Synced"
                assert again.state is SyncState.FAILED and again.error == final.error

    run(main)


def test_live_sync_fans_out_and_reconnects(tmp_path: Path) -> None:
    async def main() -> None:
        relay = Relay(tmp_path / "relay", port=0)
        await relay.start()
        port = int(relay.url.rsplit(":", 1)[1])
        url = relay.url
        tokens = {d: relay.issue_credential(d, ["c7/*"], expires_at=time.time() + HOUR) for d in ("dev-a", "dev-b")}
        a = Replica.open(tmp_path / "a", replica_id="dev-a")
        b = Replica.open(tmp_path / "b", replica_id="dev-b")
        live_a = asyncio.create_task(a.sync(url, credential=tokens["dev-a"], live=True, timeout=5))
        live_b = asyncio.create_task(b.sync(url, credential=tokens["dev-b"], live=True, timeout=5))
        await until(a, lambda s: s.state is SyncState.SYNCED)
        await until(b, lambda s: s.state is SyncState.SYNCED)
        a.doc(DOC).records("r").put("h1", {"name": "Ada"})
        await until(b, lambda s: b.doc(DOC).records("r").get("h1") is not None)
        await until(a, lambda s: s.unsynced == 0)
        # the relay goes away: both notice, retryably
        await relay.stop()
        failed = await until(a, lambda s: s.state is SyncState.FAILED)
        assert failed.error is not None and failed.error.retryable
        a.doc(DOC).records("r").put("h2", {"name": "Bo"})  # made while the relay is down
        assert a.status().unsynced == 1
        relay = Relay(tmp_path / "relay", port=port)
        await relay.start()
        await until(b, lambda s: b.doc(DOC).records("r").get("h2") is not None, timeout=30)
        await until(a, lambda s: s.unsynced == 0 and s.state is SyncState.SYNCED, timeout=30)
        live_a.cancel()
        live_b.cancel()
        await asyncio.gather(live_a, live_b, return_exceptions=True)
        a.close()
        b.close()
        await relay.stop()

    run(main)


def test_live_devices_hear_of_a_document_created_after_they_connected(tmp_path: Path) -> None:
    async def main() -> None:
        async with Relay(tmp_path / "relay", port=0) as relay:
            tokens = {d: relay.issue_credential(d, ["c7/*"], expires_at=time.time() + HOUR) for d in ("dev-a", "dev-b")}
            with (
                Replica.open(tmp_path / "a", replica_id="dev-a") as a,
                Replica.open(tmp_path / "b", replica_id="dev-b") as b,
            ):
                lives = [
                    asyncio.create_task(r.sync(relay.url, credential=tokens[r.id], live=True, timeout=30))
                    for r in (a, b)
                ]
                await until(a, lambda s: s.state is SyncState.SYNCED)
                await until(b, lambda s: s.state is SyncState.SYNCED)
                a.doc("c7/new-village").records("r").put("h1", {"name": "Ada"})
                # well before the link's 30 s silence timeout could reconnect it
                await until(b, lambda s: b.doc("c7/new-village").records("r").get("h1") is not None, timeout=3)
                for task in lives:
                    task.cancel()
                await asyncio.gather(*lives, return_exceptions=True)

    run(main)


def test_live_sync_stops_on_an_error_retrying_cannot_fix(tmp_path: Path) -> None:
    async def main() -> None:
        async with Relay(tmp_path / "relay", port=0) as relay:
            long_ago = time.time() - 2 * HOUR
            expired = relay.issue_credential("dev-a", ["*"], expires_at=long_ago + HOUR, now=long_ago)
            with Replica.open(tmp_path / "a", replica_id="dev-a") as replica:
                final = await replica.sync(relay.url, credential=expired, live=True)
                assert final.state is SyncState.FAILED and final.error is not None
                assert final.error.code == "credential_expired" and not final.error.retryable
                assert "Sync Failed" in final.label and "retrying will not help" in final.label

    run(main)


def test_sync_on_open(tmp_path: Path) -> None:
    async def main() -> None:
        async with Relay(tmp_path / "relay", port=0) as relay:
            token = relay.issue_credential("dev-a", ["*"], expires_at=time.time() + HOUR)
            with Replica.open(tmp_path / "a", replica_id="dev-a") as replica:
                fill(replica, 20)
            with Replica.open(tmp_path / "a", sync_on_open=(relay.url, token)) as replica:
                assert replica.status().state is SyncState.SYNCING
                final = await until(replica, lambda s: s.state is SyncState.SYNCED)
                assert final.unsynced == 0

    run(main)
