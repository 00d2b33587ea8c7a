"""Snapshots and compaction (issue 12): a document's old deltas replaced by
its state, reopen = snapshot + tail, catch-up by state through a real relay
and between peers, and the semantics that must survive: exact ``unsynced``,
no unacknowledged own delta ever dropped, duplicates of compacted deltas
recognised, bad states refused before anything is stored."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import pytest

from replica import Replica, net, wire
from replica.delta import Snapshot, make_snapshot
from replica.engine import Engine
from replica.errors import REJECT_CHECKSUM, REJECT_CLASH, REJECT_MALFORMED
from replica.names import RELAY
from replica.relay import Relay
from replica.session import Grant, Limits, Session
from replica.status import SyncState
from replica.sync import settle
from server_process import CLI

DOC = "c7/households"
HOUR = 3600.0


def fill(replica: Engine, n: int, *, start: int = 0) -> None:
    rows = replica.doc(DOC).records("households")
    with replica.batch():
        for i in range(start, start + n):
            rows.put(f"h{i % 50}", {"head": f"name {i}", "n": i})


def contents(replica: Engine) -> dict[str, object]:
    return dict(replica.doc(DOC).records("households").items())


def acknowledge(replica: Engine, vv: dict[str, int]) -> None:
    """As if the relay had durably acknowledged ``vv`` (what settle records)."""
    with replica.batch():
        replica.acknowledge(RELAY, DOC, vv)


def compacted(replica: Engine, n: int) -> Snapshot:
    """``n`` deltas made on ``replica``, acknowledged by the relay and compacted: the snapshot."""
    fill(replica, n)
    acknowledge(replica, {replica.id: n})
    replica.compact()
    whole = replica.snapshot_for(DOC, {})
    assert whole is not None
    return whole


# -- the log -------------------------------------------------------------------


def test_a_device_compacts_only_what_the_relay_acknowledged(tmp_path: Path) -> None:
    with Replica.open(tmp_path, replica_id="dev-a") as device:
        fill(device, 300)
        assert device.compact() == 0  # nothing is on the relay yet
        acknowledge(device, {"dev-a": 200})
        before, held = contents(device), device.version_vector(DOC)
        assert device.compact() == 200
        assert device.version_vector(DOC) == held and contents(device) == before
        assert device.status().unsynced == 100  # exact, before and after
        assert device.tail_length(DOC) == 100
        unsent = device.missing_deltas(DOC, {"dev-a": 200})
        assert [d.seq for d in unsent] == list(range(201, 301))  # every unacknowledged one, one by one
        assert device.snapshot_for(DOC, {"dev-a": 200}) is None
        whole = device.snapshot_for(DOC, {})
        assert whole is not None and whole.vv == {"dev-a": 200}
    with Replica.open(tmp_path) as reopened:  # snapshot + tail
        assert contents(reopened) == before and reopened.status().unsynced == 100


def test_the_relay_compacts_all_but_the_newest(tmp_path: Path) -> None:
    with Engine.open(tmp_path, replica_id="relay-x") as relay:
        fill(relay, 500)
        assert relay.compact(bound=None, keep=120) == 380
        assert relay.tail_length(DOC) == 120
        assert relay.compact(bound=None, keep=120) == 0
        assert [d.seq for d in relay.missing_deltas(DOC, {"relay-x": 400})] == list(range(401, 501))


def test_a_compacted_delta_arriving_again_is_a_duplicate_not_a_clash(tmp_path: Path) -> None:
    with Replica.open(tmp_path / "a", replica_id="dev-a") as a, Replica.open(tmp_path / "b", replica_id="dev-b") as b:
        fill(a, 30)
        sent = a.missing_deltas(DOC, {})
        assert b.ingest(sent).applied == 30
        acknowledge(b, {"dev-a": 30})
        assert b.compact() == 30
        again = b.ingest(sent)
        assert (again.applied, again.duplicates, again.rejected) == (0, 30, None)


def test_bad_states_are_refused_before_anything_is_stored(tmp_path: Path) -> None:
    with Replica.open(tmp_path / "a", replica_id="dev-a") as a, Replica.open(tmp_path / "b", replica_id="dev-b") as b:
        good = compacted(a, 10)
        damaged = good._replace(data=good.data[:-1] + bytes([good.data[-1] ^ 1]))
        garbage = make_snapshot(DOC, {"dev-a": 10}, b"\x05\xff\xff\xff")
        mine = make_snapshot(DOC, {"dev-a": 10, "dev-b": 3}, good.data)  # claims changes dev-b never made
        for bad, code in ((damaged, REJECT_CHECKSUM), (garbage, REJECT_MALFORMED), (mine, REJECT_CLASH)):
            result = b.ingest_snapshot(bad)
            assert result.rejected is not None and result.rejected.code == code, (code, result)
            assert b.version_vector(DOC) == {} and contents(b) == {}
        assert b.ingest_snapshot(good).applied == 10
        assert contents(b) == contents(a) and b.version_vector(DOC) == {"dev-a": 10}


def test_a_state_joins_what_the_receiver_already_held(tmp_path: Path) -> None:
    with Replica.open(tmp_path / "a", replica_id="dev-a") as a, Replica.open(tmp_path / "b", replica_id="dev-b") as b:
        fill(a, 40)
        b.ingest(a.missing_deltas(DOC, {})[:15])
        b.doc(DOC).records("households").put("mine", {"head": "B"})
        acknowledge(a, {"dev-a": 40})
        a.compact()
        whole = a.snapshot_for(DOC, b.version_vector(DOC))
        assert whole is not None
        assert b.ingest_snapshot(whole).applied == 25
        assert b.version_vector(DOC) == {"dev-a": 40, "dev-b": 1}
        assert b.missing_deltas(DOC, {"dev-a": 40}) and b.status().unsynced == 41
        expected = {**contents(a), "mine": {"head": "B"}}
        assert contents(b) == expected
    with Replica.open(tmp_path / "b") as reopened:
        assert contents(reopened) == expected


# -- through the network ----------------------------------------------------------


@pytest.mark.parametrize("frame_bytes", [16 * 1024 * 1024, 4096], ids=["one-frame", "in-parts"])
def test_a_new_device_catches_up_from_the_relay_by_state(tmp_path: Path, frame_bytes: int) -> None:
    async def main() -> None:
        limits = Limits(max_frame_bytes=frame_bytes)
        async with Relay(tmp_path / "relay", port=0, limits=limits, compact_every=None, keep=50) as relay:
            token = lambda name: relay.issue_credential(name, ["c7/*"], expires_at=time.time() + HOUR)  # noqa: E731
            with Replica.open(tmp_path / "writer", replica_id="writer") as writer:
                fill(writer, 2_000)
                first = await net.sync_once(writer, relay.url, credential=token("writer"), limits=limits)
                assert first.state is SyncState.SYNCED
                expected = contents(writer)
            assert relay.replica is not None and relay.replica.compact(bound=None, keep=50) == 1_950
            with Replica.open(tmp_path / "new", replica_id="new") as fresh:
                final = await net.sync_once(fresh, relay.url, credential=token("new"), limits=limits)
                assert final.state is SyncState.SYNCED and final.unsynced == 0, final
                assert final.progress.received == 2_000 == final.progress.to_receive
                assert contents(fresh) == expected and fresh.version_vector(DOC) == {"writer": 2_000}
                assert fresh.tail_length(DOC) == 50  # it keeps the state it got as its snapshot
                fresh.doc(DOC).records("households").put("new-1", {"head": "N"})
                assert (await net.sync_once(fresh, relay.url, credential=None, limits=limits)).unsynced == 0
            with Replica.open(tmp_path / "writer") as writer:  # a little behind: deltas, not the state
                final = await net.sync_once(writer, relay.url, credential=None, limits=limits)
                assert final.state is SyncState.SYNCED and final.progress.received == 1

    asyncio.run(asyncio.wait_for(main(), 60))


def test_a_compacted_device_serves_a_fresh_peer_and_carry_still_works(tmp_path: Path) -> None:
    async def main() -> None:
        async with Relay(tmp_path / "relay", port=0, compact_every=None) as relay:
            token = lambda name: relay.issue_credential(name, ["c7/*"], expires_at=time.time() + HOUR)  # noqa: E731
            with (
                Replica.open(tmp_path / "tablet", replica_id="tablet") as tablet,
                Replica.open(tmp_path / "phone", replica_id="phone") as phone,
            ):
                assert (await phone.sync(relay.url, credential=token("phone"))).state is SyncState.SYNCED
                fill(tablet, 500)
                assert (await tablet.sync(relay.url, credential=token("tablet"))).unsynced == 0
                fill(tablet, 20, start=500)  # offline: not on the relay
                assert tablet.compact() == 500 and tablet.status().unsynced == 20
                async with await tablet.serve_peers("127.0.0.1", 0) as server:
                    final = await phone.sync(server.url, peer=True)
                assert final.state is SyncState.SYNCED and final.progress.received == 520, final
                assert contents(phone) == contents(tablet)
                carried = await phone.sync(relay.url)  # the phone carries the tablet's 20 up
                assert carried.state is SyncState.SYNCED and carried.progress.sent == 20, carried
                assert (await tablet.sync(relay.url)).progress.sent == 0

    asyncio.run(asyncio.wait_for(main(), 60))


def test_compact_commands(tmp_path: Path) -> None:
    with Replica.open(tmp_path / "tablet", replica_id="tablet") as device:
        fill(device, 30)
        acknowledge(device, {"tablet": 30})
    done = subprocess.run([*CLI, "compact", "--data", str(tmp_path / "tablet")], capture_output=True, text=True)
    assert done.returncode == 0 and "Compacted 30 changes" in done.stdout, done
    relay_dir = tmp_path / "relay"
    Relay(relay_dir)  # its identity
    with Engine.open(relay_dir, replica_id=(relay_dir / "relay.id").read_text().strip()) as relay:
        fill(relay, 40)
    done = subprocess.run(
        [*CLI, "relay", "compact", "--data", str(relay_dir), "--keep", "10"], capture_output=True, text=True
    )
    assert done.returncode == 0 and "Compacted 30 deltas" in done.stdout, done


def test_a_device_compacts_by_itself_after_a_relay_sync(tmp_path: Path) -> None:
    async def main() -> None:
        async with Relay(tmp_path / "relay", port=0, compact_every=None) as relay:
            token = relay.issue_credential("tablet", ["c7/*"], expires_at=time.time() + HOUR)
            with Replica.open(tmp_path / "tablet", replica_id="tablet") as device:
                device.compact_every = 100
                fill(device, 150)
                final = await device.sync(relay.url, credential=token)
                assert final.state is SyncState.SYNCED and device.tail_length(DOC) == 0
                fill(device, 50, start=150)
                await device.sync(relay.url)
                assert device.tail_length(DOC) == 50  # under the threshold: left as it is
                assert device.status().unsynced == 0

    asyncio.run(asyncio.wait_for(main(), 60))


COMPACTING_CHILD = """
import sys
from replica.engine import Engine
with Engine.open(sys.argv[1]) as replica:
    print("compacting", flush=True)
    replica.compact(bound=None)
    print("compacted", flush=True)
