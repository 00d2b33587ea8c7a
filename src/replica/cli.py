"""The ``replica`` command line. The only module that prints or reads files
and the environment on behalf of the library."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from replica.errors import ErrorInfo, ReplicaError
from replica.replica import Replica
from replica.status import SyncState, SyncStatus

#: Exit codes: 0 done, 1 failed but retrying can help, 2 failed for good.
EXIT_RETRY = 1
EXIT_FAIL = 2
REPLICA_ID_HELP = "the device's replica id, used when the data directory is created (checked otherwise)"


def _status(args: argparse.Namespace) -> int:
    with Replica.open(args.data, replica_id=args.replica_id) as replica:
        print(f"Replica: {replica.id}")
        print(f"Data directory: {args.data}")
        names = replica.documents()
        print(f"Documents: {len(names)}")
        for name in names:
            contents = replica.doc(name).contents()
            parts = [f"{c}: {len(rows)} records" for c, rows in contents["records"].items()]
            parts += [f"text {t}: {len(s)} characters" for t, s in contents["texts"].items()]
            print(f"  {name}  ({', '.join(parts) or 'empty'})")
        status = replica.status()
        if status.last_synced_at is not None:
            print(f"Last synced: {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(status.last_synced_at))}")
        for line in status.lines:
            print(line)
    return 0


# -- relay -------------------------------------------------------------------


def _relay(args: argparse.Namespace) -> int:
    from replica.relay import Relay

    if args.data is None:
        raise SystemExit("replica relay: --data DIR is required")

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for number in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(number, stop.set)
        async with Relay(args.data, host=args.host, port=args.port) as relay:
            print(f"Relay {relay.replica_id} listening on {relay.url}", flush=True)
            print(f"Public key: {relay.public_key.to_text()}", flush=True)
            await stop.wait()
        print("Relay stopped; everything acknowledged is on disk.", flush=True)

    asyncio.run(serve())
    return 0


def _issue_credential(args: argparse.Namespace) -> int:
    from replica.credentials import PublicKey, parse_expiry
    from replica.relay import relay_identity

    now = time.time()
    try:
        expires_at = parse_expiry(args.expires, now=now)
    except ValueError as exc:
        raise SystemExit(f"replica relay issue-credential: {exc}") from exc
    relay_id, key = relay_identity(args.data)
    device_key = PublicKey.from_text(args.device_key).raw if args.device_key else None
    token = key.issue(
        issuer=relay_id,
        replica_id=args.replica_id,
        documents=args.docs,
        expires_at=expires_at,
        now=now,
        device_key=device_key,
    )
    print(token)
    expiry = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(expires_at))
    print(f"Credential for {args.replica_id} on {' '.join(args.docs)}, valid until {expiry}", file=sys.stderr)
    return 0


def _public_key(args: argparse.Namespace) -> int:
    from replica.relay import relay_identity

    _, key = relay_identity(args.data)
    print(key.public_key().to_text())
    return 0


# -- peers -------------------------------------------------------------------


def _peer_serve(args: argparse.Namespace) -> int:
    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for number in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(number, stop.set)
        with Replica.open(args.data, replica_id=args.replica_id) as replica:
            server = await replica.serve_peers(args.host, args.port)
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
                await stop.wait()
            finally:
                if advertiser is not None:
                    await advertiser.stop()
                await server.stop()
        print("Peer server stopped.", flush=True)

    asyncio.run(serve())
    return 0


def _peer_trust(args: argparse.Namespace) -> int:
    from replica.credentials import PublicKey
    from replica.trust import pin_relay_key

    text = Path(args.relay_key).read_text().strip() if Path(args.relay_key).is_file() else args.relay_key
    key = PublicKey.from_text(text)
    with Replica.open(args.data, replica_id=args.replica_id) as replica:
        pin_relay_key(replica, key, replace=args.replace)
        print(f"Device {replica.id} now trusts relay key {key.key_id} ({key.to_text()})")
    return 0


def _peer_key(args: argparse.Namespace) -> int:
    from replica.trust import device_key

    with Replica.open(args.data, replica_id=args.replica_id) as replica:
        print(device_key(replica).public_key().to_text())
    return 0


def _peer_list(args: argparse.Namespace) -> int:
    with Replica.open(args.data, replica_id=args.replica_id) as replica:
        peers = replica.peers()
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
    from replica import discovery
    from replica.trust import pinned_relay_key

    relay_key_id = None
    if args.data:
        with Replica.open(args.data) as replica:
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
    credential = Path(args.credential).read_text().strip() if args.credential else None

    async def run() -> SyncStatus:
        with Replica.open(args.data, replica_id=args.replica_id) as replica:
            show = _Progress()
            unsubscribe = replica.subscribe(show)
            try:
                return await replica.sync(
                    args.relay, credential=credential, live=args.live, timeout=args.timeout, peer=args.peer
                )
            finally:
                unsubscribe()
                show.end()

    try:
        final = asyncio.run(run())
    except KeyboardInterrupt:
        print("Sync stopped.", file=sys.stderr)
        return EXIT_RETRY
    if final.state is SyncState.SYNCED:
        print("Data Synced" if not args.peer else "Synced with the peer")
        for line in final.lines[1:]:
            print(line)
        return 0
    error = final.error or ErrorInfo("unknown", "the sync stopped without an outcome", True)
    print(f"Sync Failed: {error.message} [{error.code}]")
    print("Retrying can help." if error.retryable else "Retrying will not help; this needs an operator.")
    print(f"Data unsynced: {final.unsynced}")
    for line in final.refusal_lines:
        print(line)
    return EXIT_RETRY if error.retryable else EXIT_FAIL


class _Progress:
    """Prints sync progress to stderr: one rewritten line on a terminal, a
    line per second otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last = 0.0
        self.shown = ""

    def __call__(self, status: SyncStatus) -> None:
        p = status.progress
        if status.state is not SyncState.SYNCING or not (p.to_send or p.to_receive):
            return
        line = f"Sync in Progress: sent {p.sent}/{p.to_send}, received {p.received}/{p.to_receive}"
        now = time.monotonic()
        if line == self.shown or (not self.tty and now - self.last < 1.0):
            return
        self.shown, self.last = line, now
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)

    def end(self) -> None:
        if self.tty and self.shown:
            print(file=sys.stderr)


