"""Trust rules (``replica.trust``) from both sides of each handshake, and a
commit failing inside the relay's group commit while a live reader listens.

The handshakes run on ``replica.testing``'s fleet, which uses the shipped
``RelayAuthority`` and ``DeviceTrust`` with real keys and a clock per node;
``fleet.ledger.violations`` is the fleet's own check that every verdict
agrees with what the credentials and clocks allow.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from replica import Engine, Replica, SyncState
from replica.credentials import SigningKey
from replica.events import IngestResult
from replica.listener import Listener
from replica.session import Session
from replica.store.lmdb import LmdbStore
from replica.testing import Fleet
from replica.testing.backends import FaultyStore, fail_next_commit
from replica.testing.network import EXPIRY_STEP, LIFETIME
from replica.trust import RelayAuthority

#: dev-0's credential expires at LIFETIME, dev-1's a day later: a clock here
#: sees dev-0's expired and dev-1's valid.
BETWEEN = LIFETIME + EXPIRY_STEP / 2


@contextmanager
def provisioned(devices: int = 2) -> Iterator[Fleet]:
    """A fleet whose devices each synced with the relay once (pinned key, bound credential)."""
    with Fleet(devices) as fleet:
        for node in fleet.devices:
            assert fleet.sync(node.name).completed
        yield fleet


def code(session: Session) -> str | None:
    return None if session.error is None else session.error.code


# -- peers: each role, with the other side's credential expired --------------


def test_an_accepting_device_refuses_a_peer_whose_credential_expired_by_its_clock() -> None:
    with provisioned() as fleet:
        fleet.set_skew("dev-1", BETWEEN)
        link = fleet.open_link("dev-0", "dev-1")  # dev-1 accepts: it judges dev-0's hello by its own clock
        fleet.run(link)
        assert code(link.far) == "credential_expired" and "dev-0" in (link.far.error.message if link.far.error else "")
        assert code(link.near) == "credential_expired"  # told by the error frame
        assert not link.far.authenticated and not link.near.completed
        assert "dev-0" not in fleet.replica("dev-1").peers()  # nothing recorded under an unproven id
        assert not fleet.ledger.violations, fleet.ledger.violations


def test_an_initiating_device_refuses_a_peer_whose_credential_expired_by_its_clock() -> None:
    with provisioned() as fleet:
        fleet.set_skew("dev-1", BETWEEN)
        link = fleet.open_link("dev-1", "dev-0")  # dev-0 admits (its clock is right); dev-1 judges the welcome
        fleet.run(link)
        assert link.far.remote_id == "dev-1"  # dev-0's authorize passed
        assert code(link.near) == "credential_expired"
        assert not link.near.authenticated and not link.far.completed
        assert fleet.replica("dev-0").version_vector("c7/households") == {}
        assert not fleet.ledger.violations, fleet.ledger.violations


@pytest.mark.parametrize("initiator", ["dev-0", "dev-1"])
def test_a_device_past_its_own_expiry_neither_serves_nor_reaches_peers(initiator: str) -> None:
    with provisioned() as fleet:
        fleet.set_skew("dev-0", BETWEEN)  # by dev-0's clock, its own credential has expired
        other = "dev-1" if initiator == "dev-0" else "dev-0"
        link = fleet.open_link(initiator, other)
        fleet.run(link)
        assert code(link.near) == "credential_expired"
        assert not link.near.completed and not link.far.completed
        assert not fleet.ledger.violations, fleet.ledger.violations


def test_peers_whose_clocks_agree_sync_and_record_each_other() -> None:
    with provisioned() as fleet:
        fleet.set_skew("dev-0", 3 * 3600.0)  # a few hours off: nothing has expired
        fleet.edit("dev-0", "c7/households", lambda d: d.records("hh").put("h1", {"n": 1}))
        link = fleet.open_link("dev-0", "dev-1")
        fleet.run(link)
        assert link.near.completed and link.far.completed
        assert fleet.replica("dev-1").version_vector("c7/households") == {"dev-0": 1}
        for me, peer in (("dev-0", "dev-1"), ("dev-1", "dev-0")):
            status = fleet.replica(me).peers()[peer]
            assert status.error is None and status.last_synced_at is not None, (me, status)
        assert not fleet.ledger.violations, fleet.ledger.violations


def test_a_device_that_pins_the_relay_key_after_a_peer_connected_still_judges_its_hello() -> None:
    """Trust is read when the hello is judged, not when the connection came in."""
    with Fleet(2) as fleet:
        assert fleet.sync("dev-0").completed
        link = fleet.open_link("dev-0", "dev-1")  # dev-1 has no relay key yet
        assert fleet.sync("dev-1").completed  # now it has one, before dev-0's hello arrives
        fleet.run(link)
        assert link.near.completed, link.near.error
        assert not fleet.ledger.violations, fleet.ledger.violations


# -- the relay: revocation and its own clock ----------------------------------


def test_a_relay_judges_expiry_by_its_own_clock() -> None:
    with Fleet(2) as fleet:
        fleet.set_skew("relay-1", BETWEEN)
        assert code(fleet.sync("dev-0")) == "credential_expired"
        assert fleet.sync("dev-1").completed
        fleet.set_skew("relay-1", 0.0)
        fleet.set_skew("dev-0", 2 * LIFETIME)  # a device's own clock does not matter to the relay
        assert fleet.sync("dev-0").completed
        assert not fleet.ledger.violations, fleet.ledger.violations


def test_a_revocation_is_refused_by_the_relay_and_taken_back() -> None:
    with Fleet(1) as fleet:
        fleet.revoke("dev-0")
        session = fleet.sync("dev-0")
        assert code(session) == "credential_revoked" and session.error is not None and not session.error.retryable
        assert fleet.replica("dev-0").status().state is SyncState.FAILED
        fleet.restore("dev-0")
        assert fleet.sync("dev-0").completed
        assert not fleet.ledger.violations, fleet.ledger.violations


# -- a commit failing inside the relay's group commit, with a live reader ----


def test_a_failed_group_commit_acks_fans_out_and_announces_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        key = SigningKey.generate()
        authority = RelayAuthority("relay-1", key)
        relay = Engine(FaultyStore(LmdbStore(tmp_path / "relay")), replica_id="relay-1")
        announced: list[str] = []
        relay.on_change(announced.append)

        def session() -> Session:
            return Session(relay, role="relay", initiator=False, authorize=authority.authorize)

        listener = Listener(relay, session, lambda s, e: None)
        await listener.start("127.0.0.1", 0)
        tokens = {
            name: key.issue(
                issuer="relay-1", replica_id=name, documents=["c7/*"], expires_at=time.time() + 3600, now=time.time()
            )
            for name in ("reader", "writer")
        }
        reader = Replica.open(tmp_path / "reader", replica_id="reader")
        writer = Replica.open(tmp_path / "writer", replica_id="writer")
        live = asyncio.create_task(reader.sync(listener.url, credential=tokens["reader"], live=True, timeout=5))
        try:
            await until(lambda: reader.status().state is SyncState.SYNCED, reader)

            ingest = relay.ingest

            def failing_ingest(deltas: Any) -> IngestResult:
                relay.ingest = ingest  # type: ignore[method-assign]
                fail_next_commit(relay)  # the commit holding these deltas fails
                return ingest(deltas)

            relay.ingest = failing_ingest  # type: ignore[method-assign]
            writer.doc("c7/households").records("hh").put("h1", {"n": 1})
            failed = await writer.sync(listener.url, credential=tokens["writer"])
            assert failed.state is SyncState.FAILED and failed.error is not None
            assert (failed.error.code, failed.error.retryable) == ("storage_error", True)
            assert failed.unsynced == 1  # nothing was acknowledged
            assert relay.version_vector("c7/households") == {} and announced == []
            assert reader.version_vector("c7/households") == {}  # nothing fanned out
            assert reader.status().state is SyncState.SYNCED  # the reader's link was not in that commit

            done = await writer.sync(listener.url, credential=tokens["writer"])  # the relay keeps working
            assert done.state is SyncState.SYNCED and done.unsynced == 0
            assert announced == ["c7/households"]
            await until(lambda: reader.version_vector("c7/households") == {"writer": 1}, reader)
        finally:
            live.cancel()
            await asyncio.gather(live, return_exceptions=True)
            reader.close()
            writer.close()
            await listener.stop()
            relay.close()

    asyncio.run(asyncio.wait_for(main(), 60))


async def until(check: Any, replica: Replica, timeout: float = 10.0) -> None:
    """Wait, on status and change events, until ``check()`` holds."""
    seen = asyncio.Event()
    stops = [replica.subscribe(lambda s: seen.set()), replica.on_change(lambda d: seen.set())]
    try:
        async with asyncio.timeout(timeout):
            while not check():
                await seen.wait()
                seen.clear()
    finally:
        for stop in stops:
            stop()


# -- revocations reach peers through the relay's signed list ------------------


def test_peers_learn_a_revocation_from_the_relay_and_from_each_other() -> None:
    with provisioned(3) as fleet:
        fleet.revoke("dev-0")
        assert code(fleet.sync("dev-0")) == "credential_revoked"
        assert fleet.sync("dev-0", "dev-2").completed  # dev-2 has not heard of it yet: offline, it cannot know
        assert fleet.sync("dev-1").completed  # the relay's welcome carries its signed revocation list
        link = fleet.open_link("dev-0", "dev-1")
        fleet.run(link)
        assert code(link.far) == "credential_revoked" and code(link.near) == "credential_revoked"
        assert fleet.sync("dev-1", "dev-2").completed  # dev-1 carries the list to dev-2
        link = fleet.open_link("dev-2", "dev-0")  # and dev-2, as the initiator, now refuses dev-0's welcome
        fleet.run(link)
        assert code(link.near) == "credential_revoked"
        fleet.renew("dev-0")  # a credential issued after the revocation is not revoked
        assert fleet.sync("dev-0").completed
        assert fleet.sync("dev-0", "dev-1").completed  # with the new credential, bound by the relay
        assert not fleet.ledger.violations, fleet.ledger.violations


def test_a_revocation_list_of_another_relay_or_older_than_the_known_one_is_ignored() -> None:
    from replica.trust import REVOCATIONS, adopt_revocations, known_revocations

    with provisioned(1) as fleet:
        device = fleet.replica("dev-0")
        newer = fleet.relay_key.sign_revocations(issuer="relay-1", revoked={"dev-9": 5.0}, now=10.0)
        older = fleet.relay_key.sign_revocations(issuer="relay-1", revoked={}, now=1.0)
        adopt_revocations(device, newer)
        adopt_revocations(device, older)
        known = known_revocations(device)
        assert known is not None and known.revoked == {"dev-9": 5.0}
        stranger = SigningKey.generate().sign_revocations(issuer="relay-9", revoked={}, now=99.0)
        adopt_revocations(device, stranger)
        assert device.setting(REVOCATIONS) == newer


def test_a_device_syncing_again_with_its_relay_writes_no_setting() -> None:
    """The relay's key is pinned at the first sync; later syncs with the same
    relay prove the same key and write nothing at the handshake (each write
    of a setting is a durable commit)."""
    with provisioned(1) as fleet:
        device = fleet.replica("dev-0")
        written: list[str] = []
        real = device.set_setting

        def noting(name: str, value: str) -> None:
            written.append(name)
            real(name, value)

        device.set_setting = noting  # type: ignore[method-assign]
        assert fleet.sync("dev-0").completed
        assert written == []
