"""Peer sync between devices in the field: real processes and sockets on 127.0.0.1.

1. Three devices and a relay: each device syncs once with the relay (pinning its
   key, getting a credential bound to its device key), the relay goes away,
   every device edits offline, then a chain of peer syncs (B with A served by a
   real ``replica peer serve`` process; C with B by a ``replica sync --peer``
   process) carries everything to C; after each step documents are equal where
   they should be and each device's relay-facing ``unsynced`` equals a count
   made here from its log and the relay watermark recorded at its last relay
   sync (peers never move that watermark). The relay comes back, C carries
   everyone's changes up, the others then upload nothing, and the relay's log
   holds every (origin, seq) once.
2. Concurrent edits of one record (different fields, the same field, one text)
   converge after peer syncs both ways and a relay sync.
3. Trust failures: FAILED with the right code and nothing exchanged, both when
   the faulty device syncs and when it is synced with.
4. A peer server process SIGKILLed mid-sync: the survivor fails retryably, its
   documents are the replay of its log, its version vectors are contiguous, and
   the next sync with the restarted peer completes.
5. Garbage: a raw server answering the hello with junk, and a raw client
   sending junk to a device's peer server (which answers with an ``error`` frame
   and keeps serving).
6. ``replica.peers()`` and ``replica peer list`` after successful and failed
   syncs, on the initiator's and the serving side.

Every wait has a deadline and waits on a condition (a status or change
callback, a process line, a frame); nothing sleeps.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any, TypeVar

import msgpack
import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from peer_process import CLI, PeerProcess
from relay_process import RelayProcess
from replica import Delta, ErrorInfo, Replica, SyncState, SyncStatus, net, peer, wire
from replica.credentials import Credential, PublicKey
from replica.relay import Relay
from replica.status import PeerStatus
from replica.trust import BOUND_CREDENTIAL, RELAY_KEY, DeviceTrust, device_key

T = TypeVar("T")
VersionVectors = dict[str, dict[str, int]]

DOC = "c7/households"
NOTES = "c7/notes"
BULK = "c7/bulk"
HOUR = 3600.0
HOST = "127.0.0.1"
#: Deadlines: a whole test, one wait for a condition, one CLI command.
TEST_TIMEOUT = 90.0
WAIT_TIMEOUT = 30.0
CLI_TIMEOUT = 60.0
#: Deltas held by the peer that is killed mid-sync (one batch, one commit).
MANY = 30_000
PEER_LIST_LINE = re.compile(
    r"^(?P<peer>\S+): to send (?P<to_send>\d+), to receive (?P<to_receive>\d+), "
    r"last synced (?P<when>never|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)(?:, last error: .* \[(?P<code>\w+)\])?$"
)


# -- helpers -----------------------------------------------------------------


def run(main: Callable[[], Awaitable[T]]) -> T:
    """Run an async test body with a deadline."""

    async def bounded() -> T:
        async with asyncio.timeout(TEST_TIMEOUT):
            return await main()

    return asyncio.run(bounded())


async def until(replica: Replica, check: Callable[[], bool], timeout: float = WAIT_TIMEOUT) -> None:
    """Wait for ``check()``, re-evaluated at each status event or document change."""
    seen = asyncio.Event()
    unsubscribe = replica.subscribe(lambda status: seen.set())
    stop = replica.on_change(lambda document: seen.set())
    try:
        async with asyncio.timeout(timeout):
            while not check():
                await seen.wait()
                seen.clear()
    finally:
        unsubscribe()
        stop()


async def spawn_cli(*args: str) -> asyncio.subprocess.Process:
    """Start ``replica ARGS`` without blocking the loop (which may serve peers)."""
    return await asyncio.create_subprocess_exec(
        *CLI, *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )


async def finish(process: asyncio.subprocess.Process) -> tuple[int, str, str]:
    """Wait for a CLI process: (exit status, stdout, stderr)."""
    try:
        out, err = await asyncio.wait_for(process.communicate(), CLI_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def cli(*args: str) -> tuple[int, str, str]:
    """Run ``replica ARGS`` to the end."""
    return await finish(await spawn_cli(*args))


def outcome(replica: Replica, peer_id: str) -> tuple[float | None, ErrorInfo | None] | None:
    """When ``replica`` last synced with ``peer_id`` and how its last sync ended."""
    record = replica.peers().get(peer_id)
    return None if record is None else (record.last_synced_at, record.error)


async def next_outcome(
    replica: Replica, peer_id: str, previous: tuple[float | None, ErrorInfo | None] | None
) -> PeerStatus:
    """Wait until a sync with ``peer_id`` ended since ``previous`` was read: a
    serving device records it when its side of the link ends, which may be
    after the other side has returned."""
    await until(replica, lambda: outcome(replica, peer_id) != previous)
    return replica.peers()[peer_id]


def version_vectors(replica: Replica) -> VersionVectors:
    return {name: replica.version_vector(name) for name in replica.documents()}


def contents(replica: Replica) -> dict[str, Any]:
    return {name: replica.doc(name).contents() for name in replica.documents()}


def peer_watermarks(replica: Replica, remote: str) -> VersionVectors:
    return {name: mark for name in replica.documents() if (mark := replica.watermark(remote, name))}


def expected_unsynced(replica: Replica, acknowledged: VersionVectors) -> int:
    """Deltas in the log, of any origin, that the relay had not acknowledged at
    this device's last relay sync: counted delta by delta from the log."""
    total = 0
    for name in replica.documents():
        mark = acknowledged.get(name, {})
        total += sum(1 for item in replica.missing_deltas(name, {}) if item.seq > mark.get(item.origin, 0))
    return total


