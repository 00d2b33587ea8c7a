"""The asyncio edge (``replica.net``): retry delays, failures to connect as a
status, and a live sync's link: connected, waiting to reconnect, stopped."""

from __future__ import annotations

import asyncio
import itertools
import random
import socket
import time
from collections.abc import Callable, Coroutine
from contextlib import aclosing
from pathlib import Path
from typing import Any

import pytest

from replica import Replica, SyncState, SyncStatus, listener, net
from replica.relay import Relay


class UpperBound(random.Random):
    """A chooser that always picks the top of the range: shows the bound itself."""

    def uniform(self, a: float, b: float) -> float:
        return b


def free_port() -> int:
    """A port on 127.0.0.1 with nothing listening (bound, read, released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- backoff -----------------------------------------------------------------


def test_the_bound_doubles_from_initial_up_to_the_cap() -> None:
    delays = list(itertools.islice(net.backoff(0.5, 2.0, 10.0, rng=UpperBound()), 8))
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]


def test_the_default_bound_starts_at_half_a_second_and_caps_at_a_minute() -> None:
    delays = list(itertools.islice(net.backoff(rng=UpperBound()), 12))
    assert delays[:3] == [0.5, 1.0, 2.0]
    assert delays[-1] == 60.0 and max(delays) == 60.0


@pytest.mark.parametrize(("initial", "factor", "cap"), [(0.5, 2.0, 60.0), (0.1, 3.0, 5.0), (1.0, 2.0, 1.0)])
def test_every_delay_is_full_jitter_under_the_bound(initial: float, factor: float, cap: float) -> None:
    delays = list(itertools.islice(net.backoff(initial, factor, cap, rng=random.Random(1234)), 40))
    for n, delay in enumerate(delays):
        assert 0 <= delay <= min(initial * factor**n, cap), (n, delay)
    assert len(set(delays)) > 1  # jittered, not a fixed schedule


def test_late_delays_spread_over_the_whole_capped_range() -> None:
    delays = list(itertools.islice(net.backoff(0.5, 2.0, 8.0, rng=random.Random(7)), 400))[10:]
    assert max(delays) > 4.0  # above the previous step's bound: the cap is reached
    assert min(delays) < 1.0  # full jitter: near zero too


def test_the_same_seed_gives_the_same_delays() -> None:
    first = list(itertools.islice(net.backoff(rng=random.Random(42)), 20))
    second = list(itertools.islice(net.backoff(rng=random.Random(42)), 20))
    other = list(itertools.islice(net.backoff(rng=random.Random(43)), 20))
    assert first == second
    assert first != other


# -- sync_once when there is no relay ----------------------------------------


def test_a_relay_that_is_not_running_is_a_retryable_failure() -> None:
    url = f"ws://127.0.0.1:{free_port()}"

    async def main() -> None:
        with Replica.in_memory(replica_id="dev-a") as replica:
            replica.doc("c7/h").records("hh").put("h1", {"n": 1})
            status = await net.sync_once(replica, url, credential=None, timeout=2)
            assert status.state is SyncState.FAILED
            assert status.error is not None
            assert status.error.code == "relay_unreachable" and status.error.retryable
            assert status.unsynced == 1
            assert status.label.startswith("Sync Failed: ") and status.label.endswith("(retry can help)")
            after = replica.status()
            assert after.state is SyncState.FAILED
            assert after.error == status.error

    asyncio.run(asyncio.wait_for(main(), 10))


def test_a_malformed_url_is_a_failure_retrying_cannot_fix() -> None:
    async def main() -> None:
        with Replica.in_memory(replica_id="dev-a") as replica:
            status = await net.sync_once(replica, "not a url", credential=None, timeout=2)
            assert status.state is SyncState.FAILED
            assert status.error is not None
            assert status.error.code == "bad_url" and not status.error.retryable
            assert "not a url" in status.error.message
            assert replica.status().state is SyncState.FAILED
            assert replica.status().error == status.error

    asyncio.run(asyncio.wait_for(main(), 10))


def test_a_malformed_url_stops_a_live_sync_too() -> None:
    async def main() -> None:
        with Replica.in_memory(replica_id="dev-a") as replica:
            status = await net.sync_live(replica, "not a url", credential=None, timeout=2)
            assert status.state is SyncState.FAILED and status.error is not None
            assert status.error.code == "bad_url" and status.retry_at is None

    asyncio.run(asyncio.wait_for(main(), 10))  # before: it retried a URL that can never work, forever


# -- live syncs: connected, waiting, stopped -----------------------------------


async def until(replica: Replica, condition: Callable[[SyncStatus], bool]) -> SyncStatus:
    """The first status (the current one, or a change) for which ``condition`` holds."""
    async with aclosing(replica.statuses()) as statuses:
        async for status in statuses:
            if condition(status):
                return status
    raise AssertionError("the status stream ended")


def test_a_live_sync_with_no_relay_says_when_it_retries_and_stops() -> None:
    url = f"ws://127.0.0.1:{free_port()}"

    async def main() -> None:
        with Replica.in_memory(replica_id="dev-a") as replica:
            seen: list[SyncStatus] = []
            replica.subscribe(seen.append)
            before = time.time()
            live = asyncio.ensure_future(replica.sync(url, live=True, timeout=2))
            waiting = await until(replica, lambda status: status.retry_at is not None)
            assert waiting.state is SyncState.FAILED and not waiting.connected
            assert waiting.error is not None and waiting.error.code == "relay_unreachable"
            assert before <= waiting.retry_at <= time.time() + 0.5  # the first delay is at most 0.5 s
            assert not any(status.connected for status in seen)
            await replica.stop_sync(url)
            assert live.cancelled() or live.done()
            after = replica.status()
            assert after.retry_at is None and not after.connected and after.state is SyncState.FAILED, after

    asyncio.run(asyncio.wait_for(main(), 20))


def test_a_caught_up_live_link_stays_open_when_nothing_changes(tmp_path: Path) -> None:
    async def main() -> None:
        async with Relay(tmp_path / "relay", port=0) as relay:
            token = relay.issue_credential("dev-a", ["c7/*"], expires_at=time.time() + 3600)
            with Replica.in_memory(replica_id="dev-a") as replica:
                replica.doc("c7/h").records("hh").put("h1", {"n": 1})
                seen: list[SyncStatus] = []
                replica.subscribe(seen.append)
                live = asyncio.ensure_future(replica.sync(relay.url, credential=token, live=True, timeout=0.3))
                await until(replica, lambda status: status.state is SyncState.SYNCED and status.connected)
                caught_up = len(seen)
                await asyncio.sleep(1.5)  # five times the timeout, with nothing to say either way
                status = replica.status()
                assert status.connected and status.state is SyncState.SYNCED, (status, seen[caught_up:])
                assert all(s.connected for s in seen[caught_up:]), seen[caught_up:]
                await replica.stop_sync(relay.url)
                assert live.done()
                stopped = replica.status()
                assert stopped.state is SyncState.SYNCED and not stopped.connected and stopped.unsynced == 0

    asyncio.run(asyncio.wait_for(main(), 20))


def test_a_one_shot_sync_joining_a_live_one_returns_once_caught_up(tmp_path: Path) -> None:
    """ "Sync Data" pressed while a live sync runs: the call returns at the
    live sync's next caught-up point, or its failure, and the live sync goes on."""

    async def main() -> None:
        with Replica.in_memory(replica_id="dev-a") as replica:
            async with Relay(tmp_path / "relay", port=0) as relay:
                url = relay.url
                token = relay.issue_credential("dev-a", ["c7/*"], expires_at=time.time() + 3600)
                live = asyncio.ensure_future(replica.sync(url, credential=token, live=True, timeout=2))
                await until(replica, lambda status: status.state is SyncState.SYNCED and status.connected)
                replica.doc("c7/h").records("hh").put("h1", {"n": 1})
                once = await returns(replica.sync(url), 5)
                assert once.state is SyncState.SYNCED and once.connected and once.unsynced == 0, once
                assert not live.done()
            replica.doc("c7/h").records("hh").put("h2", {"n": 2})  # the relay is gone
            failed = await returns(replica.sync(url), 5)
            assert failed.state is SyncState.FAILED and failed.error is not None and failed.error.retryable, failed
            assert not live.done()  # it goes on retrying
            await replica.stop_sync(url)
            assert live.done()

    asyncio.run(asyncio.wait_for(main(), 30))


