"""``replica.sync.settle``: one commit for what sessions report, and what a failed commit leaves."""

from __future__ import annotations

from replica import Replica, wire
from replica.events import Acknowledged, Closed, Completed, Connected, Event
from replica.names import RELAY
from replica.session import Grant, Session
from replica.store.memory import MemoryStore
from replica.sync import settle
from replica.testing.backends import FaultyStore, fail_next_commit

DOC = "c7/households"
NOW = 100.0


def grant_all(hello: wire.Hello, now: float) -> Grant:
    return Grant(hello.replica_id, lambda document: True)


def faulty(replica_id: str) -> Replica:
    """An in-memory replica whose commits can be made to fail."""
    return Replica(FaultyStore(MemoryStore()), replica_id=replica_id)


def fill(replica: Replica, count: int, document: str = DOC) -> None:
    rows = replica.doc(document).records("r")
    with replica.batch():
        for i in range(count):
            rows.put(f"{replica.id}-{i}", {"i": i})


class Link:
    """A device session and a relay session, with frames moved by hand."""

    def __init__(self, device: Replica, relay: Replica) -> None:
        self.device_replica, self.relay_replica = device, relay
        self.device = Session(device, role="device", initiator=True)
        self.relay = Session(relay, role="relay", initiator=False, authorize=grant_all)
        self.events: list[tuple[str, Event]] = []

    def up(self) -> list[wire.Frame]:
        """Move the device's queued frames to the relay session (no settle)."""
        return self._move(self.device, self.relay)

    def down(self) -> list[wire.Frame]:
        """Move the relay's queued frames to the device session (no settle)."""
        return self._move(self.relay, self.device)

    def settle_device(self) -> list[Event]:
        return self._settle("device", self.device_replica, self.device)

    def settle_relay(self) -> list[Event]:
        return self._settle("relay", self.relay_replica, self.relay)

    def run(self, steps: int = 100) -> None:
        """Start and move frames, settling both sides, until the link is quiet."""
        self.device.start(NOW)
        for _ in range(steps):
            moved = bool(self.up()) | bool(self.settle_relay()) | bool(self.down()) | bool(self.settle_device())
            if not moved:
                return
        raise AssertionError("the link never went quiet")

    def of(self, side: str, kind: type) -> list[Event]:
        return [event for name, event in self.events if name == side and isinstance(event, kind)]

    @staticmethod
    def _move(source: Session, target: Session) -> list[wire.Frame]:
        frames = source.data_to_send(NOW)
        for frame in frames:
            target.receive(frame, NOW)
        return [wire.decode(frame) for frame in frames]

    def _settle(self, side: str, replica: Replica, session: Session) -> list[Event]:
        events = [event for _, event in settle(replica, [session])]
        self.events.extend((side, event) for event in events)
        return events


def handshake(link: Link) -> list[wire.Frame]:
    """Hello, welcome, both settled; returns the device's first frames after it (its deltas)."""
    link.device.start(NOW)
    link.up()
    link.settle_relay()
    link.down()
    link.settle_device()
    return link.up()


# -- (a) watermarks follow what the relay acknowledged -----------------------


def test_the_device_watermark_is_what_the_relay_acknowledged() -> None:
    device, relay = Replica.in_memory(replica_id="dev-a"), Replica.in_memory(replica_id="relay-1")
    fill(device, 40)
    link = Link(device, relay)
    link.run()
    acks = [e for e in link.of("device", Acknowledged) if isinstance(e, Acknowledged)]
    assert acks and acks[-1].remote_role == "relay" and acks[-1].document == DOC
    assert acks[-1].vv == {"dev-a": 40} == relay.version_vector(DOC)
    assert device.watermark(RELAY, DOC) == acks[-1].vv
    assert device.watermark("relay-1", DOC) == {}  # kept under the relay's name, not its id
    assert link.device.completed and link.of("device", Completed)
    assert device.status().unsynced == 0


def test_the_watermark_moves_only_when_an_ack_is_settled() -> None:
    device, relay = Replica.in_memory(replica_id="dev-a"), Replica.in_memory(replica_id="relay-1")
    fill(device, 5)
    link = Link(device, relay)
    handshake(link)
    link.settle_relay()
    acks = [f for f in link.down() if isinstance(f, wire.Ack)]
    assert acks and acks[-1].vv == {"dev-a": 5}
    assert device.watermark(RELAY, DOC) == {}  # received, not yet stored
    events = link.settle_device()
    assert any(isinstance(e, Acknowledged) for e in events)
    assert device.watermark(RELAY, DOC) == {"dev-a": 5}


def test_the_handshake_records_what_the_relay_already_holds() -> None:
    device, relay = Replica.in_memory(replica_id="dev-a"), Replica.in_memory(replica_id="relay-1")
    other = Replica.in_memory(replica_id="dev-b")
    fill(other, 3)
    Link(other, relay).run()
    link = Link(device, relay)
    link.device.start(NOW)
    link.up()
    link.settle_relay()
    link.down()
    events = link.settle_device()
    connected = [e for e in events if isinstance(e, Connected)]
    assert connected and connected[0].documents == {DOC: {"dev-b": 3}}
    assert device.watermark(RELAY, DOC) == {"dev-b": 3}
    # the relay keeps no watermark per device
    assert relay.watermark("dev-a", DOC) == {} and relay.watermark("dev-b", DOC) == {}


