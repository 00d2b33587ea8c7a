"""Deterministic Yjs client ids for simulated fleets.

Yjs breaks ties between concurrent edits by client id, and pycrdt draws a
random one for every ``Doc``. In production that randomness is required (two
replicas sharing a client id never converge, PYCRDT-FACTS.md); in a
hypothesis run it makes the same rule sequence end in different states, so a
failure would not replay and could not shrink.

While a :class:`ClientIds` allocator is active, every ``Doc`` that
``replica.doc`` creates gets the next id of that allocator: unique within the
fleet (never reused, as the rules require) and the same on every replay. With
no allocator active the factory is transparent (pycrdt's random ids).

This replaces the module attribute ``replica.doc.Doc`` while at least one
allocator is installed; ``replica.doc`` has no hook for it yet (see
docs/testing.md, "Hooks wanted in the core").
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from replica import doc as _doc_module

_ATTRIBUTE = "Doc"
_active: ContextVar[ClientIds | None] = ContextVar("replica_testing_client_ids", default=None)
_fallback: list[ClientIds] = []  # installed allocators, most recent last
_original: Any = None


class ClientIds:
    """Hands out Yjs client ids ``start``, ``start + 1``... in call order."""

    def __init__(self, start: int = 1_000_001) -> None:
        self.next = start

    def __call__(self) -> int:
        value = self.next
        self.next += 1
        return value

    def install(self) -> None:
        """Become the allocator of ``Doc``\\ s created outside :meth:`active`."""
        global _original
        if not _fallback:
            _original = getattr(_doc_module, _ATTRIBUTE)
            setattr(_doc_module, _ATTRIBUTE, _deterministic_doc)
        _fallback.append(self)

    def uninstall(self) -> None:
        """Stop being used; the last one out restores ``replica.doc.Doc``."""
        global _original
        if self in _fallback:
            _fallback.remove(self)
        if not _fallback and _original is not None:
            if getattr(_doc_module, _ATTRIBUTE) is _deterministic_doc:
                setattr(_doc_module, _ATTRIBUTE, _original)
            _original = None

    @contextmanager
    def active(self) -> Iterator[None]:
        """Use this allocator for ``Doc``\\ s created inside the block (one
        fleet among several in one process, as in a differential test)."""
        token = _active.set(self)
        try:
            yield
        finally:
            _active.reset(token)


def _deterministic_doc(*args: Any, **kwargs: Any) -> Any:
    ids = _active.get() or (_fallback[-1] if _fallback else None)
    if ids is not None and kwargs.get("client_id") is None:
        kwargs["client_id"] = ids()
    make = _original
    if make is None:  # uninstalled while someone kept a reference to us
        from pycrdt import Doc

        make = Doc
    return make(*args, **kwargs)
