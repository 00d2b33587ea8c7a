"""Catch-up against pycrdt-websocket and @y/websocket-server: a fresh client joining a warm server that holds a
document of 10,000 records written by 100,000 updates (each record rewritten 10 times).

Built once, untimed, for each side:

- replica: a source device makes the updates (one delta each, committed in batches) and
  uploads them to a relay process, which compacts as it does by default (a snapshot, the
  newest 1,000 deltas one by one) when it next starts;
- pycrdt-websocket: a writer client (pycrdt ``Doc`` + ``Provider``) makes the same updates
  in rounds of 10,000 (each round rewrites every record; a round waits until an observer
  client shows its last update, so that the room's queue, 65,536, never drops any), and the
  benchmark waits until the server's SQLite store holds all 10,000 records: its history is
  complete, as the issue asks, before any timing.

Timed (median of the repeats; pycrdt-websocket's runs first, then replica's): a fresh
client connects to the running server and waits until it holds every record with its
final value. replica: ``sync()`` returns ``SYNCED`` and the document holds the last
record written (every value is checked after, untimed). pycrdt-websocket: the client's
Doc holds 10,000 records, the last one written with its final value; every value is
checked after. replica's figure includes its
fsynced LMDB commit of what it received; pycrdt-websocket's
client keeps the document in memory only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

from pycrdt import Doc

from benchmarks._common import BenchmarkFailed, Result, Stopwatch, register
from benchmarks._node import node_missing, y_websocket_node_process
from benchmarks.anchors import (
    COLLECTION,
    DOCUMENT,
    POLL,
    _count_keys,
    _read_store,
    y_clients,
    y_put,
    y_records,
    ywebsocket_process,
)
from benchmarks.relay import ServerProcess, _scratch, relay_process
from replica import Replica
from replica.status import SyncState

RECORDS = 10_000
REWRITES = 10


def _final(records: int, rewrites: int) -> dict[str, int]:
    return {f"r{k}": (rewrites - 1) * records + k for k in range(records)}


async def _build_replica(source: Path, relay_dir: Path, records: int, rewrites: int) -> None:
    with Replica.open(source, replica_id="catchupsrc") as device:
        device.compact_every = None
        rows = device.doc(DOCUMENT).records(COLLECTION)
        for round_ in range(rewrites):
            with device.batch():
                for k in range(records):
                    rows.put(f"r{k}", {"name": "abc", "n": round_ * records + k})
        async with relay_process(relay_dir) as (relay, credential):
            status = await device.sync(relay.url, credential=credential(device.id), timeout=300)
            if status.state is not SyncState.SYNCED or status.unsynced:
                raise BenchmarkFailed(f"the upload ended {status}")
    # The relay compacts what is due when it starts (as a running one does every 30 s): the
    # relay each join starts has compacted before it listens, outside the timing.


async def _join_replica(relay_dir: Path, device_dir: Path, expected: dict[str, int]) -> float:
    async with relay_process(relay_dir) as (relay, credential):
        token = credential("catchupnew")
        with Replica.open(device_dir, replica_id="catchupnew") as fresh, Stopwatch() as sw:
            status = await fresh.sync(relay.url, credential=token, timeout=300)
            rows = fresh.doc(DOCUMENT).records(COLLECTION)
            last = rows.get(f"r{len(expected) - 1}")  # what the other side's clock stops on, too
            seconds = sw.lap()
            held = {key: value["n"] for key, value in rows.items()}  # every value, untimed
            if last is None or len(rows) != len(expected):
                raise BenchmarkFailed(f"replica's new device holds {len(rows)} records")
    if status.state is not SyncState.SYNCED or held != expected:
        raise BenchmarkFailed(f"replica's new device ended {status.state.name} holding {len(held)} records")
    return seconds


async def _catchup_y(
    server_context: AbstractAsyncContextManager[ServerProcess],
    records: int,
    rewrites: int,
    repeats: int,
    name: str,
    stored: Callable[[], Awaitable[int]] | None = None,
) -> list[float]:
    """The y-protocols side: a writer client builds the history on a server (waiting until
    ``stored()`` counts every record, if given), then fresh clients join, timed."""
    expected = _final(records, rewrites)
    last_key = f"r{records - 1}"
    async with server_context as server:
        writer: Doc[Any] = Doc()
        observer: Doc[Any] = Doc()
        async with y_clients(server.url, [writer, observer]):
            rows, seen = y_records(writer), y_records(observer)
            for round_ in range(rewrites):
                for k in range(records):
                    y_put(rows, f"r{k}", round_ * records + k)
                target = round_ * records + records - 1
                deadline = time.monotonic() + 120
                while not (last_key in seen and seen[last_key]["n"] == target):
                    if time.monotonic() > deadline:
                        raise BenchmarkFailed(f"{name}: round {round_} never reached the observer")
                    await asyncio.sleep(POLL)
            deadline = time.monotonic() + 300
            while stored is not None and await stored() < records:
                if time.monotonic() > deadline:
                    raise BenchmarkFailed(f"{name}: its store never held every record")
                await asyncio.sleep(0.5)
        times = []
        for _ in range(repeats):
            fresh: Doc[Any] = Doc()
            got = y_records(fresh)
            with Stopwatch() as sw:
                async with y_clients(server.url, [fresh]):
                    deadline = time.monotonic() + 300
                    while not (len(got) >= records and last_key in got and got[last_key]["n"] == expected[last_key]):
                        if time.monotonic() > deadline:
                            raise BenchmarkFailed(f"{name}: a fresh client got {len(got)} records")
                        await asyncio.sleep(POLL)
                    times.append(sw.lap())
            held = {key: value["n"] for key, value in got.items()}
            if held != expected:
                raise BenchmarkFailed(f"{name}: a fresh client holds {len(held)} records, not the final ones")
    return times


def _catchup_ywebsocket(data: Path, records: int, rewrites: int, repeats: int) -> list[float]:
    async def stored() -> int:
        return await asyncio.to_thread(_read_store, data, _count_keys) or 0

    return asyncio.run(_catchup_y(ywebsocket_process(data), records, rewrites, repeats, "pycrdt-websocket", stored))


def _catchup_node(log: Path, records: int, rewrites: int, repeats: int) -> list[float]:
    return asyncio.run(_catchup_y(y_websocket_node_process(log), records, rewrites, repeats, "@y/websocket-server"))


@register("anchor_catchup")
def anchor_catchup(quick: bool) -> Result:
    """A fresh client joining a warm server's document of 10,000 records written by
    100,000 updates: replica (relay compacting) vs pycrdt-websocket (store complete)."""
    records, rewrites, repeats = (1_000, 10, 1) if quick else (RECORDS, REWRITES, 3)
    result = Result("anchor_catchup", params={"records": records, "updates": records * rewrites, "repeats": repeats})
    expected = _final(records, rewrites)
    with _scratch() as dirs:
        source, relay_dir, ydata = next(dirs), next(dirs), next(dirs)
        asyncio.run(_build_replica(source, relay_dir, records, rewrites))
        ytimes = _catchup_ywebsocket(ydata, records, rewrites, repeats)
        missing = node_missing()
        ntimes = None if missing else _catchup_node(next(dirs).with_suffix(".log"), records, rewrites, repeats)
        subj = [asyncio.run(_join_replica(relay_dir, next(dirs), expected)) for _ in range(repeats)]
    theirs = result.figure("pycrdt-websocket: fresh client holds every record", "s", ytimes)
    ours = result.figure("replica: fresh device SYNCED (stored, fsynced) and read", "s", subj)
    result.ratio("replica / pycrdt-websocket time", ours, theirs)
    if ntimes is None:
        result.notes.append(f"@y/websocket-server left out: {missing}")
    else:
        node = result.figure("@y/websocket-server: fresh client holds every record", "s", ntimes)
        result.ratio("replica / @y/websocket-server time", ours, node)
        result.notes.append(
            "@y/websocket-server (Node.js, from npm; its own setupWSConnection) keeps documents in memory: no store "
            "to wait for, and a fresh client is sent the room's Y.Doc state (sync step 2)"
        )
    result.notes.append(
        "pycrdt-websocket's fresh clients join one warm server, one after another; then replica's, each against a "
        "relay process started for it on the built data directory (it serves the snapshot from disk)"
    )
    return result
