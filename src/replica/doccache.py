"""The loaded documents of an engine, with an optional memory budget.

A relay serves many documents and needs a loaded one only to check and apply
what devices send it; keeping every document it ever served in pycrdt grows
without bound (about 4.7 kB per record). :class:`DocumentCache` keeps loaded
documents in least-recently-used order with an estimate of the memory each
holds, and :meth:`DocumentCache.evict` closes the least recently used ones
while the estimate is over the budget; an evicted document is loaded again
(snapshot + tail) the next time it is needed. Without a budget (devices,
where the app holds ``Document`` objects) nothing is ever evicted.

The estimate is the bytes of Yjs updates a document was built from, times
:data:`MEMORY_PER_UPDATE_BYTE` (measured: 20,000 three-field records, 2.4 MB
of updates, took 37 MB resident in pycrdt, 15.5 per byte; 17.9 per byte of a
snapshot); it is a budget, not an exact account.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

from replica.doc import Document

#: Resident bytes of a loaded pycrdt document per byte of the updates it was built from.
MEMORY_PER_UPDATE_BYTE = 16


class DocumentCache:
    """Loaded documents by name; the most recently used last."""

    def __init__(self, budget_bytes: int | None = None) -> None:
        self.budget_bytes = budget_bytes
        self._documents: OrderedDict[str, Document] = OrderedDict()
        self._weights: dict[str, int] = {}

    def get(self, name: str) -> Document | None:
        found = self._documents.get(name)
        if found is not None and self.budget_bytes is not None:
            self._documents.move_to_end(name)
        return found

    def add(self, document: Document, update_bytes: int) -> None:
        """A document just loaded from ``update_bytes`` of updates."""
        self._documents[document.name] = document
        self._weights[document.name] = update_bytes * MEMORY_PER_UPDATE_BYTE

    def grew(self, name: str, update_bytes: int) -> None:
        """``name`` took ``update_bytes`` more of updates."""
        if name in self._weights:
            self._weights[name] += update_bytes * MEMORY_PER_UPDATE_BYTE

    @property
    def estimate(self) -> int:
        """Estimated bytes held by the loaded documents."""
        return sum(self._weights.values())

    def evict(self) -> list[str]:
        """Close least recently used documents (never the last one used)
        while over the budget; their names."""
        if self.budget_bytes is None:
            return []
        gone = []
        total = self.estimate
        while total > self.budget_bytes and len(self._documents) > 1:
            name, document = self._documents.popitem(last=False)
            document.close()
            total -= self._weights.pop(name)
            gone.append(name)
        return gone

    def items(self) -> Iterator[tuple[str, Document]]:
        return iter(list(self._documents.items()))

    def __len__(self) -> int:
        return len(self._documents)

    def __contains__(self, name: object) -> bool:
        return name in self._documents

    def close(self) -> None:
        """Close every document."""
        for document in self._documents.values():
            document.close()
        self._documents.clear()
        self._weights.clear()
