"""The ``replica`` command line. The only module that prints or reads files
and the environment on behalf of the library.

Theory of operation: every mistake a user can make on the command line (a
missing file, a taken port, a malformed id, key or pattern, an extra not
installed) becomes a :class:`~replica.errors.ReplicaError` at the point where
the input is read, and :func:`main` prints it as one line, ``Error [code]:
message (whether retrying helps)``, and exits 1 if retrying can help, 2 if it
cannot. Argument types raise it from inside ``parse_args`` (argparse lets
exceptions other than ``ValueError``/``TypeError`` through), and argparse's own
complaints go through :meth:`_Parser.error`, so a user's mistake never shows a
traceback.

A device's data directory is created only by ``replica init``: every other
command that works on a device refuses a directory that holds no replica, so
that a mistyped path never becomes a new identity. (``Replica.open`` in Python
still creates directories; ``replica relay`` creates the relay's.)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, NoReturn

from replica import __version__, cli_input, cli_sync, cli_ui, registry
from replica.credentials import PublicKey
from replica.engine import Engine
from replica.errors import ErrorInfo, ReplicaError
from replica.replica import Replica
from replica.status import SyncState, SyncStatus
from replica.store.lmdb import holds_store

#: Exit codes: 0 done, 1 failed but retrying can help, 2 failed for good.
EXIT_RETRY = 1
EXIT_FAIL = 2
EXIT_CODES = """Exit codes:
  0  done
  1  failed; retrying can help (the relay was unreachable, the data directory busy)
  2  failed; retrying will not help (a mistake to correct, or a decision for an operator)"""
#: Environment variables read as defaults (an option on the command line wins).
ENV_DATA = "REPLICA_DATA"  #: --data of the commands that work on a device (never the relay's)
ENV_RELAY = "REPLICA_RELAY"  #: --relay of ``replica sync``
ENV_CREDENTIAL = "REPLICA_CREDENTIAL"  #: --credential of ``replica sync`` (a file)
REPLICA_ID_HELP = "the device's replica id (checked against the data directory's)"


# -- device ------------------------------------------------------------------


def _init(args: argparse.Namespace) -> int:
    path = Path(args.data)
    if holds_store(path):
        raise cli_input.error(
            "replica_exists",
            f"{path} already holds a device's data; nothing was changed (use it as it is, or choose another "
            "directory for a new device)",
        )
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise cli_input.error(
            "data_dir_not_empty", f"{path} exists and holds no replica; choose a new or empty directory for the device"
        )
    with Replica.open(path, replica_id=args.replica_id) as replica:
        print(f"Created device {replica.id} in {path}")
        print(f"Next: replica sync --data {shlex.quote(str(path))} --relay URL --credential FILE")
    return 0


def _status(args: argparse.Namespace) -> int:
    # Read only, without the lock: a live sync or a peer server may hold the directory. And no
    # document is replayed: the counts come from the log's version vectors, at any size.
    path = cli_input.device_dir(args)
    with Replica.open(path, replica_id=args.replica_id, readonly=True) as replica:
        names = replica.documents()
        documents = [{"name": name, "changes": sum(replica.version_vector(name).values())} for name in names]
        status = replica.status()
        if args.json:
            cli_input.print_json(
                {"data": str(args.data), "documents": documents, **cli_input.status_json(replica.id, status)}
            )
            return 0
        print(f"Replica: {replica.id}")
        print(f"Data directory: {args.data}")
        print(f"Documents: {len(names)}")
        for doc in documents:
            count = doc["changes"]
            print(f"  {doc['name']}  ({count} change{'' if count == 1 else 's'})")
        if status.last_synced_at is not None:
            print(f"Last synced: {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(status.last_synced_at))}")
        for line in status.lines:
            print(line)
    return 0


def _compact(args: argparse.Namespace) -> int:
    # Only what the relay durably acknowledged: what it has not stays one by one (and counted unsynced).
    with cli_input.open_device(args) as replica:
        replaced = replica.compact()
        print(
            f"Compacted {replaced} changes already on the relay into snapshots; Data unsynced: "
            f"{replica.status().unsynced}"
        )
    return 0


def _relay_compact(args: argparse.Namespace) -> int:
    from replica.relay import Relay

    relay = Relay(cli_input.relay_dir(args), compact_every=0, keep=args.keep)
    try:
        relay.replica = Engine.open(relay.data, replica_id=relay.replica_id)
    except ReplicaError as exc:
        message = f"{exc.message} (stop the relay first: it compacts by itself too)"
        raise cli_input.error(exc.code, message, retryable=exc.retryable) from None
    try:
        replaced = relay.compact_due()
    finally:
        relay.replica.close()
    print(f"Compacted {replaced} deltas into snapshots, keeping the newest {args.keep} of each document")
    return 0


def _credential_show(args: argparse.Namespace) -> int:
    from replica.credentials import CredentialError
    from replica.trust import BOUND_CREDENTIAL, GIVEN_CREDENTIAL, pinned_relay_key

    with cli_input.open_device(args) as replica:
        relay_key = pinned_relay_key(replica)
        print(f"Replica: {replica.id}")
        print(f"Relay key: {relay_key.key_id if relay_key else 'not pinned yet (sync with the relay once)'}")
        for label, setting in (("Given", GIVEN_CREDENTIAL), ("Bound to this device's key", BOUND_CREDENTIAL)):
            token = replica.setting(setting)
            if token is None:
                print(f"{label}: none")
                continue
            if relay_key is None:
                print(f"{label}: held, not checked (this device has no relay key to check it with yet)")
                continue
            try:
                credential = relay_key.verify(token)
            except CredentialError as exc:
                print(f"{label}: not valid for this device's relay: {exc.message}")
                continue
            print(f"{label}:")
            for line in credential.summary(now=time.time()):
                print(f"  {line}")
    return 0


# -- relay -------------------------------------------------------------------


def _relay(args: argparse.Namespace) -> int:
    from replica.relay import Relay

    if args.data is None:
        raise cli_input.error("bad_usage", "replica relay: --data DIR is required (the relay's data directory)")

    from replica import oplog

    oplog.configure(args.log_level, args.log_format)

    async def serve() -> None:
        stop = cli_input.stop_on_signals()
        try:
            relay = Relay(
                args.data,
                host=args.host,
                port=args.port,
                doc_cache_mb=args.doc_cache_mb,
                tls=cli_input.server_tls(args),
                abuse=cli_input.abuse_limits(args),
                redis=args.redis,
            )
        except OSError as exc:
            raise cli_input.error(
                "data_dir_error", f"cannot use the relay's data directory {args.data}: {exc.strerror}"
            ) from None
        try:
            await relay.start()
        except OSError as exc:
            raise cli_input.listen_error(exc, args.host, args.port) from None
        try:
            print(f"Relay {relay.replica_id} listening on {relay.url}", flush=True)
            print(f"Public key: {relay.public_key.to_text()}", flush=True)
            print(f"Yjs clients (y-websocket): {relay.url}/yjs/<document>?token=<credential>", flush=True)
            if args.redis:
                print(f"Sharing its log with the deployment's other relays through {args.redis}", flush=True)
            await stop.wait()
        finally:
            await relay.stop()
        print("Relay stopped; everything acknowledged is on disk.", flush=True)

    asyncio.run(serve())
    return 0


def _relay_devices(args: argparse.Namespace) -> int:
    from replica import devices

    folder = cli_input.relay_dir(args)
    now = time.time()
    rows = devices.view(folder, now=now, stale=args.stale)
    if args.json:
        cli_input.print_json({"now": now, "stale_after": args.stale, "devices": rows})
        return 0
    if not rows:
        print("No device has synced with this relay yet, and no credential was issued.")
        return 0
    stale = [row for row in rows if row["stale"]]
    print(f"{len(rows)} device(s); {len(stale)} not heard from in {cli_input.describe_seconds(args.stale)}:")
    for row in rows:
        print(cli_input.device_line(row, now))
    return 0


def _issue_credential(args: argparse.Namespace) -> int:
    from replica.credentials import parse_expiry
    from replica.relay import relay_identity

    now = time.time()
    try:
        expires_at = parse_expiry(args.expires, now=now)
    except ValueError as exc:
        raise cli_input.error("bad_expiry", str(exc)) from None
    relay_id, key = relay_identity(cli_input.relay_dir(args))
    try:
        token = registry.issue_credential(
            cli_input.relay_dir(args),
            key,
            issuer=relay_id,
            replica_id=args.replica_id,
            documents=args.docs,
            expires_at=expires_at,
            now=now,
            device_key=None if args.device_key is None else args.device_key.raw,
        )
    except ValueError as exc:
        raise cli_input.error("credential_not_issued", f"no credential was issued: {exc}") from None
    print(token)
    expiry = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(expires_at))
    print(f"Credential for {args.replica_id} on {' '.join(args.docs)}, valid until {expiry}", file=sys.stderr)
    return 0


def _revoke(args: argparse.Namespace) -> int:
    folder = cli_input.relay_dir(args)
    if args.undo:
        found = registry.restore(folder, args.replica_id)
        print(f"{args.replica_id}: revocation taken back" if found else f"{args.replica_id} was not revoked")
        return 0
    when = registry.revoke(folder, args.replica_id)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(when))
    print(f"{args.replica_id}: every credential issued until {stamp} is revoked; it is refused at its next sync")
    print("Devices learn of it at their next relay sync and carry it to their peers.", file=sys.stderr)
    return 0


def _issued(args: argparse.Namespace) -> int:
    folder = cli_input.relay_dir(args)
    revoked = registry.Revocations(folder)
    entries = registry.issued(folder)
    if args.json:
        cli_input.print_json({"issued": entries, "revoked": dict(revoked)})
        return 0
    for entry in entries:
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(entry["expires_at"]))
        cut = revoked.get(entry["replica_id"])
        state = " (revoked)" if cut is not None and entry["issued_at"] <= cut else ""
        bound = f", bound to key {entry['device_key']}" if entry["device_key"] else ""
        print(f"{entry['replica_id']}: {' '.join(entry['documents'])}, until {stamp}{bound}{state}")
    if not entries:
        print("No credential was issued by this relay yet.")
    return 0


def _public_key(args: argparse.Namespace) -> int:
    from replica.relay import relay_identity

    _, key = relay_identity(cli_input.relay_dir(args))
    print(key.public_key().to_text())
    return 0


# -- peers -------------------------------------------------------------------


def _peer_serve(args: argparse.Namespace) -> int:
    if args.advertise:
        cli_input.require_discovery("or serve without --advertise")
    if args.live and not args.relay:
        raise cli_input.error("bad_usage", "--live syncs with the relay: give the relay's URL with --relay URL")
    path = cli_input.device_dir(args)
    credential = cli_input.read_credential(args.credential) if args.relay and args.credential else None

    async def serve() -> None:
        stop = cli_input.stop_on_signals()
        with Replica.open(path, replica_id=args.replica_id) as replica:
            try:
                server = await replica.serve_peers(args.host, args.port, tls=cli_input.server_tls(args))
            except OSError as exc:
                raise cli_input.listen_error(exc, args.host, args.port) from None
            print(f"Device {replica.id} serving peers on {server.url}", flush=True)
            advertiser = None
            if args.advertise:
                from replica import discovery
                from replica.trust import pinned_relay_key

                relay_key = pinned_relay_key(replica)
                port = int(server.url.rsplit(":", 1)[1])
                info = discovery.service_info(
                    replica.id, port, discovery.local_addresses(), None if relay_key is None else relay_key.key_id
                )
                advertiser = discovery.Advertiser(info)
                await advertiser.start()
                print(f"Advertised on the local network as {info.name}", flush=True)
            try:
                if args.relay:
                    await _serve_and_sync(replica, args, credential, stop)
                await stop.wait()
            finally:
                if advertiser is not None:
                    await advertiser.stop()
                await server.stop()
        print("Peer server stopped.", flush=True)

    asyncio.run(serve())
    return 0


async def _serve_and_sync(
    replica: Replica, args: argparse.Namespace, credential: str | None, stop: asyncio.Event
) -> None:
    """``peer serve --relay``: sync with the relay (once, or live) while serving peers."""
    report: cli_sync.Reporter = cli_sync.LiveLines(args.relay, peer=False) if args.live else cli_sync.Progress()
    final, stopped = await cli_sync.run(replica, args, credential, report, stop)
    cli_sync.print_end(final, args.relay, stopped=stopped, live=args.live, peer=False)
    if not stopped:
        print("Still serving peers until Ctrl-C.", flush=True)


def _peer_trust(args: argparse.Namespace) -> int:
    from replica.trust import pin_relay_key

    source = Path(args.relay_key)
    try:
        text = source.read_text().strip() if source.is_file() else args.relay_key
    except OSError as exc:
        raise cli_input.error("bad_relay_key", f"cannot read the relay key file {source}: {exc.strerror}") from None
    try:
        key = PublicKey.from_text(text)
    except ValueError as exc:
        raise cli_input.error(
            "bad_relay_key",
            f"--relay-key: {exc} (nor a file holding one); give what `replica relay public-key --data DIR` prints",
        ) from None
    with cli_input.open_device(args) as replica:
        pin_relay_key(replica, key, replace=args.replace)
        print(f"Device {replica.id} now trusts relay key {key.key_id} ({key.to_text()})")
    return 0


def _peer_key(args: argparse.Namespace) -> int:
    from replica.trust import device_key

    with cli_input.open_device(args) as replica:
        print(device_key(replica).public_key().to_text())
    return 0


def _peer_list(args: argparse.Namespace) -> int:
    with cli_input.open_device(args) as replica:
        peers = replica.peers()
        if args.json:
            cli_input.print_json({"replica_id": replica.id, "peers": [asdict(peer) for peer in peers.values()]})
            return 0
        if not peers:
            print("No peer syncs yet.")
        for peer in peers.values():
            when = (
                "never"
                if peer.last_synced_at is None
                else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(peer.last_synced_at))
            )
            error = "" if peer.error is None else f", last error: {peer.error.message} [{peer.error.code}]"
            print(f"{peer.peer_id}: to send {peer.to_send}, to receive {peer.to_receive}, last synced {when}{error}")
    return 0


def _peer_discover(args: argparse.Namespace) -> int:
    cli_input.require_discovery("or give the peer's URL to `replica sync --peer` yourself")
    from replica import discovery
    from replica.trust import pinned_relay_key

    relay_key_id = None
    if args.data:
        with cli_input.open_device(args) as replica:
            key = pinned_relay_key(replica)
            relay_key_id = None if key is None else key.key_id
    peers = asyncio.run(discovery.discover(timeout=args.timeout, relay_key_id=relay_key_id))
    if not peers:
        print("No peers found on the local network.")
    for peer in peers:
        print(f"{peer.replica_id}  {peer.url}")
    return 0


# -- sync --------------------------------------------------------------------


def _sync(args: argparse.Namespace) -> int:
    path = cli_input.device_dir(args)
    if not args.relay:  # from the environment: one URL, or several separated by commas
        args.relay = [each.strip() for each in args.relay_env.split(",") if each.strip()]
    credential = cli_input.read_credential(args.credential) if args.credential else None

    async def run() -> tuple[SyncStatus, bool]:
        stop = cli_input.stop_on_signals()
        with Replica.open(path, replica_id=args.replica_id) as replica:
            report: cli_sync.Reporter
            if args.json:
                report = cli_sync.JsonLines(replica.id, peer=args.peer, live=args.live)
            elif args.live:
                report = cli_sync.LiveLines(", ".join(args.relay), peer=args.peer)
            else:
                report = cli_sync.Progress()
            return await cli_sync.run(replica, args, credential, report, stop)

    final, stopped = asyncio.run(run())
    error = final.error or ErrorInfo("unknown", "the sync stopped without an outcome", True)
    code = 0 if final.state is SyncState.SYNCED else EXIT_RETRY if error.retryable else EXIT_FAIL
    where = final.relay or args.relay[0]
    cli_sync.print_end(final, where, stopped=stopped, live=args.live, peer=args.peer, as_json=args.json)
    return code


# -- the Sync screen ---------------------------------------------------------


def _ui(args: argparse.Namespace) -> int:
    return cli_ui.ui(args)


def _demo(args: argparse.Namespace) -> int:
    return cli_ui.demo(args)


# -- parser ------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """Argparse's complaints become one-line ``bad_usage`` errors, like every other mistake."""

    def error(self, message: str) -> NoReturn:
        raise cli_input.error("bad_usage", f"{self.prog}: {message}; see `{self.prog} --help`")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default (unless it has none), and the epilog's examples as written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        hidden = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if not hidden and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def _command(
    group: Any, path: str, summary: str, run: Callable[[argparse.Namespace], int] | None = None
) -> argparse.ArgumentParser:
    """Subcommand ``path`` (e.g. "peer list") whose ``--help`` shows defaults, its example and the exit codes."""
    command: argparse.ArgumentParser = group.add_parser(
        path.split()[-1],
        help=summary,
        description=summary[0].upper() + summary[1:] + ".",
        epilog=f"Example:\n  {EXAMPLES[path]}\n\n{EXIT_CODES}",
        formatter_class=_HelpFormatter,
    )
    if run is not None:
        command.set_defaults(run=run)
    return command


