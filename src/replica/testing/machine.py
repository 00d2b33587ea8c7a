"""Hypothesis state machines over a simulated fleet, to run or to subclass.

:class:`FleetMachine` owns the fleet and every rule about the network: links
opened and closed (device-relay and device-device, once or live), frames
delivered, dropped, duplicated and delayed in an order hypothesis draws,
replicas crashed at a drawn point and reopened from disk, commits that fail,
clocks set wrong (past the credentials' expiry, too), credentials revoked and
restored. After every step it checks the invariants of
``replica.testing.checks``; at the end it heals the network, syncs until quiet
and checks that everything converged.

:class:`ConvergenceMachine` adds generic edits (records with every kind of
value, texts, a document outside the credentials). Subclass either with rules
for your own data model; use :meth:`FleetMachine.edit` so that the edit is
applied to every backend under test and told in the story::

    class Households(FleetMachine):
        @rule(device=devices(), members=st.integers(0, 20))
        def register(self, device, members):
            self.edit(device, "c7/households", lambda doc: doc.records("hh").put("h1", {"n": members}))

    TestHouseholds = Households.TestCase

Set ``backends = ("lmdb", "memory")`` (as :class:`DifferentialMachine`
does) to also check that both stores agree after every step, frame for frame.
An override of a decorated method (a rule, an invariant) must repeat the
decorator: hypothesis finds rules by their decoration.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from dataclasses import replace
from typing import Any, ClassVar

from hypothesis import note
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from replica.doc import Document
from replica.session import Limits
from replica.testing import strategies
from replica.testing.checks import Monitor, check_converged, observe
from replica.testing.links import Link, describe
from replica.testing.network import EXPIRY_STEP, LIFETIME, Fleet
from replica.testing.strategies import Edit, NetworkStep, RunPlan


def skews() -> st.SearchStrategy[float]:
    """How far ahead a node's clock is: not at all, a few hours, or past the
    expiry of the first ``k`` devices' credentials (device ``i``'s expires at
    ``LIFETIME + i * EXPIRY_STEP``), so that one side of a handshake can see
    a credential expired that the other side does not."""
    past = st.integers(0, 5).map(lambda k: LIFETIME + (k + 0.5) * EXPIRY_STEP)
    return st.sampled_from([0.0, 3 * 3600.0]) | past


def devices() -> st.SearchStrategy[int]:
    """A device, as an index taken modulo the fleet's number of devices."""
    return st.integers(0, 4)


def _links_open(machine: Any) -> bool:
    return bool(machine.fleets) and bool(machine.fleets[0].links)


