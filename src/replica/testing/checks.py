"""What must hold of a fleet after every step, and once the network healed.

Each check is computed from what the replicas hold (logs, watermarks,
refusals) and what the fleet saw on the wire and in the sessions (its
:class:`~replica.testing.network.Ledger`), independently of the code that
keeps the status, so that a wrong count, a false ``SYNCED``, a failure
recorded where a run completed, progress held back, or a handshake decided
against the credentials shows as a mismatch between two ways of knowing the
same thing.
"""

from __future__ import annotations

from typing import Any

from replica import values
from replica.doc import Document
from replica.engine import Engine
from replica.errors import ErrorInfo
from replica.names import RELAY
from replica.runs import CHANGES_REFUSED, LOST
from replica.status import SyncState
from replica.testing.ledger import RelayRun
from replica.testing.links import Node, canonical
from replica.testing.network import Fleet
from replica.vv import VersionVector, count_missing, covers


def replayed(replica: Engine, name: str) -> bytes:
    """:func:`canonical` of ``name`` rebuilt from the replica's log alone."""
    fresh = Document(name, _refuse_writes)
    snapshot = replica.snapshot_for(name, {})
    payloads = [] if snapshot is None else [snapshot.data]
    try:
        fresh.rebuild(payloads + [item.data for item in replica.missing_deltas(name, {})])
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # pyo3 panics are BaseExceptions
        raise AssertionError(f"{replica.id}: the log of {name} does not replay: {exc!r}") from exc
    try:
        return canonical(fresh)
    finally:
        fresh.close()


def _refuse_writes(document: Document, update: bytes) -> None:
    raise AssertionError("a replay must not make deltas")


def log_version_vectors(replica: Engine) -> dict[str, VersionVector]:
    """Every document's version vector, after checking that the log holds,
    of each origin, seqs 1..n: up to its snapshot's in the snapshot, and the
    rest in deltas and spans that each hold the seq after those before it
    (a span may also hold some of those: it overlaps, it leaves no gap)."""
    out = {}
    for name in replica.documents():
        snapshot = replica.snapshot_for(name, {})
        base = {} if snapshot is None else snapshot.vv
        held = {origin: seq for origin, seq in base.items() if seq}
        for item in replica.missing_deltas(name, {}):
            top = held.get(item.origin, 0)
            assert item.start <= top + 1 <= item.seq, (
                f"{replica.id}: the log of {name} holds {item!r} after seqs 1..{top} of {item.origin}: "
                "a gap or a repeat"
            )
            held[item.origin] = item.seq
        vv = replica.version_vector(name)
        assert vv == held, f"{replica.id}: version vector {vv} of {name} does not match its log {held}"
        out[name] = vv
    return out


