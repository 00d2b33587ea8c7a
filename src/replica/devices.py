"""The relay's record of the devices it has seen: the supervisor's "who has
not synced today" list.

For each device whose credential this relay signed, the relay keeps: first
and last contact, the outcome (and code) of its last session, the address it
came from, what it holds of each of its documents (the version vector the
relay knows it durably holds: what it said in its ``hello``, what it sent
and what it acknowledged), and the expiry of the credential it presented.
Whether it is revoked is read at view time from ``revoked.json``
(``replica.registry``), so a revocation shows at once.

Kept in ``devices.json`` beside the relay's log, replaced atomically (write
to a temporary file, then rename) at most every :data:`FLUSH_INTERVAL`
seconds while the relay runs and when it stops; so ``replica relay devices``
reads it while the relay runs, without touching the relay's LMDB lock. A
relay that is killed loses at most the last interval's contacts, never the
deltas (those are in the log).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from replica.errors import DataDirError
from replica.registry import Revocations, issued
from replica.vv import VersionVector, merge

log = logging.getLogger("replica.devices")

DEVICES_FILE = "devices.json"
FLUSH_INTERVAL = 2.0
#: Default of ``--stale``: a device not heard from for this long is listed as stale.
STALE_AFTER = 24 * 3600.0


@dataclass
class DeviceRecord:
    """What the relay knows of one device."""

    replica_id: str
    first_contact: float
    last_contact: float
    last_outcome: str
    last_code: str | None = None
    last_message: str | None = None
    address: str = ""
    #: Document -> version vector the relay knows this device holds durably.
    documents: dict[str, VersionVector] = field(default_factory=dict)
    credential_expires_at: float | None = None
    credential_issued_at: float | None = None
    syncs: int = 0  #: sessions recorded

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> DeviceRecord:
        return cls(**{key: value[key] for key in cls.__dataclass_fields__ if key in value})


class DeviceBook:
    """The running relay's device records (see the module docstring)."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.path = Path(folder) / DEVICES_FILE
        try:
            records = read(folder)
        except DataDirError as exc:  # the view is not worth refusing to serve devices for
            aside = self.path.with_suffix(".damaged")
            log.warning("%s; moved to %s, starting a new devices file", exc.message, aside)
            os.replace(self.path, aside)
            records = []
        self._records: dict[str, DeviceRecord] = {record.replica_id: record for record in records}
        self._dirty = False

    def record(
        self,
        replica_id: str,
        *,
        now: float,
        outcome: str,
        code: str | None,
        message: str | None,
        address: str,
        held: Mapping[str, VersionVector],
        expires_at: float | None,
        issued_at: float | None,
    ) -> None:
        """One session of ``replica_id`` ended (or was refused)."""
        found = self._records.get(replica_id)
        if found is None:
            found = self._records[replica_id] = DeviceRecord(replica_id, now, now, outcome)
        found.last_contact, found.last_outcome = now, outcome
        found.last_code, found.last_message, found.address = code, message, address
        for document, vv in held.items():
            merge(found.documents.setdefault(document, {}), vv)
        if expires_at is not None:
            found.credential_expires_at, found.credential_issued_at = expires_at, issued_at
        found.syncs += 1
        self._dirty = True

    def seen_within(self, seconds: float, now: float) -> int:
        """Devices heard from in the last ``seconds``."""
        return sum(1 for record in self._records.values() if now - record.last_contact <= seconds)

    def flush(self) -> None:
        """Write the records if they changed since the last write."""
        if not self._dirty:
            return
        temporary = self.path.with_suffix(".tmp")
        rows = [asdict(record) for record in sorted(self._records.values(), key=lambda r: r.replica_id)]
        temporary.write_text(json.dumps({"devices": rows}, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(temporary, self.path)
        self._dirty = False


def read(folder: str | os.PathLike[str]) -> list[DeviceRecord]:
    """The records written by a relay in ``folder`` (none if it never wrote them)."""
    path = Path(folder) / DEVICES_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise DataDirError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        loaded = json.loads(text)
        return [DeviceRecord.from_json(row) for row in loaded["devices"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise DataDirError(
            f"{path} is damaged ({exc}); move it away: the relay writes a new one as devices sync"
        ) from exc


def view(
    folder: str | os.PathLike[str], *, now: float | None = None, stale: float = STALE_AFTER
) -> list[dict[str, Any]]:
    """Every device the relay in ``folder`` has seen or issued a credential
    to, as rows for ``replica relay devices``: stalest first, with
    ``revoked``, ``stale`` (not heard from for ``stale`` seconds, or never)
    and ``changes`` held per document."""
    when = time.time() if now is None else now
    revoked = dict(Revocations(folder).items())
    records = {record.replica_id: record for record in read(folder)}
    issued_to: dict[str, dict[str, Any]] = {}
    for issue in issued(folder):
        issued_to[issue["replica_id"]] = issue  # the newest one wins
    rows = []
    for replica_id in sorted(set(records) | set(issued_to)):
        record, entry = records.get(replica_id), issued_to.get(replica_id)
        expires_at = record.credential_expires_at if record is not None else None
        issued_at = record.credential_issued_at if record is not None else None
        if entry is not None and (issued_at is None or entry["issued_at"] > issued_at):
            expires_at, issued_at = entry["expires_at"], entry["issued_at"]  # a newer one was issued since
        cut = revoked.get(replica_id)
        last = None if record is None else record.last_contact
        rows.append(
            {
                "replica_id": replica_id,
                "last_contact": last,
                "last_outcome": None if record is None else record.last_outcome,
                "last_code": None if record is None else record.last_code,
                "last_message": None if record is None else record.last_message,
                "address": None if record is None else record.address,
                "documents": {} if record is None else {d: sum(vv.values()) for d, vv in record.documents.items()},
                "credential_expires_at": expires_at,
                "credential_expired": expires_at is not None and expires_at <= when,
                "revoked": cut is not None and issued_at is not None and issued_at <= cut,
                "stale": last is None or when - last > stale,
                "syncs": 0 if record is None else record.syncs,
            }
        )
    rows.sort(key=lambda row: (row["last_contact"] or 0.0, row["replica_id"]))
    return rows
