"""A value pushed to every viewer as it changes, the latest only.

:class:`Feed` computes a value (a screen, the demo's view) when told that
something changed, and hands it to each viewer reading :meth:`Feed.values`.
A viewer that reads slower than the value changes skips to the latest one,
so a slow page never makes the server hold a backlog; a value equal to the
last one published is not sent again.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Feed(Generic[T]):
    """The latest value of ``current()``, for every viewer."""

    def __init__(self, current: Callable[[], T]) -> None:
        self.current = current
        self.closed = False
        #: Each viewer's latest value (a one-item list) and its wake-up.
        self._viewers: list[tuple[list[T], asyncio.Event]] = []
        self._shown: T | None = None

    def publish(self) -> None:
        """Something changed: compute the value and hand it on, if it is new."""
        if self.closed or not self._viewers:
            return
        value = self.current()
        if value == self._shown:
            return
        self._shown = value
        for latest, changed in self._viewers:
            latest[0] = value
            changed.set()

    async def values(self, stop: asyncio.Event) -> AsyncIterator[T]:
        """The current value, then each new one, until ``stop`` is set or the feed closes."""
        viewer = ([self.current()], asyncio.Event())
        latest, changed = viewer
        changed.set()
        self._viewers.append(viewer)
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not self.closed:
                waiting = asyncio.ensure_future(changed.wait())
                await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
                waiting.cancel()
                if stop.is_set() or self.closed:
                    return
                changed.clear()
                yield latest[0]
        finally:
            stopping.cancel()
            self._viewers.remove(viewer)

    def close(self) -> None:
        """End every viewer's stream."""
        self.closed = True
        for _, changed in self._viewers:
            changed.set()