def assert_relay_counts(devices: dict[str, Replica], acknowledged: dict[str, VersionVectors]) -> dict[str, int]:
    """Each device's relay watermark is what the relay acknowledged at its last
    relay sync (peer syncs never move it), and ``unsynced`` follows from it."""
    counts = {}
    for name, replica in devices.items():
        for document in replica.documents():
            assert replica.watermark("relay", document) == acknowledged[name].get(document, {}), (name, document)
        counts[name] = replica.status().unsynced
        assert counts[name] == expected_unsynced(replica, acknowledged[name]), name
    return counts


def assert_log_replays(replica: Replica) -> None:
    """Version vectors are contiguous and in log order, and the documents are
    exactly the replay of the log into a fresh replica."""
    for name in replica.documents():
        log = replica.missing_deltas(name, {})
        seqs: dict[str, list[int]] = {}
        for item in log:
            seqs.setdefault(item.origin, []).append(item.seq)
        held = replica.version_vector(name)
        assert seqs == {origin: list(range(1, top + 1)) for origin, top in held.items()}, name
        with Replica.in_memory() as fresh:
            result = fresh.ingest(log)
            assert result.rejected is None and result.applied == len(log), (name, result)
            assert fresh.doc(name).contents() == replica.doc(name).contents(), name


def fill(replica: Replica, count: int, document: str = BULK, pad: int = 100) -> None:
    """``count`` deltas in one commit."""
    with replica.batch():
        records = replica.doc(document).records("rows")
        for i in range(count):
            records.put(f"{replica.id}-{i}", {"i": i, "pad": "x" * pad})


async def enroll(relay: Relay, url: str, folder: Path, replica_id: str, documents: Sequence[str]) -> Replica:
    """A device's first sync with its relay: it pins the relay's key and gets a
    credential bound to its device key."""
    token = relay.issue_credential(replica_id, documents, expires_at=time.time() + HOUR)
    replica = Replica.open(folder / replica_id, replica_id=replica_id)
    final = await replica.sync(url, credential=token)
    assert final.state is SyncState.SYNCED, final
    assert replica.setting(RELAY_KEY) == relay.public_key.to_text()
    bound = bound_credential(replica)
    assert bound.replica_id == replica_id and bound.device_key == device_key(replica).public_raw
    assert bound.token != token  # a new credential, bound to the key
    return replica


def bound_credential(replica: Replica) -> Credential:
    pinned, token = replica.setting(RELAY_KEY), replica.setting(BOUND_CREDENTIAL)
    assert pinned is not None and token is not None
    return PublicKey.from_text(pinned).verify(token)


def assert_failed(final: SyncStatus, code: str) -> None:
    assert final.state is SyncState.FAILED, final
    assert final.error is not None and final.error.code == code, final.error


def parse_peer_list(output: str) -> dict[str, dict[str, str | None]]:
    rows = {}
    for line in output.splitlines():
        found = PEER_LIST_LINE.match(line)
        assert found is not None, f"unexpected line from `replica peer list`: {line!r}"
        rows[found["peer"]] = {k: found[k] for k in ("to_send", "to_receive", "when", "code")}
    return rows


def assert_listed(rows: dict[str, dict[str, str | None]], status: PeerStatus) -> None:
    row = rows[status.peer_id]
    assert (row["to_send"], row["to_receive"]) == (str(status.to_send), str(status.to_receive))
    assert (row["when"] == "never") == (status.last_synced_at is None)
    assert row["code"] == (None if status.error is None else status.error.code)


# -- 1. three devices, a relay that goes away and comes back -----------------


