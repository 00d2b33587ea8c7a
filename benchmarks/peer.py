"""Benchmark of peer-to-peer sync: two devices exchanging their offline deltas
directly, against the same exchange through a relay.

Both paths start from the same pair of devices (copied per run from one
template): A and B each enrolled once with a relay (relay key pinned, a
credential bound to the device key), then each made ``n`` offline record puts
in one ``replica.batch()`` into one shared document. The relay path is a real
relay process (``python -m replica.cli relay``, the relay the devices enrolled
with, copied) and the three sequential syncs its fewest round trips need: A
uploads, B uploads and downloads A's, A downloads B's. The peer path is B
served by a real ``python -m replica.cli peer serve`` process and one
``sync(url, peer=True)`` by A. Both paths put one device in the benchmark
process and its counterpart (relay or serving device) in another process, so
each gets the machine's two cores alike.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

from benchmarks._common import BenchmarkFailed, Result, Stopwatch, Target, alternate, register
from benchmarks.relay import LoadWatch, ServerProcess, _scratch, relay_process
from replica import Replica
from replica.status import SyncState, SyncStatus
from replica.trust import RELAY_KEY

DOCUMENT = "bench/shared"
COLLECTION = "r"
DEVICES = ("dev-a", "dev-b")


# -- setup (untimed) -------------------------------------------------------------


def _fill(replica: Replica, n: int) -> None:
    """``n`` offline record puts in one batch (one commit), one delta each."""
    records = replica.doc(DOCUMENT).records(COLLECTION)
    with replica.batch():
        for i in range(n):
            records.put(f"{replica.id}-{i}", {"name": "abc", "n": i})


def _expect(final: SyncStatus, what: str) -> None:
    if final.state is not SyncState.SYNCED:
        raise BenchmarkFailed(f"{what} ended {final.state.name}: {final.error}")


async def _template(folder: Path, n: int) -> None:
    """A relay directory and two enrolled devices, each holding ``n`` offline
    deltas of its own, in ``folder`` (``relay``, ``dev-a``, ``dev-b``)."""
    async with relay_process(folder / "relay") as (relay, credential):
        for name in DEVICES:
            with Replica.open(folder / name, replica_id=name) as device:
                _expect(await device.sync(relay.url, credential=credential(name)), f"{name}'s enrolment")
    for name in DEVICES:
        with Replica.open(folder / name) as device:
            if device.setting(RELAY_KEY) is None:
                raise BenchmarkFailed(f"{name} did not pin the relay key at its enrolment")
            _fill(device, n)


def _copy(template: Path, dirs: Iterator[Path], names: tuple[str, ...]) -> Path:
    """A fresh copy of the template's ``names`` directories."""
    folder = next(dirs)
    for name in names:
        shutil.copytree(template / name, folder / name)
    return folder


# -- correctness -------------------------------------------------------------------


def _check(replica: Replica, n: int) -> None:
    """Both devices' records, every one with its value, and both origins whole."""
    vv = replica.version_vector(DOCUMENT)
    if vv != dict.fromkeys(DEVICES, n):
        raise BenchmarkFailed(f"{replica.id} holds {vv}, expected {n} deltas of each of {DEVICES}")
    records = replica.doc(DOCUMENT).records(COLLECTION)
    if len(records) != 2 * n:
        raise BenchmarkFailed(f"{replica.id} holds {len(records)} records, expected {2 * n}")
    for name in DEVICES:
        for i in range(n):
            value = records.get(f"{name}-{i}")
            if value != {"name": "abc", "n": i}:
                raise BenchmarkFailed(f"{replica.id}: record {name}-{i} holds {value}")


def _check_both(folder: Path, n: int, unsynced: int) -> None:
    """Both devices hold everything, and count ``unsynced`` deltas not yet on
    the relay (0 after the relay path; 2n after a peer sync, which never moves
    the relay watermark)."""
    for name in DEVICES:
        with Replica.open(folder / name) as device:
            _check(device, n)
            if device.status().unsynced != unsynced:
                raise BenchmarkFailed(f"{name} counts {device.status().unsynced} deltas unsynced, expected {unsynced}")


# -- the two paths -----------------------------------------------------------------


#: The relay path's syncs: (device, what, deltas it must send, deltas it must receive) for ``n`` each way.
LEGS = (("dev-a", "A up", 1, 0), ("dev-b", "B up+down", 1, 1), ("dev-a", "A down", 0, 1))


