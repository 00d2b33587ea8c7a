"""Compaction: a document's old deltas replaced by one snapshot of its state.

Theory of operation
-------------------
A document's *snapshot* (its base in the log, see ``replica.log``) is one Yjs
update holding at least every delta of it up to a version vector. Two things
make one:

- :func:`compact_document` replaces the longest prefix of a document's deltas
  in applied (``pos``) order that a bound allows. A prefix in that order is
  causally complete and, per origin, a prefix of its seqs, so it is exactly a
  version vector. The new state is the old snapshot and the prefix replayed
  into a fresh ``Doc`` in one transaction, then ``get_update()``
  (``merge_updates`` is quadratic, and a document built frame by frame
  encodes larger and applies slower: PYCRDT-FACTS.md).
- a snapshot received from another replica (``Engine.ingest_snapshot``),
  checked first by :func:`refusal`.

The caller commits the new snapshot and the deletion of what it covers in
one write transaction, so a crash leaves the old log or the new one.
"""

from __future__ import annotations

from replica import errors
from replica.delta import Delta, Snapshot, snapshot_checksum
from replica.doc import merged_state
from replica.log import DeltaLog
from replica.names import check_document_name, check_replica_id
from replica.store import Txn
from replica.vv import count_missing, merge, of_deltas


def compact_document(
    log: DeltaLog, txn: Txn, name: str, *, bound: str | None, keep: int, most: int | None = None
) -> int:
    """Compact ``name`` inside ``txn``: the prefix its ``bound``'s watermark
    covers (``None``: no bound), leaving at least the ``keep`` newest deltas
    one by one, and taking at most ``most`` deltas (a step that keeps the
    transaction short; call again for the rest). Returns how many deltas the
    snapshot replaced (a span counts as the deltas it holds)."""
    found = log.base(txn, name)
    base_vv, base_data = found if found is not None else ({}, None)
    limit = None if bound is None else log.watermark(txn, bound, name)
    allowed = count_missing(base_vv, log.version_vector(txn, name)) - keep
    if most is not None:
        allowed = min(allowed, most)
    taken: list[Delta] = []
    for item in log.tail(txn, name):
        if item.length > allowed or (limit is not None and item.seq > limit.get(item.origin, 0)):
            break
        taken.append(item)
        allowed -= item.length  # a span counts as the deltas it holds
    if not taken:
        return 0
    claim = dict(base_vv)
    merge(claim, of_deltas(taken))
    payloads = ([] if base_data is None else [base_data]) + [item.data for item in taken]
    try:
        state = merged_state(payloads)
    except ValueError as exc:
        raise errors.DataDirError(f"the log of document {name!r} does not replay ({exc})") from exc
    log.set_base(txn, name, claim, state)
    return sum(item.length for item in taken)


def refusal(snapshot: Snapshot, *, max_bytes: int) -> tuple[str, str] | None:
    """``(reason, message)`` if a snapshot from elsewhere must never reach
    pycrdt: names, seqs, size and checksum; None if it may be tried."""
    try:
        check_document_name(snapshot.document)
        for origin, seq in snapshot.vv.items():
            check_replica_id(origin)
            if type(seq) is not int or not 0 <= seq < 2**63:
                raise ValueError(f"seq {seq!r} of {origin!r} out of range")
    except ValueError as exc:
        return errors.REJECT_INVALID, str(exc)
    if len(snapshot.data) > max_bytes:
        return errors.REJECT_TOO_LARGE, f"{len(snapshot.data)} bytes, at most {max_bytes}"
    if snapshot_checksum(snapshot.document, snapshot.vv, snapshot.data) != snapshot.checksum:
        return errors.REJECT_CHECKSUM, "its document, version vector or bytes do not match its checksum (damaged?)"
    return None