def test_three_devices_carry_each_others_changes_to_the_relay(tmp_path: Path) -> None:
    names = ("dev-a", "dev-b", "dev-c")

    async def main(relay: RelayProcess, server_a: PeerProcess) -> None:
        issuer = Relay(relay.data)  # not started: only issues credentials with the relay's key
        devices = {name: Replica.open(tmp_path / name, replica_id=name) for name in names}
        acknowledged: dict[str, VersionVectors] = {}
        try:
            for number, name in enumerate(names, 1):
                devices[name].doc(DOC).records("households").put(f"{name}-h0", {"head": name, "members": number})
                devices[name].doc(NOTES).text("log").insert(0, f"[{name} enrolled]")
            for name in names:
                token = issuer.issue_credential(name, ["c7/*"], expires_at=time.time() + HOUR)
                final = await devices[name].sync(relay.url, credential=token)
                assert final.state is SyncState.SYNCED and final.unsynced == 0, final
                assert devices[name].setting(RELAY_KEY) == issuer.public_key.to_text()
                assert bound_credential(devices[name]).device_key == device_key(devices[name]).public_raw
                acknowledged[name] = version_vectors(devices[name])
            assert assert_relay_counts(devices, acknowledged) == {"dev-a": 0, "dev-b": 0, "dev-c": 0}

            relay.kill()  # the relay goes away
            for name, edits in (("dev-a", 3), ("dev-b", 2), ("dev-c", 4)):
                households = devices[name].doc(DOC).records("households")
                for k in range(1, edits + 1):
                    households.put(f"{name}-h{k}", {"head": f"{name} #{k}", "members": k})
                devices[name].doc(NOTES).text("log").insert(0, f"[{name} offline]")
            # offline: 3+1, 2+1 and 4+1 deltas of their own
            assert assert_relay_counts(devices, acknowledged) == {"dev-a": 4, "dev-b": 3, "dev-c": 5}

            # B syncs with A, which a `replica peer serve` process serves
            devices["dev-a"].close()
            server_a.start()
            assert server_a.replica_id == "dev-a"
            final = await devices["dev-b"].sync(server_a.url, peer=True)
            assert final.state is SyncState.SYNCED and final.error is None, final
            assert (final.progress.sent, final.progress.received) == (5, 4)  # B's 2+3 out, A's 4 offline in
            await server_a.stop()
            devices["dev-a"] = Replica.open(tmp_path / "dev-a")
            assert contents(devices["dev-a"]) == contents(devices["dev-b"]) != contents(devices["dev-c"])
            # A now also holds B's 5 (2 of them on the relay, which A was never told); B holds A's 4
            assert assert_relay_counts(devices, acknowledged) == {"dev-a": 9, "dev-b": 7, "dev-c": 5}

            # C syncs with B (served in this process) by a `replica sync --peer` process
            devices["dev-c"].close()
            async with await devices["dev-b"].serve_peers(HOST, 0) as server_b:
                code, out, err = await cli("sync", "--peer", "--data", str(tmp_path / "dev-c"), "--relay", server_b.url)
                assert code == 0 and "Synced with the peer" in out, (code, out, err)
                served = await next_outcome(devices["dev-b"], "dev-c", None)
            assert served.error is None and served.last_synced_at is not None, served
            devices["dev-c"] = Replica.open(tmp_path / "dev-c")
            assert contents(devices["dev-b"]) == contents(devices["dev-c"]) != contents(devices["dev-a"])
            # B got C's 2+5, C got A's 4 and B's 3
            assert assert_relay_counts(devices, acknowledged) == {"dev-a": 9, "dev-b": 14, "dev-c": 12}

            # the relay comes back; C carries everyone's changes up, the others upload nothing
            relay.start()
            carried = await devices["dev-c"].sync(relay.url)
            assert carried.state is SyncState.SYNCED and carried.unsynced == 0, carried
            assert (carried.progress.sent, carried.progress.received) == (12, 0)
            for name, received in (("dev-a", 7), ("dev-b", 0)):
                final = await devices[name].sync(relay.url)
                assert final.state is SyncState.SYNCED and final.unsynced == 0, (name, final)
                assert (final.progress.sent, final.progress.received) == (0, received), name
            for name in names:
                acknowledged[name] = version_vectors(devices[name])
            assert assert_relay_counts(devices, acknowledged) == {"dev-a": 0, "dev-b": 0, "dev-c": 0}
            everything = contents(devices["dev-a"])
            assert all(contents(devices[name]) == everything for name in names)
            assert len(everything[DOC]["records"]["households"]) == 3 + 9
            union: VersionVectors = {}
            for replica in devices.values():
                for document, vv in version_vectors(replica).items():
                    for origin, seq in vv.items():
                        union.setdefault(document, {})[origin] = max(seq, union.get(document, {}).get(origin, 0))
        finally:
            for replica in devices.values():
                replica.close()

        relay.terminate()
        with Replica.open(relay.data) as stored:
            assert version_vectors(stored) == union
            for document, vv in union.items():
                held = [(item.origin, item.seq) for item in stored.missing_deltas(document, {})]
                assert len(held) == len(set(held)) == sum(vv.values()), document
            assert contents(stored) == everything
            assert_log_replays(stored)

    with RelayProcess(tmp_path / "relay") as relay, ExitStack() as stack:
        server_a = PeerProcess(tmp_path / "dev-a")
        stack.callback(server_a.close)
        run(lambda: main(relay, server_a))


# -- 2. concurrent edits of one record ---------------------------------------


