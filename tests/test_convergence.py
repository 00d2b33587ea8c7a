"""Property-based convergence of whole fleets (``replica.testing``).

The state machines run a relay and 2-5 devices on real LMDB data directories
over a simulated network that hypothesis schedules: edits, links, deliveries,
drops, duplicates, reorderings, crashes and credential changes; invariants
after every step, convergence after healing. A differential machine runs the
same story on LMDB and in memory. A real editing trace, typed in turns on
different devices, must end identical to the trace's final text everywhere.

Under ``HYPOTHESIS_PROFILE=deep`` every test here runs many more examples.
"""

from __future__ import annotations

import functools
import gzip
import json
import os
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import rule

from replica.doc import Document
from replica.replica import Replica
from replica.session import Limits
from replica.status import SyncState
from replica.testing import (
    ConvergenceMachine,
    DifferentialMachine,
    Fleet,
    FleetMachine,
    Monitor,
    check_converged,
    devices,
)
from replica.testing.network import LIFETIME
from replica.testing.strategies import Insert, Put, apply_edit

PROFILE = settings()
DEEP = PROFILE.max_examples > 100
#: Steps per example (tests/test_injected_faults.py hunts with the same).
STEPS = 120 if not DEEP else 200


def scaled(ci: int) -> int:
    """``ci`` examples under the ci profile, proportionally more under deep."""
    return max(1, ci * PROFILE.max_examples // 60)


# -- the machines ------------------------------------------------------------

TestConvergence = ConvergenceMachine.TestCase
TestConvergence.settings = settings(PROFILE, max_examples=scaled(60), stateful_step_count=STEPS)

TestDifferential = DifferentialMachine.TestCase
TestDifferential.settings = settings(PROFILE, max_examples=scaled(20), stateful_step_count=STEPS)


# -- the example of docs/testing.md: a user's own data model ------------------


class Households(FleetMachine):
    @rule(device=devices(), hh=st.sampled_from(["h1", "h2"]), members=st.integers(0, 12))
    def register(self, device: int, hh: str, members: int) -> None:
        self.edit(device, "c7/households", lambda doc: doc.records("hh").put(hh, {"members": members}), f"+{hh}")

    @rule(device=devices(), hh=st.sampled_from(["h1", "h2"]))
    def visit(self, device: int, hh: str) -> None:
        def visit(doc: Document) -> None:
            if hh in doc.records("hh"):
                doc.records("hh").update(hh, {"visited": True})

        self.edit(device, "c7/households", visit, f"visit {hh}")

    def check_final(self, fleet: Fleet) -> None:
        for replica in fleet.replicas():
            for _, fields in replica.doc("c7/households").records("hh").items():
                assert 0 <= fields["members"] <= 12 and type(fields["members"]) is int


TestHouseholds = Households.TestCase
TestHouseholds.settings = settings(PROFILE, max_examples=scaled(15), stateful_step_count=STEPS)


# -- the simulated network itself --------------------------------------------


def test_a_fault_free_fleet_converges() -> None:
    with Fleet(3) as fleet:
        monitor = Monitor()
        for name in ("dev-1", "dev-2"):  # the morning login: the relay's key and a bound credential, for peers
            assert fleet.sync(name).completed
        fleet.edit("dev-0", "c7/households", lambda d: d.records("hh").put("h1", {"members": 2**70}))
        fleet.edit("dev-1", "c7/notes", lambda d: d.text("t").insert(0, "héllo 🌍"))
        fleet.edit("dev-2", "private/dev-2", lambda d: d.text("t").insert(0, "mine"))
        monitor.check(fleet)
        assert fleet.sync("dev-1", "dev-2").completed  # a peer carries dev-1's delta
        monitor.check(fleet)
        assert fleet.replica("dev-2").status().unsynced == 2  # peer sync never lowers it
        fleet.heal()
        monitor.check(fleet)
        check_converged(fleet)
        status = fleet.replica("dev-2").status()  # its private document is refused: never "Data Synced"
        assert (status.state, status.unsynced, status.rejected) == (SyncState.FAILED, 0, 1)
        assert status.error is not None and status.error.code == "changes_refused" and not status.error.retryable
        assert fleet.replica("dev-0").doc("c7/households").records("hh").get("h1") == {"members": 2**70}


def test_frames_sent_before_a_crash_still_arrive() -> None:
    with Fleet(2, limits=Limits(min_batch_bytes=1, start_batch_bytes=1, max_batch_bytes=1)) as fleet:
        for i in range(3):
            fleet.edit("dev-0", "c7/households", functools.partial(apply_edit, edit=Put("hh", f"h{i}", {"i": i})))
        link = fleet.open_link("dev-0")
        fleet.deliver(link, True)  # hello
        fleet.deliver(link, False)  # welcome: dev-0 sends its deltas, one per frame
        assert len(link.up) >= 3
        story = fleet.crash("dev-0", survivors=2)
        assert "after 2 more frames arrived" in story
        assert fleet.relay.replica.version_vector("c7/households") == {"dev-0": 2}
        assert fleet.replica("dev-0").status().unsynced == 3  # the acks never came back
        Monitor().check(fleet)


def test_same_draws_give_the_same_bytes() -> None:
    """Client ids are deterministic per fleet: two runs of one story make
    identical deltas (what lets hypothesis replay and shrink)."""

    def story() -> list[bytes]:
        with Fleet(2, backend="memory") as fleet:
            fleet.edit("dev-0", "c7/notes", lambda d: d.text("t").insert(0, "ab"))
            fleet.edit("dev-1", "c7/notes", lambda d: d.text("t").insert(0, "cd"))
            fleet.heal()
            return [item.data for item in fleet.relay.replica.missing_deltas("c7/notes", {})]

    assert story() == story()


def test_a_revoked_device_is_refused_by_the_relay_but_not_by_peers() -> None:
    with Fleet(2) as fleet:
        for name in ("dev-0", "dev-1"):  # each gets the relay's key and a bound credential
            assert fleet.sync(name).completed
        fleet.edit("dev-0", "c7/households", lambda d: d.records("hh").put("h1", {}))
        fleet.revoke("dev-0")
        session = fleet.sync("dev-0")
        assert session.error is not None and session.error.code == "credential_revoked"
        assert fleet.replica("dev-0").status().state is SyncState.FAILED
        assert fleet.sync("dev-0", "dev-1").completed  # peers cannot see a revocation offline
        assert fleet.sync("dev-1").completed  # dev-1 carries dev-0's delta up
        assert fleet.relay.replica.version_vector("c7/households") == {"dev-0": 1}
        fleet.set_skew("dev-1", 2 * LIFETIME)  # by dev-1's clock, every credential has expired
        session = fleet.sync("dev-0", "dev-1")
        assert session.error is not None and session.error.code == "credential_expired"
        assert not fleet.ledger.violations, fleet.ledger.violations


# -- a real editing trace ----------------------------------------------------


def _traces() -> Path:
    override = os.environ.get("REPLICA_TRACES")
    return Path(override) if override else Path(__file__).resolve().parents[2] / "shared" / "data" / "traces"


@cache
def _trace(name: str) -> dict[str, Any]:
    path = _traces() / name
    if not path.exists():
        pytest.skip(f"trace {path} not found (set REPLICA_TRACES)")
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        loaded: dict[str, Any] = json.load(handle)
    return loaded


TRACE_DOC = "c7/component"


@st.composite
def turns(draw: st.DrawFn, total: int) -> list[tuple[int, int]]:
    """Split ``total`` transactions into turns: ``(end, typist)`` pairs."""
    cuts = draw(st.lists(st.integers(1, total - 1), max_size=6, unique=True))
    typists = draw(st.lists(st.integers(0, 3), min_size=len(cuts) + 1, max_size=len(cuts) + 1))
    return list(zip([*sorted(cuts), total], typists, strict=True))


@settings(max_examples=scaled(6), suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data(), count=st.integers(2, 4))
def test_a_real_trace_typed_in_turns_ends_with_its_final_text(data: st.DataObject, count: int) -> None:
    """sveltecomponent (18,335 transactions): each turn is typed on a drawn
    device, one delta per transaction; the text travels to the next typist
    through the relay or directly (drawn), other devices sync at drawn
    moments, and drawn replicas crash between turns."""
    trace = _trace("sveltecomponent.json.gz")
    txns = trace["txns"]
    plan = data.draw(turns(len(txns)), label="turns")
    with Fleet(count) as fleet:
        names = [node.name for node in fleet.devices]
        for name in names:  # the morning login: every device can then check its peers offline
            assert fleet.sync(name).completed
        start, typist = 0, names[0]
        for end, pick in plan:
            nxt = names[pick % count]
            if nxt != typist:  # hand the text over
                via_peer = data.draw(st.booleans(), label="hand over directly")
                note(f"{typist} hands over to {nxt} {'directly' if via_peer else 'through the relay'} at txn {start}")
                if via_peer:
                    assert fleet.sync(nxt, typist).completed
                else:
                    assert fleet.sync(typist).completed and fleet.sync(nxt).completed
                typist = nxt

            def type_turn(replica: Replica, first: int, last: int) -> None:
                document = replica.doc(TRACE_DOC)
                text = document.text("body")
                with replica.batch():  # one commit per turn, one delta per transaction
                    for txn in txns[first:last]:
                        with document.transaction():
                            for at, deleted, inserted in txn["patches"]:
                                if deleted:
                                    text.delete(at, deleted)
                                if inserted:
                                    text.insert(at, inserted)

            fleet.read(typist, functools.partial(type_turn, first=start, last=end))
            note(f"{typist} types transactions {start}..{end - 1}")
            bystander = names[data.draw(st.integers(0, count - 1), label="bystander")]
            if bystander != typist and data.draw(st.booleans(), label="bystander syncs"):
                fleet.sync(bystander)
            if data.draw(st.integers(0, 4), label="crash") == 0:
                note(f"{typist} crashes and reopens")
                fleet.crash(typist)
            start = end
        fleet.heal()
        check_converged(fleet)
        for node in fleet.nodes.values():
            assert fleet.read(node.name, lambda r: str(r.doc(TRACE_DOC).text("body"))) == trace["endContent"]
        assert sum(fleet.relay.replica.version_vector(TRACE_DOC).values()) == len(txns)


def test_the_edit_strategies_apply_anywhere() -> None:
    """Edits are descriptions: the same one applies to any replica."""
    with Fleet(2, backend="memory") as fleet:
        assert fleet.edit("dev-0", "c7/notes", lambda d: apply_edit(d, Insert("t", 10**6, "ab"))) == (
            "insert 'ab' into t at 0"
        )
        put = Put("hh", "h1", {"n": -(2**100), "f": float("nan")})
        fleet.edit("dev-1", "c7/notes", lambda d: apply_edit(d, put))
        fleet.heal()
        check_converged(fleet)  # NaN compares equal in canonical form
