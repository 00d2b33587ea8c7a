"""What a relay's operator issued and revoked, kept beside the relay's log.

Two files in the relay's data directory, written by the operator's commands
while the relay runs (its LMDB log stays locked by the relay process):

- ``issued.jsonl``: one JSON object per credential issued (replica id,
  documents, expiry, issue time, the device key it is bound to, if any),
  appended by :func:`issue_credential`;
- ``revoked.json``: ``{replica id: unix time of its revocation}``, replaced
  atomically by :func:`revoke` and :func:`restore`.

A running relay reads the revocations through :class:`Revocations`, which
looks at the file again whenever it changed, so a revocation is refused at
that device's next handshake (``credential_revoked``), and every ``welcome``
carries the list, signed, for devices to carry to their peers
(``replica.trust``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import ItemsView, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from replica.credentials import PublicKey, SigningKey
from replica.errors import DataDirError
from replica.names import check_replica_id

ISSUED_FILE = "issued.jsonl"
REVOKED_FILE = "revoked.json"


def issue_credential(
    data: str | os.PathLike[str],
    key: SigningKey,
    *,
    issuer: str,
    replica_id: str,
    documents: Sequence[str],
    expires_at: float,
    device_key: bytes | None = None,
    now: float | None = None,
) -> str:
    """Issue a credential with the relay's ``key`` and record it in ``issued.jsonl``."""
    when = time.time() if now is None else now
    token = key.issue(
        issuer=issuer,
        replica_id=replica_id,
        documents=documents,
        expires_at=expires_at,
        now=when,
        device_key=device_key,
    )
    entry = {
        "replica_id": replica_id,
        "documents": list(documents),
        "expires_at": expires_at,
        "issued_at": when,
        "device_key": None if device_key is None else PublicKey(device_key).key_id,
    }
    with open(Path(data) / ISSUED_FILE, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry, sort_keys=True) + "\n")
    return token


def issued(data: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every credential recorded as issued, oldest first."""
    path = Path(data) / ISSUED_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def revoke(data: str | os.PathLike[str], replica_id: str, *, now: float | None = None) -> float:
    """Revoke every credential issued to ``replica_id`` until now; returns that time."""
    check_replica_id(replica_id)
    revoked = _read(Path(data))
    revoked[replica_id] = time.time() if now is None else now
    _write(Path(data), revoked)
    return revoked[replica_id]


def restore(data: str | os.PathLike[str], replica_id: str) -> bool:
    """Take a revocation back; False if ``replica_id`` was not revoked."""
    revoked = _read(Path(data))
    found = revoked.pop(replica_id, None) is not None
    if found:
        _write(Path(data), revoked)
    return found


class Revocations(Mapping[str, float]):
    """The revocations of a relay's data directory, as they stand on disk:
    read again whenever the file changed (a stat per look)."""

    def __init__(self, data: str | os.PathLike[str]) -> None:
        self.folder = Path(data)
        self._seen: tuple[int, int] | None = None
        self._revoked: dict[str, float] = {}

    def _current(self) -> dict[str, float]:
        try:
            stat = (self.folder / REVOKED_FILE).stat()
        except FileNotFoundError:
            self._seen, self._revoked = None, {}
            return self._revoked
        seen = (stat.st_mtime_ns, stat.st_size)
        if seen != self._seen:
            self._revoked, self._seen = _read(self.folder), seen
        return self._revoked

    def __getitem__(self, replica_id: str) -> float:
        return self._current()[replica_id]

    def __iter__(self) -> Iterator[str]:
        return iter(dict(self._current()))

    def __len__(self) -> int:
        return len(self._current())

    def items(self) -> ItemsView[str, float]:
        """All of them at one look at the file (not one per key, as ``Mapping`` would)."""
        return self._current().items()


def _read(folder: Path) -> dict[str, float]:
    path = folder / REVOKED_FILE
    if not path.exists():
        return {}
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:
        raise DataDirError(f"{path} cannot be read ({exc}); restore it from a backup") from exc
    if not isinstance(loaded, dict) or not all(
        isinstance(k, str) and isinstance(v, int | float) for k, v in loaded.items()
    ):
        raise DataDirError(f"{path} is not a map of replica ids to times; restore it from a backup")
    return {k: float(v) for k, v in loaded.items()}


def _write(folder: Path, revoked: Mapping[str, float]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    temporary = folder / (REVOKED_FILE + ".tmp")
    temporary.write_text(json.dumps(dict(revoked), sort_keys=True, indent=1) + "\n", encoding="utf-8")
    os.replace(temporary, folder / REVOKED_FILE)
