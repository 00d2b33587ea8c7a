"""Abuse limits: token buckets, the per-device guard, and a running relay
refusing a flooding connection, a flooding device and one connection too
many, each with its own code, counted in /metrics, while it keeps serving
the others."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from replica import Replica, limits
from replica.errors import ReplicaError
from replica.limits import AbuseLimits, Guard, TokenBucket
from replica.relay import Relay
from replica.status import SyncState


def test_a_token_bucket_allows_its_burst_then_its_rate() -> None:
    bucket = TokenBucket(rate=10, burst=5, now=0.0)
    assert all(bucket.take(1, 0.0) for _ in range(5))
    assert not bucket.take(1, 0.0)
    assert bucket.take(1, 0.1)  # 0.1 s at 10/s: one more
    assert not bucket.take(1, 0.1)
    assert bucket.take(5, 10.0) and not bucket.take(1, 10.0)  # never more than the burst saved up


def test_the_guard_caps_connections_per_device_and_frees_them() -> None:
    guard = Guard(AbuseLimits(connections_per_credential=2))
    guard.admit("tablet-1", 0.0)
    guard.admit("tablet-1", 0.0)
    with pytest.raises(ReplicaError) as caught:
        guard.admit("tablet-1", 0.0)
    assert caught.value.code == limits.TOO_MANY_CONNECTIONS and caught.value.retryable
    guard.admit("phone-1", 0.0)  # another device is not held back
    guard.release("tablet-1")
    guard.admit("tablet-1", 0.0)


def test_the_guard_shares_a_rate_across_a_devices_connections() -> None:
    guard = Guard(AbuseLimits(credential_frames_per_second=1, credential_frame_burst=3))
    assert [guard.received("tablet-1", 10, 0.0) for _ in range(3)] == [None, None, None]
    refusal = guard.received("tablet-1", 10, 0.0)
    assert refusal is not None and refusal.code == limits.CREDENTIAL_FRAME_RATE and refusal.retryable
    assert guard.received("phone-1", 10, 0.0) is None


def _metric(relay: Relay, code: str) -> float:
    assert relay.ops is not None
    return relay.ops.metrics.refusals.labels(code)._value.get()


@pytest.mark.parametrize(
    ("abuse", "code"),
    [
        (AbuseLimits(frames_per_second=0.001, frame_burst=1), limits.FRAME_RATE),
        (AbuseLimits(bytes_per_second=1, byte_burst=3000), limits.BYTE_RATE),
        (AbuseLimits(credential_frames_per_second=0.001, credential_frame_burst=1), limits.CREDENTIAL_FRAME_RATE),
        (AbuseLimits(credential_bytes_per_second=1, credential_byte_burst=10), limits.CREDENTIAL_BYTE_RATE),
    ],
    ids=["frames", "bytes", "device-frames", "device-bytes"],
)
def test_a_device_over_a_rate_is_refused_with_its_code_and_others_are_served(
    tmp_path: Path, abuse: AbuseLimits, code: str
) -> None:
    """The hello passes (within the burst); what the device sends next is over
    the limit: an error frame with the limit's code, retryable, counted."""

    async def main() -> None:
        async with Relay(tmp_path / "relay", port=0, abuse=abuse) as relay:
            token = relay.issue_credential("tablet-1", ["c7/*"], expires_at=2e9)
            with Replica.open(tmp_path / "a", replica_id="tablet-1") as device:
                rows = device.doc("c7/households").records("households")
                for number in range(20):
                    rows.put(f"h{number}", {"name": "x" * 200})
                status = await device.sync(relay.url, credential=token, timeout=10)
                assert status.state is SyncState.FAILED and status.error is not None
                assert status.error.code == code and status.error.retryable, status.error
            assert _metric(relay, code) == 1

    asyncio.run(main())


def test_one_connection_too_many_is_refused_and_others_are_served(tmp_path: Path) -> None:
    async def main() -> None:
        async with Relay(tmp_path / "relay", port=0, abuse=AbuseLimits(connections_per_credential=1)) as relay:
            token = relay.issue_credential("tablet-1", ["c7/*"], expires_at=2e9)
            with Replica.open(tmp_path / "a", replica_id="tablet-1") as first:
                first.doc("c7/notes").text("day").insert(0, "first")
                live = asyncio.ensure_future(first.sync(relay.url, credential=token, live=True, timeout=10))
                async for status in first.statuses():
                    if status.connected and status.unsynced == 0:
                        break
                with Replica.open(tmp_path / "b", replica_id="tablet-1") as second:
                    status = await second.sync(relay.url, credential=token, timeout=10)
                assert status.state is SyncState.FAILED and status.error is not None
                assert status.error.code == limits.TOO_MANY_CONNECTIONS and status.error.retryable
                assert _metric(relay, limits.TOO_MANY_CONNECTIONS) == 1

                other = relay.issue_credential("phone-1", ["c7/*"], expires_at=2e9)
                with Replica.open(tmp_path / "c", replica_id="phone-1") as phone:
                    status = await phone.sync(relay.url, credential=other, timeout=10)
                    assert status.state is SyncState.SYNCED, status.error
                    assert str(phone.doc("c7/notes").text("day")) == "first"
                await first.stop_sync()
                assert live.done()
            # its slot is free again once the live link ended
            with Replica.open(tmp_path / "a", replica_id="tablet-1") as again:
                status = await again.sync(relay.url, credential=token, timeout=10)
                assert status.state is SyncState.SYNCED, status.error

    asyncio.run(main())
