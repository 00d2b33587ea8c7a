"""In-process convergence: replicas exchanging deltas in arbitrary interleavings."""

from __future__ import annotations

from hypothesis import note
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from replica import Replica
from replica.testing.clientids import ClientIds

DOCUMENT = "campaign-7/households"
IDS = st.sampled_from(["h1", "h2", "h3", "h4"])
FIELDS = st.sampled_from(["name", "members", "geo", "notes"])
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.binary(max_size=8),
    st.lists(st.integers(), max_size=3),
)


def sync(source: Replica, target: Replica) -> None:
    result = target.ingest(source.missing_deltas(DOCUMENT, target.version_vector(DOCUMENT)))
    assert result.rejected is None, result.rejected


class Fleet(RuleBasedStateMachine):
    """Three replicas edit one document; deltas travel in drawn orders."""

    @initialize(count=st.integers(min_value=2, max_value=3))
    def start(self, count: int) -> None:
        # Yjs orders concurrent edits by client id; fixed ids make a run replay exactly.
        client_ids = ClientIds()
        self.replicas = [Replica.in_memory(replica_id=f"dev-{i}", client_ids=client_ids) for i in range(count)]

    def teardown(self) -> None:
        if not hasattr(self, "replicas"):
            return
        self._converge()

    def _converge(self) -> None:
        for _ in range(2):
            for source in self.replicas:
                for target in self.replicas:
                    if source is not target:
                        sync(source, target)
        contents = [r.doc(DOCUMENT).contents() for r in self.replicas]
        vvs = [r.version_vector(DOCUMENT) for r in self.replicas]
        for r in self.replicas:
            r.close()
        assert all(c == contents[0] for c in contents), contents
        assert all(v == vvs[0] for v in vvs), vvs

    def pick(self, data: st.DataObject) -> Replica:
        return data.draw(st.sampled_from(self.replicas), label="replica")

    @rule(data=st.data(), record=IDS, fields=st.dictionaries(FIELDS, VALUES, max_size=3))
    def put(self, data: st.DataObject, record: str, fields: dict[str, object]) -> None:
        replica = self.pick(data)
        note(f"{replica.id} put {record} {fields}")
        replica.doc(DOCUMENT).records("r").put(record, fields)

    @rule(data=st.data(), record=IDS, fields=st.dictionaries(FIELDS, VALUES, min_size=1, max_size=2))
    def update(self, data: st.DataObject, record: str, fields: dict[str, object]) -> None:
        replica = self.pick(data)
        rows = replica.doc(DOCUMENT).records("r")
        if record in rows:
            note(f"{replica.id} update {record} {fields}")
            rows.update(record, fields)

    @rule(data=st.data(), record=IDS)
    def delete(self, data: st.DataObject, record: str) -> None:
        replica = self.pick(data)
        rows = replica.doc(DOCUMENT).records("r")
        if record in rows:
            note(f"{replica.id} delete {record}")
            rows.delete(record)

    @rule(data=st.data(), text=st.text(alphabet="ab🌍é", min_size=1, max_size=4))
    def type_text(self, data: st.DataObject, text: str) -> None:
        replica = self.pick(data)
        body = replica.doc(DOCUMENT).text("notes")
        # Draws must not depend on the text: concurrent edits order by Yjs client
        # ids, which are random, so lengths may differ between two runs.
        at = data.draw(st.integers(0, 10**6), label="at") % (len(body) + 1)
        note(f"{replica.id} insert {text!r} at {at}")
        body.insert(at, text)

    @rule(data=st.data())
    def erase_text(self, data: st.DataObject) -> None:
        replica = self.pick(data)
        body = replica.doc(DOCUMENT).text("notes")
        at = data.draw(st.integers(0, 10**6), label="at")
        length = data.draw(st.integers(1, 10**6), label="length")
        if len(body):
            at %= len(body)
            length = 1 + (length - 1) % (len(body) - at)
            note(f"{replica.id} delete {length} at {at}")
            body.delete(at, length)

    @rule(data=st.data())
    def deliver(self, data: st.DataObject) -> None:
        """Deliver some of what the target lacks, interleaving origins in a
        drawn order but keeping each origin's seqs in order."""
        source = self.pick(data)
        target = self.pick(data)
        if source is target:
            return
        queues: dict[str, list] = {}
        for item in source.missing_deltas(DOCUMENT, target.version_vector(DOCUMENT)):
            queues.setdefault(item.origin, []).append(item)
        order = []
        while any(queues.values()):
            ready = sorted(o for o, q in queues.items() if q)
            origin = ready[data.draw(st.integers(0, 10**6), label="origin") % len(ready)]
            if data.draw(st.integers(0, 9), label="stop") == 0:
                break
            order.append(queues[origin].pop(0))
        note(f"deliver {source.id} -> {target.id}: {[(d.origin, d.seq) for d in order]}")
        result = target.ingest(order)
        assert result.rejected is None and result.applied == len(order)

    @invariant()
    def version_vectors_are_contiguous(self) -> None:
        for replica in getattr(self, "replicas", []):
            held = replica.missing_deltas(DOCUMENT, {})
            per_origin: dict[str, list[int]] = {}
            for item in held:
                per_origin.setdefault(item.origin, []).append(item.seq)
            assert {o: len(s) for o, s in per_origin.items()} == replica.version_vector(DOCUMENT)
            assert all(s == list(range(1, len(s) + 1)) for s in per_origin.values())


