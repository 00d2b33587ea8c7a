"""Benchmarks of the foundation: durable and batched writes, reopen, a real editing trace.

Each compares replica with the best its building blocks can do in the same run:
raw LMDB for the fsync bound, bare pycrdt (making and capturing the same updates)
for the CRDT bound. Sizes shrink with ``quick`` so the CI guard stays fast.
"""

from __future__ import annotations

import gc
import gzip
import itertools
import json
import os
import tempfile
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lmdb
import msgpack
from pycrdt import Doc, Map, Text, TransactionEvent

from benchmarks._common import BenchmarkFailed, Result, Stopwatch, Target, alternate, rates, register
from replica import Replica

TRACE = "automerge-paper.json.gz"
#: Value size of the raw LMDB baseline: about one replica delta (a record put is ~80 B).
RAW_VALUE = b"x" * 80


@contextmanager
def _scratch() -> Iterator[Iterator[Path]]:
    """Fresh directory paths under one temp dir (same filesystem as /tmp)."""
    with tempfile.TemporaryDirectory(prefix="replica-bench-") as tmp:
        yield (Path(tmp) / f"d{i}" for i in itertools.count())


@contextmanager
def _opened(path: Path) -> Iterator[Replica]:
    """``Replica.open(path)``, closed on exit."""
    with Replica.open(path) as replica:
        yield replica


def _capturing_doc() -> tuple[Doc[Any], list[bytes]]:
    """A bare pycrdt doc whose observer keeps every update, as replica's does."""
    doc: Doc[Any] = Doc()
    updates: list[bytes] = []

    def keep(event: TransactionEvent) -> None:
        updates.append(event.update)

    doc.observe(keep)
    return doc, updates


@register("durable_puts")
def durable_puts(quick: bool) -> Result:
    """One record put per durable commit vs one raw LMDB put per fsynced write txn."""
    ops, repeats = (200, 5) if quick else (300, 7)
    result = Result("durable_puts", params={"ops_per_repeat": ops, "repeats": repeats, "tmp": tempfile.gettempdir()})
    with _scratch() as dirs:

        def baseline() -> float:
            env = lmdb.open(str(next(dirs)), map_size=1 << 30, sync=True, metasync=True)
            try:
                with Stopwatch() as sw:
                    for i in range(ops):
                        with env.begin(write=True) as txn:
                            txn.put(f"id{i}".encode(), RAW_VALUE)
            finally:
                env.close()
            return sw.seconds

        def subject() -> float:
            with _opened(next(dirs)) as replica:
                recs = replica.doc("bench").records("r")
                with Stopwatch() as sw:
                    for i in range(ops):
                        recs.put(f"id{i}", {"name": "abc", "n": i})
            return sw.seconds

        base, subj = alternate(repeats, baseline, subject)
    b = result.figure("raw lmdb puts/s (1 put per fsynced txn)", "ops/s", rates(ops, base))
    s = result.figure("replica durable puts/s", "ops/s", rates(ops, subj))
    result.targets.append(Target("replica / raw lmdb", result.ratio("replica / raw lmdb", s, b), 0.7))
    return result


@register("batch_puts")
def batch_puts(quick: bool) -> Result:
    """Record puts inside one ``replica.batch()`` vs a bare pycrdt loop making the same updates."""
    n, repeats = (5_000, 3) if quick else (50_000, 5)
    result = Result("batch_puts", params={"puts": n, "repeats": repeats})
    with _scratch() as dirs:

        def baseline() -> float:
            doc, updates = _capturing_doc()
            root = doc.get("records:r", type=Map)
            with Stopwatch() as sw:
                for i in range(n):
                    with doc.transaction():
                        root[f"id{i}"] = Map({"name": msgpack.packb("abc"), "n": msgpack.packb(i)})
            if len(updates) != n:
                raise BenchmarkFailed(f"bare pycrdt captured {len(updates)} updates, expected {n}")
            return sw.seconds

        def subject() -> float:
            with _opened(next(dirs)) as replica:
                recs = replica.doc("bench").records("r")
                with Stopwatch() as sw, replica.batch():
                    for i in range(n):
                        recs.put(f"id{i}", {"name": "abc", "n": i})
                if replica.version_vector("bench") != {replica.id: n}:
                    raise BenchmarkFailed(f"replica holds {replica.version_vector('bench')}, expected {n} deltas")
            return sw.seconds

        base, subj = alternate(repeats, baseline, subject)
    b = result.figure("bare pycrdt puts/s (capturing updates)", "ops/s", rates(n, base))
    s = result.figure("replica batch puts/s (incl. commit)", "ops/s", rates(n, subj))
    result.targets.append(Target("replica batch puts/s", s.median, 100_000, guard=False))
    result.targets.append(Target("replica / bare pycrdt", result.ratio("replica / bare pycrdt", s, b), 0.35))
    if b.median < 100_000:
        result.notes.append(f"bare pycrdt itself reaches only {b.median:,.0f} puts/s here, below the 100,000/s target")
    return result


