"""The asyncio edge (``replica.net``): retry delays, and failures to connect as a status."""

from __future__ import annotations

import asyncio
import itertools
import random
import socket

import pytest

from replica import Replica, SyncState, net


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
