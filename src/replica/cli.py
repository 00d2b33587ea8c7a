"""The ``replica`` command line. The only module that prints."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from replica.errors import ReplicaError
from replica.replica import Replica


def _status(args: argparse.Namespace) -> int:
    with Replica.open(args.data) as replica:
        print(f"Replica: {replica.id}")
        print(f"Data directory: {args.data}")
        names = replica.documents()
        print(f"Documents: {len(names)}")
        for name in names:
            contents = replica.doc(name).contents()
            parts = [f"{c}: {len(rows)} records" for c, rows in contents["records"].items()]
            parts += [f"text {t}: {len(s)} characters" for t, s in contents["texts"].items()]
            print(f"  {name}  ({', '.join(parts) or 'empty'})")
        print(replica.status().label)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="replica", description="CRDT replication for devices that work offline.")
    commands = parser.add_subparsers(dest="command", required=True)
    status = commands.add_parser("status", help="show the replica id, its documents and what is not yet synced")
    status.add_argument("--data", required=True, metavar="DIR", help="data directory (created if missing)")
    status.set_defaults(run=_status)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except ReplicaError as exc:
        hint = "retrying may help" if exc.retryable else "retrying will not help"
        print(f"Error [{exc.code}]: {exc.message} ({hint})", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
