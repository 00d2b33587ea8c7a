"""A document's rows in applied order as runs, in memory: what lets a relay
read a link's backlog run by run instead of row by row.

Theory of operation
-------------------
A relay's log of a document is, in ``pos`` order, mostly long *runs*: rows of
one origin with contiguous seqs at contiguous positions (each upload frame
of a device is stored in one piece). Every link of the relay lacks a
different part of it (its own deltas it holds), but the same runs. A
:class:`RunIndex` keeps, per run, its first position, origin number, first and
last seq, bytes, and whether the row is a stored span (a span's row is a run
of its own). :meth:`RunIndex.take` answers "the first of what a remote
holding ``have`` lacks, from position ``start``" as pieces of runs, in time
proportional to the runs passed, not the rows: no row is read or decoded,
and the caller makes each piece a span once for every link that needs it
(``replica.spans``, ``Engine.missing_spans``).

A bounded answer is cut at a multiple of ``align`` seqs inside a run (or at
the run's end), never at an arbitrary point, so the windows of every link
end at the same places and their spans are the same objects.

The log (``replica.log``) builds an index from the rows' heads the first
time a document is read this way, extends it with every row it appends, and
drops it when rows are deleted (a snapshot) or a write fails. An index of
more than :data:`MOST_RUNS` runs (a log of short interleaved runs, where the
row-by-row read is as good) is not kept.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from collections.abc import Mapping
from typing import NamedTuple

#: Runs one document's index may hold (about 40 bytes each).
MOST_RUNS = 8192


class Piece(NamedTuple):
    """Seqs ``first..last`` of ``origin`` (a number of the log), held in
    consecutive rows from ``pos``; ``span`` if that is one stored span's row."""

    origin: int
    first: int
    last: int
    pos: int
    span: bool
    size: int  # bytes of its rows (estimated for part of a run: the run's mean per row)


class RunIndex:
    """The runs of one document's rows, in ``pos`` order."""

    def __init__(self) -> None:
        self._pos = array("q")  # first position of each run
        self._origin = array("q")  # origin number; -1 - number for a stored span's row
        self._first = array("q")
        self._last = array("q")
        self._size = array("q")

    def __len__(self) -> int:
        return len(self._pos)

    def add(self, pos: int, origin: int, first: int, last: int, size: int, *, span: bool = False) -> bool:
        """Add the row at ``pos`` (after every row added so far): it extends the
        last run if it continues it. False if the index would pass
        :data:`MOST_RUNS` (it is then no longer usable)."""
        runs = self._pos
        if runs:
            end = len(runs) - 1
            if (
                not span
                and self._origin[end] == origin
                and first == self._last[end] + 1
                and pos == runs[end] + (self._last[end] - self._first[end]) + 1
            ):
                self._last[end] = last
                self._size[end] += size
                return True
            if pos <= runs[end]:
                raise ValueError(f"row {pos} added after row {runs[end]}")
        if len(runs) >= MOST_RUNS:
            return False
        runs.append(pos)
        self._origin.append(-1 - origin if span else origin)
        self._first.append(first)
        self._last.append(last)
        self._size.append(size)
        return True

    def take(
        self,
        start: int,
        have: Mapping[int, int],
        *,
        upto: Mapping[int, int] | None = None,
        most: int | None = None,
        most_bytes: int | None = None,
        align: int = 1,
    ) -> list[Piece]:
        """What a remote holding ``have`` (origin number -> seq; origins it
        holds whole are left out) lacks from row ``start`` on, as pieces in
        applied order. With ``upto`` (origin number -> seq), it ends before
        the first row of a seq above ``upto``'s. With ``most`` (rows) or
        ``most_bytes``, a prefix: it stops once either is reached, at the next
        multiple of ``align`` seqs (or the end of the run) after that point,
        unless the rows to there hold more than ``most_bytes`` more."""
        out: list[Piece] = []
        rows = size = 0
        index = max(0, bisect_right(self._pos, start) - 1)
        positions, origins, firsts, lasts, sizes = self._pos, self._origin, self._first, self._last, self._size
        for i in range(index, len(positions)):
            number = origins[i]
            span = number < 0
            origin = -1 - number if span else number
            seen = have.get(origin)
            last = lasts[i]
            if seen is None or last <= seen:
                continue
            first = firsts[i]
            cap = None if upto is None else upto.get(origin, 0)
            if cap is not None and max(first, seen + 1) > cap:
                break  # committed after upto, as is everything after it
            if span:
                if cap is not None and last > cap:
                    break
                out.append(Piece(origin, first, last, positions[i], True, sizes[i]))
                rows += 1
                size += sizes[i]
            else:
                begin = max(first, seen + 1)
                per_row = sizes[i] / (last - first + 1)
                end = last
                room = None if most is None else most - rows
                if most_bytes is not None:
                    by_bytes = max(1, -(-int(most_bytes - size) // max(1, int(per_row))))
                    room = by_bytes if room is None else min(room, by_bytes)
                if room is not None and begin + room - 1 < last:
                    end = begin + room - 1
                    cut = min(last, -(-end // align) * align)  # up to a multiple of align
                    if most_bytes is None or per_row * (cut - end) <= most_bytes:  # unless rows are large
                        end = cut
                capped = False
                if cap is not None and end > cap:
                    end, capped = cap, True
                piece_size = round(per_row * (end - begin + 1))
                out.append(Piece(origin, begin, end, positions[i] + (begin - first), False, piece_size))
                rows += end - begin + 1
                size += piece_size
                if capped:
                    break
            if (most is not None and rows >= most) or (most_bytes is not None and size >= most_bytes):
                break
        return out
