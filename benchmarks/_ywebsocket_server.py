"""pycrdt-websocket as a server process, for the side-by-side benchmarks (``benchmarks/anchors.py``).

``python benchmarks/_ywebsocket_server.py --data DIR [--port 0]``: a pycrdt-websocket
``WebsocketServer`` served by a ``websockets`` asyncio server on 127.0.0.1; prints
``listening on ws://127.0.0.1:PORT`` as its first stdout line (as the relay does), and
serves each URL path as a room (``ws://.../bench/x`` is room ``bench/x``).

Every room is given a ``SQLiteYStore`` whose database is ``DIR/ystore.db`` (one file for all
rooms, keyed by the room name, as pycrdt-store designs it): the room writes each update it
broadcasts to the store, in a task of its own, without telling anyone when it is written. A
room found in the store is loaded from it before it is ready (as a restarted server must).

SIGTERM stops it: the listening socket and the connections close, then the rooms stop (which
cancels any store writes still pending: pycrdt-websocket has no drain), then the stores.
Imports nothing of replica.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from contextlib import suppress
from pathlib import Path

from pycrdt.store import SQLiteYStore, YDocNotFound
from pycrdt.websocket import WebsocketServer, YRoom
from websockets.asyncio.connection import Connection
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

#: As the raw sink's: no frame of these benchmarks comes near it.
WS_MAX_SIZE = 256 * 1024 * 1024


class WebsocketChannel:
    """pycrdt's ``Channel`` protocol (``path``, ``send``, ``recv``, async iteration)
    over one ``websockets`` connection (server or client side); iteration ends when
    the connection closes."""

    def __init__(self, websocket: Connection, path: str) -> None:
        self._websocket = websocket
        self._path = path

    @property
    def path(self) -> str:
        return self._path

    def __aiter__(self) -> WebsocketChannel:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self.recv()
        except ConnectionClosed:
            raise StopAsyncIteration() from None

    async def send(self, message: bytes) -> None:
        with suppress(ConnectionClosed):  # the room broadcasts to a client until its serve() ends: not an error
            await self._websocket.send(message)

    async def recv(self) -> bytes:
        return await self._websocket.recv(decode=False)


def store_class(data: Path) -> type[SQLiteYStore]:
    """A ``SQLiteYStore`` subclass whose database is ``data/ystore.db`` (pycrdt-store's
    documented way of choosing the file)."""
    return type("BenchYStore", (SQLiteYStore,), {"db_path": str(data / "ystore.db")})


class PersistentWebsocketServer(WebsocketServer):
    """A ``WebsocketServer`` whose rooms persist: ``get_room`` would create them
    without a store, so a room is made here with a ``SQLiteYStore`` for its name,
    loaded from it, and only then marked ready (observed, broadcasting, storing)."""

    def __init__(self, data: Path) -> None:
        super().__init__(rooms_ready=False, auto_clean_rooms=False, log=logging.getLogger("ywebsocket"))
        self._store = store_class(data)
        self._opening: dict[str, asyncio.Lock] = {}

    async def get_room(self, name: str) -> YRoom:
        lock = self._opening.setdefault(name, asyncio.Lock())
        async with lock:  # many clients connect at once: one of them creates and loads the room
            if name not in self.rooms:
                ystore = self._store(path=name, log=self.log)
                room = YRoom(ready=False, ystore=ystore, log=self.log)
                self.rooms[name] = room
                await self.start_room(room)  # the room starts its store (in _broadcast_updates)
                await ystore.started.wait()
                with suppress(YDocNotFound):
                    await ystore.apply_updates(room.ydoc)
                room.ready = True
            room = self.rooms[name]
        await room.ydoc_observed.wait()  # an update applied before the room observes its doc is never stored
        return room


async def main(data: Path, port: int) -> None:
    data.mkdir(parents=True, exist_ok=True)
    server = PersistentWebsocketServer(data)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)

    async def handler(websocket: ServerConnection) -> None:
        assert websocket.request is not None
        path = websocket.request.path.split("?", 1)[0].lstrip("/")
        await server.serve(WebsocketChannel(websocket, path))

    async with server:
        async with serve(handler, "127.0.0.1", port, max_size=WS_MAX_SIZE, compression=None) as listener:
            bound = listener.sockets[0].getsockname()
            print(f"listening on ws://{bound[0]}:{bound[1]}", flush=True)
            await stop.wait()
            listener.close()  # closes the connections (1001) and waits for their handlers
            await listener.wait_closed()
        for room in list(server.rooms.values()):
            await room.stop()
            if room.ystore is not None and room.ystore.started.is_set():
                with suppress(RuntimeError):  # its task group went with the room's
                    await room.ystore.stop()  # closes the database


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main(args.data, args.port))
