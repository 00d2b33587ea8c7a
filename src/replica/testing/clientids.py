"""Deterministic Yjs client ids for simulated fleets.

Yjs breaks ties between concurrent edits by client id, and pycrdt draws a
random one for every ``Doc``. In production that randomness is required (two
replicas sharing a client id never converge, PYCRDT-FACTS.md); in a
hypothesis run it makes the same rule sequence end in different states, so a
failure would not replay and could not shrink.

A :class:`ClientIds` allocator is the engine's ``client_ids`` hook
(``Engine(..., client_ids=...)``, passed on to every ``Document``): a fleet
gives one allocator to all its replicas, so ids are unique within the fleet
(never reused, as the rules require) and the same on every replay.
"""

from __future__ import annotations


class ClientIds:
    """Hands out Yjs client ids ``start``, ``start + 1``... in call order."""

    def __init__(self, start: int = 1_000_001) -> None:
        self.next = start

    def __call__(self) -> int:
        value = self.next
        self.next += 1
        return value
