"""How ``replica sync`` (and ``replica peer serve --relay``) runs a sync and
what it prints meanwhile, from the stream of :class:`~replica.status.SyncStatus`
snapshots ``Replica.subscribe`` delivers.

- :func:`run`: the sync, until it ends or a signal stops it;
- :func:`print_outcome`: the lines of a one-shot sync's outcome;

- :class:`Progress`: a one-shot sync's progress on stderr: one rewritten line
  on a terminal, at most a line per second otherwise, and (not on a
  terminal) the final counts at the end.
- :class:`LiveLines`: a live sync's story on stdout, one line per change,
  terminal or not: connecting, connected, progress, caught up, counts after
  that, connection lost, the next try (the caller prints the stop). Counts that change faster
  than once a second are printed at most once a second, the latest last.
- :class:`JsonLines`: ``--json``: one JSON object per status change (live) and
  one for the final status, never the same object twice in a row.

A reporter is called with each status, then :meth:`end` once with the final
status; none of them decides anything: they only read statuses.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from typing import Any, Protocol

from replica import cli_input
from replica.errors import ErrorInfo
from replica.replica import Replica
from replica.status import SyncState, SyncStatus

#: Least time between two lines of counts.
THROTTLE = 1.0


class Reporter(Protocol):
    def __call__(self, status: SyncStatus) -> None: ...

    def end(self, final: SyncStatus, *, stopped: bool) -> None: ...


def counts(status: SyncStatus) -> str:
    p = status.progress
    return f"sent {p.sent}/{p.to_send}, received {p.received}/{p.to_receive}"


def clock(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at))


class Progress:
    """A one-shot sync's progress, on stderr."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last = 0.0
        self.shown = ""

    def __call__(self, status: SyncStatus) -> None:
        p = status.progress
        if status.state is not SyncState.SYNCING or not (p.to_send or p.to_receive):
            return
        line = f"Sync in Progress: {counts(status)}"
        now = time.monotonic()
        if line == self.shown or (not self.tty and now - self.last < THROTTLE):
            return
        self.shown, self.last = line, now
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)

    def end(self, final: SyncStatus, *, stopped: bool) -> None:
        if self.tty:
            if self.shown:
                print(file=sys.stderr)
        elif self.shown or final.progress.to_send or final.progress.to_receive:
            print(f"Sync ended: {counts(final)}", file=sys.stderr, flush=True)


class LiveLines:
    """A live sync's story, one line per change, on stdout."""

    def __init__(self, url: str, *, peer: bool) -> None:
        self.where = f"the peer at {url}" if peer else f"the relay at {url}"
        self.shown: SyncStatus | None = None
        self.counted = ""  # the last line of counts printed
        self.counted_at = 0.0
        self.pending: asyncio.TimerHandle | None = None
        self.latest: SyncStatus | None = None

    def __call__(self, status: SyncStatus) -> None:
        before, self.shown = self.shown, status
        for line in self._changes(before, status):
            self._print(line)
        self.latest = status
        self._count(status)

    def _changes(self, before: SyncStatus | None, now: SyncStatus) -> list[str]:
        lines: list[str] = []
        was_connected = before is not None and before.connected
        lost = was_connected and not now.connected
        attempt = before is None or (before.retry_at is not None and now.retry_at is None)
        if attempt and now.state is SyncState.SYNCING and not now.connected:
            lines.append(f"Connecting to {self.where}")
        if now.connected and not was_connected:
            who = f"the peer {now.peer}" if now.peer is not None else self.where
            lines.append(f"Connected to {who}")
        failed = now.state is SyncState.FAILED and (before is None or before.state is not SyncState.FAILED)
        if lost and not failed:
            lines.append("Connection lost")
        if failed and now.error is not None:
            lines.append(f"{'Connection lost. ' if lost else ''}Sync Failed: {now.error.message} [{now.error.code}]")
            lines.extend(now.refusal_lines)
        caught_up = now.state is SyncState.SYNCED and (
            before is None or before.state is not SyncState.SYNCED or before.last_synced_at != now.last_synced_at
        )
        if caught_up:
            lines.append(f"Caught up: {counts(now)}. {now.label}")
            self.counted = self._counts_line(now)
        if now.retry_at is not None and (before is None or before.retry_at != now.retry_at):
            wait = max(0.0, now.retry_at - time.time())
            lines.append(f"Next try at {clock(now.retry_at)} (in {wait:.0f} s). Data unsynced: {now.unsynced}")
        return lines

    @staticmethod
    def _counts_line(status: SyncStatus) -> str:
        if status.state is SyncState.SYNCING:
            return f"Sync in Progress: {counts(status)}"
        p = status.progress  # after catching up, only what moved live: no totals to reach
        return f"Live: sent {p.sent}, received {p.received} on this connection. Data unsynced: {status.unsynced}"

    def _count(self, status: SyncStatus) -> None:
        """The counts, if they changed: now, or (if a line of counts went out
        less than a second ago) a second after it, with the latest counts."""
        p = status.progress
        nothing_to_do = status.state is SyncState.SYNCING and not (p.to_send or p.to_receive)
        if not status.connected or nothing_to_do or self._counts_line(status) == self.counted or self.pending:
            return
        wait = self.counted_at + THROTTLE - time.monotonic()
        if wait <= 0:
            self._print_counts()
            return
        try:
            self.pending = asyncio.get_running_loop().call_later(wait, self._print_counts)
        except RuntimeError:  # no loop: print now
            self._print_counts()

    def _print_counts(self) -> None:
        self.pending = None
        status = self.latest
        if status is None or not status.connected:
            return
        line = self._counts_line(status)
        if line != self.counted:
            self.counted, self.counted_at = line, time.monotonic()
            self._print(line)

    @staticmethod
    def _print(line: str) -> None:
        print(line, flush=True)

    def end(self, final: SyncStatus, *, stopped: bool) -> None:
        if self.pending is not None:
            self.pending.cancel()
            self.pending = None