async def returns(call: Coroutine[Any, Any, SyncStatus], seconds: float) -> SyncStatus:
    try:
        return await asyncio.wait_for(call, seconds)
    except TimeoutError:
        raise AssertionError(f"the call did not return within {seconds} s") from None


async def _a_new_device_joins(tmp_path: Path, sizes: list[int]) -> tuple[SyncStatus, dict[str, int], bool]:
    """A writer puts one record of ``sizes[i]`` random bytes for each i in one
    batch, uploads them to a relay and a fresh device syncs once: its
    status, version vector, and whether it holds the writer's last record."""
    async with Relay(tmp_path / "relay", port=0) as relay:

        def token(replica_id: str) -> str:
            return relay.issue_credential(replica_id, ["c7/*"], expires_at=time.time() + 3600)

        with Replica.in_memory(replica_id="dev-w") as writer, Replica.in_memory(replica_id="dev-n") as fresh:
            rows = writer.doc("c7/h").records("r")
            with writer.batch():
                for i, size in enumerate(sizes):
                    rows.put(f"k{i}", {"blob": random.Random(i).randbytes(size)})
            uploaded = await writer.sync(relay.url, credential=token("dev-w"), timeout=10)
            assert uploaded.state is SyncState.SYNCED, uploaded
            got = await fresh.sync(relay.url, credential=token("dev-n"), timeout=5)
            last = f"k{len(sizes) - 1}"
            return got, fresh.version_vector("c7/h"), fresh.doc("c7/h").records("r").get(last) == rows.get(last)


