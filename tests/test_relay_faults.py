"""Faults around a REAL relay process (``replica relay``), on 127.0.0.1 only.

1. Bad input: a raw websocket client sends garbage, wrong frames, bad
   credentials and bad deltas; each gets an ``error`` frame with the right code
   and a close, the relay keeps serving devices, and nothing but what was
   legitimately sent is stored (a fresh device syncs down and must equal a
   model replica fed only the legitimate deltas).
2. The relay SIGKILLed in the middle of a big sync: the device fails
   retryably, nothing the relay acknowledged is lost, and the next sync
   completes without duplicates.
3. A device process (``replica sync``) SIGKILLed in the middle of a sync: its
   unsynced count after reopening equals what its durable relay watermark
   leaves, and the next sync completes.
4. The relay unreachable (refused, or a listener that never answers).
5. SIGTERM: a clean stop (exit 0, "Relay stopped"), idle and mid-sync.

Every wait has a deadline and waits on a condition (a line, a frame, a status
event); nothing sleeps.
"""

from __future__ import annotations

import asyncio
import dataclasses
import queue
import random
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from relay_process import CLI, RelayProcess, pump_lines
from replica import Delta, Replica, delta, wire
from replica.credentials import SigningKey
from replica.relay import KEY_FILE
from replica.status import SyncState, SyncStatus

#: Longest wait for one frame, one sync, one line from a child.
FRAME_TIMEOUT = 15.0
SYNC_TIMEOUT = 30.0
LINE_TIMEOUT = 30.0

FIELD = "field-1"  # the legitimate device of the bad-input tests
INTRUDER = "intruder"  # the raw client: holds a valid credential, sends bad frames
OBSERVER = "observer"  # a fresh device that only syncs down, to see what the relay holds
PROBE = "probe"  # a raw client that only reads the relay's version vectors

Message = bytes | str


# -- helpers -----------------------------------------------------------------


def sync(replica: Replica, url: str, token: str | None, *, timeout: float = SYNC_TIMEOUT) -> SyncStatus:
    """One sync run of ``replica`` against ``url``, from synchronous test code."""
    return asyncio.run(replica.sync(url, credential=token, timeout=timeout))


def assert_synced(status: SyncStatus) -> None:
    assert status.state is SyncState.SYNCED, status
    assert status.unsynced == 0, status
    assert status.error is None, status


def assert_same_holdings(actual: Replica, expected: Replica, documents: Sequence[str] | None = None) -> None:
    """Same documents, version vectors and contents (one of them may hold
    part of a document as a snapshot: the relay compacts)."""
    names = expected.documents() if documents is None else list(documents)
    if documents is None:
        assert actual.documents() == names
    for name in names:
        assert actual.version_vector(name) == expected.version_vector(name), name
        assert actual.doc(name).contents() == expected.doc(name).contents(), name


def covers(big: dict[str, int], small: dict[str, int]) -> bool:
    return all(big.get(origin, 0) >= seq for origin, seq in small.items())


def deltas_count(vv: dict[str, int]) -> int:
    return sum(vv.values())


def unsynced_from_watermarks(replica: Replica) -> int:
    """The unsynced count computed independently of ``status()``."""
    return sum(len(replica.missing_deltas(name, replica.watermark("relay", name))) for name in replica.documents())


def write_records(replica: Replica, documents: dict[str, int], *, prefix: str = "h") -> None:
    """``count`` puts in each document, all in one batch (one commit)."""
    with replica.batch():
        for name, count in documents.items():
            records = replica.doc(name).records("households")
            for number in range(count):
                records.put(f"{prefix}{number}", {"n": number, "name": f"house {number}", "size": number % 7})


def kill_on_first_ack(replica: Replica, kill: Callable[[], None]) -> Callable[[], None]:
    """Call ``kill`` from the status callback the first time the relay's
    acknowledgement is visible (progress, or a durable watermark lowering
    ``unsynced``) while a sync runs. Returns the unsubscribe function."""
    start = replica.status().unsynced
    fired = threading.Event()

    def watch(status: SyncStatus) -> None:
        if fired.is_set() or status.state is not SyncState.SYNCING:
            return
        if status.progress.sent > 0 or status.unsynced < start:
            fired.set()
            kill()

    unsubscribe = replica.subscribe(watch)
    return unsubscribe