# -- parser ------------------------------------------------------------------


def _credential_show(args: argparse.Namespace) -> int:
    from replica.credentials import CredentialError
    from replica.trust import BOUND_CREDENTIAL, GIVEN_CREDENTIAL, pinned_relay_key

    with Replica.open(args.data, replica_id=args.replica_id) as replica:
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="replica", description="CRDT replication for devices that work offline.")
    commands = parser.add_subparsers(dest="command", required=True)

    status = commands.add_parser("status", help="show the replica id, its documents and what is not yet synced")
    status.add_argument("--data", required=True, metavar="DIR", help="data directory (created if missing)")
    status.add_argument("--replica-id", help=REPLICA_ID_HELP)
    status.set_defaults(run=_status)

    relay = commands.add_parser("relay", help="run the relay server (or manage its credentials)")
    relay.add_argument("--data", metavar="DIR", help="the relay's data directory (created if missing)")
    relay.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    relay.add_argument("--port", type=int, default=8765, help="port to listen on (default 8765; 0 picks one)")
    relay.set_defaults(run=_relay)
    relay_commands = relay.add_subparsers(dest="relay_command")
    issue = relay_commands.add_parser("issue-credential", help="print a credential signed by this relay")
    issue.add_argument("--data", required=True, metavar="DIR", help="the relay's data directory")
    issue.add_argument("--replica-id", required=True, help="the device's replica id")
    issue.add_argument("--docs", required=True, nargs="+", metavar="PATTERN", help="document patterns, e.g. 'c7/*'")
    issue.add_argument("--expires", default="30d", help="a duration (30d, 12h) or an ISO date (default 30d)")
    issue.add_argument("--device-key", help="the device's public key (ed25519:...), to bind the credential to it")
    issue.set_defaults(run=_issue_credential)
    public = relay_commands.add_parser("public-key", help="print the relay's public key (for devices to pin)")
    public.add_argument("--data", required=True, metavar="DIR", help="the relay's data directory")
    public.set_defaults(run=_public_key)

    sync = commands.add_parser("sync", help="sync a data directory with a relay")
    sync.add_argument("--data", required=True, metavar="DIR", help="the device's data directory")
    sync.add_argument("--replica-id", help=REPLICA_ID_HELP)
    sync.add_argument("--relay", required=True, metavar="URL", help="the relay, e.g. ws://127.0.0.1:8765")
    sync.add_argument("--credential", metavar="FILE", help="file holding the credential (default: the last used)")
    sync.add_argument("--live", action="store_true", help="stay connected and sync continuously")
    sync.add_argument("--peer", action="store_true", help="the URL is another device serving peers, not the relay")
    sync.add_argument("--timeout", type=float, default=30.0, help="seconds without an answer before failing")
    sync.set_defaults(run=_sync)

    credential = commands.add_parser("credential", help="this device's credentials")
    credential_commands = credential.add_subparsers(dest="credential_command", required=True)
    show = credential_commands.add_parser("show", help="the credential given to this device and the one bound to it")
    show.add_argument("--data", required=True, metavar="DIR", help="the device's data directory")
    show.add_argument("--replica-id", help=REPLICA_ID_HELP)
    show.set_defaults(run=_credential_show)

    peer = commands.add_parser("peer", help="sync with other devices in the field")
    peer_commands = peer.add_subparsers(dest="peer_command", required=True)
    serve = peer_commands.add_parser("serve", help="accept peers until Ctrl-C")
    serve.add_argument("--host", default="0.0.0.0", help="address to listen on (default: every interface)")
    serve.add_argument("--port", type=int, default=8766, help="port to listen on (default 8766; 0 picks one)")
    serve.add_argument("--advertise", action="store_true", help="advertise on the local network (mDNS)")
    serve.set_defaults(run=_peer_serve)
    discover = peer_commands.add_parser("discover", help="list peers advertised on the local network (mDNS)")
    discover.add_argument("--data", metavar="DIR", help="only peers vouched for by this device's relay")
    discover.add_argument("--timeout", type=float, default=3.0, help="seconds to listen (default 3)")
    discover.set_defaults(run=_peer_discover)
    trust = peer_commands.add_parser("trust", help="pin the relay's public key (from `replica relay public-key`)")
    trust.add_argument("--relay-key", required=True, metavar="KEY_OR_FILE", help="ed25519:... or a file holding it")
    trust.add_argument("--replace", action="store_true", help="replace a different key pinned before")
    trust.set_defaults(run=_peer_trust)
    key = peer_commands.add_parser("key", help="print this device's public key (to bind a credential to it)")
    key.set_defaults(run=_peer_key)
    listing = peer_commands.add_parser("list", help="show the peers this device synced with")
    listing.set_defaults(run=_peer_list)
    for command in (serve, trust, key, listing):
        command.add_argument("--data", required=True, metavar="DIR", help="the device's data directory")
        command.add_argument("--replica-id", help=REPLICA_ID_HELP)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except ReplicaError as exc:
        hint = "retrying may help" if exc.retryable else "retrying will not help"
        print(f"Error [{exc.code}]: {exc.message} ({hint})", file=sys.stderr)
        return EXIT_RETRY if exc.retryable else EXIT_FAIL
    return code


if __name__ == "__main__":
    sys.exit(main())