TestFleetConverges = Fleet.TestCase


def test_concurrent_updates_of_different_fields_both_survive() -> None:
    a = Replica.in_memory(replica_id="dev-a")
    b = Replica.in_memory(replica_id="dev-b")
    a.doc(DOCUMENT).records("r").put("h1", {"name": "Ada", "members": 3})
    sync(a, b)
    a.doc(DOCUMENT).records("r").update("h1", {"members": 4})
    b.doc(DOCUMENT).records("r").update("h1", {"name": "Ada Lovelace"})
    sync(a, b)
    sync(b, a)
    expected = {"name": "Ada Lovelace", "members": 4}
    assert a.doc(DOCUMENT).records("r").get("h1") == expected
    assert b.doc(DOCUMENT).records("r").get("h1") == expected


def test_concurrent_updates_of_one_field_agree() -> None:
    a = Replica.in_memory(replica_id="dev-a")
    b = Replica.in_memory(replica_id="dev-b")
    a.doc(DOCUMENT).records("r").put("h1", {"members": 3})
    sync(a, b)
    a.doc(DOCUMENT).records("r").update("h1", {"members": 4})
    b.doc(DOCUMENT).records("r").update("h1", {"members": 5})
    sync(a, b)
    sync(b, a)
    got = a.doc(DOCUMENT).records("r").get("h1")
    assert got == b.doc(DOCUMENT).records("r").get("h1")
    assert got in ({"members": 4}, {"members": 5})


def test_duplicates_are_idempotent() -> None:
    a = Replica.in_memory(replica_id="dev-a")
    b = Replica.in_memory(replica_id="dev-b")
    for i in range(5):
        a.doc(DOCUMENT).records("r").put(str(i), {"i": i})
    everything = a.missing_deltas(DOCUMENT, {})
    assert b.ingest(everything[:3]).applied == 3
    result = b.ingest(everything)
    assert (result.applied, result.duplicates, result.rejected) == (2, 3, None)
    assert b.doc(DOCUMENT).contents() == a.doc(DOCUMENT).contents()


def test_transitive_carry_keeps_origin_and_seq() -> None:
    a, b, c = (Replica.in_memory(replica_id=f"dev-{n}") for n in "abc")
    a.doc(DOCUMENT).records("r").put("x", {"from": "a"})
    sync(a, b)
    b.doc(DOCUMENT).records("r").put("y", {"from": "b"})
    sync(b, c)
    assert c.version_vector(DOCUMENT) == {"dev-a": 1, "dev-b": 1}
    assert c.doc(DOCUMENT).contents() == b.doc(DOCUMENT).contents()