async def _recv_frame(ws: ClientConnection) -> wire.Frame:
    raw = await asyncio.wait_for(ws.recv(), FRAME_TIMEOUT)
    assert isinstance(raw, bytes), f"the relay sent a text message: {raw!r:.200}"
    return wire.decode(raw, max_frame_bytes=2 * wire.MAX_FRAME_BYTES)


@dataclass
class Outcome:
    """What the relay answered to an attack."""

    error: wire.Error
    close_code: int | None
    frames_before: list[str] = field(default_factory=list)
    seconds_to_error: float = 0.0


async def _attack(url: str, hello: bytes | None, acked: Sequence[wire.Deltas], bad: Message) -> Outcome:
    """Connect raw; optionally say hello and get welcomed, send batches and wait
    for their acks; then send ``bad`` and expect an error frame and a close."""
    seen: list[str] = []
    async with connect(url, max_size=None, compression=None, open_timeout=FRAME_TIMEOUT) as ws:
        if hello is not None:
            await ws.send(hello)
            while not isinstance(frame := await _recv_frame(ws), wire.Welcome):
                assert not isinstance(frame, wire.Error), f"the valid hello was refused: {frame}"
                seen.append(type(frame).__name__)
        for batch in acked:
            await ws.send(wire.encode(batch))
            wanted = {d.origin: d.seq for d in batch.deltas}
            while True:
                frame = await _recv_frame(ws)
                assert not isinstance(frame, wire.Error), f"a valid batch was refused: {frame}"
                if isinstance(frame, wire.Ack) and frame.document == batch.document and covers(frame.vv, wanted):
                    break
                seen.append(type(frame).__name__)
        started = time.monotonic()
        await ws.send(bad)
        while not isinstance(frame := await _recv_frame(ws), wire.Error):
            assert not isinstance(frame, wire.Ack), f"the relay acknowledged bad input: {frame}"
            seen.append(type(frame).__name__)
        elapsed = time.monotonic() - started
        try:
            extra = await asyncio.wait_for(ws.recv(), FRAME_TIMEOUT)
        except ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd is not None else None
        else:
            pytest.fail(f"the relay sent more after its error frame instead of closing: {extra!r:.200}")
    return Outcome(frame, code, seen, elapsed)


def attack(url: str, bad: Message, *, hello: bytes | None = None, acked: Sequence[wire.Deltas] = ()) -> Outcome:
    return asyncio.run(_attack(url, hello, acked, bad))


