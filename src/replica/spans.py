"""Spans: a run of one origin's deltas sent and held as one merged delta.

Theory of operation
-------------------
A device that has been offline, or joins while others upload, is sent
thousands of deltas, and storing and applying each costs it far more than the
sender spends: 20 devices uploading 1,000 offline changes each make every
device take 19,000. A relay therefore sends each run of adjacent deltas of one
origin with contiguous seqs in a batch as one *span* (``Delta.first`` set):
their Yjs updates merged with ``pycrdt.merge_updates``, which keeps every
struct whatever the receiver holds (the run's own dependencies come before it
in the stream, as they would delta by delta). The receiver checks, applies and
stores it as one item (``replica.log``); it stands for seqs ``first..seq`` of
its origin in version vectors, ``unsynced`` and the rest.

Only a relay makes spans: what it sends is on the relay by definition, so the
receiver never needs to account for one of its deltas apart from the others.
Devices and peers send their own deltas one by one, so that a refusal names the
exact delta refused; they pass on spans they hold as spans.

``merge_updates`` is quadratic (PYCRDT-FACTS.md), so runs are merged at most
:data:`SPAN_MAX` deltas at a time, and only from :data:`SPAN_MIN` up, where the
receiver's saving exceeds the sender's cost; and at most
:data:`SPAN_MAX_BYTES` of them, since the receiver takes a span as one delta
(and refuses one above its ``max_delta_bytes`` for good). A relay fanning one
commit out to many devices merges each run once: :class:`SpanCache` keeps recent spans by
``(document, origin, first, seq)``, which names their content exactly since
deltas never change.

A relay's links each lack a different part of the same runs, and read their
backlogs a window at a time. So that they still share spans, a run is cut
after every multiple of :data:`SPAN_MAX` seqs (:func:`aligned`), whatever part
of it a link lacks, and windows end at such a cut too (unless its rows are
large: a window stays within about twice its byte bound): a relay reads what a
link lacks run by run (``Engine.missing_spans`` over ``replica.runindex``),
and finds most pieces merged already.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

from replica import delta as deltas
from replica.delta import Delta
from replica.doc import merged_run

#: Shortest run of deltas a relay sends as a span.
SPAN_MIN = 16
#: Longest run merged into one span.
SPAN_MAX = 512
#: Most bytes of deltas merged into one span. A span is one delta to its
#: receiver, which refuses a delta above its ``max_delta_bytes`` (8 MiB by
#: default) for good, and goes whole in one frame: runs of large deltas are
#: cut sooner, and a delta this large goes as it is.
SPAN_MAX_BYTES = 1024 * 1024


def merge_run(run: Sequence[Delta]) -> Delta:
    """One span holding ``run`` (adjacent deltas of one origin, contiguous
    seqs; spans among them too; :func:`group` cuts runs to size). Raises
    :class:`ValueError` if pycrdt cannot merge them."""
    data = merged_run([item.data for item in run])
    last = run[-1]
    return deltas.make(last.document, last.origin, last.seq, data, run[0].start)


def group(
    items: Sequence[Delta], merge: Callable[[Sequence[Delta]], Delta], *, shortest: int, longest: int = SPAN_MAX
) -> list[Delta]:
    """``items`` with every run of at least ``shortest`` adjacent deltas of
    one origin with contiguous seqs replaced by ``merge(run)``, in order (a
    run that ``merge`` refuses with ValueError stays as it is). A run is cut
    after ``longest`` deltas, or before the delta that would take its bytes
    past :data:`SPAN_MAX_BYTES`."""
    out: list[Delta] = []
    run: list[Delta] = []
    size = 0

    def flush() -> None:
        try:
            if len(run) >= shortest:
                out.append(merge(run))
                run.clear()
                return
        except ValueError:
            pass
        out.extend(run)
        run.clear()

    for item in items:
        if run and (
            item.origin != run[-1].origin
            or item.start != run[-1].seq + 1
            or len(run) >= longest
            or size + len(item.data) > SPAN_MAX_BYTES
        ):
            flush()
            size = 0
        run.append(item)
        size += len(item.data)
    flush()
    return out


class SpanCache:
    """Recently made spans, least recently used out first, within ``budget_bytes``."""

    def __init__(self, budget_bytes: int = 16 * 1024 * 1024) -> None:
        self.budget_bytes = budget_bytes
        self._spans: OrderedDict[tuple[str, str, int, int], Delta] = OrderedDict()
        self._bytes = 0

    def span(self, run: Sequence[Delta]) -> Delta:
        """The span of ``run``, merged once (see :func:`merge_run`); if pycrdt
        cannot merge it (it never fails on deltas it applied), ValueError."""
        key = (run[0].document, run[0].origin, run[0].start, run[-1].seq)
        found = self.get(*key)
        if found is not None:
            return found
        made = merge_run(run)
        self._spans[key] = made
        self._bytes += len(made.data)
        while self._bytes > self.budget_bytes and len(self._spans) > 1:
            _, dropped = self._spans.popitem(last=False)
            self._bytes -= len(dropped.data)
        return made

    def get(self, document: str, origin: str, first: int, last: int) -> Delta | None:
        """The span of seqs ``first..last`` of ``origin`` if it was made and is still kept."""
        key = (document, origin, first, last)
        found = self._spans.get(key)
        if found is not None:
            self._spans.move_to_end(key)
        return found


def aligned(first: int, last: int, longest: int = SPAN_MAX) -> list[tuple[int, int]]:
    """Seqs ``first..last`` cut after each multiple of ``longest``: the
    pieces every link of a relay makes of the same run alike, whatever part
    of it each lacks, so that each piece is merged once (:class:`SpanCache`)."""
    out = []
    while first <= last:
        end = min(last, (first + longest - 1) // longest * longest)
        out.append((first, end))
        first = end + 1
    return out
