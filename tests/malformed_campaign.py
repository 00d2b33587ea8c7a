"""A malformed-input campaign against a running relay (``test_malformed``).

:func:`record_session` runs a real device sync through a small recording
proxy and keeps every frame the device sent (hello, deltas, acks, done).
:func:`mutations` derives mutated frames from them, from a seeded
``random.Random`` (a campaign, not a property test: hypothesis draws its own
frames in ``test_malformed``): flipped bytes, truncations, junk appended,
fields of the wrong type, huge length headers, deep nesting, and valid
frames out of order. :func:`attack` sends each one on a connection of its
own after the recorded frames that come before it (a real handshake, so that
a mutation of a later frame reaches the later states), then closes: the
relay reads what arrived before the close, so every mutation is processed.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import msgpack
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidHandshake

WRONG_VALUES: list[object] = [
    None,
    True,
    -1,
    0,
    2**64 - 1,
    -(2**63),
    1.5,
    float("nan"),
    "",
    "x" * 300,
    "\udcff".encode("utf-8", "surrogatepass").decode("utf-8", "replace"),
    b"",
    b"\x00" * 64,
    [],
    [1, "a", None],
    {},
    {"a": {"b": {"c": 1}}},
    {1: 2},
]
#: msgpack headers claiming far more than follows: map32, array32, str32, bin32, ext32.
HUGE_HEADERS = [
    b"\xdf\xff\xff\xff\xff",
    b"\xdd\xff\xff\xff\xff",
    b"\xdb\xff\xff\xff\xff",
    b"\xc6\xff\xff\xff\xff",
    b"\xc9\xff\xff\xff\xff\x01",
    b"\x81\xa1t\xdb\x7f\xff\xff\xff",
]


@dataclass
class Campaign:
    """What :func:`attack` did."""

    sent: int = 0  #: mutated frames sent (each after a real prefix)
    kinds: Counter[str] = field(default_factory=Counter)  #: mutated frames by kind of mutation
    errors: Counter[str] = field(default_factory=Counter)  #: error codes the relay answered with
    accepted: int = 0  #: connections where the relay sent no error (a harmless mutation)
    refused_connections: int = 0  #: connections the relay did not accept (it must not happen)


async def record_session(relay_url: str, sync: object) -> list[bytes]:
    """The frames a device sent in a real sync: ``sync(url)`` is awaited with
    the URL of a recording proxy in front of ``relay_url``."""
    frames: list[bytes] = []

    async def forward(client: ServerConnection) -> None:
        async with connect(relay_url, max_size=None) as upstream:

            async def up() -> None:
                async for message in client:
                    assert isinstance(message, bytes)
                    frames.append(message)
                    await upstream.send(message)
                await upstream.close()

            async def down() -> None:
                async for message in upstream:
                    await client.send(message)
                await client.close()

            await asyncio.gather(up(), down(), return_exceptions=True)

    async with serve(forward, "127.0.0.1", 0, max_size=None, compression=None) as proxy:
        port = next(iter(proxy.sockets)).getsockname()[1]
        assert callable(sync)
        await sync(f"ws://127.0.0.1:{port}")
    return frames


def _mutate_fields(frame: bytes, rng: random.Random) -> bytes | None:
    try:
        body = msgpack.unpackb(frame, raw=False, strict_map_key=False)
    except (ValueError, msgpack.ExtraData):
        return None
    if not isinstance(body, dict) or not body:
        return None
    key = rng.choice(list(body))
    changed = dict(body)
    if rng.random() < 0.15:
        del changed[key]
    else:
        changed[key] = rng.choice(WRONG_VALUES)
    if isinstance(body.get("d"), list) and body["d"] and rng.random() < 0.5:  # inside a delta row
        rows = [list(row) if isinstance(row, list) else row for row in body["d"]]
        row = rng.randrange(len(rows))
        if isinstance(rows[row], list) and rows[row]:
            rows[row][rng.randrange(len(rows[row]))] = rng.choice(WRONG_VALUES)
        changed = {**body, "d": rows}
    packed: bytes = msgpack.packb(changed, use_bin_type=True)
    return packed


def mutations(frames: list[bytes], count: int, seed: int = 14) -> Iterator[tuple[str, int, bytes]]:
    """``count`` mutated frames: (kind, index of the recorded frame it stands for, bytes)."""
    rng = random.Random(seed)
    for _ in range(count):
        index = rng.randrange(len(frames))
        frame = frames[index]
        kind = rng.choice(("flip", "truncate", "append", "fields", "huge", "nest", "order"))
        if kind == "flip":
            data = bytearray(frame)
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            out = bytes(data)
        elif kind == "truncate":
            out = frame[: rng.randrange(len(frame))]
        elif kind == "append":
            out = frame + rng.randbytes(rng.randint(1, 64))
        elif kind == "fields":
            out = _mutate_fields(frame, rng) or frame[::-1]
        elif kind == "huge":
            out = rng.choice(HUGE_HEADERS) + rng.randbytes(rng.randint(0, 32))
        elif kind == "nest":
            depth = rng.choice((100, 1_000, 100_000))
            out = b"\x91" * depth + b"\xc0"  # arrays of one element, nested
        else:  # a valid frame where another was expected
            out = frames[rng.randrange(len(frames))]
        yield kind, index, out


async def attack(url: str, frames: list[bytes], items: Iterator[tuple[str, int, bytes]], workers: int = 8) -> Campaign:
    """Send each mutated frame after the recorded frames before it, one connection each."""
    campaign = Campaign()
    queue: asyncio.Queue[tuple[str, int, bytes] | None] = asyncio.Queue(maxsize=workers * 4)

    async def one(kind: str, index: int, mutated: bytes) -> None:
        try:
            async with connect(url, max_size=None, open_timeout=20, close_timeout=2) as ws:
                if index > 0:
                    await ws.send(frames[0])  # the hello: wait for the welcome before going on
                    welcome = msgpack.unpackb(await ws.recv(decode=False), raw=False)
                    assert welcome.get("t") == "welcome", welcome
                for frame in frames[1:index]:
                    await ws.send(frame)
                await ws.send(mutated)
                campaign.sent += 1
                campaign.kinds[kind] += 1
                try:
                    async with asyncio.timeout(0.05):  # an error frame, if it comes at once
                        async for message in ws:
                            if isinstance(message, bytes):
                                answer = msgpack.unpackb(message, raw=False)
                                if isinstance(answer, dict) and answer.get("t") == "error":
                                    campaign.errors[answer.get("code", "?")] += 1
                                    return
                except TimeoutError:
                    pass
                campaign.accepted += 1
        except (OSError, InvalidHandshake):
            campaign.refused_connections += 1
        except ConnectionClosed:
            pass

    async def worker() -> None:
        while (item := await queue.get()) is not None:
            await one(*item)

    tasks = [asyncio.create_task(worker()) for _ in range(workers)]
    for item in items:
        await queue.put(item)
    for _ in tasks:
        await queue.put(None)
    await asyncio.gather(*tasks)
    return campaign