async def _relay_holdings(url: str, token: str, claim: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    async with connect(url, max_size=None, compression=None, open_timeout=FRAME_TIMEOUT) as ws:
        await ws.send(wire.encode(wire.Hello(PROBE, "device", token, claim)))
        while not isinstance(frame := await _recv_frame(ws), wire.Welcome):
            assert not isinstance(frame, wire.Error), frame
        return frame.documents


def relay_holdings(url: str, token: str, claim: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """The relay's version vectors, from its ``welcome`` to a probe that then
    hangs up. The probe claims to hold ``claim`` (say, everything of the
    origin watched) so that the relay has nothing to prepare for it."""
    return asyncio.run(_relay_holdings(url, token, claim))


def free_port() -> int:
    """A port on 127.0.0.1 with nothing listening (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


# -- 1. bad input to a running relay -------------------------------------------


@dataclass
class BadInputWorld:
    """One relay shared by the bad-input cases, the legitimate device, and a
    model replica holding exactly what was legitimately sent to the relay."""

    relay: RelayProcess
    field_device: Replica
    model: Replica
    tokens: dict[str, str]
    root: Path

    def sync_field_device(self) -> None:
        assert_synced(sync(self.field_device, self.relay.url, self.tokens[FIELD]))
        for name in self.field_device.documents():
            own = [d for d in self.field_device.missing_deltas(name, {}) if d.origin == FIELD]
            result = self.model.ingest(own)
            assert result.rejected is None, result.rejected

    def hello(self, documents: dict[str, dict[str, int]] | None = None, **changes: object) -> bytes:
        frame = wire.Hello(INTRUDER, "device", self.tokens[INTRUDER], documents or {})
        return wire.encode(dataclasses.replace(frame, **changes))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BadInputWorld]:
    root = tmp_path_factory.mktemp("bad-input")
    with RelayProcess(root / "relay") as relay:
        tokens = {name: relay.issue(name, ["bad/*"]) for name in (FIELD, INTRUDER, OBSERVER)}
        tokens["wrong-replica"] = relay.issue("someone-else", ["bad/*"])
        with Replica.open(root / "field", replica_id=FIELD) as field_device, Replica.in_memory() as model:
            yield BadInputWorld(relay, field_device, model, tokens, root)
        relay.terminate()


@dataclass(frozen=True)
class Plan:
    """An attack: an optional valid hello, batches that must be acknowledged
    first, then the bad message."""

    bad: Message
    hello: bytes | None = None
    acked: tuple[wire.Deltas, ...] = ()


@dataclass(frozen=True)
class Case:
    build: Callable[[BadInputWorld, str], Plan]
    code: str
    retryable: bool = False
    #: (origin, seq) the error frame must name, for refused deltas.
    names_delta: tuple[str, int] | None = None
    panic: bool = False


def households(case: str) -> str:
    return f"bad/{case}/households"


def garbage_delta(world: BadInputWorld, case: str, origin: str, seq: int, data: bytes, **changes: object) -> Plan:
    document = households(case)
    item = delta.make(document, origin, seq, data)._replace(**changes)  # type: ignore[arg-type]
    return Plan(hello=world.hello({document: {}}), bad=wire.encode(wire.Deltas(document, (item,))))


def altered(world: BadInputWorld, case: str, made: dict[str, object], **sent: object) -> Plan:
    """A valid delta of ``INTRUDER`` (seq 1 of ``households(case)`` unless
    ``sent`` says otherwise) whose checksum was made for the identity changed
    by ``made``: as if those fields were altered in transit after the origin
    made it. Its bytes are intact, so only a checksum over the identity can
    tell (version 3 stored it as sent)."""
    data = _valid_update(case)
    real: dict[str, Any] = {"document": households(case), "origin": INTRUDER, "seq": 1, "first": 0, **sent}
    meant = {**real, **made}
    check = delta.checksum(meant["document"], meant["origin"], meant["seq"], data, meant["first"])
    item = Delta(real["document"], real["origin"], real["seq"], check, data, real["first"])
    return Plan(hello=world.hello({item.document: {}}), bad=wire.encode(wire.Deltas(item.document, (item,))))


def expired_token(world: BadInputWorld) -> str:
    # The CLI refuses expiry dates in the past, so sign one in-process with the relay's key.
    key = SigningKey.load_or_create(world.relay.data / KEY_FILE)
    assert world.relay.replica_id is not None
    now = time.time()
    return key.issue(
        issuer=world.relay.replica_id, replica_id=INTRUDER, documents=["bad/*"], expires_at=now - 60, now=now - 7200
    )


def forged_token(world: BadInputWorld) -> str:
    assert world.relay.replica_id is not None
    now = time.time()
    return SigningKey.generate().issue(
        issuer=world.relay.replica_id, replica_id=INTRUDER, documents=["*"], expires_at=now + 3600, now=now
    )


def tampered_token(world: BadInputWorld) -> str:
    version, key_id, payload, signature = world.tokens[INTRUDER].split(".")
    flipped = payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1]
    return ".".join((version, key_id, flipped, signature))


def panicking_update(document: str, origin: str) -> tuple[list[Delta], Delta]:
    """Valid deltas of ``origin`` and a mutation of the next one that makes
    pycrdt panic when applied after them (found on a scratch replica)."""
    rng = random.Random(20261126)
    for _ in range(40):
        with Replica.in_memory(replica_id=origin) as source:
            doc = source.doc(document)
            doc.records("r").put("x", {"a": 1, "big": 2**62 + 1})
            doc.text("t").insert(0, "hello world")
            doc.records("r").update("x", {"b": "two"})
            doc.text("t").delete(2, 3)
            doc.records("r").put("y", {"c": [1, 2]})
            made = source.missing_deltas(document, {})
        for _ in range(1000):
            original = rng.choice(made[1:])
            data = bytearray(original.data)
            for _ in range(rng.randint(1, 3)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            candidate = delta.make(document, origin, original.seq, bytes(data))
            with Replica.in_memory(replica_id="scratch") as scratch:
                assert scratch.ingest(made[: original.seq - 1]).rejected is None
                rejected = scratch.ingest([candidate]).rejected
            if rejected is not None and "PanicException" in rejected.message:
                return made[: original.seq - 1], candidate
    pytest.fail("no mutation made pycrdt panic on a scratch replica")


def _panic(world: BadInputWorld, case: str) -> Plan:
    document = f"bad/{case}/notes"
    prefix, poison = panicking_update(document, INTRUDER)
    return Plan(
        hello=world.hello({document: {}}),
        acked=(wire.Deltas(document, tuple(prefix)),),
        bad=wire.encode(wire.Deltas(document, (poison,))),
    )


def _clash(world: BadInputWorld, case: str) -> Plan:
    stored = world.field_device.missing_deltas(households(case), {})[0]
    assert (stored.origin, stored.seq) == (FIELD, 1)
    with Replica.in_memory(replica_id=FIELD) as imposter:
        imposter.doc(households(case)).records("households").put("before", {"n": -1, "fake": True})
        other = imposter.missing_deltas(households(case), {})[0]
    assert (other.origin, other.seq) == (FIELD, 1) and other.data != stored.data
    return Plan(hello=world.hello({households(case): {}}), bad=wire.encode(wire.Deltas(households(case), (other,))))


def _valid_update(case: str) -> bytes:
    with Replica.in_memory(replica_id=INTRUDER) as source:
        source.doc(households(case)).records("households").put("sneaky", {"n": 1})
        return source.missing_deltas(households(case), {})[0].data


def _not_open(world: BadInputWorld, case: str) -> Plan:
    opened, other = households(case), f"bad/{case}/never-opened"
    item = delta.make(other, INTRUDER, 1, _valid_update(case))
    return Plan(hello=world.hello({opened: {}}), bad=wire.encode(wire.Deltas(other, (item,))))


def _out_of_scope(world: BadInputWorld, case: str) -> Plan:
    # Asked for in the hello, denied in the welcome, so never open.
    outside = f"elsewhere/{case}"
    item = delta.make(outside, INTRUDER, 1, _valid_update(case))
    return Plan(hello=world.hello({outside: {}}), bad=wire.encode(wire.Deltas(outside, (item,))))


def _batch_too_large(world: BadInputWorld, case: str) -> Plan:
    row = [0, 1, b"\x00" * delta.CHECKSUM_SIZE, b"\x00\x00"]
    body = {"t": "deltas", "doc": households(case), "o": [INTRUDER], "d": [row] * (wire.MAX_BATCH + 1)}
    return Plan(hello=world.hello({households(case): {}}), bad=msgpack.packb(body, use_bin_type=True))


def _snapshot(
    world: BadInputWorld, case: str, data: bytes, check: bytes | None = None, size: int | None = None
) -> Plan:
    whole = delta.make_snapshot(households(case), {INTRUDER: 1}, data)
    if check is not None:
        whole = whole._replace(checksum=check)
    part = wire.snapshot_parts(whole)[0]
    if size is not None:
        part = dataclasses.replace(part, size=size)
    return Plan(hello=world.hello({households(case): {}}), bad=wire.encode(part))


CASES: dict[str, Case] = {
    "snapshot-bad-checksum": Case(
        lambda w, c: _snapshot(w, c, _valid_update(c), delta.snapshot_checksum(households(c), {INTRUDER: 1}, b"x")),
        "delta_checksum",
    ),
    "snapshot-malformed-yjs": Case(
        lambda w, c: _snapshot(w, c, b"\x02\x00" + b"\xff" * 48),
        "delta_malformed",
    ),
    "snapshot-too-large": Case(
        lambda w, c: _snapshot(w, c, b"\x00\x00", size=delta.MAX_SNAPSHOT_BYTES + 1),
        "snapshot_too_large",
    ),
    "garbage-bytes": Case(lambda w, c: Plan(b"\xc1\xff\x00garbage\x93"), "bad_frame"),
    "text-message": Case(lambda w, c: Plan("hello relay"), "bad_frame"),
    "msgpack-list": Case(lambda w, c: Plan(msgpack.packb(["hello", 1])), "bad_frame"),
    "msgpack-int": Case(lambda w, c: Plan(msgpack.packb(42)), "bad_frame"),
    "unknown-type": Case(lambda w, c: Plan(msgpack.packb({"t": "gimme", "v": 1})), "bad_frame"),
    "deltas-before-hello": Case(
        lambda w, c: Plan(wire.encode(wire.Deltas(households(c), (delta.make(households(c), INTRUDER, 1, b"\0\0"),)))),
        "unexpected_frame",
    ),
    "version-99": Case(lambda w, c: Plan(w.hello(version=99)), "unsupported_version"),
    "version-3": Case(lambda w, c: Plan(w.hello(version=3)), "unsupported_version"),  # before identity checksums
    "oversized-frame": Case(lambda w, c: Plan(b"\x00" * (wire.MAX_FRAME_BYTES + 1)), "frame_too_large"),
    "no-credential": Case(lambda w, c: Plan(w.hello(credential=None)), "credential_missing"),
    "garbage-credential": Case(lambda w, c: Plan(w.hello(credential="let-me-in")), "credential_invalid"),
    "forged-credential": Case(lambda w, c: Plan(w.hello(credential=forged_token(w))), "credential_invalid"),
    "tampered-credential": Case(lambda w, c: Plan(w.hello(credential=tampered_token(w))), "credential_invalid"),
    "expired-credential": Case(lambda w, c: Plan(w.hello(credential=expired_token(w))), "credential_expired"),
    "other-replicas-credential": Case(
        lambda w, c: Plan(w.hello(credential=w.tokens["wrong-replica"])), "credential_wrong_replica"
    ),
    "relay-role": Case(lambda w, c: Plan(w.hello(role="relay")), "unexpected_role"),
    "too-many-documents": Case(
        lambda w, c: Plan(w.hello({f"bad/{c}/{n}": {} for n in range(wire.MAX_DOCUMENTS + 1)})),
        "too_many_documents",
    ),
    "bad-checksum": Case(
        lambda w, c: garbage_delta(w, c, INTRUDER, 1, _valid_update(c), checksum=delta.checksum("x", "y", 1, b"z")),
        "delta_checksum",
        names_delta=(INTRUDER, 1),
    ),
    "altered-origin": Case(
        lambda w, c: altered(w, c, {"origin": "intruder-2"}), "delta_checksum", names_delta=(INTRUDER, 1)
    ),
    "altered-seq": Case(lambda w, c: altered(w, c, {"seq": 2}), "delta_checksum", names_delta=(INTRUDER, 1)),
    "altered-document": Case(
        lambda w, c: altered(w, c, {"document": f"bad/{c}/other"}), "delta_checksum", names_delta=(INTRUDER, 1)
    ),
    "altered-first": Case(  # a span of seqs 2..3 whose first seq became 1: it would claim seq 1
        lambda w, c: altered(w, c, {"first": 2}, seq=3, first=1), "delta_checksum", names_delta=(INTRUDER, 1)
    ),
    "seq-gap": Case(
        lambda w, c: garbage_delta(w, c, INTRUDER, 2, _valid_update(c)),
        "delta_gap",
        retryable=True,
        names_delta=(INTRUDER, 2),
    ),
    "malformed-yjs": Case(
        lambda w, c: garbage_delta(w, c, INTRUDER, 1, b"\x02\x00" + b"\xff" * 48),
        "delta_malformed",
        names_delta=(INTRUDER, 1),
    ),
    "panicking-yjs": Case(_panic, "delta_malformed", names_delta=(INTRUDER, 3), panic=True),
    "varint-bomb": Case(
        lambda w, c: garbage_delta(w, c, INTRUDER, 1, b"\x80\x80\x80\x80\x01"),
        "delta_malformed",
        names_delta=(INTRUDER, 1),
    ),
    "replica-id-clash": Case(_clash, "replica_id_clash", names_delta=(FIELD, 1)),
    "document-not-open": Case(_not_open, "document_not_open"),
    "document-out-of-scope": Case(_out_of_scope, "document_not_open"),
    "batch-too-large": Case(_batch_too_large, "batch_too_large"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gets_an_error_frame_and_a_close_and_stores_nothing(
    world: BadInputWorld, name: str, tmp_path: Path
) -> None:
    case = CASES[name]
    device = world.field_device
    device.doc(households(name)).records("households").put("before", {"n": 1, "case": name})
    world.sync_field_device()

    plan = case.build(world, name)
    outcome = attack(world.relay.url, plan.bad, hello=plan.hello, acked=plan.acked)
    for batch in plan.acked:  # acknowledged: legitimately stored
        assert world.model.ingest(batch.deltas).rejected is None

    error = outcome.error
    assert error.code == case.code, error
    assert error.retryable is case.retryable, error
    assert outcome.close_code == 1008, f"closed with {outcome.close_code} after {error}"
    if case.names_delta is not None:
        assert (error.origin, error.seq) == case.names_delta, error
        assert error.document is not None and error.document.startswith(f"bad/{name}/"), error
    if case.panic:
        assert "PanicException" in error.message, error
    if case.code == "unsupported_version":
        assert "update the app or the relay" in error.message, error
    if name == "varint-bomb":
        assert outcome.seconds_to_error < 2.0, outcome
    assert world.relay.running, f"the relay died{world.relay.stderr_text()[-2000:]}"

    # The relay keeps serving: the legitimate device syncs a new change.
    device.doc(households(name)).records("households").put("after", {"n": 2, "case": name})
    world.sync_field_device()

    # Nothing else was stored: a fresh device sees exactly what was legitimately sent.
    # (Each case installs "observer" afresh; it only downloads, so no delta is ever made under its id twice.)
    with Replica.open(tmp_path / "observer", replica_id=OBSERVER) as observer:
        assert_synced(sync(observer, world.relay.url, world.tokens[OBSERVER]))
        assert_same_holdings(observer, world.model)
        assert observer.documents() == world.model.documents()


# -- 2. the relay killed in the middle of a sync --------------------------------


def test_relay_sigkill_mid_sync_loses_no_acknowledged_delta(tmp_path: Path) -> None:
    documents = {"c7/households": 35_000, "c7/visits": 15_000}
    total = sum(documents.values())
    with (
        RelayProcess(tmp_path / "relay") as relay,
        Replica.open(tmp_path / "device", replica_id="tablet-1") as device,
    ):
        tokens = {name: relay.issue(name, ["c7/*"]) for name in ("tablet-1", OBSERVER)}
        write_records(device, documents)
        assert device.status().unsynced == total

        unsubscribe = kill_on_first_ack(device, relay.kill)
        try:
            failed = sync(device, relay.url, tokens["tablet-1"])
        finally:
            unsubscribe()
        assert not relay.running and relay.returncode == -signal.SIGKILL, "the kill never happened"
        assert failed.state is SyncState.FAILED, failed
        assert failed.error is not None and failed.error.retryable, failed
        assert failed.error.code == "connection_lost", failed
        acknowledged = {name: device.watermark("relay", name) for name in documents}
        covered = sum(deltas_count(vv) for vv in acknowledged.values())
        assert 0 < covered < total, f"the kill did not land mid-sync: {covered} of {total} acknowledged"
        assert failed.unsynced == device.status().unsynced == total - covered == unsynced_from_watermarks(device)

        relay.start()  # same data directory, new port
        with Replica.open(tmp_path / "observer-1", replica_id=OBSERVER) as observer:
            assert_synced(sync(observer, relay.url, tokens[OBSERVER]))
            for name, vv in acknowledged.items():
                held = observer.version_vector(name)
                assert covers(held, vv), f"{name}: acknowledged {vv}, the relay kept only {held}"
                assert covers(device.version_vector(name), held), f"{name}: the relay holds more than was sent"

        assert_synced(sync(device, relay.url, tokens["tablet-1"]))
        with Replica.open(tmp_path / "observer-2", replica_id=OBSERVER + "-2") as second:
            token = relay.issue(OBSERVER + "-2", ["c7/*"])
            assert_synced(sync(second, relay.url, token))
            assert_same_holdings(second, device)
            for name, count in documents.items():
                assert len(second.doc(name).records("households")) == count
        relay.terminate()
    print(f"relay killed after {covered} of {total} deltas were acknowledged")


# -- 3. a device process killed in the middle of a sync -------------------------


def test_device_sigkill_mid_sync_keeps_unsynced_exact(tmp_path: Path) -> None:
    early = {"c7/households": 5_000}
    documents = {"c7/households": 30_000, "c7/visits": 15_000, "c7/stock": 5_000}
    data = tmp_path / "device"
    with RelayProcess(tmp_path / "relay") as relay:
        tokens = {name: relay.issue(name, ["c7/*"]) for name in ("tablet-2", OBSERVER, PROBE)}
        credential = tmp_path / "credential.txt"
        credential.write_text(tokens["tablet-2"] + "\n")
        with Replica.open(data, replica_id="tablet-2") as device:
            write_records(device, early, prefix="early")
            assert_synced(sync(device, relay.url, tokens["tablet-2"]))  # a partial watermark to start from
            write_records(device, documents)
            total = device.status().unsynced
            assert total == sum(documents.values())

        lines: queue.Queue[str | None] = queue.Queue()
        command = [*CLI, "sync", "--data", str(data), "--relay", relay.url, "--credential", str(credential)]
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as child:
            assert child.stdout is not None and child.stderr is not None
            reader = threading.Thread(target=pump_lines, args=(child.stderr, lines), daemon=True)
            reader.start()
            try:
                _wait_for_progress(lines)
                relay_held = _wait_for_relay_to_store(relay, tokens[PROBE], "tablet-2", child, list(documents), early)
                child.send_signal(signal.SIGKILL)
                child.wait(timeout=LINE_TIMEOUT)
            finally:
                if child.poll() is None:
                    child.kill()
                    child.wait(timeout=LINE_TIMEOUT)
            stdout = child.stdout.read().decode(errors="replace")
        reader.join(timeout=LINE_TIMEOUT)
        assert child.returncode == -signal.SIGKILL, (child.returncode, stdout)
        assert "Data Synced" not in stdout, "the child finished before it was killed"

        with Replica.open(data, replica_id="tablet-2") as device:
            status = device.status()
            independent = unsynced_from_watermarks(device)
            assert status.unsynced == independent, (status, independent)
            marks = {name: device.watermark("relay", name) for name in device.documents()}
            assert 0 < status.unsynced <= total, status
            with Replica.open(tmp_path / "observer", replica_id=OBSERVER) as observer:
                # The durable watermark never claims more than the relay holds.
                assert_synced(sync(observer, relay.url, tokens[OBSERVER]))
                for name, vv in marks.items():
                    assert covers(observer.version_vector(name), vv), (name, vv, observer.version_vector(name))
                assert_synced(sync(device, relay.url, tokens["tablet-2"]))
                assert device.status().unsynced == 0 == unsynced_from_watermarks(device)
                assert_synced(sync(observer, relay.url, tokens[OBSERVER]))
                assert_same_holdings(observer, device)
        relay.terminate()
    print(f"device killed with {status.unsynced} of {total} unsynced; the relay held {relay_held} of its deltas then")


def _wait_for_progress(lines: queue.Queue[str | None]) -> None:
    while True:
        try:
            line = lines.get(timeout=LINE_TIMEOUT)
        except queue.Empty:
            pytest.fail(f"the sync child printed no progress in {LINE_TIMEOUT} s")
        if line is None:
            pytest.fail("the sync child ended before it printed progress")
        if line.startswith("Sync in Progress"):
            return


def _wait_for_relay_to_store(
    relay: RelayProcess,
    token: str,
    origin: str,
    child: subprocess.Popen[bytes],
    documents: Sequence[str],
    before: dict[str, int],
) -> int:
    """Probe the relay until it stores new deltas of ``origin`` (so its first
    acknowledgement of this run is on its way); return how many it holds."""
    deadline = time.monotonic() + LINE_TIMEOUT
    baseline = sum(before.values())
    while time.monotonic() < deadline:
        if child.poll() is not None:
            pytest.fail(f"the sync child ended (status {child.returncode}) before the relay stored anything")
        held = relay_holdings(relay.url, token, {name: {origin: 2**62} for name in documents})
        count = sum(vv.get(origin, 0) for vv in held.values())
        if count > baseline:
            return count
    pytest.fail(f"the relay stored nothing new from {origin} within {LINE_TIMEOUT} s")


# -- 4. the relay unreachable ----------------------------------------------------


@pytest.fixture
def unsynced_device(tmp_path: Path) -> Iterator[Replica]:
    with Replica.open(tmp_path / "device", replica_id="tablet-3") as device:
        write_records(device, {"c7/households": 3})
        yield device


def test_refused_connection_fails_retryably(unsynced_device: Replica) -> None:
    status = sync(unsynced_device, f"ws://127.0.0.1:{free_port()}", "rc1.unused", timeout=5.0)
    assert status.state is SyncState.FAILED, status
    assert status.error is not None and status.error.code == "relay_unreachable" and status.error.retryable, status
    assert status.unsynced == 3 == unsynced_device.status().unsynced


def test_silent_listener_times_out_retryably(unsynced_device: Replica) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes TCP handshakes; nobody answers the websocket upgrade
        started = time.monotonic()
        status = sync(unsynced_device, f"ws://127.0.0.1:{silent.getsockname()[1]}", "rc1.unused", timeout=1.0)
        elapsed = time.monotonic() - started
    assert status.state is SyncState.FAILED, status
    assert status.error is not None and status.error.code in ("timeout", "relay_unreachable"), status
    assert status.error.retryable, status
    assert status.unsynced == 3 == unsynced_device.status().unsynced
    assert elapsed < 10.0, f"a 1 s timeout took {elapsed:.1f} s"


def test_cli_sync_to_a_refused_port_exits_1(tmp_path: Path) -> None:
    data = tmp_path / "device"
    with Replica.open(data, replica_id="tablet-4") as device:
        write_records(device, {"c7/households": 2})
    credential = tmp_path / "credential.txt"
    credential.write_text("rc1.unused\n")
    url = f"ws://127.0.0.1:{free_port()}"
    command = [*CLI, "sync", "--data", str(data), "--relay", url, "--credential", str(credential), "--timeout", "5"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    assert "Sync Failed:" in done.stdout and "[relay_unreachable]" in done.stdout, done.stdout
    assert "Data unsynced: 2" in done.stdout, done.stdout
    with Replica.open(data) as device:
        assert device.status().unsynced == 2


# -- 5. SIGTERM -------------------------------------------------------------------


def test_sigterm_stops_cleanly_and_keeps_everything(tmp_path: Path) -> None:
    with (
        RelayProcess(tmp_path / "relay") as relay,
        Replica.open(tmp_path / "device", replica_id="tablet-5") as device,
    ):
        tokens = {name: relay.issue(name, ["c7/*"]) for name in ("tablet-5", OBSERVER)}
        write_records(device, {"c7/households": 200, "c7/visits": 50})
        assert_synced(sync(device, relay.url, tokens["tablet-5"]))
        output = relay.terminate()
        assert relay.returncode == 0 and any(line.startswith("Relay stopped") for line in output), output

        relay.start()
        with Replica.open(tmp_path / "observer", replica_id=OBSERVER) as observer:
            assert_synced(sync(observer, relay.url, tokens[OBSERVER]))
            assert_same_holdings(observer, device)
        relay.terminate()


def test_sigterm_mid_sync_stops_cleanly_and_keeps_what_was_acknowledged(tmp_path: Path) -> None:
    documents = {"c7/households": 20_000}
    with (
        RelayProcess(tmp_path / "relay") as relay,
        Replica.open(tmp_path / "device", replica_id="tablet-6") as device,
    ):
        tokens = {name: relay.issue(name, ["c7/*"]) for name in ("tablet-6", OBSERVER)}
        write_records(device, documents)
        # Only signal from the callback: the relay's clean stop closes this
        # device's connection, which needs the device's loop to keep running.
        unsubscribe = kill_on_first_ack(device, lambda: relay.send_signal(signal.SIGTERM))
        try:
            status = sync(device, relay.url, tokens["tablet-6"])
        finally:
            unsubscribe()
        relay.wait_stopped()  # exit status 0 and "Relay stopped"
        assert status.state is SyncState.FAILED, status
        assert status.error is not None and status.error.retryable, status
        assert status.error.code == "connection_lost", status
        acknowledged = {name: device.watermark("relay", name) for name in documents}
        assert status.unsynced == unsynced_from_watermarks(device) == device.status().unsynced

        relay.start()
        with Replica.open(tmp_path / "observer", replica_id=OBSERVER) as observer:
            assert_synced(sync(observer, relay.url, tokens[OBSERVER]))
            for name, vv in acknowledged.items():
                assert covers(observer.version_vector(name), vv), (name, vv)
        assert_synced(sync(device, relay.url, tokens["tablet-6"]))
        with Replica.open(tmp_path / "observer-2", replica_id=OBSERVER + "-2") as second:
            assert_synced(sync(second, relay.url, relay.issue(OBSERVER + "-2", ["c7/*"])))
            assert_same_holdings(second, device)
        relay.terminate()


# -- progress while syncing -------------------------------------------------------


# Regression: settle() used to keep Acknowledged events from the edge, so the
# status showed "sent 0/N" until the very end of a sync (fixed in b6b5ac1).
def test_progress_shows_acknowledged_deltas_while_syncing(tmp_path: Path) -> None:
    with (
        RelayProcess(tmp_path / "relay") as relay,
        Replica.open(tmp_path / "device", replica_id="tablet-7") as device,
    ):
        token = relay.issue("tablet-7", ["c7/*"])
        write_records(device, {"c7/households": 10_000})
        seen: list[SyncStatus] = []
        unsubscribe = device.subscribe(seen.append)
        try:
            assert_synced(sync(device, relay.url, token))
        finally:
            unsubscribe()
        running = [status for status in seen if status.state is SyncState.SYNCING]
        assert any(status.unsynced < 10_000 for status in running), "no acknowledgement arrived mid-run"
        assert max(status.progress.sent for status in running) > 0, [status.progress for status in running[-3:]]
        assert seen[-1].progress.sent == seen[-1].progress.to_send == 10_000, seen[-1]
        relay.terminate()