def test_a_backlog_of_large_deltas_reaches_a_new_device_whole_while_the_relay_waits_on_its_socket(
    tmp_path: Path,
) -> None:
    """400 deltas of 30 kB (12 MB) to a fresh device: the relay sends them
    as spans of at most ``spans.SPAN_MAX_BYTES`` (a span is one delta to the
    device, which refuses one above its 8 MiB limit for good), and its
    writes outrun the socket, so its connection pauses writing and sends
    what waited in the session once the socket drains, in order, to the end."""
    paused: list[bool] = []  # each time a relay's connection had to stop writing
    pause, made = listener._Connection.pause_writing, listener._Connection.connection_made

    def counted(self: listener._Connection) -> None:
        paused.append(True)
        pause(self)

    def small_buffer(self: listener._Connection, transport: asyncio.BaseTransport) -> None:
        # Loopback's kernel buffers take megabytes at once: a small send buffer makes the relay wait.
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16_384)
        made(self, transport)

    listener._Connection.pause_writing = counted  # type: ignore[method-assign]
    listener._Connection.connection_made = small_buffer  # type: ignore[method-assign]
    try:
        got, held, last = asyncio.run(asyncio.wait_for(_a_new_device_joins(tmp_path, [30_000] * 400), 60))
    finally:
        listener._Connection.pause_writing = pause  # type: ignore[method-assign]
        listener._Connection.connection_made = made  # type: ignore[method-assign]
    assert got.state is SyncState.SYNCED and held == {"dev-w": 400} and last, (got, held)
    assert paused, "no link ever had to wait on its socket: the test did not test that path"


def test_a_span_never_holds_more_than_a_device_accepts_as_one_delta(tmp_path: Path) -> None:
    """One delta just under the 8 MiB a device accepts among 3,000 small
    ones: a relay reads windows of what a device lacks by the run's average
    row size, so its first window holds the large delta and about 140 small ones,
    which merged would make one span above that limit, refused for good. A
    span holds at most ``spans.SPAN_MAX_BYTES``, so the large one goes apart."""
    sizes = [1_000] * 3_016
    sizes[15] = 8_300_000
    got, held, last = asyncio.run(asyncio.wait_for(_a_new_device_joins(tmp_path, sizes), 60))
    assert got.state is SyncState.SYNCED and held == {"dev-w": 3_016} and last, (got, held)
