"""Compaction beside serving and syncing: in short steps on the event loop.

A compaction is one write transaction per call (``Engine.compact``); on a
document with a long tail that is seconds in one piece, during which a relay
answers no one and a device's screen freezes. :func:`compact_due_in_steps`
compacts each due document :data:`COMPACT_STEP` deltas at a time and yields
to the event loop between steps, so links keep moving. What each step may
replace is decided as in ``Engine.compact`` (a device: only what the relay
durably acknowledged).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from replica.engine import Engine

#: Deltas compacted per transaction (about a tenth of a second).
COMPACT_STEP = 20_000
#: Seconds between two looks for documents due, while serving or syncing live.
COMPACT_INTERVAL = 30.0


async def compact_due_in_steps(
    engine: Engine,
    every: int,
    documents: Iterable[str] | None = None,
    *,
    bound: str | None,
    keep: int = 0,
    step: int | None = None,
) -> int:
    """Compact the documents (all by default) with more than ``every``
    deltas after their snapshot, ``step`` deltas per transaction (default
    :data:`COMPACT_STEP`), yielding between steps; how many deltas were replaced. A storage fault is raised
    (:class:`~replica.errors.StorageError`); what was compacted before it stays."""
    names = engine.documents() if documents is None else list(documents)
    most = COMPACT_STEP if step is None else step
    replaced = 0
    for name in names:
        if engine.closed or engine.tail_length(name) <= every:
            continue
        while not engine.closed and (found := engine.compact([name], bound=bound, keep=keep, most=most)):
            replaced += found
            await asyncio.sleep(0)
    return replaced