def _device_options(
    command: argparse.ArgumentParser, env: Mapping[str, str], *, required: bool = True, id_help: str = REPLICA_ID_HELP
) -> None:
    data, help = env.get(ENV_DATA) or None, f"the device's data directory (or set {ENV_DATA})"
    command.add_argument("--data", required=required and data is None, default=data, metavar="DIR", help=help)
    command.add_argument("--replica-id", type=cli_input.replica_id, help=id_help)


def _tls_options(command: argparse.ArgumentParser) -> None:
    cert = "serve wss:// (TLS) with this PEM certificate chain (with --tls-key)"
    command.add_argument("--tls-cert", metavar="FILE", help=cert)
    command.add_argument("--tls-key", metavar="FILE", help="the private key of --tls-cert (PEM)")


EXAMPLES = {
    "init": "replica init --data ./tablet-7 --replica-id tablet-7",
    "status": "replica status --data ./tablet-7",
    "sync": "replica sync --data ./tablet-7 --relay ws://127.0.0.1:8765 --credential tablet-7.cred",
    "credential": "replica credential show --data ./tablet-7",
    "credential show": "replica credential show --data ./tablet-7",
    "relay": "replica relay --data ./relay-data --host 0.0.0.0",
    "relay issue-credential": (
        "replica relay issue-credential --data ./relay-data --replica-id tablet-7 --docs 'campaign-7/*' > tablet-7.cred"
    ),
    "relay public-key": "replica relay public-key --data ./relay-data > relay.pub",
    "relay revoke": "replica relay revoke --data ./relay-data --replica-id tablet-7",
    "relay issued": "replica relay issued --data ./relay-data",
    "relay devices": "replica relay devices --data ./relay-data --stale 24h",
    "relay compact": "replica relay compact --data ./relay-data --keep 1000",
    "compact": "replica compact --data ./tablet-7",
    "peer": "replica peer serve --data ./tablet-7 --port 8766 --advertise",
    "peer serve": "replica peer serve --data ./tablet-7 --port 8766 --relay ws://10.0.0.5:8765 --live",
    "peer discover": "replica peer discover --data ./phone-3",
    "peer trust": "replica peer trust --data ./phone-3 --relay-key relay.pub",
    "peer key": "replica peer key --data ./phone-3",
    "peer list": "replica peer list --data ./phone-3 --json",
    "ui": "replica ui --data ./tablet-7 --relay ws://127.0.0.1:8765 --credential tablet-7.cred",
    "demo": "replica demo",
}