def test_concurrent_edits_of_one_record_converge(tmp_path: Path) -> None:
    async def main() -> None:
        with ExitStack() as stack:
            relay = Relay(tmp_path / "relay", port=0)
            await relay.start()
            url = relay.url
            a = stack.enter_context(await enroll(relay, url, tmp_path, "dev-a", ["c7/*"]))
            a.doc(DOC).records("households").put("h1", {"head": "Ada", "members": 4, "status": "new"})
            a.doc(NOTES).text("visit").insert(0, "visit:")
            assert (await a.sync(url)).state is SyncState.SYNCED
            b = stack.enter_context(await enroll(relay, url, tmp_path, "dev-b", ["c7/*"]))
            c = stack.enter_context(await enroll(relay, url, tmp_path, "dev-c", ["c7/*"]))
            await relay.stop()
            assert contents(a) == contents(b) == contents(c)

            # the same record, offline, on three devices
            a.doc(DOC).records("households").update("h1", {"head": "Ada Lovelace", "status": "visited by a"})
            b.doc(DOC).records("households").update("h1", {"members": 5, "status": "visited by b"})
            c.doc(DOC).records("households").update("h1", {"phone": "555-0100", "status": "visited by c"})
            for replica, words in ((a, " a"), (b, " b"), (c, " c")):
                replica.doc(NOTES).text("visit").insert(len("visit:"), words)

            for initiator, acceptor in ((b, a), (c, b), (a, c)):  # every pair, each sync both ways
                async with await acceptor.serve_peers(HOST, 0) as server:
                    final = await initiator.sync(server.url, peer=True)
                assert final.state is SyncState.SYNCED, final
            merged = contents(a)
            assert contents(b) == merged and contents(c) == merged
            record = a.doc(DOC).records("households").get("h1")
            assert record is not None
            # different fields all survive; the same field ends with one of the values written
            assert {k: record[k] for k in ("head", "members", "phone")} == {
                "head": "Ada Lovelace",
                "members": 5,
                "phone": "555-0100",
            }
            assert record["status"] in {"visited by a", "visited by b", "visited by c"}
            text = str(a.doc(NOTES).text("visit"))
            assert text.startswith("visit:") and sorted(text[len("visit:") :].split()) == ["a", "b", "c"]

            relay = Relay(tmp_path / "relay", port=0)
            await relay.start()
            try:
                for replica in (a, b, c):
                    final = await replica.sync(relay.url)
                    assert final.state is SyncState.SYNCED and final.unsynced == 0, final
                for replica in (a, b, c):
                    assert contents(replica) == merged
                assert relay.replica is not None and contents(relay.replica) == merged
            finally:
                await relay.stop()

    run(main)


# -- 3. trust failures -------------------------------------------------------


class ForgedTrust(DeviceTrust):
    """What modified software on an attacker's device does: present a copied
    credential without checking that it is bound to this device's key."""

    def _own_credential(self, now: float) -> Credential:
        assert self.relay_key is not None and self.credential is not None
        return self.relay_key.verify(self.credential)


async def field_pair(tmp_path: Path, stack: ExitStack) -> tuple[Relay, Replica, Replica]:
    """A relay (stopped again before returning: the devices are in the field)
    and two enrolled devices with some data: A may sync ``c7/*`` and
    ``shared/*``, B only ``c7/*``."""
    relay = Relay(tmp_path / "relay", port=0)
    await relay.start()
    try:
        a = stack.enter_context(await enroll(relay, relay.url, tmp_path, "dev-a", ["c7/*", "shared/*"]))
        b = stack.enter_context(await enroll(relay, relay.url, tmp_path, "dev-b", ["c7/*"]))
    finally:
        await relay.stop()
    a.doc(DOC).records("households").put("a-1", {"head": "from a"})
    b.doc(DOC).records("households").put("b-1", {"head": "from b"})
    return relay, a, b


async def refused_both_ways(stranger: Replica, device: Replica, code: str, *, other_code: str | None = None) -> None:
    """``stranger`` syncs with ``device``'s peer server, then ``device`` with
    ``stranger``'s: both FAILED with ``code`` (``other_code`` the second time),
    and nothing exchanged."""
    before = {stranger.id: version_vectors(stranger), device.id: version_vectors(device)}
    relay_counts = (stranger.status().unsynced, device.status().unsynced)
    for initiator, acceptor, expected in ((stranger, device, code), (device, stranger, other_code or code)):
        async with await acceptor.serve_peers(HOST, 0) as server:
            final = await initiator.sync(server.url, peer=True)
        assert_failed(final, expected)
        assert not final.error.retryable  # type: ignore[union-attr]
        for replica in (stranger, device):
            assert version_vectors(replica) == before[replica.id], replica.id
    assert peer_watermarks(stranger, device.id) == {} and peer_watermarks(device, stranger.id) == {}
    assert (stranger.status().unsynced, device.status().unsynced) == relay_counts