@register("reopen")
def reopen(quick: bool) -> Result:
    """Reopen and replay a log of n deltas vs pycrdt applying the same bytes into a fresh doc."""
    n, repeats = (10_000, 3) if quick else (100_000, 7)
    result = Result("reopen", params={"deltas": n, "repeats": repeats})
    with _scratch() as dirs:
        path = next(dirs)
        with _opened(path) as replica:
            recs = replica.doc("bench").records("r")
            with replica.batch():
                for i in range(n):
                    recs.put(f"id{i}", {"name": "abc", "n": i})
            data = [d.data for d in replica.missing_deltas("bench", {})]
        result.params["update_bytes"] = sum(map(len, data))
        opens: list[float] = []

        def baseline() -> float:
            doc: Doc[Any] = Doc()
            with Stopwatch() as sw:
                with doc.transaction():
                    for update in data:
                        doc.apply_update(update)
                count = len(doc.get("records:r", type=Map))
            if count != n:
                raise BenchmarkFailed(f"bare pycrdt replay holds {count} records, expected {n}")
            return sw.seconds

        def subject() -> float:
            with Stopwatch() as sw, _opened(path) as replica:
                opens.append(sw.lap())
                count = len(replica.doc("bench").records("r"))
                seconds = sw.lap()  # the close is not part of a reopen
            if count != n:
                raise BenchmarkFailed(f"reopened replica holds {count} records, expected {n}")
            return seconds

        base, subj = alternate(repeats, baseline, subject)
        freed = _close_frees_documents(path)
    b = result.figure("bare pycrdt apply of the same updates", "s", base)
    s = result.figure("replica open + doc + len (replay)", "s", subj)
    result.figure("  of which Replica.open", "s", opens)
    ratio = result.ratio("replica time / pycrdt time", s, b)
    result.targets.append(Target("replica time / pycrdt time", ratio, 2.0, at_least=False))
    result.params["close_frees_documents"] = freed
    if not freed:
        result.notes.append(
            "Replica.close() leaves the loaded documents alive (a memory leak); the benchmarks free them themselves"
        )
    result.notes.append("page cache warm: the log was just written or read, as after a restart without reboot")
    return result


def _close_frees_documents(path: Path) -> bool:
    """Whether ``Replica.close()`` lets go of a loaded document."""
    replica = Replica.open(path)
    alive = weakref.ref(replica.doc("bench"))
    replica.close()
    del replica
    gc.collect()
    document = alive()
    if document is None:
        return True
    document._ydoc.unobserve(document._subscription)  # free it now, not to weigh on later benchmarks
    return False


def trace_dir() -> Path:
    """Where the editing traces are: ``$REPLICA_TRACES`` or the project's shared data."""
    override = os.environ.get("REPLICA_TRACES")
    return Path(override) if override else Path(__file__).resolve().parents[2] / "shared" / "data" / "traces"


def _plain_replay(txns: list[list[Any]]) -> str:
    chars: list[str] = []
    for patches in txns:
        for pos, deleted, inserted in patches:
            chars[pos : pos + deleted] = inserted
    return "".join(chars)


@register("trace_replay")
def trace_replay(quick: bool) -> Result:
    """The automerge-paper editing trace, one delta per transaction, in one batch."""
    result = Result("trace_replay")
    path = trace_dir() / TRACE
    if not path.is_file():
        result.status = "skipped"
        result.notes.append(f"trace not found at {path}; set REPLICA_TRACES to the directory holding {TRACE}")
        return result
    with gzip.open(path, "rt") as f:
        trace = json.load(f)
    txns: list[list[Any]] = [t["patches"] for t in trace["txns"]]
    if quick:
        txns = txns[:20_000]
        expected = _plain_replay(txns)
    else:
        expected = trace["endContent"]
    repeats = 3
    result.params.update(trace=str(path), txns=len(txns), final_length=len(expected), repeats=repeats)
    with _scratch() as dirs:

        def baseline() -> float:
            doc, updates = _capturing_doc()
            text = doc.get("text:body", type=Text)
            with Stopwatch() as sw:
                for patches in txns:
                    with doc.transaction():
                        for pos, deleted, inserted in patches:  # ascii-only: byte offsets == indices
                            if deleted:
                                del text[pos : pos + deleted]
                            if inserted:
                                text.insert(pos, inserted)
            if str(text) != expected:
                raise BenchmarkFailed("bare pycrdt replay does not end with the expected text")
            result.params["bare_pycrdt_updates"] = len(updates)
            return sw.seconds

        def subject() -> float:
            with _opened(next(dirs)) as replica:
                doc = replica.doc("paper")
                text = doc.text("body")
                with Stopwatch() as sw, replica.batch():
                    for patches in txns:
                        with doc.transaction():
                            for pos, deleted, inserted in patches:
                                if deleted:
                                    text.delete(pos, deleted)
                                if inserted:
                                    text.insert(pos, inserted)
                if str(text) != expected:
                    raise BenchmarkFailed("replica replay does not end with the expected text")
                result.params["replica_deltas"] = replica.version_vector("paper")[replica.id]
            return sw.seconds

        base, subj = alternate(repeats, baseline, subject)
    b = result.figure("bare pycrdt txns/s (capturing updates)", "txn/s", rates(len(txns), base))
    s = result.figure("replica deltas/s (one per txn, one batch)", "txn/s", rates(len(txns), subj))
    result.ratio("replica / bare pycrdt", s, b)
    return result