def test_settle_with_nothing_to_store_returns_the_other_events() -> None:
    device, relay = Replica.in_memory(replica_id="dev-a"), Replica.in_memory(replica_id="relay-1")
    link = Link(device, relay)
    link.run()
    link.device.connection_lost()
    events = settle(device, [link.device])
    assert [type(event) for _, event in events] == [Closed]
    assert settle(device, [link.device]) == []


# -- (b) a relay commit that fails -------------------------------------------


def test_a_failed_relay_commit_stores_nothing_and_acknowledges_nothing() -> None:
    device, relay = Replica.in_memory(replica_id="dev-a"), faulty("relay-1")
    fill(device, 10)
    link = Link(device, relay)
    sent = handshake(link)
    assert any(isinstance(f, wire.Deltas) for f in sent)
    changed: list[str] = []
    relay.on_change(changed.append)

    fail_next_commit(relay)
    events = link.settle_relay()

    assert relay.version_vector(DOC) == {}
    assert relay.documents() == []
    assert link.relay.closed
    assert link.relay.error is not None
    assert link.relay.error.code == "storage_error" and link.relay.error.retryable
    closed = [e for e in events if isinstance(e, Closed)]
    assert closed and closed[-1].error == link.relay.error
    frames = [wire.decode(f) for f in link.relay.data_to_send(NOW)]
    assert not any(isinstance(f, wire.Ack) for f in frames)
    errors = [f for f in frames if isinstance(f, wire.Error)]
    assert errors and errors[0].code == "storage_error" and errors[0].retryable
    assert changed == []

    # the device hears why, and nothing it sent counts as synced
    for frame in frames:
        link.device.receive(wire.encode(frame), NOW)
    device_events = link.settle_device()
    assert link.device.closed and link.device.error is not None
    assert link.device.error.code == "storage_error" and link.device.error.retryable
    assert not link.device.completed and not any(isinstance(e, Completed) for e in device_events)
    assert device.watermark(RELAY, DOC) == {}
    assert device.status().unsynced == 10

    # the relay keeps working: a fresh attempt stores everything
    again = Link(device, relay)
    again.run()
    assert again.device.completed and again.relay.error is None
    assert relay.version_vector(DOC) == {"dev-a": 10}
    assert relay.doc(DOC).contents() == device.doc(DOC).contents()
    assert changed == [DOC]
    assert device.watermark(RELAY, DOC) == {"dev-a": 10}
    assert device.status().unsynced == 0


def test_a_failed_commit_fails_every_session_it_held() -> None:
    relay = faulty("relay-1")
    a, b = Replica.in_memory(replica_id="dev-a"), Replica.in_memory(replica_id="dev-b")
    fill(a, 3)
    fill(b, 4)
    links = [Link(a, relay), Link(b, relay)]
    for link in links:
        handshake(link)
    fail_next_commit(relay)
    events = settle(relay, [link.relay for link in links])
    assert relay.version_vector(DOC) == {}
    for link in links:
        assert link.relay.error is not None and link.relay.error.code == "storage_error"
        assert (link.relay, Closed(link.relay.error)) in events
        assert not any(isinstance(wire.decode(f), wire.Ack) for f in link.relay.data_to_send(NOW))


# -- (c) completion waits for the device's commit ----------------------------


def final_ack_received(device: Replica, relay: Replica) -> Link:
    """A link where the device holds the relay's last ack, not yet settled."""
    link = Link(device, relay)
    handshake(link)
    link.settle_relay()
    frames = link.down()
    assert [f.vv for f in frames if isinstance(f, wire.Ack)][-1] == device.version_vector(DOC)
    assert not link.device.completed
    return link


def test_a_run_completes_once_its_last_ack_is_stored() -> None:
    device, relay = faulty("dev-a"), Replica.in_memory(replica_id="relay-1")
    fill(device, 6)
    link = final_ack_received(device, relay)
    events = link.settle_device()
    assert link.device.completed
    assert any(isinstance(e, Completed) for e in events)
    assert device.watermark(RELAY, DOC) == {"dev-a": 6}


def test_a_run_whose_last_ack_could_not_be_stored_is_not_complete() -> None:
    device, relay = faulty("dev-a"), Replica.in_memory(replica_id="relay-1")
    fill(device, 6)
    link = final_ack_received(device, relay)
    fail_next_commit(device)
    events = link.settle_device()
    assert not link.device.completed
    assert not any(isinstance(e, Completed) for e in events)
    closed = [e for e in events if isinstance(e, Closed)]
    assert closed and closed[-1].error is not None
    assert closed[-1].error.code == "storage_error" and closed[-1].error.retryable
    assert device.watermark(RELAY, DOC) == {}
    assert device.status().unsynced == 6  # the relay holds them, but this device cannot know it yet
    assert relay.version_vector(DOC) == {"dev-a": 6}
    # the next run finds them held and completes without sending them again
    again = Link(device, relay)
    again.run()
    assert again.device.completed and device.status().unsynced == 0
    assert again.device.sent == 0
