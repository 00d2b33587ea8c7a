"""Stock Yjs clients through the relay's y-protocols endpoint vs through @y/websocket-server.

The same clients (``benchmarks/node/yjs_clients.mjs``: y-websocket 3.1.0 ``WebsocketProvider``
instances in one Node.js process, so that they share one clock) run against each server in
turn, alternating over the repeats (ABBA), each run against a server process started for it:

- replica: ``replica relay`` on a fresh LMDB data directory, clients on
  ``ws://HOST:PORT/yjs/bench/yjs?token=...``; every update is checked, stored as a delta
  (fsynced, one commit per event-loop turn) before any client is sent it;
- @y/websocket-server 0.1.1: its own ``setupWSConnection``, the document in memory only.

Two phases per run, after every client synced: a burst (each writer sends its updates back to
back; updates/s = updates made / seconds until every reader holds them all) and a paced phase
(one update per writer every 2 ms; the latency of each delivery, writer's transaction to a
reader's observer, as p50/p99 over every delivery). Each update sets one new key of a root map.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
from pathlib import Path
from typing import Any

from benchmarks._common import BenchmarkFailed, Result, Target, register
from benchmarks._node import NODE_DIR, y_websocket_node_process
from benchmarks.relay import ServerProcess, _scratch, relay_process

CLIENTS_SCRIPT = NODE_DIR / "yjs_clients.mjs"
ROOM = "bench/yjs"


def clients_missing() -> str | None:
    """Why the Node.js clients and server cannot run here, or None."""
    if shutil.which("node") is None:
        return "node is not installed"
    for package in ("@y/websocket-server", "y-websocket"):
        if not (NODE_DIR / "node_modules" / package).is_dir():
            return f"{package} is not installed (npm install --prefix {NODE_DIR})"
    return None


async def _clients(server_url: str, params: dict[str, str], spec: dict[str, Any]) -> dict[str, Any]:
    argument = json.dumps(dict(spec, serverUrl=server_url, room=ROOM, params=params))
    process = await asyncio.create_subprocess_exec(
        "node", str(CLIENTS_SCRIPT), argument, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await process.communicate()
    lines = out.decode().strip().splitlines()
    if not lines:
        raise BenchmarkFailed(f"the Yjs clients said nothing: {err.decode()[-2000:]}")
    found: dict[str, Any] = json.loads(lines[-1])
    if "error" in found:
        raise BenchmarkFailed(f"the Yjs clients failed: {found['error']}")
    return found


async def _through_relay(data: Path, spec: dict[str, Any]) -> dict[str, Any]:
    server: ServerProcess
    async with relay_process(data) as (server, credential):
        return await _clients(f"{server.url}/yjs", {"token": credential("dash-bench")}, spec)


async def _through_node(log: Path, spec: dict[str, Any]) -> dict[str, Any]:
    async with y_websocket_node_process(log) as server:
        return await _clients(server.url, {}, spec)


@register("yjs_clients")
def yjs_clients(quick: bool) -> Result:
    """Updates/s and fan-out latency of stock Yjs clients: replica's relay vs @y/websocket-server."""
    writers, readers = 2, 8
    burst, paced, repeats = (1_000, 100, 1) if quick else (5_000, 300, 3)
    spec = {"writers": writers, "readers": readers, "burst": burst, "paced": paced, "interval": 2}
    result = Result("yjs_clients", params=dict(spec, repeats=repeats))
    missing = clients_missing()
    if missing is not None:
        result.status = "skipped"
        result.notes.append(f"left out: {missing}")
        return result
    ours: list[dict[str, Any]] = []
    theirs: list[dict[str, Any]] = []
    with _scratch() as dirs:
        for i in range(repeats):
            order = [(ours, True), (theirs, False)] if i % 2 == 0 else [(theirs, False), (ours, True)]
            for into, relay in order:
                where = next(dirs)
                run = _through_relay(where, spec) if relay else _through_node(where.with_suffix(".log"), spec)
                into.append(asyncio.run(run))
    for name, runs in (("replica relay /yjs", ours), ("@y/websocket-server", theirs)):
        result.figure(f"{name}: updates/s (burst, until every reader holds all)", "updates/s", _of(runs, "rate"))
        result.figure(f"{name}: fan-out latency p50", "ms", _of(runs, "p50"))
        result.figure(f"{name}: fan-out latency p99", "ms", _of(runs, "p99"))
    figures = {f.name: f for f in result.figures}
    rate = result.ratio(
        "replica / @y/websocket-server updates/s",
        figures["replica relay /yjs: updates/s (burst, until every reader holds all)"],
        figures["@y/websocket-server: updates/s (burst, until every reader holds all)"],
    )
    result.ratio(
        "replica / @y/websocket-server p50 latency",
        figures["replica relay /yjs: fan-out latency p50"],
        figures["@y/websocket-server: fan-out latency p50"],
    )
    # replica stores and fsyncs what the other keeps in memory: a floor, not parity.
    result.targets.append(Target("replica / @y/websocket-server updates/s", rate, 0.25))
    result.notes.append(
        f"{writers} writers and {readers} readers (y-websocket 3.1.0 in one Node.js process) per run; "
        "@y/websocket-server keeps the document in memory, replica's relay checks each update, stores it "
        "as a delta and fsyncs (one commit per event-loop turn) before relaying it"
    )
    return result


def _of(runs: list[dict[str, Any]], what: str) -> list[float]:
    if what == "rate":
        return [float(run["updates_per_s"]) for run in runs]
    values = [float(run["latency_ms"][what]) for run in runs]
    if not values or statistics.median(values) < 0:
        raise BenchmarkFailed(f"no {what} latency measured")
    return values