def test_a_device_that_never_met_the_relay_is_refused(tmp_path: Path) -> None:
    async def main() -> None:
        with ExitStack() as stack:
            relay, a, _ = await field_pair(tmp_path, stack)
            x = Replica.open(tmp_path / "dev-x", replica_id="dev-x")
            x.doc(DOC).records("households").put("x-1", {"head": "from x"})
            # no pinned relay key, no credential: A refuses X's missing
            # credential; X cannot check A's credential at all
            await refused_both_ways(x, a, "credential_missing", other_code="credential_invalid")
            x.close()
            # the operator pins the relay key by hand: X still has no credential
            code, out, err = await cli(
                "peer", "trust", "--data", str(x.path), "--relay-key", relay.public_key.to_text()
            )
            assert code == 0 and relay.public_key.key_id in out, (code, out, err)
            code, out, err = await cli("peer", "key", "--data", str(x.path))
            assert code == 0 and PublicKey.from_text(out.strip()), (code, out, err)
            x = stack.enter_context(Replica.open(tmp_path / "dev-x"))
            assert PublicKey.from_text(out.strip()).raw == device_key(x).public_raw
            await refused_both_ways(x, a, "credential_missing")

    run(main)


def test_a_credential_signed_by_another_relay_is_refused(tmp_path: Path) -> None:
    async def main() -> None:
        with ExitStack() as stack:
            _, a, _ = await field_pair(tmp_path, stack)
            async with Relay(tmp_path / "other-relay", port=0) as other:
                y = stack.enter_context(await enroll(other, other.url, tmp_path, "dev-y", ["c7/*"]))
            y.doc(DOC).records("households").put("y-1", {"head": "from y"})
            await refused_both_ways(y, a, "credential_invalid")

    run(main)


def test_an_expired_credential_is_refused(tmp_path: Path) -> None:
    async def main() -> None:
        with ExitStack() as stack:
            relay, a, b = await field_pair(tmp_path, stack)
            long_ago = time.time() - 48 * HOUR
            expired = relay.issue_credential(
                "dev-b", ["c7/*"], expires_at=long_ago + HOUR, now=long_ago, device_key=device_key(b).public_raw
            )
            b.set_setting(BOUND_CREDENTIAL, expired)
            # A refuses B's credential; B, serving, refuses to show its own
            await refused_both_ways(b, a, "credential_expired")

    run(main)