"""


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.2])
def test_sigkill_during_compaction_loses_nothing(tmp_path: Path, delay: float) -> None:
    path = tmp_path / "dev"
    with Engine.open(path, replica_id="dev-k") as replica:
        fill(replica, 30_000)
        expected, held = contents(replica), replica.version_vector(DOC)
    child = subprocess.Popen([*CLI[:1], "-c", COMPACTING_CHILD, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "compacting"
        time.sleep(delay)  # somewhere in the replay, the deletions or the commit
        child.send_signal(9)
        child.wait(30)
    finally:
        child.kill()
    with Engine.open(path) as reopened:
        assert reopened.version_vector(DOC) == held
        assert contents(reopened) == expected
        assert reopened.tail_length(DOC) in (0, 30_000)  # the old log or the new one, nothing between


def test_compaction_in_steps_ends_where_one_step_would(tmp_path: Path) -> None:
    with (
        Engine.open(tmp_path / "a", replica_id="relay-a") as stepped,
        Engine.open(tmp_path / "b", replica_id="relay-a") as whole,
    ):
        for replica in (stepped, whole):
            fill(replica, 1_000)
        steps = []
        while step := stepped.compact(bound=None, keep=100, most=250):
            steps.append(step)
        assert steps == [250, 250, 250, 150]
        assert whole.compact(bound=None, keep=100) == 900
        assert stepped.version_vector(DOC) == whole.version_vector(DOC)
        assert stepped.tail_length(DOC) == whole.tail_length(DOC) == 100
        assert contents(stepped) == contents(whole)
        assert stepped.snapshot_for(DOC, {}).vv == whole.snapshot_for(DOC, {}).vv  # type: ignore[union-attr]


def test_the_running_relay_compacts_again_and_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("replica.relay.COMPACT_INTERVAL", 0.05)

    async def until_compacted(relay: Relay) -> None:
        deadline = time.monotonic() + 20
        assert relay.replica is not None
        while relay.replica.tail_length(DOC) > 10:
            assert time.monotonic() < deadline, f"the relay still holds {relay.replica.tail_length(DOC)} deltas"
            await asyncio.sleep(0.02)

    async def main() -> None:
        async with Relay(tmp_path / "relay", port=0, compact_every=100, keep=10) as relay:
            token = relay.issue_credential("tablet", ["c7/*"], expires_at=time.time() + HOUR)
            with Replica.open(tmp_path / "tablet", replica_id="tablet") as device:
                for round_ in range(3):  # every round after the first too (a lost subscription once stopped it)
                    fill(device, 150, start=150 * round_)
                    assert (await device.sync(relay.url, credential=token)).unsynced == 0
                    await until_compacted(relay)
                assert relay.replica is not None and relay.replica.version_vector(DOC) == {"tablet": 450}

    asyncio.run(asyncio.wait_for(main(), 60))


def test_a_live_device_compacts_what_the_relay_acknowledged_in_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("replica.replica.COMPACT_INTERVAL", 0.05)
    steps: list[int] = []
    compact = Engine.compact

    def counted(self: Engine, *args: object, **options: object) -> int:
        replaced: int = compact(self, *args, **options)  # type: ignore[arg-type]
        steps.append(replaced)
        return replaced

    monkeypatch.setattr(Engine, "compact", counted)
    monkeypatch.setattr("replica.compacting.COMPACT_STEP", 100)

    async def main() -> None:
        async with Relay(tmp_path / "relay", port=0, compact_every=None) as relay:
            token = relay.issue_credential("tablet", ["c7/*"], expires_at=time.time() + HOUR)
            with Replica.open(tmp_path / "tablet", replica_id="tablet") as device:
                device.compact_every = 100
                live = asyncio.ensure_future(device.sync(relay.url, credential=token, live=True))
                for round_ in range(3):  # records saved while the live sync runs, never ending it
                    fill(device, 150, start=150 * round_)
                    deadline = time.monotonic() + 20
                    while device.tail_length(DOC) > 0 or device.status().unsynced:
                        assert time.monotonic() < deadline, f"{device.tail_length(DOC)} deltas never compacted"
                        await asyncio.sleep(0.02)
                assert not live.done() and device.version_vector(DOC) == {"tablet": 450}
                assert device.status().unsynced == 0 and contents(device)
                assert max(steps) <= 100  # short steps, the links moving between them
                await device.stop_sync(relay.url)

    asyncio.run(asyncio.wait_for(main(), 60))


def test_a_state_claiming_seq_0_of_an_origin_claims_nothing_of_it(tmp_path: Path) -> None:
    with Replica.open(tmp_path / "a", replica_id="dev-a") as a, Replica.open(tmp_path / "b", replica_id="dev-b") as b:
        whole = compacted(a, 5)
        assert b.ingest_snapshot(make_snapshot(DOC, {"dev-a": 5, "ghost": 0}, whole.data)).applied == 5
        assert b.version_vector(DOC) == {"dev-a": 5} and b.documents() == [DOC]


# -- a state cut short resumes --------------------------------------------------------


def _cut_link(device: Engine, relay: Engine, limits: Limits, parts_before_cut: int | None) -> tuple[int, int]:
    """A device syncing with a relay, frames moved by hand; the link is cut
    once ``parts_before_cut`` snapshot parts reached the device (None: never).
    Returns (snapshot bytes sent, the first offset sent)."""

    def grant(hello: wire.Hello, now: float) -> Grant:
        return Grant(hello.replica_id, lambda name: True)

    up = Session(device, role="device", initiator=True, limits=limits)
    down = Session(relay, role="relay", initiator=False, authorize=grant, limits=limits)
    up.start(0.0)
    sent, first, parts = 0, -1, 0
    for _ in range(10_000):
        moved = False
        for frame in up.data_to_send(0.0):
            moved = True
            down.receive(frame, 0.0)
        for frame in down.data_to_send(0.0):
            moved = True
            decoded = wire.decode(frame, max_frame_bytes=limits.max_frame_bytes)
            if isinstance(decoded, wire.SnapshotPart):
                if parts_before_cut is not None and parts == parts_before_cut:
                    up.connection_lost()
                    down.connection_lost()
                    settle(device, [up])
                    return sent, first
                parts += 1
                sent += len(decoded.data)
                first = decoded.offset if first < 0 else first
            up.receive(frame, 0.0)
        settle(device, [up])
        settle(relay, [down])
        if not moved:
            break
    assert up.completed, up.error
    return sent, first


def test_a_state_cut_short_resumes_where_it_stopped(tmp_path: Path) -> None:
    limits = Limits(max_frame_bytes=8192)  # parts of 4 KiB
    with Engine.open(tmp_path / "relay", replica_id="relay-x") as relay:
        with Engine.open(tmp_path / "writer", replica_id="writer") as writer:
            fill(writer, 3_000)
            relay.ingest(writer.missing_deltas(DOC, {}))
            expected = contents(writer)
        relay.compact(bound=None)
        whole = relay.snapshot_for(DOC, {})
        assert whole is not None and len(whole.data) > 5 * 4096
        with Engine.open(tmp_path / "device", replica_id="device") as device:
            sent, first = _cut_link(device, relay, limits, parts_before_cut=3)
            assert (sent, first) == (3 * 4096, 0)
            assert device.partial_snapshots() == {DOC: (whole.checksum, 3 * 4096)}  # kept on disk
        with Engine.open(tmp_path / "device") as device:  # even across a restart
            assert device.version_vector(DOC) == {}
            sent, first = _cut_link(device, relay, limits, parts_before_cut=None)
            assert first == 3 * 4096 and sent == len(whole.data) - 3 * 4096  # the rest, not from byte 0
            assert contents(device) == expected and device.version_vector(DOC) == {"writer": 3_000}
            assert device.partial_snapshots() == {}
            fill(relay, 10, start=5_000)  # the relay's state changes: a new transfer starts from 0
            relay.compact(bound=None)
            newer = relay.snapshot_for(DOC, {})
            assert newer is not None
        with Engine.open(tmp_path / "fresh", replica_id="fresh") as fresh:
            _cut_link(fresh, relay, limits, parts_before_cut=2)
            assert fresh.partial_snapshots() == {DOC: (newer.checksum, 2 * 4096)}
            fill(relay, 10, start=6_000)
            relay.compact(bound=None)  # a newer state: what was kept is of no use
            sent, first = _cut_link(fresh, relay, limits, parts_before_cut=None)
            assert first == 0 and fresh.partial_snapshots() == {}
            assert contents(fresh) == contents(relay)
