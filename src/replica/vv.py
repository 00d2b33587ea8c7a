"""Version-vector arithmetic: the one place it is written.

A version vector is ``{origin replica id: highest seq held}``. Every vector in
replica is contiguous (seqs 1..n of each origin are held, see
``docs/concepts.md``), so "how many deltas does A hold that B lacks" is a
subtraction per origin, and "B holds all that A holds" a comparison per origin.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from replica.delta import Delta

VersionVector = dict[str, int]


def covers(big: Mapping[str, int], small: Mapping[str, int]) -> bool:
    """True if ``big`` holds every delta ``small`` does."""
    return all(big.get(origin, 0) >= seq for origin, seq in small.items())


def merge(into: VersionVector, other: Mapping[str, int]) -> None:
    """Raise ``into`` to cover ``other`` (never lowers an origin)."""
    for origin, seq in other.items():
        if seq > into.get(origin, 0):
            into[origin] = seq


def count_missing(have: Mapping[str, int], want: Mapping[str, int]) -> int:
    """Deltas in ``want`` that ``have`` lacks (both contiguous)."""
    return sum(max(0, seq - have.get(origin, 0)) for origin, seq in want.items())


def of_deltas(deltas: Iterable[Delta]) -> VersionVector:
    """The highest seq of each origin in ``deltas`` (of one document)."""
    vv: VersionVector = {}
    for item in deltas:
        if item.seq > vv.get(item.origin, 0):
            vv[item.origin] = item.seq
    return vv


def by_document(deltas: Iterable[Delta]) -> dict[str, VersionVector]:
    """The highest seq of each origin in ``deltas``, per document."""
    out: dict[str, VersionVector] = {}
    for item in deltas:
        vv = out.setdefault(item.document, {})
        if item.seq > vv.get(item.origin, 0):
            vv[item.origin] = item.seq
    return out