def test_a_copied_credential_is_useless(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        with ExitStack() as stack:
            relay, a, b = await field_pair(tmp_path, stack)
            relay_key_text = relay.public_key.to_text()
            stolen = a.setting(BOUND_CREDENTIAL)
            assert stolen is not None

            # X presents A's credential under its own id
            await relay.start()
            x = stack.enter_context(await enroll(relay, relay.url, tmp_path, "dev-x", ["c7/*"]))
            await relay.stop()
            x.doc(DOC).records("households").put("x-1", {"head": "from x"})
            x.set_setting(BOUND_CREDENTIAL, stolen)
            await refused_both_ways(x, b, "credential_wrong_replica")

            # an attacker also takes A's replica id: its own software sees the
            # credential is bound to another key and refuses to use it
            attacker = stack.enter_context(Replica.open(tmp_path / "attacker", replica_id="dev-a"))
            attacker.set_setting(RELAY_KEY, relay_key_text)
            attacker.set_setting(BOUND_CREDENTIAL, stolen)
            attacker.doc("c7/forged").records("households").put("evil", {"head": "attacker"})
            await refused_both_ways(attacker, b, "credential_invalid")

            # modified software sends it anyway: B checks the proof of possession
            def trust_for(replica: Replica, credential: str | None = None, **options: Any) -> DeviceTrust:
                kind = ForgedTrust if replica is attacker else DeviceTrust
                return kind(replica, credential, **options)

            monkeypatch.setattr(net, "DeviceTrust", trust_for)
            monkeypatch.setattr(peer, "DeviceTrust", trust_for)
            await refused_both_ways(attacker, b, "proof_invalid")
            assert "c7/forged" not in b.documents() and b.doc(DOC).records("households").get("evil") is None

    run(main)


def test_documents_outside_either_credential_are_neither_sent_nor_accepted(tmp_path: Path) -> None:
    async def main() -> None:
        with ExitStack() as stack:
            _, a, b = await field_pair(tmp_path, stack)
            a.doc("shared/x").records("lists").put("x", {"by": "a"})  # A may sync it, B may not
            b.doc("shared/y").records("lists").put("y", {"by": "b"})  # B's credential does not allow it
            relay_counts = {r.id: (r.status().unsynced, r.status().rejected) for r in (a, b)}

            async with await b.serve_peers(HOST, 0) as server:
                final = await a.sync(server.url, peer=True)
            assert final.state is SyncState.SYNCED, final
            (refusal,) = a.rejections(b.id)
            assert (refusal.document, refusal.origin, refusal.code) == ("shared/x", None, "document_out_of_scope")
            assert "shared/x" not in b.documents() and "shared/y" not in a.documents()
            assert contents(a)[DOC] == contents(b)[DOC]

            async with await a.serve_peers(HOST, 0) as server:
                final = await b.sync(server.url, peer=True)
            assert final.state is SyncState.SYNCED, final
            (refusal,) = b.rejections(a.id)
            assert (refusal.document, refusal.origin, refusal.code) == ("shared/y", None, "document_out_of_scope")
            assert "shared/x" not in b.documents() and "shared/y" not in a.documents()
            assert set(peer_watermarks(a, b.id)) == {DOC} and set(peer_watermarks(b, a.id)) == {DOC}
            # none of this is about the relay
            assert {r.id: (r.status().unsynced, r.status().rejected) for r in (a, b)} == {
                a.id: (relay_counts[a.id][0] + 1, 0),  # B's record
                b.id: (relay_counts[b.id][0] + 1, 0),  # A's record
            }
            assert a.rejections() == [] and b.rejections() == []

    run(main)


# -- 4. a peer killed mid-sync -----------------------------------------------


def test_a_peer_killed_mid_sync(tmp_path: Path) -> None:
    async def main(server_p: PeerProcess) -> None:
        with ExitStack() as stack:
            relay = Relay(tmp_path / "relay", port=0)
            await relay.start()
            try:
                p = await enroll(relay, relay.url, tmp_path, "dev-p", ["c7/*"])
                s = stack.enter_context(await enroll(relay, relay.url, tmp_path, "dev-s", ["c7/*"]))
            finally:
                await relay.stop()
            fill(p, MANY)
            held_by_p = version_vectors(p)
            p.close()
            fill(s, 200, document="c7/survey")

            server_p.start()
            pid = server_p.pid
            killed: list[str] = []

            def kill_at_first_batch(document: str) -> None:
                if document == BULK and not killed:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(document)

            stop = s.on_change(kill_at_first_batch)
            try:
                final = await s.sync(server_p.url, peer=True)
            finally:
                stop()
            server_p.kill()
            assert killed
            assert_failed(final, "connection_lost")
            assert final.error is not None and final.error.retryable
            got = s.version_vector(BULK).get("dev-p", 0)
            assert 0 < got < MANY
            assert_log_replays(s)
            status = s.peers()["dev-p"]
            assert status.error is not None and status.error.code == "connection_lost" and status.error.retryable
            assert status.last_synced_at is None
            assert status.to_receive == MANY - got
            assert status.to_send <= 200
            s.close()
            code, out, err = await cli("peer", "list", "--data", str(tmp_path / "dev-s"))
            assert code == 0, (code, out, err)
            s = stack.enter_context(Replica.open(tmp_path / "dev-s"))
            assert_listed(parse_peer_list(out), s.peers()["dev-p"])

            server_p.start()
            before = time.time()
            final = await s.sync(server_p.url, peer=True)
            assert final.state is SyncState.SYNCED, final
            assert final.progress.received == MANY - got
            await server_p.stop()
            status = s.peers()["dev-p"]
            assert (status.to_send, status.to_receive, status.error) == (0, 0, None)
            assert status.last_synced_at is not None and before <= status.last_synced_at <= time.time()
            assert s.version_vector(BULK) == held_by_p[BULK]
            assert_log_replays(s)

            code, out, err = await cli("peer", "list", "--data", str(tmp_path / "dev-p"))
            assert code == 0, (code, out, err)
            with Replica.open(tmp_path / "dev-p") as p:
                assert_listed(parse_peer_list(out), p.peers()["dev-s"])
                assert p.peers()["dev-s"].error is None
                assert contents(p) == contents(s)
                assert_log_replays(p)

    with ExitStack() as stack:
        server_p = PeerProcess(tmp_path / "dev-p")
        stack.callback(server_p.close)
        run(lambda: main(server_p))


# -- 5. garbage --------------------------------------------------------------


def _a_foreign_delta() -> Delta:
    with Replica.in_memory(replica_id="evil-1") as other:
        other.doc(DOC).records("households").put("evil", {"head": "x"})
        (item,) = other.missing_deltas(DOC, {})
        return item


ANSWERS: dict[str, tuple[Callable[[], list[bytes | str]], str]] = {
    "junk bytes": (lambda: [b"\xc1\x00 not msgpack"], "bad_frame"),
    "a text frame": (lambda: ["welcome"], "bad_frame"),
    "half a welcome": (lambda: [wire.encode(wire.Welcome("evil-1", "peer", {DOC: {}}))[:9]], "bad_frame"),
    "not a map": (lambda: [msgpack.packb([1, 2, 3])], "bad_frame"),
    "deltas instead of a welcome": (
        lambda: [wire.encode(wire.Deltas(DOC, (_a_foreign_delta(),)))],
        "unexpected_frame",
    ),
    "a welcome without credential": (
        lambda: [wire.encode(wire.Welcome("evil-1", "peer", {DOC: {}}))],
        "credential_missing",
    ),
}


class FakePeer:
    """A raw websocket server: answers the hello with ``answers``, then
    records (and :meth:`react`\\ s to) whatever else it receives."""

    def __init__(self, answers: Callable[[wire.Hello], list[bytes | str]]) -> None:
        self.answers = answers
        self.received: list[wire.Frame] = []

    async def handler(self, ws: ServerConnection) -> None:
        try:
            hello = wire.decode(await ws.recv())  # type: ignore[arg-type]
            assert isinstance(hello, wire.Hello)
            for answer in self.answers(hello):
                await ws.send(answer)
            async for message in ws:
                frame = wire.decode(message)  # type: ignore[arg-type]
                self.received.append(frame)
                await self.react(ws, frame)
        except ConnectionClosed:
            return

    async def react(self, ws: ServerConnection, frame: wire.Frame) -> None:
        """What to do with a frame after the handshake (nothing here)."""


@pytest.mark.parametrize("answer", list(ANSWERS))
def test_a_peer_answering_garbage_fails_the_sync_and_nothing_is_stored(tmp_path: Path, answer: str) -> None:
    make, code = ANSWERS[answer]

    async def main() -> None:
        with ExitStack() as stack:
            _, a, _ = await field_pair(tmp_path, stack)
            before = (version_vectors(a), contents(a), a.status().unsynced, a.peers())
            fake = FakePeer(lambda hello: make())
            async with serve(fake.handler, HOST, 0) as server:
                port = next(iter(server.sockets)).getsockname()[1]
                final = await a.sync(f"ws://{HOST}:{port}", peer=True)
            assert_failed(final, code)
            errors = [f for f in fake.received if isinstance(f, wire.Error)]
            assert [e.code for e in errors] == [code]  # the device said why, once
            assert not any(isinstance(f, wire.Deltas) for f in fake.received)
            assert (version_vectors(a), contents(a), a.status().unsynced, a.peers()) == before

    run(main)


class ImpostorRelay(FakePeer):
    """Answers a peer's hello as if it were the relay (no credential, no
    proof), acknowledges whatever it gets and hands out a bogus credential."""

    def __init__(self) -> None:
        super().__init__(
            lambda hello: [
                wire.encode(
                    wire.Welcome("evil-1", "relay", {d: {} for d in hello.documents}, credential="not-a-credential")
                )
            ]
        )

    async def react(self, ws: ServerConnection, frame: wire.Frame) -> None:
        if isinstance(frame, wire.Deltas):
            vv: dict[str, int] = {}
            for item in frame.deltas:
                vv[item.origin] = max(item.seq, vv.get(item.origin, 0))
            await ws.send(wire.encode(wire.Ack(frame.document, vv)))
        elif isinstance(frame, wire.Done):
            await ws.send(wire.encode(wire.Done()))


def test_a_peer_claiming_to_be_the_relay_is_refused(tmp_path: Path) -> None:
    async def main() -> None:
        with ExitStack() as stack:
            _, a, _ = await field_pair(tmp_path, stack)
            a.doc("hr/salaries").records("staff").put("s1", {"amount": 1})  # outside A's credential
            credential, unsynced, mark = a.setting(BOUND_CREDENTIAL), a.status().unsynced, a.watermark("relay", DOC)
            fake = ImpostorRelay()
            async with serve(fake.handler, HOST, 0) as server:
                port = next(iter(server.sockets)).getsockname()[1]
                final = await a.sync(f"ws://{HOST}:{port}", peer=True)
            assert not any(isinstance(f, wire.Deltas) for f in fake.received), "deltas sent to an unproven device"
            assert a.status().unsynced == unsynced and a.watermark("relay", DOC) == mark
            assert a.setting(BOUND_CREDENTIAL) == credential
            assert final.state is SyncState.FAILED, final

    run(main)


def test_a_peer_server_answers_garbage_with_an_error_frame_and_keeps_serving(tmp_path: Path) -> None:
    probes: list[tuple[bytes | str, str]] = [
        (b"\x93junk", "bad_frame"),
        ("hello", "bad_frame"),
        (wire.encode(wire.Done()), "unexpected_frame"),
        (wire.encode(wire.Hello("evil-1", "relay", None, {})), "unexpected_role"),
        (wire.encode(wire.Hello("evil-1", "device", "rc1.forged", {DOC: {}})), "credential_invalid"),
    ]

    async def main(server_a: PeerProcess) -> None:
        with ExitStack() as stack:
            _, a, b = await field_pair(tmp_path, stack)
            a.close()
            server_a.start()
            for message, code in probes:
                async with connect(server_a.url) as ws:
                    await ws.send(message)
                    answer = wire.decode(await asyncio.wait_for(ws.recv(), WAIT_TIMEOUT))  # type: ignore[arg-type]
                    assert isinstance(answer, wire.Error) and answer.code == code, (message, answer)
                    with pytest.raises(ConnectionClosed):
                        await asyncio.wait_for(ws.recv(), WAIT_TIMEOUT)
            final = await b.sync(server_a.url, peer=True)
            assert final.state is SyncState.SYNCED, final
            assert server_a.running
            await server_a.stop()
            with Replica.open(tmp_path / "dev-a") as a:
                assert contents(a) == contents(b)
                assert "evil-1" not in a.peers()

    with ExitStack() as stack:
        server_a = PeerProcess(tmp_path / "dev-a")
        stack.callback(server_a.close)
        run(lambda: main(server_a))


# -- 6. per-peer status on both sides ----------------------------------------


def test_peer_status_on_the_serving_side_after_success_and_failure(tmp_path: Path) -> None:
    async def main() -> None:
        with ExitStack() as stack:
            _, a, b = await field_pair(tmp_path, stack)
            path_a = a.path
            assert path_a is not None
            a.close()
            server = await b.serve_peers(HOST, 0)

            # a `replica sync --peer` process succeeds
            code, out, err = await cli("sync", "--peer", "--data", str(path_a), "--relay", server.url)
            assert code == 0 and "Synced with the peer" in out, (code, out, err)
            first = await next_outcome(b, "dev-a", None)
            assert (first.to_send, first.to_receive, first.error) == (0, 0, None)
            assert first.last_synced_at is not None
            with Replica.open(path_a) as a:
                mine = a.peers()["dev-b"]
                assert (mine.to_send, mine.to_receive, mine.error) == (0, 0, None) and mine.last_synced_at
                a.doc(DOC).records("households").put("a-2", {"head": "a again"})
                assert a.peers()["dev-b"].to_send == 1
                fill(a, MANY)
                sent_by_a = version_vectors(a)

            # the next one is SIGKILLed mid-sync
            before = outcome(b, "dev-a")
            process = await spawn_cli("sync", "--peer", "--data", str(path_a), "--relay", server.url)

            def kill_at_first_batch(document: str) -> None:
                if document == BULK and process.returncode is None:
                    process.kill()

            stop = b.on_change(kill_at_first_batch)
            try:
                code, out, err = await finish(process)
                assert code == -signal.SIGKILL, (code, out, err)
                failed = await next_outcome(b, "dev-a", before)
            finally:
                stop()
            assert failed.error is not None and failed.error.code == "connection_lost" and failed.error.retryable
            assert failed.last_synced_at == first.last_synced_at
            held = version_vectors(b)
            missing = sum(
                max(0, seq - held.get(d, {}).get(o, 0)) for d, vv in sent_by_a.items() for o, seq in vv.items()
            )
            assert 0 < missing < MANY and failed.to_receive == missing
            await server.stop()
            b.close()
            code, out, err = await cli("peer", "list", "--data", str(tmp_path / "dev-b"))
            assert code == 0, (code, out, err)
            b = stack.enter_context(Replica.open(tmp_path / "dev-b"))
            assert_listed(parse_peer_list(out), failed)
            with Replica.open(path_a) as a:
                assert_log_replays(a)

            # a later sync completes
            server = await b.serve_peers(HOST, 0)
            try:
                before = outcome(b, "dev-a")
                code, out, err = await cli("sync", "--peer", "--data", str(path_a), "--relay", server.url)
                assert code == 0 and "Synced with the peer" in out, (code, out, err)
                done = await next_outcome(b, "dev-a", before)
            finally:
                await server.stop()
            assert (done.to_send, done.to_receive, done.error) == (0, 0, None)
            assert done.last_synced_at is not None and first.last_synced_at is not None
            assert done.last_synced_at > first.last_synced_at
            b.close()
            for folder, other in ((path_a, "dev-b"), (tmp_path / "dev-b", "dev-a")):
                code, out, err = await cli("peer", "list", "--data", str(folder))
                assert code == 0, (code, out, err)
                with Replica.open(folder) as replica:
                    rows = parse_peer_list(out)
                    assert set(rows) == {other}
                    assert_listed(rows, replica.peers()[other])
                    assert replica.peers()[other].error is None
            with Replica.open(path_a) as a, Replica.open(tmp_path / "dev-b") as b:
                assert contents(a) == contents(b)

    run(main)


def test_the_serving_side_counts_what_it_has_to_send(tmp_path: Path) -> None:
    async def main() -> None:
        with ExitStack() as stack:
            _, a, b = await field_pair(tmp_path, stack)
            async with await b.serve_peers(HOST, 0) as server:
                final = await a.sync(server.url, peer=True)
                assert final.state is SyncState.SYNCED, final
                await next_outcome(b, "dev-a", None)
            shared = a.version_vector(DOC)
            assert shared == b.version_vector(DOC) and a.watermark("dev-b", DOC) == shared
            b.doc(DOC).records("households").put("b-2", {"head": "b again"})
            b.doc(DOC).records("households").put("b-3", {"head": "b again"})
            a.doc(DOC).records("households").put("a-2", {"head": "a again"})
            assert a.peers()["dev-b"].to_send == 1  # the initiator's side is right
            assert b.watermark("dev-a", DOC) == shared
            assert b.peers()["dev-a"].to_send == 2

    run(main)
