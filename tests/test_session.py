"""The sans-I/O session, driven over an in-memory link (no sockets, no clock)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from replica import Replica, wire
from replica.delta import Delta
from replica.errors import ReplicaError
from replica.session import Closed, Completed, Connected, Denied, Event, Grant, Limits, Session
from replica.sync import settle

DOC = "c7/households"


def grant_all(hello: wire.Hello, now: float) -> Grant:
    return Grant(hello.replica_id, lambda document: True)


def grant(patterns: Callable[[str], bool]) -> Callable[[wire.Hello, float], Grant]:
    return lambda hello, now: Grant(hello.replica_id, patterns)


class Wire:
    """Two sessions and the frames between them, moved one step at a time."""

    def __init__(self, device: Replica, relay: Replica, **options: object) -> None:
        self.device_replica, self.relay_replica = device, relay
        mode = str(options.pop("mode", "once"))
        authorize = options.pop("authorize", grant_all)
        limits = options.pop("limits", None)
        self.device = Session(device, role="device", initiator=True, mode=mode, limits=limits)  # type: ignore[arg-type]
        self.relay = Session(relay, role="relay", initiator=False, authorize=authorize, limits=limits)  # type: ignore[arg-type]
        self.events: list[tuple[str, Event]] = []
        self.in_flight: list[tuple[str, bytes]] = []
        self.now = 0.0

    def step(self) -> bool:
        """Move every queued frame once; settle both sides. False when quiet."""
        moved = False
        for name, source, target in (("up", self.device, self.relay), ("down", self.relay, self.device)):
            for frame in source.data_to_send(self.now):
                moved = True
                self.in_flight.append((name, frame))
                target.receive(frame, self.now)
        for name, replica, session in (
            ("device", self.device_replica, self.device),
            ("relay", self.relay_replica, self.relay),
        ):
            for _, event in settle(replica, [session]):
                self.events.append((name, event))
                moved = True
        return moved

    def run(self, steps: int = 200) -> None:
        self.device.start(self.now)
        for _ in range(steps):
            if not self.step():
                return
        raise AssertionError("the link never went quiet")

    def of(self, side: str, kind: type) -> list[Event]:
        return [e for s, e in self.events if s == side and isinstance(e, kind)]


def fill(replica: Replica, count: int, document: str = DOC) -> None:
    rows = replica.doc(document).records("r")
    with replica.batch():
        for i in range(count):
            rows.put(f"{replica.id}-{i}", {"i": i, "blob": b"x" * 50})


@pytest.fixture
def device() -> Replica:
    return Replica.in_memory(replica_id="dev-a")


@pytest.fixture
def relay() -> Replica:
    return Replica.in_memory(replica_id="relay-1")


def test_upload_completes_and_sets_the_watermark(device: Replica, relay: Replica) -> None:
    fill(device, 500)
    link = Wire(device, relay)
    link.run()
    assert link.of("device", Completed) and link.device.completed
    assert relay.version_vector(DOC) == {"dev-a": 500}
    assert device.watermark("relay", DOC) == {"dev-a": 500}
    assert device.status().unsynced == 0
    assert (link.device.sent, link.device.to_send) == (500, 500)
    connected = link.of("device", Connected)[0]
    assert isinstance(connected, Connected) and connected.remote_id == "relay-1"


def test_download_and_both_ways(device: Replica, relay: Replica) -> None:
    other = Replica.in_memory(replica_id="dev-b")
    fill(other, 300)
    Wire(other, relay).run()
    fill(device, 200)
    link = Wire(device, relay)
    link.run()
    assert (link.device.received, link.device.to_receive) == (300, 300)
    assert (link.device.sent, link.device.to_send) == (200, 200)
    assert device.doc(DOC).contents() == relay.doc(DOC).contents()
    assert device.version_vector(DOC) == {"dev-a": 200, "dev-b": 300}


def test_the_window_bounds_unacknowledged_batches(device: Replica, relay: Replica) -> None:
    fill(device, 3000)
    limits = Limits(window=2, start_batch_bytes=1024, min_batch_bytes=1024, max_batch_bytes=1024)
    link = Wire(device, relay, limits=limits)
    link.device.start(0.0)
    link.relay.receive(link.device.data_to_send(0.0)[0], 0.0)
    for frame in link.relay.data_to_send(0.0):
        link.device.receive(frame, 0.0)
    settle(device, [link.device])
    sent = [wire.decode(f) for f in link.device.data_to_send(0.0)]
    assert sum(isinstance(f, wire.Deltas) for f in sent) == 2
    assert link.device.data_to_send(0.0) == []  # nothing more until an ack comes back


def test_batches_grow_with_fast_acks_and_shrink_with_slow_ones(device: Replica, relay: Replica) -> None:
    session = Session(device, role="device", initiator=True)
    start = session.limits.start_batch_bytes
    session._adapt(0.001)
    assert session._batch_bytes == 2 * start
    for _ in range(40):
        session._adapt(0.001)
    assert session._batch_bytes == session.limits.max_batch_bytes
    for _ in range(40):
        session._adapt(5.0)
    assert session._batch_bytes == session.limits.min_batch_bytes


def test_batch_size_adapts_to_each_batch_not_its_wait_behind_others(device: Replica, relay: Replica) -> None:
    fill(device, 3000)
    link = Wire(device, relay, limits=Limits(window=4, start_batch_bytes=16384, min_batch_bytes=4096))
    link.device.start(0.0)
    link.relay.receive(link.device.data_to_send(0.0)[0], 0.0)
    for frame in link.relay.data_to_send(0.0):
        link.device.receive(frame, 0.0)
    settle(device, [link.device])
    frames = link.device.data_to_send(0.0)
    assert sum(isinstance(wire.decode(f), wire.Deltas) for f in frames) == 4
    for frame in frames:
        link.relay.receive(frame, 0.0)
    settle(relay, [link.relay])
    # The four acks come back 0.3 s apart: each batch took 0.3 s, none 0.6 s or more.
    for i, ack in enumerate(link.relay.data_to_send(0.0)):
        link.device.receive(ack, 0.3 * (i + 1))
    assert link.device._batch_bytes == 16384  # neither fast (grow) nor slow (shrink)


def test_deltas_the_other_side_got_meanwhile_are_not_sent(device: Replica, relay: Replica) -> None:
    fill(device, 400)
    limits = Limits(window=1, start_batch_bytes=1024, min_batch_bytes=1024, max_batch_bytes=1024)
    link = Wire(device, relay, limits=limits)
    link.device.start(0.0)
    link.step()
    link.step()  # the first batch is up and acked
    first = relay.version_vector(DOC)["dev-a"]
    assert 0 < first < 400
    # Another device that held dev-a's deltas (from a peer sync) uploads them all meanwhile.
    relay.ingest(device.missing_deltas(DOC, {}))
    while link.step():
        pass
    batches = [wire.decode(f) for name, f in link.in_flight if name == "up"]
    sent = sum(len(f.deltas) for f in batches if isinstance(f, wire.Deltas))
    assert sent < 400 - first  # what the relay's next ack showed it held was dropped, not sent
    assert link.of("device", Completed)
    assert link.device.sent == link.device.to_send == sent
    assert device.status().unsynced == 0


def test_frames_respect_the_size_cap(device: Replica, relay: Replica) -> None:
    fill(device, 2000)
    limits = Limits(max_frame_bytes=20_000, start_batch_bytes=10**9, max_batch_bytes=10**9)
    link = Wire(device, relay, limits=limits)
    link.run()
    assert relay.version_vector(DOC) == {"dev-a": 2000}
    assert max(len(f) for _, f in link.in_flight) <= 20_000


def test_out_of_scope_documents_are_denied_and_counted_as_rejected(device: Replica, relay: Replica) -> None:
    fill(device, 10)
    fill(device, 4, "secret/notes")
    link = Wire(device, relay, authorize=grant(lambda d: d.startswith("c7/")))
    link.run()
    denied = link.of("device", Denied)
    assert [d.document for d in denied if isinstance(d, Denied)] == ["secret/notes"]
    status = device.status()
    assert (status.unsynced, status.rejected) == (0, 4)
    assert status.rejections[0].code == "document_out_of_scope" and status.rejections[0].count == 4
    assert relay.documents() == [DOC]
    # a later run with a wider grant carries them up and clears the refusal
    Wire(device, relay).run()
    assert (device.status().unsynced, device.status().rejected) == (0, 0)
    assert relay.documents() == [DOC, "secret/notes"]


def test_a_delta_refused_by_the_relay_is_kept_and_counted(device: Replica) -> None:
    relay = Replica.in_memory(replica_id="relay-1", max_delta_bytes=2000)
    fill(device, 3)
    device.doc(DOC).text("notes").insert(0, "x" * 5000)  # dev-a#4: too large for this relay
    device.doc(DOC).records("r").put("after", {"v": 1})  # dev-a#5: blocked behind #4
    link = Wire(device, relay)
    link.run()
    closed = [e for e in link.of("device", Closed) if isinstance(e, Closed)]
    assert closed and closed[0].error is not None
    assert closed[0].error.code == "delta_too_large" and not closed[0].error.retryable
    status = device.status()
    assert (status.unsynced, status.rejected) == (0, 2)
    assert status.rejections[0].origin == "dev-a" and status.rejections[0].code == "delta_too_large"
    assert device.version_vector(DOC) == {"dev-a": 5}  # kept in the log
    assert relay.version_vector(DOC) == {"dev-a": 3}
    link = Wire(device, relay)  # the next run skips what was refused and completes
    link.run()
    assert link.device.completed and device.status().rejected == 2


def test_two_devices_sharing_a_replica_id_are_caught_at_the_handshake(device: Replica, relay: Replica) -> None:
    twin = Replica.in_memory(replica_id="dev-a")  # a copied data directory, say
    fill(twin, 2)
    Wire(twin, relay).run()
    fill(device, 4)  # the same origin and seqs, other bytes
    link = Wire(device, relay)
    link.run()
    closed = [e for e in link.of("device", Closed) if isinstance(e, Closed)]
    assert closed and closed[0].error is not None and closed[0].error.code == "replica_id_clash"
    assert relay.version_vector(DOC) == {"dev-a": 2}  # nothing of the impostor stored
    assert device.watermark("relay", DOC) == {}  # and nothing counted as synced


def test_deltas_received_from_the_relay_are_not_unsynced(device: Replica, relay: Replica) -> None:
    other = Replica.in_memory(replica_id="dev-b")
    fill(other, 5)
    Wire(other, relay).run()
    Wire(device, relay).run()
    assert device.version_vector(DOC) == {"dev-b": 5}
    assert device.status().unsynced == 0


def test_no_completion_while_something_is_missing(device: Replica, relay: Replica) -> None:
    fill(device, 50)
    link = Wire(device, relay)
    link.device.start(0.0)
    link.relay.receive(link.device.data_to_send(0.0)[0], 0.0)
    for frame in link.relay.data_to_send(0.0):
        link.device.receive(frame, 0.0)
    settle(device, [link.device])
    frames = link.device.data_to_send(0.0)
    assert isinstance(wire.decode(frames[-1]), wire.Done)
    link.relay.receive(frames[-1], 0.0)  # the deltas frames are lost; only done arrives
    settle(relay, [link.relay])
    for frame in link.relay.data_to_send(0.0):
        link.device.receive(frame, 0.0)
    settle(device, [link.device])
    assert not link.device.completed and not link.relay.completed


def test_a_backlog_is_read_a_window_at_a_time_and_counted_whole(device: Replica, relay: Replica) -> None:
    for name in ("dev-b", "dev-c", "dev-d"):  # three origins, their deltas interleaved in the relay's log
        other = Replica.in_memory(replica_id=name)
        for _ in range(4):
            fill(other, 50, DOC)
            relay.ingest(other.missing_deltas(DOC, relay.version_vector(DOC)))
    fill(device, 30)
    reads: list[int] = []
    missing = relay.missing_spans

    def bounded(document: str, remote: dict[str, int], **bounds: int) -> list[Delta]:
        found = missing(document, remote, **bounds)  # type: ignore[arg-type]
        reads.append(sum(item.length for item in found))
        return found

    relay.missing_spans = bounded  # type: ignore[method-assign]
    # Spans of at most 4 deltas, cut at multiples of 4: a window of 7 ends at the next one.
    limits = Limits(pending_deltas=7, pending_bytes=10_000, window=2, span_max=4)
    link = Wire(device, relay, limits=limits)
    link.run(2000)
    connected = link.of("relay", Connected)[0]
    assert isinstance(connected, Connected) and connected.to_send == 600  # counted at the handshake, nothing read
    assert max(reads) <= 7 + 3 and len(reads) >= 600 // 10
    assert link.relay.sent == link.relay.to_send == 600
    assert link.device.sent == link.device.to_send == 30
    assert device.version_vector(DOC) == relay.version_vector(DOC)
    assert link.of("device", Completed) and link.of("relay", Completed)
    down = [wire.decode(f) for name, f in link.in_flight if name == "down"]
    dones = [i for i, f in enumerate(down) if isinstance(f, wire.Done)]
    last_deltas = max(i for i, f in enumerate(down) if isinstance(f, wire.Deltas))
    assert dones == [last_deltas + 1]  # ``done`` once, after the last window


def test_a_window_of_bytes_bounds_what_is_read(
    device: Replica, relay: Replica, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill(relay, 200)  # about 80 bytes a delta
    link = Wire(device, relay, limits=Limits(pending_bytes=500))
    pending: list[int] = []
    refill = Session._refill

    def watched(self: Session, document: str) -> None:
        refill(self, document)
        if self is link.relay:
            pending.append(len(self._docs[document].pending))

    monkeypatch.setattr(Session, "_refill", watched)
    link.run()
    assert link.device.completed and device.version_vector(DOC) == {"relay-1": 200}
    assert max(pending) <= 7 and link.relay.sent == link.relay.to_send == 200


def test_live_links_read_new_deltas_after_the_window_in_order(device: Replica, relay: Replica) -> None:
    fill(relay, 40)
    link = Wire(device, relay, mode="live", limits=Limits(pending_deltas=3, window=1))
    link.device.start(0.0)
    link.step()
    link.step()  # the first window is on its way
    fill(relay, 40)  # committed meanwhile: counted now, read after what was counted before
    link.relay.local_changed(DOC, 0.0)
    while link.step():
        pass
    assert device.version_vector(DOC) == {"relay-1": 80}
    assert link.relay.sent == link.relay.to_send == 80
    assert device.doc(DOC).records("r").get("relay-1-39") is not None


def test_live_mode_streams_new_deltas_and_opens_new_documents(device: Replica, relay: Replica) -> None:
    link = Wire(device, relay, mode="live")
    link.run()
    assert link.device.completed
    device.doc(DOC).records("r").put("new", {"v": 1})
    link.device.local_changed(DOC, 0.0)
    while link.step():
        pass
    assert relay.doc(DOC).records("r").get("new") == {"v": 1}
    device.doc("c7/other").text("t").insert(0, "hi")
    link.device.local_changed("c7/other", 0.0)
    while link.step():
        pass
    assert str(relay.doc("c7/other").text("t")) == "hi"
    relay.doc(DOC).records("r").put("from-relay", {"v": 2})
    link.relay.local_changed(DOC, 0.0)
    while link.step():
        pass
    assert device.doc(DOC).records("r").get("from-relay") == {"v": 2}
    assert device.status().unsynced == 0


@pytest.mark.parametrize(
    "frame",
    [wire.Deltas(DOC, ()), wire.Ack(DOC, {}), wire.Done(), wire.Welcome("x", "relay", {})],
)
def test_unexpected_first_frames_are_refused(relay: Replica, frame: wire.Frame) -> None:
    session = Session(relay, role="relay", initiator=False, authorize=grant_all)
    session.receive(wire.encode(frame), 0.0)
    assert session.closed and session.error is not None and session.error.code == "unexpected_frame"
    reply = wire.decode(session.data_to_send(0.0)[0])
    assert isinstance(reply, wire.Error) and reply.code == "unexpected_frame"


def test_authorization_errors_become_error_frames(relay: Replica) -> None:
    def refuse(hello: wire.Hello, now: float) -> Grant:
        raise ReplicaError("no", code="credential_expired")

    session = Session(relay, role="relay", initiator=False, authorize=refuse)
    session.receive(wire.encode(wire.Hello("dev-a", "device", "token", {})), 0.0)
    reply = wire.decode(session.data_to_send(0.0)[0])
    assert isinstance(reply, wire.Error) and reply.code == "credential_expired" and not reply.retryable
    assert session.closed


def test_deltas_for_a_document_not_open(device: Replica, relay: Replica) -> None:
    link = Wire(device, relay)
    link.run()
    fill(device, 1, "c7/elsewhere")
    relay_session = Session(relay, role="relay", initiator=False, authorize=grant_all)
    relay_session.receive(wire.encode(wire.Hello("dev-a", "device", None, {})), 0.0)
    deltas = tuple(device.missing_deltas("c7/elsewhere", {}))
    relay_session.receive(wire.encode(wire.Deltas("c7/elsewhere", deltas)), 0.0)
    assert relay_session.closed and relay_session.error is not None
    assert relay_session.error.code == "document_not_open"


def test_too_many_documents(relay: Replica) -> None:
    session = Session(relay, role="relay", initiator=False, authorize=grant_all, limits=Limits(max_documents=3))
    session.receive(wire.encode(wire.Hello("dev-a", "device", None, {f"d{i}": {} for i in range(4)})), 0.0)
    assert session.error is not None and session.error.code == "too_many_documents"


def test_live_open_sends_nothing_before_the_answer(device: Replica, relay: Replica) -> None:
    link = Wire(device, relay, mode="live")
    link.run()
    device.doc("c7/new").records("r").put("a", {"v": 1})
    link.device.local_changed("c7/new", 0.0)
    device.doc("c7/new").records("r").put("b", {"v": 2})
    link.device.local_changed("c7/new", 0.0)
    frames = [wire.decode(f) for f in link.device.data_to_send(0.0)]
    assert [type(f).__name__ for f in frames] == ["Open"]
    for frame in frames:
        link.relay.receive(wire.encode(frame), 0.0)
    while link.step():
        pass
    sent = [wire.decode(f) for name, f in link.in_flight if name == "up"]
    batches = [f for f in sent if isinstance(f, wire.Deltas) and f.document == "c7/new"]
    assert sum(len(b.deltas) for b in batches) == 2  # each delta once
    assert relay.version_vector("c7/new") == {"dev-a": 2}


def test_live_links_do_not_echo_deltas_back(device: Replica, relay: Replica) -> None:
    link = Wire(device, relay, mode="live")
    link.run()
    link.in_flight.clear()
    for i in range(5):
        device.doc(DOC).records("r").put(str(i), {"i": i})
        link.device.local_changed(DOC, 0.0)
        while link.step():
            pass
        link.relay.local_changed(DOC, 0.0)  # what the relay's fan-out does after every commit
        while link.step():
            pass
    down = [wire.decode(f) for name, f in link.in_flight if name == "down"]
    assert not [f for f in down if isinstance(f, wire.Deltas)]
    assert relay.version_vector(DOC) == {"dev-a": 5}


def test_live_devices_are_offered_documents_created_after_they_connected(device: Replica, relay: Replica) -> None:
    link = Wire(device, relay, mode="live")
    link.run()
    other = Replica.in_memory(replica_id="dev-b")
    other.doc("c7/new-village").records("r").put("h1", {"name": "Ada"})
    relay.ingest(other.missing_deltas("c7/new-village", {}))
    link.relay.local_changed("c7/new-village", 0.0)
    while link.step():
        pass
    assert device.doc("c7/new-village").records("r").get("h1") == {"name": "Ada"}
    other.doc("c7/new-village").records("r").put("h2", {"name": "Bo"})
    relay.ingest(other.missing_deltas("c7/new-village", relay.version_vector("c7/new-village")))
    link.relay.local_changed("c7/new-village", 0.0)
    while link.step():
        pass
    assert device.doc("c7/new-village").records("r").get("h2") == {"name": "Bo"}


def test_once_links_refuse_unasked_documents(device: Replica, relay: Replica) -> None:
    link = Wire(device, relay)
    link.device.start(0.0)
    link.relay.receive(link.device.data_to_send(0.0)[0], 0.0)
    for frame in link.relay.data_to_send(0.0):
        link.device.receive(frame, 0.0)
    link.device.receive(wire.encode(wire.Opened("c7/unasked", {})), 0.0)
    assert link.device.closed and link.device.error is not None
    assert link.device.error.code == "unexpected_frame"
