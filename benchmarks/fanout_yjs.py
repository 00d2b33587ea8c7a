"""Fan-out and idle connections side by side with ``@y/websocket-server`` (Node.js, npm).

``fanout_vs_ywebsocket``: one writer at 200 updates/s, 50 live readers, the
latency from each write to its arrival at every reader; replica's relay (its
writer is an on-disk replica and the relay acknowledges durably; the readers
are in-memory replicas, each taking the whole receive path: checks, apply,
store, ack) against ``@y/websocket-server`` (pycrdt ``Doc`` + ``Provider``
clients, documents in the server's memory only). The same processes layout
for both: the server, the writer in this process, the readers in
``RECEIVER_PROCESSES`` child processes.

``idle_vs_ywebsocket``: resident memory per idle connection: replica's relay
holding caught-up live devices, against ``@y/websocket-server`` holding
clients that did the y-protocol sync handshake (sync step 1 -> 2) and then
idle.

Both need Node.js and ``npm install --prefix benchmarks/node`` (``.ci/run``
does it); without them they are skipped, saying why.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from pycrdt import Doc, Map, Provider, create_sync_message
from websockets.asyncio.client import ClientConnection, connect

from benchmarks._common import BenchmarkFailed, Result, Target, register
from benchmarks._node import node_missing, y_websocket_node_process
from benchmarks._ywebsocket_server import WS_MAX_SIZE, WebsocketChannel
from benchmarks.relay import (
    CATCH_UP_SECONDS,
    RECEIVER_PROCESSES,
    FanoutRun,
    MemoryRun,
    _Children,
    _cores,
    _cpu_now,
    _fanout_replica,
    _hold,
    _idle_replica,
    _paced,
    _raise_fd_limit,
    _scratch,
    _split,
    _summarize,
    percentile,
)

ROOM = "bench/live"


async def _providers(url: str, docs: list[Doc[Any]], stack: Any) -> list[Provider]:
    sockets = [
        await stack.enter_async_context(
            connect(f"{url}/{ROOM}", max_size=WS_MAX_SIZE, compression=None, open_timeout=30)
        )
        for _ in docs
    ]
    return [
        await stack.enter_async_context(Provider(doc, WebsocketChannel(ws, ROOM)))
        for doc, ws in zip(docs, sockets, strict=True)
    ]


def _recorder(seen: dict[str, float]) -> Any:
    """A map observer noting when each key first arrived (pycrdt passes the
    transaction too when the callback takes two arguments: this one takes one)."""

    def changed(event: Any) -> None:
        now = time.time()
        for key in event.keys:
            seen.setdefault(key, now)

    return changed


def _y_readers_main(url: str, count: int, conn: Connection) -> None:
    """Child process: ``count`` pycrdt ``Doc`` + ``Provider`` readers, each
    recording when each key of the root map arrived (its value is the write time)."""
    asyncio.run(_y_readers(url, count, conn))


async def _y_readers(url: str, count: int, conn: Connection) -> None:
    from contextlib import AsyncExitStack

    loop = asyncio.get_running_loop()
    docs: list[Doc[Any]] = [Doc() for _ in range(count)]
    arrivals: list[dict[str, float]] = [{} for _ in docs]
    maps = [doc.get("r", type=Map) for doc in docs]
    # Kept referenced: a subscription lives as long as its Map object and the handle.
    subscriptions = [m.observe(_recorder(seen)) for m, seen in zip(maps, arrivals, strict=True)]
    assert len(subscriptions) == len(maps)
    async with AsyncExitStack() as stack:
        await _providers(url, docs, stack)
        deadline = time.monotonic() + 60
        while any("seed" not in seen for seen in arrivals):  # synced with the room
            if time.monotonic() > deadline:
                raise BenchmarkFailed("the y-websocket readers did not get the seed")
            await asyncio.sleep(0.02)
        conn.send("ready")
        expected, _ = await loop.run_in_executor(None, conn.recv)
        deadline = time.monotonic() + CATCH_UP_SECONDS
        while time.monotonic() < deadline and any(len(seen) < expected + 1 for seen in arrivals):
            await asyncio.sleep(0.05)
        rows: list[list[float]] = []
        problems: list[str] = []
        for index, (doc, seen) in enumerate(zip(docs, arrivals, strict=True)):
            records = doc.get("r", type=Map)
            row = []
            for k in range(expected):
                key = f"k{k}"
                if key in seen:
                    value = records[key]
                    if not isinstance(value, float):
                        problems.append(f"reader {index}: {key} holds {value!r}")
                        row.append(math.nan)
                    else:
                        row.append(seen[key] - value)
                else:
                    row.append(math.nan)
            rows.append(row)
        conn.send((rows, problems))


async def _fanout_y(dirs: Iterator[Path], devices: int, count: int, rate: float) -> FanoutRun:
    from contextlib import AsyncExitStack

    async with y_websocket_node_process(next(dirs).with_suffix(".log")) as server:
        writer: Doc[Any] = Doc()
        records = writer.get("r", type=Map)
        async with AsyncExitStack() as stack:
            await _providers(server.url, [writer], stack)
            records["seed"] = 0.0
            sizes = [len(group) for group in _split(list(range(devices)), RECEIVER_PROCESSES)]
            children = _Children(_y_readers_main, [(server.url, size) for size in sizes])
            try:
                await children.wait_ready(120)
                cpu0 = _cpu_now(server.pid, children)
                began = time.monotonic()

                def write(k: int) -> None:
                    records[f"k{k}"] = time.time()

                write_rate = await _paced(count, rate, write)
                wall = time.monotonic() - began
                cpu1 = _cpu_now(server.pid, children)
                rows, problems = await children.collect(count)
            finally:
                children.close()
    if problems:
        raise BenchmarkFailed(f"{len(problems)} wrong arrivals, first: {problems[0]}")
    return _summarize(rows, count, write_rate, _cores(cpu0, cpu1, wall))


@register("fanout_vs_ywebsocket")
def fanout_vs_ywebsocket(quick: bool) -> Result:
    """1 writer at 200 updates/s, 50 live readers: replica's relay vs @y/websocket-server."""
    devices, rate, seconds, repeats = (10, 200.0, 2.0, 1) if quick else (50, 200.0, 10.0, 3)
    count = int(rate * seconds)
    result = Result(
        "fanout_vs_ywebsocket",
        params={"readers": devices, "rate": rate, "updates": count, "repeats": repeats, "nproc": os.cpu_count()},
    )
    missing = node_missing()
    if missing is not None:
        result.status = "skipped"
        result.notes.append(f"@y/websocket-server left out: {missing}")
        return result
    runs: dict[str, list[FanoutRun]] = {"replica": [], "light": [], "y": []}
    with _scratch() as dirs:
        for i in range(repeats):  # rotate the order, so that drift hits each alike
            order = ["replica", "light", "y"][i % 3 :] + ["replica", "light", "y"][: i % 3]
            for label in order:
                if label == "replica":
                    runs[label].append(asyncio.run(_fanout_replica(dirs, devices, count, rate)))
                elif label == "light":
                    runs[label].append(asyncio.run(_fanout_replica(dirs, devices, count, rate, light=True)))
                else:
                    runs[label].append(asyncio.run(_fanout_y(dirs, devices, count, rate)))
    ms = 1000.0
    p99 = {}
    names = (
        ("replica", "replica relay"),
        ("light", "replica relay, readers storing nothing"),
        ("y", "@y/websocket-server"),
    )
    for label, name in names:
        got = runs[label]
        p99[label] = result.figure(f"{name}: to every reader p99", "ms", [percentile(r.worst, 0.99) * ms for r in got])
        result.figure(f"{name}: to every reader p50", "ms", [percentile(r.worst, 0.5) * ms for r in got])
        result.figure(f"{name}: any (reader, update) p99", "ms", [percentile(r.pairs, 0.99) * ms for r in got])
        result.params[f"{label}_write_rate"] = [round(r.write_rate, 1) for r in got]
        result.params[f"{label}_cpu_cores"] = [{k: round(v, 2) for k, v in r.cpu.items()} for r in got]
    ratio = result.ratio("p99 to every reader: replica / @y/websocket-server", p99["replica"], p99["y"])
    result.targets.append(Target("p99 replica / @y/websocket-server", ratio, 1.0, at_least=False, guard=False))
    light = result.ratio("p99 to every reader: readers storing nothing / @y/websocket-server", p99["light"], p99["y"])
    result.targets.append(
        Target("p99 replica (readers storing nothing) / @y/websocket-server", light, 1.0, at_least=False, guard=False)
    )
    result.notes.append(
        "replica: every update is a delta stored in the writer's LMDB log, sent, stored and acknowledged by the "
        "relay (group commit), fanned out, checked, applied and stored by each reader (in-memory replicas); "
        "@y/websocket-server keeps the document in "
        "memory and its clients store nothing. 'readers storing nothing': the same writer and relay, the readers "
        "light clients of replica's protocol that ack each frame at once and store nothing, as the y clients "
        f"(the relay's own share); readers in {RECEIVER_PROCESSES} processes, as the y ones"
    )
    return result


