"""What a user types on the ``replica`` command line, checked.

Argument types, data directories and credential files: each mistake becomes a
:class:`~replica.errors.ReplicaError` with a stable code at the point where
the input is read, for ``replica.cli`` to print as one line (see its module
docstring). Also the small helpers the commands share (JSON output, signals).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import importlib.util
import json
import shlex
import signal
import socket
import ssl
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from replica import tls
from replica.credentials import MAX_PATTERN_CHARS, PATTERN_RULE, PublicKey
from replica.errors import ReplicaError
from replica.limits import AbuseLimits
from replica.names import check_replica_id
from replica.replica import Replica
from replica.status import SyncStatus
from replica.store.lmdb import holds_store


def error(code: str, message: str, *, retryable: bool = False) -> ReplicaError:
    return ReplicaError(message, code=code, retryable=retryable)


# -- what the user typed -----------------------------------------------------


def port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise error("bad_port", f"port {text!r} is not valid: use a number from 1 to 65535, or 0 to pick a free one")
    return port


def replica_id(text: str) -> str:
    try:
        return check_replica_id(text)
    except ValueError as exc:
        raise error("bad_replica_id", str(exc)) from None


def docs_pattern(text: str) -> str:
    # The rule of replica.credentials (PATTERN_RULE), checked here to name the pattern at fault.
    if not (0 < len(text) <= MAX_PATTERN_CHARS and text.isprintable() and not any(c.isspace() for c in text)):
        raise error("bad_docs_pattern", f"invalid document pattern {text!r} in --docs: {PATTERN_RULE}")
    return text


def device_key(text: str) -> PublicKey:
    try:
        return PublicKey.from_text(text)
    except ValueError as exc:
        raise error(
            "bad_device_key", f"--device-key: {exc}; print it on the device with `replica peer key --data DIR`"
        ) from None


def _positive(text: str, below: float, code: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < below:
        raise error(code, f"{text!r} is not {what}")
    return value


def seconds(text: str) -> float:
    return _positive(text, 1e9, "bad_timeout", "a number of seconds above 0")


def device_dir(args: argparse.Namespace) -> Path:
    """The data directory of an existing device, or a ``no_data_dir`` error with the command that creates one."""
    path = Path(args.data)
    if holds_store(path):
        return path
    init = f"`replica init --data {shlex.quote(str(path))} --replica-id {getattr(args, 'replica_id', None) or 'ID'}`"
    if not path.exists():
        raise error("no_data_dir", f"no data directory at {path}; check the path, or create a device with {init}")
    if not path.is_dir():
        raise error("no_data_dir", f"{path} is a file, not a data directory; check the path")
    if any(path.iterdir()):
        raise error("no_data_dir", f"{path} is not a device's data directory (it holds no replica); check the path")
    raise error("no_data_dir", f"no data directory at {path} (the folder is empty); create a device with {init}")


def open_device(args: argparse.Namespace) -> Replica:
    return Replica.open(device_dir(args), replica_id=getattr(args, "replica_id", None))


def relay_dir(args: argparse.Namespace) -> Path:
    """The data directory of a relay that was started before (it holds the relay's key)."""
    from replica.relay import KEY_FILE

    path = Path(args.data)
    if not (path / KEY_FILE).is_file():
        start = f"`replica relay --data {shlex.quote(str(path))}`"
        raise error(
            "no_data_dir",
            f"no relay data directory at {path} (no {KEY_FILE}); check the path, or start the relay once with {start}",
        )
    return path


def read_credential(name: str) -> str:
    path = Path(name)
    ask = f"ask the relay operator for one (`replica relay issue-credential ... > {shlex.quote(name)}`)"
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        raise error("credential_missing", f"no credential file at {path}; check the path, or {ask}") from None
    except OSError as exc:
        raise error("credential_unreadable", f"cannot read the credential file {path}: {exc.strerror}") from None
    if not token:
        raise error("credential_missing", f"the credential file {path} is empty; {ask}")
    return token


def listen_error(exc: OSError, host: str, port: int) -> ReplicaError:
    if exc.errno == errno.EADDRINUSE:
        return error(
            "port_in_use",
            f"port {port} on {host} is already in use (another relay, peer server or program listens there); "
            "stop it, or choose another port with --port",
        )
    if exc.errno == errno.EACCES:
        return error(
            "port_not_permitted", f"this user may not listen on port {port}; choose one above 1023 with --port"
        )
    if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:
        return error("bad_host", f"cannot listen on {host!r}: not an address of this machine; check --host")
    return error("cannot_listen", f"cannot listen on {host}:{port}: {exc.strerror or exc}")


def require_discovery(instead: str) -> None:
    """Fail before anything starts when the ``discovery`` extra (zeroconf) is not installed."""
    if importlib.util.find_spec("zeroconf") is None:
        raise error(
            "discovery_not_installed",
            "finding peers on the local network needs the discovery extra (zeroconf): "
            f"pip install 'replica[discovery]' ({instead})",
        )


def print_json(value: object) -> None:
    print(json.dumps(value), flush=True)


def status_json(replica_id: str, status: SyncStatus) -> dict[str, Any]:
    return {"replica_id": replica_id, **asdict(status), "state": status.state.value, "label": status.label}


def megabytes(text: str) -> float:
    """A positive size in MB (``--doc-cache-mb``)."""
    return _positive(text, 1e7, "bad_size", "a size in MB (a positive number, such as 256)")


def stop_on_signals() -> asyncio.Event:
    """An event that SIGINT or SIGTERM sets (a clean stop); call it inside the running loop."""
    stop = asyncio.Event()
    for number in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(number, stop.set)
    return stop


#: The ``--ca`` option's help, for every command that connects to a relay or a peer.
CA_HELP = "with a wss:// URL: trust only the CA certificate(s) in this PEM file (default: the system's store)"


def client_tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    """How a device verifies a ``wss://`` server: ``--ca FILE`` if given, else the system's trust store."""
    ca = getattr(args, "ca", None)
    if ca is None:
        return None
    given = getattr(args, "relay", None) or ""
    for url in [given] if isinstance(given, str) else given:  # --relay may be given several times
        if not url.startswith("wss://"):
            raise error("bad_usage", f"--ca is for wss:// URLs (TLS); {url or 'the URL'} is not one")
    return tls.client_context(ca)


def server_tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    """A server's TLS context from ``--tls-cert`` and ``--tls-key`` (both or neither)."""
    cert, key = getattr(args, "tls_cert", None), getattr(args, "tls_key", None)
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise error("bad_usage", "give both --tls-cert FILE (the PEM certificate chain) and --tls-key FILE (its key)")
    return tls.server_context(cert, key)


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def duration(text: str) -> float:
    """A duration such as ``90s``, ``30m``, ``24h`` or ``7d`` (plain numbers are seconds), in seconds."""
    number, unit = (text[:-1], text[-1]) if text[-1:] in _UNITS else (text, "s")
    try:
        value = float(number) * _UNITS[unit]
    except ValueError:
        value = -1.0
    if not 0 < value < 1e10:
        raise error("bad_duration", f"{text!r} is not a duration; write it like 30m, 24h or 7d")
    return value


def describe_seconds(seconds: float) -> str:
    """``86400`` -> ``24 h``: how a duration is said back to the user."""
    for unit, size in (("days", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if seconds >= (2 * size if unit == "days" else size) and seconds % size == 0:
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} s"


def limit(text: str) -> float:
    """A rate or count limit: a number >= 0 (0: no limit)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1e12:
        raise error("bad_limit", f"{text!r} is not a limit: give a number (0 for no limit)")
    return value


def abuse_limits(args: argparse.Namespace) -> AbuseLimits:
    """The relay's abuse limits from ``--max-frames-per-second``, ``--max-mb-per-second``
    and ``--max-connections-per-device`` (per device: twice the per-connection rates)."""
    frames, megabytes, cap = args.max_frames_per_second, args.max_mb_per_second, args.max_connections_per_device
    mb = 1024 * 1024
    return replace(
        AbuseLimits(),
        frames_per_second=frames or None,
        frame_burst=max(int(frames * 4), 1),
        credential_frames_per_second=frames * 2 or None,
        credential_frame_burst=max(int(frames * 8), 1),
        bytes_per_second=megabytes * mb or None,
        credential_bytes_per_second=megabytes * 2 * mb or None,
        connections_per_credential=int(cap) or None,
    )


def device_line(row: dict[str, Any], now: float) -> str:
    """One device of ``replica relay devices``, for people."""
    when = "never" if row["last_contact"] is None else _ago(now - row["last_contact"])
    outcome = row["last_outcome"] or "no sync yet"
    if row["last_code"] and row["last_outcome"] != "synced":
        outcome += f" [{row['last_code']}]"
    held = ", ".join(f"{name} {count}" for name, count in sorted(row["documents"].items())) or "nothing"
    flags = [flag for flag, on in (("STALE", row["stale"]), ("REVOKED", row["revoked"])) if on]
    expiry = row["credential_expires_at"]
    if expiry is None:
        credential = "credential unknown"
    elif row["credential_expired"]:
        credential = "credential EXPIRED " + _ago(now - expiry)
    else:
        credential = "credential until " + time.strftime("%Y-%m-%d", time.gmtime(expiry))
    mark = f" {' '.join(flags)}" if flags else ""
    return f"  {row['replica_id']}{mark}: last contact {when}, {outcome}; holds {held}; {credential}"


def _ago(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h ago"
    return f"{seconds / 86400:.1f} days ago"