class Monitor:
    """Checks a fleet after each step and remembers what may only grow."""

    def __init__(self) -> None:
        self.vvs: dict[str, dict[str, VersionVector]] = {}
        self.watermarks: dict[str, dict[str, VersionVector]] = {}

    def check(self, fleet: Fleet) -> None:
        """Every invariant; raises ``AssertionError`` with the story's terms."""
        assert not fleet.ledger.violations, "\n".join(fleet.ledger.violations)
        held = {node.name: self._check_log(fleet, node) for node in fleet.nodes.values()}
        for node in fleet.devices:
            self._check_device(fleet, node, held)
            self._check_run(fleet, node)

    def _check_log(self, fleet: Fleet, node: Node) -> dict[str, VersionVector]:
        vvs = log_version_vectors(node.replica)
        for name, old in self.vvs.get(node.name, {}).items():
            assert covers(vvs.get(name, {}), old), (
                f"{node}: the version vector of {name} went back from {old} to {vvs.get(name, {})}"
            )
        self.vvs[node.name] = vvs
        for name, acked in fleet.ledger.acked[node.name].items():
            assert covers(vvs.get(name, {}), acked), (
                f"{node} acknowledged {acked} of {name}, but its log holds only {vvs.get(name, {})}"
            )
        for name, announced in fleet.ledger.announced[node.name].items():
            assert covers(vvs.get(name, {}), announced), (
                f"{node} announced {announced} of {name} as stored, but its log holds only {vvs.get(name, {})}"
            )
        for name, sent in fleet.ledger.sent[node.name].items():
            assert covers(vvs.get(name, {}), sent), (
                f"{node} sent {sent} of {name}, but its log holds only {vvs.get(name, {})}"
            )
        published = fleet.ledger.published.get(node.name)
        if published is not None:
            assert published == node.replica.status(), (
                f"{node}: its status is {node.replica.status()}, but the last one it published is {published}"
            )
        return vvs

    def _check_device(self, fleet: Fleet, node: Node, held: dict[str, dict[str, VersionVector]]) -> None:
        replica = node.replica
        mine, relay = held[node.name], held[fleet.relay.name]
        refusals = replica.rejections(RELAY)
        for refusal in refusals:
            assert refusal.origin is None and not fleet.allows(refusal.document), (
                f"{node}: the relay refused {refusal}, but it only refuses whole documents out of scope"
            )
        refused = {refusal.document for refusal in refusals}
        seen = self.watermarks.setdefault(node.name, {})
        unsynced = rejected = 0
        for name in sorted(set(mine) | set(relay) | set(seen)):
            mark = replica.watermark(RELAY, name)
            assert covers(mark, seen.get(name, {})), (
                f"{node}: the relay's watermark of {name} went back from {seen.get(name)} to {mark}"
            )
            seen[name] = mark
            assert covers(relay.get(name, {}), mark), (
                f"{node} counts {mark} of {name} as acknowledged by the relay, whose log holds {relay.get(name, {})}"
            )
            said = fleet.ledger.relay_said[node.name].get(name, {})
            assert covers(said, mark), f"{node}: watermark {mark} of {name} beyond anything the relay said ({said})"
            missing = count_missing(mark, mine.get(name, {}))
            if name in refused:
                rejected += missing
            else:
                unsynced += missing
        for peer in fleet.devices:
            if peer is not node:
                for name in mine:
                    mark = replica.watermark(peer.name, name)
                    assert covers(held[peer.name].get(name, {}), mark), (
                        f"{node} counts {mark} of {name} as held by {peer}, which holds {held[peer.name].get(name)}"
                    )
        status = replica.status()
        assert (status.unsynced, status.rejected) == (unsynced, rejected), (
            f"{node}: status says unsynced={status.unsynced}, rejected={status.rejected}; "
            f"its log and the relay's watermark say unsynced={unsynced}, rejected={rejected}"
        )
        if status.state is SyncState.SYNCED:
            self._check_synced(fleet, node, mine, relay)

    @staticmethod
    def _check_synced(
        fleet: Fleet, node: Node, mine: dict[str, VersionVector], relay: dict[str, VersionVector]
    ) -> None:
        track = fleet.ledger.relay_runs.get(node.name)
        start = None if track is None or track.completed_at is None else track.start
        assert start is not None and start.relay is not None, f"{node} says SYNCED without a completed run"
        replica = node.replica
        for name, vv in start.device.items():
            if fleet.allows(name):
                assert covers(relay.get(name, {}), vv), (
                    f"{node} says SYNCED, but the relay lacks some of {vv} of {name} it held at the start of the run"
                )
                mark = replica.watermark(RELAY, name)
                assert covers(mark, vv), f"{node} says SYNCED, but {vv} of {name} is not acknowledged ({mark})"
        for name, vv in start.relay.items():
            assert covers(mine.get(name, {}), vv), (
                f"{node} says SYNCED, but lacks some of {vv} of {name} that the relay held at the start"
            )

    @staticmethod
    def _check_run(fleet: Fleet, node: Node) -> None:
        """The home screen shows the device's last relay-facing run as its
        session went: state, error, progress and time of completion."""
        status = node.replica.status()
        track = fleet.ledger.relay_runs.get(node.name)
        state, error = expected_run(track)
        shown = status.error.code if isinstance(error, str) and status.error is not None else status.error
        assert (status.state, shown) == (state, error), (
            f"{node}: status {status.state.name} ({status.error}); its last relay run says {state.name} ({error})"
        )
        if track is not None:
            progress = (status.progress.sent, status.progress.received)
            assert progress == (track.sent, track.received), (
                f"{node}: progress says sent {progress[0]}, received {progress[1]}; "
                f"the session says sent {track.sent}, received {track.received}"
            )
        completions = fleet.ledger.completions.get(node.name, [])
        if track is not None and track.completed_at is not None and not track.refused:
            assert status.last_synced_at == track.completed_at, (
                f"{node}: last synced at {status.last_synced_at}, but its run completed at {track.completed_at}"
            )
        else:
            assert status.last_synced_at is None or status.last_synced_at in completions, (
                f"{node}: last synced at {status.last_synced_at}, when no relay run completed ({completions})"
            )