async def _idle_y(url: str) -> ClientConnection:
    """A y-protocol client that did the sync handshake (step 1 -> step 2), then idles."""
    ws = await connect(f"{url}/{ROOM}", max_size=WS_MAX_SIZE, compression=None, open_timeout=30)
    await ws.send(create_sync_message(Doc()))
    await ws.recv()
    return ws


@register("idle_vs_ywebsocket")
def idle_vs_ywebsocket(quick: bool) -> Result:
    """Resident memory per idle connection: replica's relay vs @y/websocket-server."""
    count, settle = (100, 0.3) if quick else (1_000, 1.0)
    soft, _ = _raise_fd_limit(2 * count + 256)
    result = Result("idle_vs_ywebsocket", params={"connections": count})
    missing = node_missing()
    if missing is not None or soft < count + 256:
        result.status = "skipped"
        result.notes.append(f"left out: {missing or f'file descriptor limit {soft}'}")
        return result
    runs: dict[str, MemoryRun] = {}
    with _scratch() as dirs:
        runs["replica"] = asyncio.run(_idle_replica(dirs, count, settle))

        async def y_run() -> MemoryRun:
            async with y_websocket_node_process(next(dirs).with_suffix(".log")) as server:
                return await _hold(lambda _: _idle_y(server.url), server.pid, count, settle)

        runs["y"] = asyncio.run(y_run())
    kb = 1000.0 / count
    per = {}
    for label, name in (("replica", "replica relay"), ("y", "@y/websocket-server")):
        run = runs[label]
        result.figure(f"{name} RSS before", "MB", [run.before])
        result.figure(f"{name} RSS with {count} idle", "MB", [run.connected])
        per[label] = result.figure(f"{name} per idle connection", "kB", [(run.connected - run.before) * kb])
    result.targets.append(
        Target("replica kB per idle connection", per["replica"].median, 10, at_least=False, guard=False)
    )
    return result
