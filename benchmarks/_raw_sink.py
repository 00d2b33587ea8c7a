"""The raw baseline server of ``benchmarks.relay``: websockets + LMDB, no CRDT, no protocol.

Run as a separate process, like the relay (``python benchmarks/_raw_sink.py
--data DIR --port 0`` prints ``listening on ws://127.0.0.1:PORT``). Paths:

- ``/up``: every binary message is a msgpack array of payloads; they are
  written to LMDB under sequential keys in ONE write transaction per message
  (``sync=True``: one fsync per message, as the relay commits a batch), then a
  tiny ack (the count held) goes back.
- ``/down``: everything held is read from LMDB (one read transaction, as a
  session reads what the other side lacks) and sent back in frames built by
  :func:`send_pipelined`, the same batching rule and window as replica's
  session; then an empty message marks the end.
- ``/idle``: one message in, one message out (a handshake), then nothing
  until the client closes: the memory baseline for idle connections.
- ``/pub`` and ``/sub``: a bare broadcast hub: every message from a ``/pub``
  connection is forwarded as is to every ``/sub`` connection (the fan-out
  baseline).

Only ``lmdb``, ``msgpack`` and ``websockets`` are imported, so that the
process's memory and work are those of the stack alone. The client side of
the same exchanges lives here too (:func:`send_pipelined`, :func:`receive_acking`)
so that both directions batch identically.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import struct
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import lmdb
import msgpack
from websockets.asyncio.server import ServerConnection, serve

_KEY = struct.Struct(">Q")
#: As ``replica.net.WS_MAX_SIZE`` (twice the protocol's 16 MiB frame limit).
WS_MAX_SIZE = 32 * 1024 * 1024


@dataclass(frozen=True)
class Batching:
    """The batching rule of ``replica.session.Session`` with the values of
    ``replica.session.Limits()``: a byte budget per frame counting each
    payload as ``len + 32``, starting at 64 KiB, doubled when an ack comes
    back within ``fast_ack``, halved when it takes ``slow_ack`` or more, at
    most ``max_count`` payloads, ``window`` frames unacknowledged."""

    window: int = 4
    min_bytes: int = 8 * 1024
    start_bytes: int = 64 * 1024
    max_bytes: int = 2 * 1024 * 1024
    max_count: int = 10_000
    fast_ack: float = 0.05
    slow_ack: float = 0.5
    overhead: int = 32


@dataclass
class SendReport:
    """What one pipelined send (or receive) carried."""

    frames: int = 0
    payloads: int = 0
    frame_bytes: int = 0


def _take(items: Sequence[bytes], start: int, budget: int, rule: Batching) -> int:
    """The end index of the next frame starting at ``start`` (at least one item)."""
    end, size = start, 0
    while end < len(items) and end - start < rule.max_count:
        cost = len(items[end]) + rule.overhead
        if end > start and size + cost > budget:
            break
        size += cost
        end += 1
    return end


async def send_pipelined(ws: Any, items: Sequence[bytes], rule: Batching) -> SendReport:
    """Send ``items`` as msgpack arrays, at most ``rule.window`` unacknowledged
    frames, adapting the frame budget to the ack time as replica's session
    does; return when every frame is acknowledged."""
    report = SendReport()
    in_flight: deque[float] = deque()
    budget = rule.start_bytes
    position = 0
    while position < len(items) or in_flight:
        while position < len(items) and len(in_flight) < rule.window:
            end = _take(items, position, budget, rule)
            frame = msgpack.packb(items[position:end], use_bin_type=True)
            await ws.send(frame)
            in_flight.append(time.monotonic())
            report.frames += 1
            report.payloads += end - position
            report.frame_bytes += len(frame)
            position = end
        await ws.recv()  # the ack of the oldest frame
        elapsed = time.monotonic() - in_flight.popleft()
        if elapsed <= rule.fast_ack:
            budget = min(budget * 2, rule.max_bytes)
        elif elapsed >= rule.slow_ack:
            budget = max(budget // 2, rule.min_bytes)
    return report


async def receive_acking(ws: Any) -> SendReport:
    """Receive frames until the empty end marker, acking each; return what came."""
    report = SendReport()
    while True:
        frame = await ws.recv()
        if not frame:
            return report
        report.frames += 1
        report.frame_bytes += len(frame)
        report.payloads += len(msgpack.unpackb(frame))
        await ws.send(b"k")


class Sink:
    """The server side; see the module docstring."""

    def __init__(self, data: str) -> None:
        self.env = lmdb.open(data, map_size=1 << 34, sync=True, metasync=True)
        self.count = 0
        self.subscribers: set[ServerConnection] = set()
        self.rule = Batching()

    async def serve(self, ws: ServerConnection) -> None:
        path = ws.request.path if ws.request is not None else ""
        if path == "/up":
            await self._up(ws)
        elif path == "/down":
            await self._down(ws)
        elif path == "/idle":
            await ws.send(await ws.recv())
            await ws.wait_closed()
        elif path == "/sub":
            self.subscribers.add(ws)
            try:
                await ws.send(b"ready")
                await ws.wait_closed()
            finally:
                self.subscribers.discard(ws)
        elif path == "/pub":
            async for message in ws:
                for subscriber in list(self.subscribers):
                    await subscriber.send(message)
        else:
            await ws.close(1008, f"unknown path {path}")

    async def _up(self, ws: ServerConnection) -> None:
        async for frame in ws:
            items = msgpack.unpackb(frame)
            with self.env.begin(write=True) as txn:
                for payload in items:
                    self.count += 1
                    txn.put(_KEY.pack(self.count), payload)
            await ws.send(msgpack.packb(self.count))

    async def _down(self, ws: ServerConnection) -> None:
        with self.env.begin(buffers=False) as txn:
            items = [value for _, value in txn.cursor()]
        await send_pipelined(ws, items, self.rule)
        await ws.send(b"")
        await ws.wait_closed()


async def _main(data: str, port: int) -> None:
    sink = Sink(data)
    async with serve(sink.serve, "127.0.0.1", port, max_size=WS_MAX_SIZE, compression=None) as server:
        bound = next(iter(server.sockets)).getsockname()[1]
        print(f"listening on ws://127.0.0.1:{bound}", flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args.data, args.port))
