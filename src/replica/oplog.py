"""The relay operator's log: one line per finished sync and per refused
handshake, none per delta.

:func:`summarize` turns a relay session that ended into a :class:`SyncSummary`
(who, from where, which documents, deltas and bytes each way, how long, the
outcome and its code); :func:`log_summary` writes it to the
``replica.oplog`` logger, as a sentence for people and, for log shippers,
with the same fields attached to the record (``record.fields``), which
:class:`JsonFormatter` prints as one JSON object per line.

Outcomes:

- ``synced``: the session ended cleanly (a one-shot run completed);
- ``disconnected``: a live link that had caught up was closed by the device
  or the network, the normal end of a live sync;
- ``refused``: the handshake was refused (credential, revoked, limits...);
- ``failed``: anything else, with its code.

:func:`configure` sets up logging for the ``replica relay`` command
(``--log-format human|json``, ``--log-level``).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from replica.limits import RelaySession

log = logging.getLogger("replica.oplog")

SYNCED, DISCONNECTED, REFUSED, FAILED = "synced", "disconnected", "refused", "failed"
FORMATS = ("human", "json")
LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class SyncSummary:
    """One finished relay session, as the operator's log tells it."""

    device: str | None  #: the replica id it presented (None if it never said hello)
    address: str  #: ``host:port`` it connected from
    mode: str  #: ``once`` or ``live``
    documents: tuple[str, ...]
    deltas_up: int  #: deltas received and stored
    deltas_down: int  #: deltas sent and acknowledged by the device
    bytes_up: int
    bytes_down: int
    seconds: float
    outcome: str
    code: str | None
    message: str | None  #: the error's message (``reason`` in JSON lines)

    def sentence(self) -> str:
        """The human line."""
        who = f"{self.device or 'unknown device'} from {self.address}"
        if self.outcome == REFUSED:
            return f"refused {who} [{self.code}]: {self.message}"
        counts = (
            f"{len(self.documents)} document{'' if len(self.documents) == 1 else 's'}, "
            f"deltas up {self.deltas_up} down {self.deltas_down}, "
            f"bytes up {_size(self.bytes_up)} down {_size(self.bytes_down)}"
        )
        head = f"{self.mode} sync {who}: {self.outcome}"
        if self.outcome == FAILED:
            head += f" [{self.code}]"
        tail = f": {self.message}" if self.outcome == FAILED else ""
        return f"{head} in {self.seconds:.2f} s, {counts}{tail}"


def summarize(session: RelaySession, address: str, now: float | None = None) -> SyncSummary:
    """The summary of ``session``, which has ended."""
    error = session.error
    if error is None:
        outcome = SYNCED
    elif not session.opened:
        outcome = REFUSED
    elif error.code == "connection_lost" and (session.mode == "live" or session.completed):
        outcome = DISCONNECTED
    else:
        outcome = FAILED
    return SyncSummary(
        device=session.remote_id,
        address=address,
        mode=session.mode,
        documents=tuple(session.documents),
        deltas_up=session.received,
        deltas_down=session.sent,
        bytes_up=session.bytes_in,
        bytes_down=session.bytes_out,
        seconds=round((time.time() if now is None else now) - session.started_at, 3),
        outcome=outcome,
        code=None if error is None else error.code,
        message=None if error is None else error.message,
    )


def log_summary(summary: SyncSummary) -> None:
    """One line: INFO for a sync that went well, WARNING for one refused or failed."""
    level = logging.WARNING if summary.outcome in (REFUSED, FAILED) else logging.INFO
    event = "refused" if summary.outcome == REFUSED else "sync"
    fields = asdict(summary)
    fields["reason"] = fields.pop("message")  # "message" is the line itself
    log.log(level, "%s", summary.sentence(), extra={"fields": {"event": event, **fields}})


def _size(count: int) -> str:
    if count < 1000:
        return f"{count} B"
    if count < 1_000_000:
        return f"{count / 1000:.1f} kB"
    return f"{count / 1e6:.1f} MB"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, and the record's ``fields``."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure(
    level: str = "info", fmt: str = "human", *, operator: Sequence[str] = ("replica.oplog", "replica.relay")
) -> None:
    """Logging of the ``replica relay`` command, on standard error. At
    ``info`` only the ``operator`` loggers (one line per sync, the relay's
    start, stop and compactions) say more than warnings; ``debug`` opens
    every logger, the per-link lines of the network layer included."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    number = getattr(logging, level.upper())
    root.setLevel(number if number <= logging.DEBUG else max(number, logging.WARNING))
    for name in operator:
        logging.getLogger(name).setLevel(number)
    if number > logging.DEBUG:  # what the operator's lines say per sync, the network layer says per link
        logging.getLogger("replica.net").setLevel(logging.ERROR)