class FleetMachine(RuleBasedStateMachine):
    """N devices (``min_devices`` to ``max_devices``) and one relay on a
    simulated network, on each store of ``backends`` in lockstep."""

    min_devices: ClassVar[int] = 2
    max_devices: ClassVar[int] = 5
    backends: ClassVar[tuple[str, ...]] = ("lmdb",)
    #: Documents the devices' credentials cover (fnmatch patterns).
    scope: ClassVar[tuple[str, ...]] = ("c7/*",)
    #: Documents the edit rules write to.
    documents: ClassVar[tuple[str, ...]] = ("c7/households", "c7/notes")
    #: Whether network steps may drop, duplicate and delay frames.
    frame_faults: ClassVar[bool] = True
    #: Whether replicas crash (between steps, or between receiving and committing).
    crashes: ClassVar[bool] = True
    #: Whether commits fail now and then (a full or broken disk).
    storage_faults: ClassVar[bool] = True

    def __init__(self) -> None:
        super().__init__()
        self.fleets: list[Fleet] = []
        self.monitors: list[Monitor] = []

    # -- for subclasses ------------------------------------------------------

    @property
    def fleet(self) -> Fleet:
        """The (first) fleet; every fleet holds the same story."""
        return self.fleets[0]

    def device_name(self, device: int) -> str:
        """The name of device number ``device`` (modulo the fleet size)."""
        nodes = self.fleet.devices
        return nodes[device % len(nodes)].name

    def edit(self, device: int, document: str, change: Callable[[Document], Any], story: str = "") -> Any:
        """Run ``change(doc)`` on ``document`` of a device in every fleet;
        returns what the first fleet's ``change`` returned."""
        name = self.device_name(device)
        results = [fleet.edit(name, document, change) for fleet in self.fleets]
        note(f"{name}: {story or getattr(change, '__name__', 'edit')} in {document}")
        return results[0]

    def check_final(self, fleet: Fleet) -> None:
        """Extra checks once ``fleet`` converged (override: your invariants
        over the final documents)."""

    def limits(self, data: st.DataObject) -> Limits:
        """The sessions' batching: small batches make more frames to reorder.
        A relay sends spans in batches of a few deltas (two make a span
        there, three at most, cut at multiples of three) and in large ones
        (the shipped span sizes). Sessions read
        their backlog from the log as many deltas at a time as batches they
        keep in flight (1 to 4, at most 200 bytes), so that refills happen
        all the time, in the middle of batches too. (Derived, not drawn: a
        new draw would change every derandomized example.)"""
        batch = data.draw(st.sampled_from([1, 300, 1, 300, 64 * 1024]), label="batch bytes")
        window = data.draw(st.sampled_from([4, 2, 3, 1]), label="window")
        reads = {"pending_deltas": window, "pending_bytes": 200}
        if batch > 1024:
            return Limits(window=window, **reads)
        return Limits(
            window=window,
            min_batch_bytes=batch,
            start_batch_bytes=batch,
            max_batch_bytes=batch,
            span_min=2,
            span_max=3,  # spans cut at multiples of 3: runs make several, windows end at aligned seqs
            **reads,
        )

    # -- setup and teardown --------------------------------------------------

    @initialize(data=st.data())
    def start_fleet(self, data: st.DataObject) -> None:
        count = data.draw(st.integers(self.min_devices, self.max_devices), label="devices")
        limits = self.limits(data)
        provisioned = data.draw(st.booleans(), label="every device synced once")
        for backend in self.backends:
            fleet = Fleet(count, backend=backend, scope=self.scope, limits=limits)
            self.fleets.append(fleet)
            self.monitors.append(Monitor())
            if provisioned:  # as a field team's tablets are handed out: the relay's key and a bound credential
                for node in fleet.devices:
                    fleet.sync(node.name)
        names = ", ".join(node.name for node in self.fleet.devices)
        note(
            f"fleet: relay-1 and {names}; batches of {limits.max_batch_bytes} B, window {limits.window}, "
            f"reading {limits.pending_deltas} deltas ahead"
        )
        if provisioned:
            note("every device synced with the relay once")

    def teardown(self) -> None:
        # Hypothesis tears down in a ``finally``: after a failed step, only
        # clean up, so that the step's error is the one reported.
        failed = sys.exc_info()[1] is not None
        try:
            if self.fleets and not failed:
                self._converge("at the end")
        finally:
            for fleet in self.fleets:
                fleet.close()

    def _converge(self, when: str) -> None:
        for fleet in self.fleets:
            fleet.heal()
            check_converged(fleet)
            self.check_final(fleet)
        self._compare()
        note(f"healed {when}: everything converged")

    def _compare(self) -> None:
        if len(self.fleets) > 1:
            first = observe(self.fleets[0])
            for fleet in self.fleets[1:]:
                other = observe(fleet)
                assert other == first, _first_difference(first, other, self.fleets[0].backend.name, fleet.backend.name)

    @invariant()
    def fleet_invariants(self) -> None:
        for fleet, monitor in zip(self.fleets, self.monitors, strict=True):
            monitor.check(fleet)
        self._compare()

    # -- links and frames ----------------------------------------------------

    def _target(self, name: str, other: int) -> str:
        """``other`` 0 is the relay, otherwise a device (the relay if that is ``name`` itself)."""
        nodes = self.fleet.devices
        pick = other % (len(nodes) + 1)
        target = nodes[pick - 1].name if pick else self.fleet.relay.name
        return self.fleet.relay.name if target == name else target

    @rule(device=devices(), other=st.integers(0, 5), live=st.booleans())
    def open_link(self, device: int, other: int, live: bool) -> None:
        """A device connects; the frames move in later steps."""
        name = self.device_name(device)
        target = self._target(name, other)
        if self.fleet.linked(name, target) is not None:
            note(f"{name} and {target} are already linked")
            return
        links = [fleet.open_link(name, target, live=live) for fleet in self.fleets]
        note(f"open {links[0]}")

    @rule(device=devices(), other=st.integers(0, 5), plan=strategies.run_plans(), skew=st.none() | skews())
    def sync(self, device: int, other: int, plan: RunPlan, skew: float | None) -> None:
        """A device syncs (the "Sync Data" button): one once-run with the
        relay or a peer, start to end, with the plan's faults and crash, and
        perhaps its clock set wrong first (field devices' clocks drift)."""
        name = self.device_name(device)
        target = self._target(name, other)
        if skew is not None:
            stories = [fleet.set_skew(name, skew) for fleet in self.fleets]
            note(stories[0])
        link = self.fleet.linked(name, target)
        if link is None:
            for fleet in self.fleets:
                fleet.open_link(name, target)
            link = self.fleet.links[-1]
        self._run(self.fleet.links.index(link), plan)

    def _link(self, fleet: Fleet, number: int) -> Link:
        return fleet.links[number % len(fleet.links)]

    @precondition(_links_open)
    @rule(link=st.integers(0, 7), directions=st.lists(st.booleans(), min_size=1, max_size=8))
    def deliver(self, link: int, directions: list[bool]) -> None:
        """Frames of one link arrive, one per drawn direction (True: up,
        from the initiator; the other way when that queue is empty)."""
        stories = []
        for fleet in self.fleets:
            chosen = self._link(fleet, link)
            told = []
            for up in directions:
                if chosen not in fleet.links:
                    break
                if not chosen.queue(up):
                    up = not up
                if chosen.queue(up):
                    told.append(fleet.deliver(chosen, up))
            stories.append(told)
        for story in stories[0] or [f"{self._link(self.fleet, link)}: nothing in flight"]:
            note(story)

    @precondition(lambda self: _links_open(self) and self.frame_faults)
    @rule(step=strategies.fault_steps())
    def frame_fault(self, step: NetworkStep) -> None:
        """The next frame of one direction is dropped, duplicated or
        delayed, or the link breaks."""
        stories = [fleet.step(step) for fleet in self.fleets]
        note(stories[0])

    @precondition(_links_open)
    @rule(link=st.integers(0, 7), plan=strategies.run_plans())
    def run_link(self, link: int, plan: RunPlan) -> None:
        """Run one open link's conversation to its end, frame after frame,
        with the plan's faults and crash at drawn frames."""
        self._run(link, plan)

    def _run(self, link: int, plan: RunPlan) -> None:
        if not self.frame_faults:
            plan = replace(plan, faults=())
        if not self.crashes:
            plan = replace(plan, crash_at=None)
        if not self.storage_faults:
            plan = replace(plan, commit_fault_at=None)
        name = str(self._link(self.fleet, link))
        stories = [fleet.run(self._link(fleet, link), plan) for fleet in self.fleets]
        note(f"{name} runs: " + "; ".join(stories[0]))

    @precondition(lambda self: _links_open(self) and self.crashes)
    @rule(node=st.integers(0, 9), survivors=st.integers(0, 3), while_receiving=st.booleans())
    def crash(self, node: int, survivors: int, while_receiving: bool) -> None:
        """``node`` 0 to 2 is the relay, otherwise a device. It crashes
        between two steps, up to ``survivors`` frames it had sent still
        arriving; or, ``while_receiving``, right after reading the next frame
        sent to it (a batch of deltas if one is next), before its commit."""
        name = self._node_name(node)
        if while_receiving:  # the next frame to it, a batch of deltas if one is next somewhere
            heads = [
                (not describe(link.queue(up)[0]).startswith("deltas"), number, up)
                for number, link in enumerate(self.fleet.links)
                for up in (True, False)
                if link.queue(up) and link.ends(up)[2].name == name
            ]
            if heads:
                _, number, up = min(heads)
                stories = [fleet.deliver(fleet.links[number], up, crash_before_commit=True) for fleet in self.fleets]
                note(stories[0])
                return
        stories = [fleet.crash(name, survivors=survivors) for fleet in self.fleets]
        note(stories[0])

    # -- credentials, clocks and disks ---------------------------------------

    @rule(device=devices(), renew=st.booleans())
    def credential(self, device: int, renew: bool) -> None:
        """The operator gives a device a new credential (``renew``), or the
        relay revokes its credential, or takes that back (peers, offline,
        cannot know of revocations)."""
        name = self.device_name(device)
        if renew:
            stories = [fleet.renew(name) for fleet in self.fleets]
            note(stories[0])
            return
        revoked = name in self.fleet.revoked
        for fleet in self.fleets:
            if revoked:
                fleet.restore(name)
            else:
                fleet.revoke(name)
        note(f"{name}'s credential {'is restored' if revoked else 'is revoked'}")

    @rule(node=st.integers(0, 9), keep=st.integers(0, 3))
    def compact(self, node: int, keep: int) -> None:
        """A node compacts (``node`` 0 to 2 is the relay, otherwise a
        device), keeping its ``keep`` newest deltas of each document."""
        name = self._node_name(node)
        stories = [fleet.compact(name, keep) for fleet in self.fleets]
        note(stories[0])

    @rule(node=st.integers(0, 9), skew=skews())
    def clock(self, node: int, skew: float) -> None:
        """A node's clock is set right or ahead (see :func:`skews`; ``node``
        0 to 2 is the relay, otherwise a device)."""
        name = self._node_name(node)
        stories = [fleet.set_skew(name, skew) for fleet in self.fleets]
        note(stories[0])

    @precondition(lambda self: self.storage_faults)
    @rule(node=st.integers(0, 9), settle=st.booleans())
    def storage_fault(self, node: int, settle: bool) -> None:
        """The next commit of a node fails (``node`` 0 to 2 is the relay,
        otherwise a device), or with ``settle`` its next commit of what its
        links received: nothing it held may be acknowledged, sent on,
        announced or counted as synced, and the replica keeps working."""
        name = self._node_name(node)
        stories = [fleet.storage_fault(name, settle=settle) for fleet in self.fleets]
        note(stories[0])

    def _node_name(self, node: int) -> str:
        nodes = self.fleet.devices
        return self.fleet.relay.name if node < 3 else nodes[node % len(nodes)].name

    def heal_and_check(self) -> None:
        """Heal the network now, sync until quiet, check convergence (call
        it from a rule of a subclass for a mid-story checkpoint)."""
        self._converge("mid-story")