def _expect_moved(final: SyncStatus, what: str, sent: int, received: int) -> None:
    """``final`` is SYNCED after sending and receiving exactly these counts."""
    _expect(final, what)
    if (final.progress.sent, final.progress.received) != (sent, received):
        raise BenchmarkFailed(
            f"{what}: sent {final.progress.sent} and received {final.progress.received}, expected {sent}, {received}"
        )


async def _through_relay(folder: Path, n: int, others: list[float], legs: dict[str, list[float]]) -> float:
    """A up, B up and down, A down; timed from A's first sync call to the end
    of the last (the relay and both devices already open)."""
    async with relay_process(folder / "relay") as (relay, _):
        with Replica.open(folder / "dev-a") as a, Replica.open(folder / "dev-b") as b:
            devices = {"dev-a": a, "dev-b": b}
            with LoadWatch(lambda: [os.getpid(), relay.pid]) as load, Stopwatch() as sw:
                for name, what, up, down in LEGS:
                    began = sw.lap()
                    _expect_moved(await devices[name].sync(relay.url), what, up * n, down * n)
                    legs[what].append(sw.lap() - began)
            others.append(load.others)
    return sw.seconds


async def _peer_to_peer(folder: Path, n: int, others: list[float]) -> float:
    """B serving peers in its own process, A's one peer sync; timed from A's
    sync call to its return (``SYNCED``: B acknowledged A's deltas as durable,
    and A stored all of B's)."""
    server = ServerProcess(
        [
            sys.executable,
            "-m",
            "replica.cli",
            "peer",
            "serve",
            "--data",
            str(folder / "dev-b"),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
        ],
        folder / "dev-b.log",
    )
    try:
        with Replica.open(folder / "dev-a") as a:
            with LoadWatch(lambda: [os.getpid(), server.pid]) as load, Stopwatch() as sw:
                _expect_moved(await a.sync(server.url, peer=True), "A's peer sync", n, n)
            others.append(load.others)
    finally:
        await server.stop()
    if server.killed or server.proc.returncode != 0:
        raise BenchmarkFailed(f"the peer server did not stop cleanly ({server.proc.returncode}); log: {server.log}")
    return sw.seconds


def _measured(
    template: Path,
    dirs: Iterator[Path],
    n: int,
    names: tuple[str, ...],
    path: Callable[[Path], Awaitable[float]],
    unsynced: int,
) -> Callable[[], float]:
    """One measured run of ``path`` on a fresh copy of the template, checked after."""

    async def timed(folder: Path) -> float:
        return await path(folder)

    def run() -> float:
        folder = _copy(template, dirs, names)
        seconds = asyncio.run(timed(folder))
        _check_both(folder, n, unsynced)
        shutil.rmtree(folder)
        return seconds

    return run


@register("peer_vs_relay")
def peer_vs_relay(quick: bool) -> Result:
    """Two devices exchanging ``n`` offline deltas each way: one peer sync (B
    serving) vs the same exchange through a relay (A up, B up and down, A down)."""
    n, repeats = (2_000, 4) if quick else (20_000, 4)
    result = Result(
        "peer_vs_relay",
        params={"deltas_each_way": n, "repeats": repeats, "document": DOCUMENT},
    )
    others: dict[str, list[float]] = {"relay": [], "peer": []}
    legs: dict[str, list[float]] = {what: [] for _, what, _, _ in LEGS}
    with _scratch() as dirs:
        template = next(dirs)
        asyncio.run(_template(template, n))
        relay_run = _measured(
            template, dirs, n, ("relay", *DEVICES), lambda f: _through_relay(f, n, others["relay"], legs), 0
        )
        peer_run = _measured(template, dirs, n, DEVICES, lambda f: _peer_to_peer(f, n, others["peer"]), 2 * n)
        relay_seconds, peer_seconds = alternate(repeats, relay_run, peer_run)
    relay_fig = result.figure("through a relay: A up, B up+down, A down", "s", relay_seconds)
    for what, samples in legs.items():
        result.figure(f"  of which {what}", "s", samples)
    peer_fig = result.figure("peer to peer: one sync, B serving", "s", peer_seconds)
    result.figure("through a relay", "deltas/s", [2 * n / s for s in relay_seconds])
    result.figure("peer to peer", "deltas/s", [2 * n / s for s in peer_seconds])
    speedup = result.ratio("relay seconds / peer seconds", relay_fig, peer_fig)
    result.targets.append(Target("relay seconds / peer seconds", speedup, 1.0, guard=True))
    busiest = max(others["relay"] + others["peer"])
    result.params["others_cores"] = {k: [round(x, 2) for x in v] for k, v in others.items()}
    if busiest > 0.2:
        result.notes.append(f"other processes kept up to {busiest:.2f} cores busy during some runs: figures are skewed")
    return result