def build_parser(environ: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """The ``replica`` parser; ``environ`` (default ``os.environ``) gives the ``REPLICA_*`` defaults."""
    env = os.environ if environ is None else environ
    examples = "\n".join(f"  {line}" for line in dict.fromkeys(EXAMPLES.values()))
    parser = _Parser(
        prog="replica",
        description="CRDT replication for devices that work offline.",
        epilog=f"Examples:\n{examples}\n\nEnvironment (an option on the command line wins):\n"
        f"  {ENV_DATA}        --data of the commands on a device (never the relay's)\n"
        f"  {ENV_RELAY}       --relay of `replica sync`\n"
        f"  {ENV_CREDENTIAL}  --credential of `replica sync` (a file)\n\n{EXIT_CODES}",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"replica {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    init = _command(commands, "init", "create a device's data directory", _init)
    _device_options(init, env, id_help="the new device's replica id (default: a random one)")

    status = _command(commands, "status", "show the replica id, its documents and what is not yet synced", _status)
    _device_options(status, env)
    json_help = "print one JSON object: replica id, documents, unsynced, rejected, state, error, last synced"
    status.add_argument("--json", action="store_true", help=json_help)

    relay = _command(commands, "relay", "run the relay server (or manage its credentials)", _relay)
    relay.add_argument("--data", metavar="DIR", help="the relay's data directory (created if missing)")
    relay.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    relay.add_argument("--port", type=cli_input.port, default=8765, help="port to listen on (0 picks a free one)")
    cache_help = "memory budget (MB) of the documents kept loaded; the least recently used are unloaded"
    relay.add_argument("--doc-cache-mb", type=cli_input.megabytes, default=256.0, help=cache_help)
    _tls_options(relay)
    relay.add_argument("--log-format", choices=("human", "json"), default="human", help="log lines on stderr")
    redis_help = (
        "redis://HOST:PORT/DB: one of several relays sharing their log in Redis (docs/scale-out.md); "
        "Redis must run with appendonly yes and appendfsync always"
    )
    relay.add_argument("--redis", metavar="URL", help=redis_help)
    levels = ("debug", "info", "warning", "error")
    relay.add_argument("--log-level", choices=levels, default="info", help="info: one line per sync")
    limit = "per connection, twice that per device over all its connections (0: no limit)"
    relay.add_argument("--max-frames-per-second", type=cli_input.limit, default=500.0, help=f"frames {limit}")
    relay.add_argument("--max-mb-per-second", type=cli_input.limit, default=32.0, help=f"MB {limit}")
    cap = "connections one device may have open at once (0: no limit)"
    relay.add_argument("--max-connections-per-device", type=cli_input.limit, default=8, help=cap)
    relay_commands = relay.add_subparsers(dest="relay_command", metavar="COMMAND")
    issue = _command(
        relay_commands, "relay issue-credential", "print a credential signed by this relay", _issue_credential
    )
    issue.add_argument("--data", required=True, metavar="DIR", help="the relay's data directory")
    issue.add_argument("--replica-id", required=True, type=cli_input.replica_id, help="the device's replica id")
    patterns = "document patterns, e.g. 'c7/*'"
    issue.add_argument(
        "--docs", required=True, nargs="+", type=cli_input.docs_pattern, metavar="PATTERN", help=patterns
    )
    issue.add_argument("--expires", default="30d", help="a duration (30d, 12h) or a UTC date (2026-12-01)")
    bind = "the device's public key (ed25519:...), to bind the credential to it"
    issue.add_argument("--device-key", type=cli_input.device_key, help=bind)
    public = _command(
        relay_commands, "relay public-key", "print the relay's public key (for devices to pin)", _public_key
    )
    public.add_argument("--data", required=True, metavar="DIR", help="the relay's data directory")
    revoke = _command(relay_commands, "relay revoke", "revoke every credential issued to a device so far", _revoke)
    revoke.add_argument("--data", required=True, metavar="DIR", help="the relay's data directory")
    revoke.add_argument("--replica-id", required=True, type=cli_input.replica_id, help="the device's replica id")
    revoke.add_argument("--undo", action="store_true", help="take the revocation back")
    compact = _command(relay_commands, "relay compact", "replace old deltas with snapshots now", _relay_compact)
    compact.add_argument("--data", required=True, metavar="DIR", help="the relay's data directory")
    compact.add_argument("--keep", type=int, default=1000, help="newest deltas of each document kept one by one")
    summary = "list the devices this relay has seen: last contact and outcome, what they hold, credentials"
    listing = _command(relay_commands, "relay devices", summary, _relay_devices)
    listing.add_argument("--data", required=True, metavar="DIR", help="the relay's data directory")
    listing.add_argument("--json", action="store_true", help="one JSON object")
    stale_help = "mark devices not heard from for this long (30m, 24h, 7d)"
    listing.add_argument("--stale", type=cli_input.duration, default="24h", help=stale_help)
    issued = _command(relay_commands, "relay issued", "list the credentials this relay issued", _issued)
    issued.add_argument("--data", required=True, metavar="DIR", help="the relay's data directory")
    issued.add_argument("--json", action="store_true", help="one JSON object")

    sync = _command(commands, "sync", "sync a data directory with a relay (or a peer)", _sync)
    _device_options(sync, env)
    url, credential_file = env.get(ENV_RELAY) or None, env.get(ENV_CREDENTIAL) or None
    relay_help = (
        f"the relay, e.g. ws://127.0.0.1:8765 (or set {ENV_RELAY}, commas between several); "
        "repeat for the relays of one deployment: the next is tried after a failure"
    )
    sync.add_argument("--relay", action="append", required=url is None, metavar="URL", help=relay_help)
    sync.set_defaults(relay_env=url)
    file_help = f"file holding the credential (or set {ENV_CREDENTIAL}; without either: the last one given)"
    sync.add_argument("--credential", default=credential_file, metavar="FILE", help=file_help)
    sync.add_argument("--live", action="store_true", help="stay connected and sync continuously")
    sync.add_argument("--peer", action="store_true", help="the URL is another device serving peers, not the relay")
    sync.add_argument(
        "--timeout", type=cli_input.seconds, default=30.0, help="seconds without an answer before failing"
    )
    json_help = "print the final status as a JSON object (with --live: one per status change, one per line)"
    sync.add_argument("--json", action="store_true", help=json_help)
    sync.add_argument("--ca", metavar="FILE", help=cli_input.CA_HELP)

    summary = "replace changes already on the relay with snapshots (a smaller, faster data directory)"
    _device_options(_command(commands, "compact", summary, _compact), env)

    credential = _command(commands, "credential", "this device's credentials")
    credential_commands = credential.add_subparsers(dest="credential_command", metavar="COMMAND", required=True)
    summary = "the credential given to this device and the one bound to it"
    _device_options(_command(credential_commands, "credential show", summary, _credential_show), env)

    peer = _command(commands, "peer", "sync with other devices in the field")
    peer_commands = peer.add_subparsers(dest="peer_command", metavar="COMMAND", required=True)
    summary = "accept peers until Ctrl-C (and sync with the relay meanwhile, with --relay)"
    serve = _command(peer_commands, "peer serve", summary, _peer_serve)
    serve.add_argument("--host", default="0.0.0.0", help="address to listen on (0.0.0.0: every interface)")
    serve.add_argument("--port", type=cli_input.port, default=8766, help="port to listen on (0 picks a free one)")
    serve.add_argument("--advertise", action="store_true", help="advertise on the local network (mDNS)")
    serve.add_argument("--relay", metavar="URL", help="also sync with this relay, once at the start (or --live)")
    serve.add_argument("--credential", default=credential_file, metavar="FILE", help=file_help)
    serve.add_argument("--live", action="store_true", help="with --relay: stay connected to the relay")
    serve.add_argument(
        "--timeout", type=cli_input.seconds, default=30.0, help="with --relay: seconds without an answer before failing"
    )
    serve.add_argument("--ca", metavar="FILE", help=cli_input.CA_HELP)
    _tls_options(serve)
    serve.set_defaults(peer=False)
    discover = _command(
        peer_commands, "peer discover", "list peers advertised on the local network (mDNS)", _peer_discover
    )
    _device_options(discover, env, required=False)
    discover.add_argument("--timeout", type=cli_input.seconds, default=3.0, help="seconds to listen")
    trust = _command(
        peer_commands, "peer trust", "pin the relay's public key (`replica relay public-key`)", _peer_trust
    )
    trust.add_argument("--relay-key", required=True, metavar="KEY_OR_FILE", help="ed25519:... or a file holding it")
    trust.add_argument("--replace", action="store_true", help="replace a different key pinned before")
    key = _command(peer_commands, "peer key", "print this device's public key (to bind a credential to it)", _peer_key)
    listing = _command(peer_commands, "peer list", "show the peers this device synced with", _peer_list)
    listing.add_argument("--json", action="store_true", help="print one JSON object: the replica id and its peers")
    for command in (serve, trust, key, listing):
        _device_options(command, env)

    ui = _command(commands, "ui", "serve a device's Sync screen on 127.0.0.1 (a web page)", _ui)
    _device_options(ui, env)
    demo = _command(commands, "demo", "a relay, field devices and a field day, on one page", _demo)
    cli_ui.add_options(ui, demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``replica ARGV``; the exit status (0 done, 1 retrying can help, 2 it cannot)."""
    try:
        args = build_parser().parse_args(argv)
        code: int = args.run(args)
    except ReplicaError as exc:
        hint = "retrying may help" if exc.retryable else "retrying will not help"
        message = " ".join(exc.message.split())  # one line, whatever the message holds
        print(f"Error [{exc.code}]: {message} ({hint})", file=sys.stderr)
        return EXIT_RETRY if exc.retryable else EXIT_FAIL
    except KeyboardInterrupt:  # Ctrl-C before a command set up its own stop (or in one without it)
        print("Stopped.", file=sys.stderr)
        return EXIT_RETRY
    return code


if __name__ == "__main__":
    sys.exit(main())