class JsonLines:
    """``--json``: one JSON object per line on stdout for each status change
    (``live``) and for the final status, never the same object twice in a row.
    With ``peer`` only the final one: the status changes are the relay's. A
    final object of a sync stopped by Ctrl-C has ``"stopped": true``."""

    def __init__(self, replica_id: str, *, peer: bool, live: bool) -> None:
        self.replica_id = replica_id
        self.peer = peer
        self.live = live
        self.shown: dict[str, Any] | None = None

    def __call__(self, status: SyncStatus) -> None:
        if self.live and not self.peer:
            self._show(status, {})

    def _show(self, status: SyncStatus, extra: dict[str, Any]) -> None:
        value = {**cli_input.status_json(self.replica_id, status), "peer": self.peer, **extra}
        if value != self.shown:
            cli_input.print_json(value)
            self.shown = value

    def end(self, final: SyncStatus, *, stopped: bool) -> None:
        self._show(final, {"stopped": True} if stopped else {})


async def run(
    replica: Replica,
    args: argparse.Namespace,
    credential: str | None,
    report: Reporter,
    stop: asyncio.Event,
) -> tuple[SyncStatus, bool]:
    """Sync with ``args.relay`` until it ends or ``stop`` is set (then stop
    it); the final status, and whether it was stopped."""
    unsubscribe = replica.subscribe(report)
    syncing = asyncio.ensure_future(
        replica.sync(
            args.relay,
            credential=credential,
            live=args.live,
            timeout=args.timeout,
            peer=args.peer,
            tls=cli_input.client_tls(args),
        )
    )
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({syncing, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        unsubscribe()  # a stop is reported once, by end()
    stopped = not syncing.done()
    if stopped:
        await replica.stop_sync(args.relay)
        with contextlib.suppress(asyncio.CancelledError):
            await syncing
        final = replica.status()
    else:
        final = syncing.result()
    report.end(final, stopped=stopped)
    return final, stopped


def print_end(final: SyncStatus, url: str, *, stopped: bool, live: bool, peer: bool, as_json: bool = False) -> None:
    """The last lines of a sync: stopped by a signal (with what is not on the
    relay; on stderr beside JSON), a live sync that gave up (it printed why as
    it happened), or a one-shot sync's outcome."""
    if stopped:
        print(f"Sync stopped. Data unsynced: {final.unsynced}", file=sys.stderr if as_json else sys.stdout, flush=True)
    elif as_json:
        return
    elif live:
        print(f"The live sync stopped: retrying will not help. Data unsynced: {final.unsynced}", flush=True)
    else:
        print_outcome(final, url, peer=peer)


def print_outcome(final: SyncStatus, url: str, *, peer: bool) -> None:
    """The lines of a one-shot sync's outcome."""
    if final.state is SyncState.SYNCED and final.peer is not None:
        print(f"Synced with the peer {final.peer}")
        if not peer:
            print(f"{url} is a device serving peers, not the relay: nothing became safe on the relay")
        print(f"Data unsynced: {final.unsynced}")
        return
    if final.state is SyncState.SYNCED:
        print("Data Synced")
        for line in final.lines[1:]:
            print(line)
        return
    error = final.error or ErrorInfo("unknown", "the sync stopped without an outcome", True)
    print(f"Sync Failed: {error.message} [{error.code}]")
    print("Retrying can help." if error.retryable else "Retrying will not help; this needs an operator.")
    print(f"Data unsynced: {final.unsynced}")
    for line in final.refusal_lines:
        print(line)
