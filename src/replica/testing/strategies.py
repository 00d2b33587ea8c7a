"""Hypothesis strategies for replica: record values, edits, network steps.

Everything here draws *descriptions* (frozen dataclasses with a readable
``repr``) rather than acting, so that a failing example prints as a story and
shrinks: an edit's position is drawn as a number and bound to the text's
length only when applied, so the same draw means something on every replica
and in every replay.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from hypothesis import strategies as st

from replica.doc import Document
from replica.values import Value

#: Integers at the edges of every representation a value crosses: msgpack's
#: fixints and 64-bit range, JavaScript's 2**53, pycrdt's broken ints.
EDGE_INTEGERS = (
    0,
    -1,
    127,
    128,
    -33,
    2**31 - 1,
    -(2**31),
    2**53 + 1,
    -(2**53) - 1,
    2**63 - 1,
    -(2**63),
    2**64 - 1,
    2**64,
    -(2**63) - 1,
    10**40,
    -(10**40),
)


def integers() -> st.SearchStrategy[int]:
    """Integers of every size the record layer keeps exactly (any size)."""
    return st.one_of(
        st.integers(-1000, 1000),
        st.sampled_from(EDGE_INTEGERS),
        st.integers(-(2**70), 2**70),
        st.integers(-(2**300), 2**300),
    )


def scalar_values() -> st.SearchStrategy[Value]:
    """``None``, bools, ints of any size, floats (NaN, infinities and -0.0
    included), text and bytes."""
    return st.one_of(
        st.none(),
        st.booleans(),
        integers(),
        st.floats(),
        st.text(max_size=12),
        st.binary(max_size=16),
    )


def record_values(*, max_leaves: int = 6) -> st.SearchStrategy[Value]:
    """Every value a record field may hold: scalars and nested lists and
    dicts (string keys) of them."""
    return st.recursive(
        scalar_values(),
        lambda children: st.one_of(
            st.lists(children, max_size=3),
            st.dictionaries(st.text(max_size=4), children, max_size=3),
        ),
        max_leaves=max_leaves,
    )


RECORD_IDS = ("h1", "h2", "h3", "h4")
FIELD_NAMES = ("name", "members", "geo", "visits")


def record_ids(ids: tuple[str, ...] = RECORD_IDS) -> st.SearchStrategy[str]:
    """A few record ids, so that edits collide often."""
    return st.sampled_from(ids)


def record_fields(
    *, names: tuple[str, ...] = FIELD_NAMES, values: st.SearchStrategy[Value] | None = None, min_size: int = 0
) -> st.SearchStrategy[dict[str, Value]]:
    """``{field: value}`` dicts over a few field names."""
    return st.dictionaries(st.sampled_from(names), values or record_values(), min_size=min_size, max_size=3)


def text_content() -> st.SearchStrategy[str]:
    """Short strings mixing ASCII, accents, emoji and newlines (pycrdt
    counts UTF-8 bytes, replica counts code points)."""
    return st.text(alphabet=st.sampled_from("ab \néß🌍𝄞"), min_size=1, max_size=5) | st.text(min_size=1, max_size=3)


# -- edits -------------------------------------------------------------------


@dataclass(frozen=True)
class Put:
    """``records(collection).put(record, fields)``."""

    collection: str
    record: str
    fields: dict[str, Value]


@dataclass(frozen=True)
class Update:
    """``records(collection).update(record, fields, unset=unset)`` if it exists."""

    collection: str
    record: str
    fields: dict[str, Value]
    unset: tuple[str, ...] = ()


@dataclass(frozen=True)
class Delete:
    """``records(collection).delete(record)`` if it exists."""

    collection: str
    record: str


@dataclass(frozen=True)
class Insert:
    """Insert ``content`` into text ``text`` at ``at`` modulo (length + 1)."""

    text: str
    at: int
    content: str


@dataclass(frozen=True)
class Erase:
    """Delete up to ``length`` characters of text ``text`` from ``at`` modulo its length."""

    text: str
    at: int
    length: int


Edit = Put | Update | Delete | Insert | Erase


def record_edits(
    collections: tuple[str, ...] = ("households",), ids: tuple[str, ...] = RECORD_IDS
) -> st.SearchStrategy[Edit]:
    """Puts, updates (with unsets) and deletes of a few records."""
    collection = st.sampled_from(collections)
    record = record_ids(ids)
    return st.one_of(
        st.builds(Put, collection, record, record_fields()),
        st.builds(
            Update,
            collection,
            record,
            record_fields(min_size=1),
            st.lists(st.sampled_from(FIELD_NAMES), max_size=1, unique=True).map(tuple),
        ),
        st.builds(Delete, collection, record),
    )


def text_edits(texts: tuple[str, ...] = ("notes",)) -> st.SearchStrategy[Edit]:
    """Inserts and deletions in a few texts."""
    name = st.sampled_from(texts)
    at = st.integers(0, 2**16)
    return st.one_of(
        st.builds(Insert, name, at, text_content()),
        st.builds(Erase, name, at, st.integers(1, 8)),
    )


def edits() -> st.SearchStrategy[Edit]:
    """Any record or text edit."""
    return st.one_of(record_edits(), text_edits())


def _existing(ids: list[str], wanted: str) -> str | None:
    """``wanted`` if it exists, else one of ``ids`` chosen from its name (so
    that updates and deletes rarely fall on nothing), else None."""
    if wanted in ids or not ids:
        return wanted if ids else None
    return ids[sum(map(ord, wanted)) % len(ids)]


def apply_edit(document: Document, edit: Edit) -> str | None:
    """Apply ``edit`` to ``document``; return what was done, or None if it
    does not apply here (updating or deleting in an empty collection, erasing
    from an empty text). An update or delete of a record this replica lacks
    falls on one of those it has."""
    if isinstance(edit, Put):
        document.records(edit.collection).put(edit.record, edit.fields)
        return f"put {edit.collection}/{edit.record} {edit.fields!r:.200}"
    if isinstance(edit, Update):
        rows = document.records(edit.collection)
        record = _existing(rows.ids(), edit.record)
        if record is None:
            return None
        rows.update(record, edit.fields, unset=edit.unset)
        unset = f" unset {list(edit.unset)}" if edit.unset else ""
        return f"update {edit.collection}/{record} {edit.fields!r:.200}{unset}"
    if isinstance(edit, Delete):
        rows = document.records(edit.collection)
        record = _existing(rows.ids(), edit.record)
        if record is None:
            return None
        rows.delete(record)
        return f"delete {edit.collection}/{record}"
    text = document.text(edit.text)
    length = len(text)
    if isinstance(edit, Insert):
        at = edit.at % (length + 1)
        text.insert(at, edit.content)
        return f"insert {edit.content!r} into {edit.text} at {at}"
    if not length:
        return None
    at = edit.at % length
    count = min(edit.length, length - at)
    text.delete(at, count)
    return f"erase {count} of {edit.text} at {at}"


# -- the network -------------------------------------------------------------


class Action(enum.Enum):
    """What happens to the next frame of one direction of one link."""

    DELIVER = "deliver"
    DROP = "drop"
    DUPLICATE = "duplicate"
    DELAY = "delay"  # moved behind the frame after it
    BREAK = "break"  # the connection breaks: frames in flight are lost, both ends see it


@dataclass(frozen=True)
class NetworkStep:
    """One network event: ``action`` on the next frame travelling ``up``
    (initiator to acceptor) or down link number ``link`` (taken modulo the
    number of open links); a delivery moves ``count`` frames."""

    link: int
    up: bool
    action: Action = Action.DELIVER
    count: int = 1


def actions(*, faults: bool = True) -> st.SearchStrategy[Action]:
    """Mostly deliveries; with ``faults``, sometimes a drop, a duplicate or a
    delay. Shrinks towards delivery."""
    if not faults:
        return st.just(Action.DELIVER)
    weighted = [Action.DELIVER] * 6 + [Action.DROP, Action.DUPLICATE, Action.DELAY, Action.BREAK]
    return st.integers(0, len(weighted) - 1).map(weighted.__getitem__)


def network_steps(*, max_links: int = 8, faults: bool = True) -> st.SearchStrategy[NetworkStep]:
    """One step of a network schedule."""
    return st.builds(
        NetworkStep,
        st.integers(0, max_links - 1),
        st.booleans(),
        actions(faults=faults),
        st.integers(1, 4),
    )


def fault_steps(*, max_links: int = 8) -> st.SearchStrategy[NetworkStep]:
    """A drop, a duplicate or a delay of the next frame of a drawn link, or
    the link breaking."""
    return st.builds(
        NetworkStep,
        st.integers(0, max_links - 1),
        st.booleans(),
        st.sampled_from([Action.DROP, Action.DUPLICATE, Action.DELAY, Action.BREAK]),
    )


@dataclass(frozen=True)
class RunPlan:
    """A whole conversation on one link, frame after frame in order (up
    first), with ``faults`` on drawn batches of deltas (0 is the first batch
    of the run, in either direction) and perhaps the receiver of batch
    ``crash_at`` crashing (``before_commit``: right after reading it;
    otherwise after storing it), and perhaps the sender of batch
    ``commit_fault_at`` failing its next commit of what it receives (the
    acknowledgement of that batch, most often). Faults on other frames are
    :func:`fault_steps`' business."""

    faults: tuple[tuple[int, Action], ...] = ()
    crash_at: int | None = None
    before_commit: bool = True
    commit_fault_at: int | None = None


def run_plans(
    *, faults: bool = True, crashes: bool = True, storage_faults: bool = True, horizon: int = 8
) -> st.SearchStrategy[RunPlan]:
    """Conversations to run to their end; shrinks to a clean run."""
    frame = st.integers(0, 1) | st.integers(0, horizon)
    # Losses and reorderings twice as often as duplicates and breaks: they make gaps.
    fault = st.sampled_from([Action.DROP, Action.DELAY, Action.DROP, Action.DELAY, Action.DUPLICATE, Action.BREAK])
    planned = st.dictionaries(frame, fault, max_size=3) if faults else st.just({})
    crash = st.none() | frame if crashes else st.none()
    commit_fault = st.none() | frame if storage_faults else st.none()
    return st.builds(
        RunPlan,
        planned.map(lambda found: tuple(sorted(found.items(), key=lambda item: item[0]))),
        crash,
        st.booleans(),
        commit_fault,
    )


def schedules(*, max_steps: int = 50, max_links: int = 8, faults: bool = True) -> st.SearchStrategy[list[NetworkStep]]:
    """A whole network schedule, for tests that are not state machines."""
    return st.lists(network_steps(max_links=max_links, faults=faults), max_size=max_steps)
