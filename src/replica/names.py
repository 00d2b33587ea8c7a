"""Names: the rules for replica ids and document names, and the names remotes are kept under."""

from __future__ import annotations

import re
import secrets

_SEGMENT = r"[A-Za-z0-9_][A-Za-z0-9._-]*"
_DOCUMENT = re.compile(rf"{_SEGMENT}(/{_SEGMENT})*")
_REPLICA_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
MAX_DOCUMENT_NAME = 255
MAX_REPLICA_ID = 64

DOCUMENT_RULE = (
    "a document name is 1-255 characters of '/'-separated segments; each segment uses "
    "letters, digits, '.', '_' and '-' and does not start with '.' or '-' "
    "(for example 'campaign-7/households')"
)
REPLICA_ID_RULE = (
    "a replica id is 1-64 characters of letters, digits, '.', '_' and '-', starting with a letter or digit"
)


def check_document_name(name: object) -> str:
    """Return ``name`` if it is a valid document name, else raise ``ValueError``."""
    if not isinstance(name, str) or len(name) > MAX_DOCUMENT_NAME or not _DOCUMENT.fullmatch(name):
        raise ValueError(f"invalid document name {name!r}: {DOCUMENT_RULE}")
    return name


def check_replica_id(replica_id: object) -> str:
    """Return ``replica_id`` if valid, else raise ``ValueError``."""
    if not isinstance(replica_id, str) or len(replica_id) > MAX_REPLICA_ID or not _REPLICA_ID.fullmatch(replica_id):
        raise ValueError(f"invalid replica id {replica_id!r}: {REPLICA_ID_RULE}")
    return replica_id


def new_replica_id() -> str:
    """A fresh random replica id (80 bits, lowercase base32-like hex)."""
    return "r" + secrets.token_hex(10)


#: The remote name under which a device keeps what its relay holds (watermarks,
#: refusals); peers are kept under their replica ids.
RELAY = "relay"


def remote_key(remote_id: str, remote_role: str) -> str:
    """Under which name watermarks and refusals of a remote are kept."""
    return RELAY if remote_role == "relay" else remote_id