class ConvergenceMachine(FleetMachine):
    """:class:`FleetMachine` plus generic edits: records holding every kind
    of value (large ints included), texts with non-ASCII content, and now
    and then a write to a document no credential covers (refused by the
    relay, kept and shown as rejected)."""

    @rule(
        device=devices(), document=st.integers(0, 9), edits=st.lists(strategies.record_edits(), min_size=1, max_size=3)
    )
    def edit_records(self, device: int, document: int, edits: list[Edit]) -> None:
        self.apply(device, self._document(device, document), edits)

    @rule(device=devices(), document=st.integers(0, 9), edits=st.lists(strategies.text_edits(), min_size=1, max_size=3))
    def edit_text(self, device: int, document: int, edits: list[Edit]) -> None:
        self.apply(device, self._document(device, document), edits)

    def _document(self, device: int, number: int) -> str:
        """One of :attr:`documents`, or (one time in ten) the device's own
        document out of every credential's scope."""
        if number == 9:
            return f"private/{self.device_name(device)}"
        return self.documents[number % len(self.documents)]

    def apply(self, device: int, document: str, edits: list[Edit]) -> None:
        """Apply drawn edits (one delta each) on every fleet and tell them."""
        name = self.device_name(device)
        for edit in edits:
            results = [fleet.edit(name, document, functools.partial(_apply_edit, edit=edit)) for fleet in self.fleets]
            note(f"{name}: {results[0] or f'{edit!r:.200} does not apply'} in {document}")


class DifferentialMachine(ConvergenceMachine):
    """The same story on LMDB and in memory: after every step both fleets
    must agree on every version vector, document, watermark, status and frame."""

    backends = ("lmdb", "memory")


def _apply_edit(document: Document, edit: Edit) -> str | None:
    return strategies.apply_edit(document, edit)


def _first_difference(first: dict[str, Any], other: dict[str, Any], a: str, b: str) -> str:
    for key in sorted(set(first) | set(other)):
        if first.get(key) != other.get(key):
            return f"{a} and {b} differ at {key}:\n{a}: {first.get(key)!r:.1500}\n{b}: {other.get(key)!r:.1500}"
    return f"{a} and {b} differ"