def expected_run(track: RelayRun | None) -> tuple[SyncState, ErrorInfo | str | None]:
    """What the home screen must say of a device whose last relay-facing run
    went as ``track`` says (None: none since it was opened); an error given as
    a code alone is compared by its code."""
    if track is None:
        return SyncState.IDLE, None
    if track.completed_at is not None:
        if track.refused:
            return SyncState.FAILED, CHANGES_REFUSED
        harmless = track.mode == "once" or track.error is None or track.error.retryable
        return (SyncState.SYNCED, None) if not track.closed or harmless else (SyncState.FAILED, track.error)
    if not track.closed:
        return SyncState.SYNCING, None
    return SyncState.FAILED, track.error or LOST


def check_converged(fleet: Fleet) -> None:
    """After :meth:`Fleet.heal`: every replica holds the same deltas and the
    same contents of every shared document, every document equals the replay
    of its log, nothing is unsynced, and what the relay refused is counted."""
    relay = fleet.relay.replica
    shared = relay.documents()
    outside = [name for name in shared if not fleet.allows(name)]
    assert not outside, f"the relay stored documents outside every credential: {outside}"
    expected = {name: (relay.version_vector(name), canonical(relay.doc(name))) for name in shared}
    for node in fleet.nodes.values():
        replica = node.replica
        for name in replica.documents():
            assert canonical(replica.doc(name)) == replayed(replica, name), (
                f"{node}: {name} in memory differs from the replay of its log"
            )
    for node in fleet.devices:
        replica = node.replica
        status = replica.status()
        if status.rejected:  # never "Data Synced" while changes are refused
            assert status.state is SyncState.FAILED and status.error is not None, f"{node}: {status}"
            assert status.error.code == CHANGES_REFUSED, f"{node}: the last sync after healing ended {status}"
        else:
            assert status.state is SyncState.SYNCED, f"{node}: the last sync after healing ended {status}"
        assert status.unsynced == 0, f"{node}: {status.unsynced} deltas unsynced after healing"
        names = replica.documents()
        got = {name: (replica.version_vector(name), canonical(replica.doc(name))) for name in names}
        mine = {name: value for name, value in got.items() if fleet.allows(name)}
        for name in sorted(set(mine) | set(expected)):
            assert mine.get(name) == expected.get(name), _difference(node, name, mine.get(name), expected.get(name))
        private = {name: sum(replica.version_vector(name).values()) for name in names if not fleet.allows(name)}
        refused = {refusal.document for refusal in replica.rejections(RELAY)}
        assert set(private) <= refused, f"{node}: {sorted(set(private) - refused)} not shown as refused"
        assert status.rejected == sum(private.values()), (
            f"{node}: {status.rejected} deltas shown as refused, {sum(private.values())} held out of scope"
        )


def _difference(node: Node, name: str, got: Any, expected: Any) -> str:
    if got is None or expected is None:
        who = "the relay" if got is None else str(node)
        return f"{name} is on {who} only (after healing)"
    if got[0] != expected[0]:
        return f"{node}: {name} at {got[0]}, the relay at {expected[0]}"
    return f"{node}: {name} holds {values.decode(got[1])!r:.600}\nthe relay holds {values.decode(expected[1])!r:.600}"


def observe(fleet: Fleet) -> dict[str, Any]:
    """Everything observable of a fleet, for comparing two backends: each
    replica's documents (version vector, contents, watermark), statuses, and
    the frames in flight, byte for byte."""
    out: dict[str, Any] = {}
    for node in fleet.nodes.values():
        replica = node.replica
        status = replica.status()
        out[node.name] = {
            "documents": {
                name: (replica.version_vector(name), canonical(replica.doc(name)), replica.watermark(RELAY, name))
                for name in replica.documents()
            },
            "status": (status.state, status.unsynced, status.rejected, status.error),
            "refusals": replica.rejections(RELAY),
        }
    out["links"] = [(str(link), list(link.up), list(link.down)) for link in fleet.links]
    return out
