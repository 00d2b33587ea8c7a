"""A log shared by several relays over Redis Streams (``replica relay --redis URL``).

Theory of operation (docs/scale-out.md has the whole story):

- Redis holds the deployment's shared log: one stream per document, where
  every delta any relay acknowledged is an entry, in an order each origin's
  seqs follow without gaps. Each relay keeps its own LMDB data directory as a
  copy of that log, the one its sessions read and its compaction works on.
- **Upload.** A relay checks incoming deltas against its own copy with the
  usual delivery rules (``Engine.ingest``: checksums, Yjs bytes, gaps,
  clashes) inside its write transaction; before that transaction commits,
  :meth:`SharedLog.publish` appends what it stored to the streams in one
  Lua call per document, which checks each origin's seqs once more against
  what the stream holds (atomically: two relays never both append seq 7 of
  one origin). Redis answers after its AOF is fsynced (``appendfsync
  always``, checked at start); only then does the relay commit and ack. If
  Redis fails or refuses, the transaction is abandoned: nothing is stored
  here, nothing acknowledged, and the device retries (``storage_error``).
- **Fan-out.** Each relay's :class:`Follower` blocks on a feed stream that
  names the documents appended to, reads their new entries and ingests them
  into its copy (without publishing them again); its commit wakes the live
  devices of that relay, as a device's own upload would.
- **Compaction.** A relay compacts its copy as it always does. :meth:`trim`
  then stores its snapshot of the document in Redis (only if it covers more
  than the one there) and trims the stream's longest prefix that snapshot
  covers: a trimmed entry is always inside the stored snapshot, so a relay
  starting cold reads the snapshot, then the tail.
- **Identity.** Every relay of a deployment signs with the same key under
  the same relay id (copied from the first relay's data directory); the
  first relay to connect records them in Redis and the others must match.

The only module importing ``redis``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import ItemsView, Iterable, Iterator, Mapping
from typing import Any

import msgpack
import redis
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from replica import errors
from replica.delta import Delta, Snapshot
from replica.engine import Engine
from replica.names import new_replica_id
from replica.vv import VersionVector, covers

log = logging.getLogger("replica.redis_log")

PREFIX = "replica:"
#: How many entries a follower reads of one document per round trip.
READ_COUNT = 1_000
#: The feed stream keeps about this many entries (it only names documents).
FEED_MAXLEN = 100_000
#: Seconds a Redis command may take before the relay treats Redis as failed.
TIMEOUT = 5.0

# KEYS: log stream, tops hash, sums hash, docs set, feed stream.
# ARGV: document, feed maxlen, then items, each "d" origin start seq checksum entry
# (checksum "" for a span) or "s" n origin1 seq1 ... originN seqN entry.
# Checks every item first, then writes: a refused call writes nothing. Answers the
# stream's last id before and after its writes (the appending relay's read position).
_APPEND = """
local tops = {}
local function top(origin)
  if tops[origin] == nil then tops[origin] = tonumber(redis.call('HGET', KEYS[2], origin) or '0') end
  return tops[origin]
end
local writes = {}
local i = 3
while i <= #ARGV do
  if ARGV[i] == 'd' then
    local origin, start, seq, sum, entry = ARGV[i+1], tonumber(ARGV[i+2]), tonumber(ARGV[i+3]), ARGV[i+4], ARGV[i+5]
    local held = top(origin)
    if seq <= held then
      if seq == held and sum ~= '' then
        local known = redis.call('HGET', KEYS[3], origin)
        if known and known ~= sum then return {'clash', origin, seq} end
      end
    elseif start > held + 1 then
      return {'gap', origin, held}
    else
      tops[origin] = seq
      writes[#writes+1] = {entry, {origin, seq, sum}}
    end
    i = i + 6
  else
    local n = tonumber(ARGV[i+1])
    local raised = {}
    for k = 0, n - 1 do
      local origin, seq = ARGV[i+2+2*k], tonumber(ARGV[i+3+2*k])
      if seq > top(origin) then tops[origin] = seq; raised[#raised+1] = {origin, seq, ''} end
    end
    if #raised > 0 then
      for _, r in ipairs(raised) do writes[#writes+1] = {false, r} end
      writes[#writes+1] = {ARGV[i+2+2*n], false}
    end
    i = i + 3 + 2 * n
  end
end
local before = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
before = before[1] and before[1][1] or '0-0'
local last = before
for _, w in ipairs(writes) do
  if w[1] then last = redis.call('XADD', KEYS[1], '*', 'e', w[1]) end
  local r = w[2]
  if r then
    redis.call('HSET', KEYS[2], r[1], r[2])
    if r[3] == '' then redis.call('HDEL', KEYS[3], r[1]) else redis.call('HSET', KEYS[3], r[1], r[3]) end
  end
end
if #writes > 0 then
  redis.call('SADD', KEYS[4], ARGV[1])
  redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[2], '*', 'd', ARGV[1])
end
return {'ok', #writes, before, last}
"""

# KEYS: snapshot hash. ARGV: vv (msgpack), checksum, data. Stores the snapshot
# only if it covers the one stored (both as version vectors); returns 1 if stored.
_STORE_SNAPSHOT = """
local old = redis.call('HGET', KEYS[1], 'vv')
if old then
  local held, new = cmsgpack.unpack(old), cmsgpack.unpack(ARGV[1])
  for origin, seq in pairs(held) do
    if (new[origin] or 0) < seq then return 0 end
  end
end
redis.call('HSET', KEYS[1], 'vv', ARGV[1], 'checksum', ARGV[2], 'data', ARGV[3])
return 1
"""


def encode(item: Delta | Snapshot) -> bytes:
    """One stream entry: a delta (or span) or a snapshot, without its document (the stream's)."""
    if isinstance(item, Delta):
        fields: list[Any] = ["d", item.origin, item.first, item.seq, item.checksum, item.data]
    else:
        fields = ["s", item.vv, item.checksum, item.data]
    packed: bytes = msgpack.packb(fields, use_bin_type=True)
    return packed


def decode(document: str, entry: bytes) -> Delta | Snapshot:
    """The delta or snapshot of one stream entry (written by :func:`encode`; Redis is trusted)."""
    kind, *fields = msgpack.unpackb(entry, raw=False)
    if kind == "d":
        origin, first, seq, check, data = fields
        return Delta(document, origin, seq, check, data, first)
    vv, check, data = fields
    return Snapshot(document, dict(vv), check, data)


def _unavailable(exc: BaseException) -> errors.StorageError:
    return errors.StorageError(f"the shared log (Redis) did not answer: {_said(exc)}; the relay keeps trying")


class SharedLog:
    """The Redis side of a deployment of several relays: append (synchronous,
    inside a relay's write transaction), read, store snapshots and trim.
    ``url``: ``redis://host:port/db``."""

    def __init__(self, url: str, *, prefix: str = PREFIX, timeout: float = TIMEOUT) -> None:
        self.url = url
        self.prefix = prefix
        # Any: redis-py types each answer as the union of its sync and async forms.
        self._sync: Any = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self._async: Any = aioredis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self._append = self._sync.register_script(_APPEND)
        self._store_snapshot = self._async.register_script(_STORE_SNAPSHOT)
        #: This deployment's id in Redis (set by :meth:`connect`): a relay's
        #: read positions are kept under it, so that another Redis starts afresh.
        self.deployment = ""

    def key(self, kind: str, document: str = "") -> str:
        """The Redis key of ``kind`` (``log``, ``tops``, ``sums``, ``snap``: per document; ``docs``, ``feed``, ...)."""
        return f"{self.prefix}{kind}:{document}" if document else f"{self.prefix}{kind}"

    def connect(self, relay_id: str, public_key: bytes) -> None:
        """Check that Redis answers, makes each append durable before it
        answers, and serves this deployment's relay identity (recorded by
        the first relay). Raises :class:`~replica.errors.ReplicaError`."""
        try:
            config = {**self._sync.config_get("appendonly"), **self._sync.config_get("appendfsync")}
            identity = f"{relay_id} {public_key.hex()}"
            self._sync.set(self.key("issuer"), identity, nx=True)
            self._sync.set(self.key("deployment"), new_replica_id(), nx=True)
            recorded = self._sync.get(self.key("issuer"))
            deployment = self._sync.get(self.key("deployment"))
        except RedisError as exc:
            raise errors.ReplicaError(
                f"cannot use Redis at {self.url}: {_said(exc)}; check that it runs and that the URL is right",
                code="redis_unreachable",
                retryable=True,
            ) from exc
        want = {"appendonly": "yes", "appendfsync": "always"}
        got = {name: _text(config.get(name.encode(), config.get(name, b""))) for name in want}
        if got != want:
            raise errors.ReplicaError(
                f"Redis at {self.url} would acknowledge deltas before they are on its disk "
                f"(appendonly {got['appendonly']!r}, appendfsync {got['appendfsync']!r}); "
                "start it with --appendonly yes --appendfsync always",
                code="redis_not_durable",
            )
        if _text(recorded) != identity:
            raise errors.ReplicaError(
                f"this relay ({relay_id}) does not have the identity of the relays already using {self.url}: "
                "copy relay-signing.key and relay.id from the first relay's data directory into this one",
                code="relay_identity_mismatch",
            )
        self.deployment = _text(deployment)

    def ping(self) -> None:
        """Check that Redis answers (the relay's health probe); raises
        :class:`~replica.errors.StorageError` if not."""
        try:
            self._sync.ping()
        except RedisError as exc:
            raise _unavailable(exc) from exc

    def publish(self, items: list[Delta | Snapshot]) -> dict[str, tuple[str, str]]:
        """Append what a relay's write transaction stored, before it commits
        (``Engine.publish_to``); ``{document: (the stream's last id before,
        after)}``. Raises :class:`~replica.errors.StorageError` if Redis fails
        or its log holds something else under one of these seqs (another
        relay got there first: the retry sees it)."""
        by_document: dict[str, list[Delta | Snapshot]] = {}
        for item in items:
            by_document.setdefault(item.document, []).append(item)
        try:
            pipe = self._sync.pipeline(transaction=False)
            for document, own in by_document.items():
                args: list[Any] = [document, FEED_MAXLEN]
                for item in own:
                    if isinstance(item, Delta):
                        args += ["d", item.origin, item.start, item.seq, b"" if item.first else item.checksum]
                    else:
                        args += ["s", len(item.vv)]
                        for origin, seq in item.vv.items():
                            args += [origin, seq]
                    args.append(encode(item))
                keys = [self.key(k, document) for k in ("log", "tops", "sums")] + [self.key("docs"), self.key("feed")]
                self._append(keys=keys, args=args, client=pipe)
            answers = pipe.execute()
        except RedisError as exc:
            raise _unavailable(exc) from exc
        moved: dict[str, tuple[str, str]] = {}
        for document, answer in zip(by_document, answers, strict=True):
            if _text(answer[0]) != "ok":
                what, origin, seq = _text(answer[0]), _text(answer[1]), int(answer[2])
                raise errors.StorageError(
                    f"the shared log holds other deltas of {origin!r} in {document!r} ({what} at seq {seq}); "
                    "another relay stored them first, and a retry will see them"
                )
            moved[document] = (_text(answer[2]), _text(answer[3]))
        return moved

    def seed(self, engine: Engine) -> int:
        """Append what ``engine`` holds and the shared log lacks (a relay that
        served alone before it joined a deployment); how many items."""
        items: list[Delta | Snapshot] = []
        try:
            for document in engine.documents():
                raw = self._sync.hgetall(self.key("tops", document))
                tops = {_text(origin): int(seq) for origin, seq in raw.items()}
                if covers(tops, engine.version_vector(document)):
                    continue
                whole = engine.snapshot_for(document, tops)
                items += ([whole] if whole is not None else []) + list(engine.missing_deltas(document, tops))
        except RedisError as exc:
            raise _unavailable(exc) from exc
        for start in range(0, len(items), READ_COUNT):
            self.publish(items[start : start + READ_COUNT])
        return len(items)

    async def documents(self) -> list[str]:
        """Every document of the shared log."""
        return sorted(_text(name) for name in await self._async.smembers(self.key("docs")))

    async def feed_position(self) -> str:
        """The id of the feed's last entry ("0-0" for none): read from there to see later appends."""
        last = await self._async.xrevrange(self.key("feed"), count=1)
        return _text(last[0][0]) if last else "0-0"

    async def appended(self, position: str, block: float | None = None) -> tuple[str, set[str] | None]:
        """The documents appended to after feed ``position`` (up to
        :data:`READ_COUNT` feed entries), waiting up to ``block`` seconds for
        one (None: not at all), and the new position. None instead of the
        documents if the feed was trimmed past ``position``: then every
        document may have changed."""
        feed = self.key("feed")
        if block is None:
            answer = [(feed, await self._async.xrange(feed, min=f"({position}", count=READ_COUNT))]
        else:
            answer = await self._async.xread({feed: position}, count=READ_COUNT, block=int(block * 1000))
        names: set[str] = set()
        start = position
        for _, entries in answer:
            for entry_id, fields in entries:
                position = _text(entry_id)
                names.add(_text(fields[b"d"]))
        if names:  # ``start`` itself is in the feed unless the feed was trimmed past it
            first = (await self._async.xinfo_stream(feed)).get("first-entry")
            if first is not None and _id(_text(first[0])) > _id(start):
                return position, None
        return position, names

    async def read(
        self, document: str, after: str, held: VersionVector | None = None
    ) -> tuple[Snapshot | None, list[tuple[str, Delta | Snapshot]]]:
        """The stored snapshot of ``document`` unless ``held`` (the reader's
        version vector) covers it, and up to :data:`READ_COUNT` entries after
        stream id ``after``. The snapshot's version vector and the entries
        are read at one point in time (a trim between the two would hide
        entries); its state, which may be megabytes, only when it is needed
        (a newer snapshot read then covers the older one)."""
        snap = self.key("snap", document)
        pipe = self._async.pipeline(transaction=True)
        pipe.hget(snap, "vv")
        pipe.xrange(self.key("log", document), min=f"({after}" if after != "0-0" else "-", count=READ_COUNT)
        vv, entries = await pipe.execute()
        snapshot = None
        if vv is not None and (held is None or not covers(held, dict(msgpack.unpackb(vv)))):
            stored = await self._async.hgetall(snap)
            snapshot = Snapshot(document, dict(msgpack.unpackb(stored[b"vv"])), stored[b"checksum"], stored[b"data"])
        return snapshot, [(_text(entry_id), decode(document, fields[b"e"])) for entry_id, fields in entries]

    async def trim(self, snapshot: Snapshot) -> int:
        """Store ``snapshot`` (a relay's compacted state of its document) if it
        covers the one stored, then trim the longest prefix of the document's
        stream that the stored one covers; how many entries were trimmed."""
        try:
            return await self._trim(snapshot)
        except RedisError as exc:
            raise _unavailable(exc) from exc

    async def _trim(self, snapshot: Snapshot) -> int:
        document = snapshot.document
        vv = msgpack.packb(snapshot.vv, use_bin_type=True)
        await self._store_snapshot(keys=[self.key("snap", document)], args=[vv, snapshot.checksum, snapshot.data])
        stored = await self._async.hget(self.key("snap", document), "vv")
        if stored is None:
            return 0
        held: VersionVector = dict(msgpack.unpackb(stored))
        trimmed, after, last = 0, "-", None
        while True:
            entries = await self._async.xrange(self.key("log", document), min=after, count=READ_COUNT)
            for entry_id, fields in entries:
                if not _inside(decode(document, fields[b"e"]), held):
                    break
                last = _text(entry_id)
                trimmed += 1
            else:
                if len(entries) == READ_COUNT:
                    after = f"({last}"
                    continue
            break
        if last is not None:
            ms, seq = last.split("-")
            await self._async.xtrim(self.key("log", document), minid=f"{ms}-{int(seq) + 1}", approximate=False)
        return trimmed

    async def revocations(self, added: Mapping[str, float], removed: Iterable[str]) -> dict[str, float]:
        """Record revocations made and taken back on one relay, and return
        the deployment's (``replica id: when``), in one transaction."""
        key, removed = self.key("revoked"), list(removed)
        try:
            pipe = self._async.pipeline(transaction=True)
            if added:
                pipe.hset(key, mapping=dict(added))
            if removed:
                pipe.hdel(key, *removed)
            pipe.hgetall(key)
            answers = await pipe.execute()
        except RedisError as exc:
            raise _unavailable(exc) from exc
        return {_text(name): float(when) for name, when in answers[-1].items()}

    async def length(self, document: str) -> int:
        """How many entries the document's stream holds."""
        try:
            return int(await self._async.xlen(self.key("log", document)))
        except RedisError as exc:
            raise _unavailable(exc) from exc

    async def info(self) -> dict[str, Any]:
        """Redis's memory and CPU figures (``INFO memory``, ``INFO cpu``), for benchmarks and operators."""
        return {**await self._async.info("memory"), **await self._async.info("cpu")}

    async def disconnect(self) -> None:
        """Close the connections of the reads (a blocked read fails at once)."""
        await self._async.connection_pool.disconnect()

    async def aclose(self) -> None:
        """Close both connections."""
        await self._async.aclose()
        self._sync.close()


class SharedRevocations(Mapping[str, float]):
    """The revocations of a deployment: what the operator revoked on any
    relay (``replica relay revoke --data DIR`` on that relay's directory),
    shared through Redis (``replica:revoked``). :meth:`refresh` (every
    second or so) pushes the changes of this relay's own file and reads the
    others'. An undo takes a revocation back everywhere but on a relay
    whose own file lists it too."""

    def __init__(self, local: Mapping[str, float], shared: SharedLog) -> None:
        self.local = local
        self.shared = shared
        self._pushed: dict[str, float] = {}
        self._seen: dict[str, float] = {}

    async def refresh(self) -> None:
        """Push this relay's changes, then read everyone's. Raises
        :class:`~replica.errors.StorageError` if Redis fails (the last
        revocations read stay in force)."""
        mine = dict(self.local.items())
        added = {name: when for name, when in mine.items() if self._pushed.get(name) != when}
        removed = [name for name in self._pushed if name not in mine]
        self._seen = await self.shared.revocations(added, removed)
        self._pushed = mine

    def _current(self) -> dict[str, float]:
        return {**self._seen, **dict(self.local.items())}

    def __getitem__(self, replica_id: str) -> float:
        return self._current()[replica_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._current())

    def __len__(self) -> int:
        return len(self._current())

    def items(self) -> ItemsView[str, float]:
        """All of them at one look (the local file is read once)."""
        return self._current().items()


def _inside(item: Delta | Snapshot, vv: VersionVector) -> bool:
    if isinstance(item, Delta):
        return item.seq <= vv.get(item.origin, 0)
    return covers(vv, item.vv)


def _said(exc: BaseException) -> str:
    return str(exc).rstrip(". ") or type(exc).__name__


def _id(entry_id: str) -> tuple[int, int]:
    milliseconds, _, seq = entry_id.partition("-")
    return int(milliseconds), int(seq or 0)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Follower:
    """Keeps a relay's engine a copy of the shared log: :meth:`catch_up`
    once at start (before the relay listens), then :meth:`run` until
    cancelled, reconnecting with a pause after Redis fails."""

    def __init__(self, shared: SharedLog, engine: Engine, *, block: float = 1.0, pause: float = 0.5) -> None:
        self.shared = shared
        self.engine = engine
        self.block = block
        self.pause = pause
        #: Entries read from Redis and ingested here (new or already held).
        self.entries = 0
        self._stopping = False
        self._position: str | None = None  # the feed entry up to which this copy is complete

    async def fresh(self, timeout: float = TIMEOUT) -> bool:
        """Read into this copy everything appended to the shared log before
        the call (one round trip when it holds it already), whether or not
        :meth:`run` got to it yet: a device connecting to this relay then
        sees what any relay acknowledged. False if Redis did not answer in
        time (the copy may lack what was appended meanwhile)."""
        try:
            async with asyncio.timeout(timeout):
                tip = await self.shared.feed_position()
                position = self._position
                while position is None or _id(position) < _id(tip):
                    names = None
                    if position is not None:
                        position, names = await self.shared.appended(position)
                        if names == set():  # what came up to the tip was trimmed meanwhile: read it all
                            names = None
                    await self.catch_up(None if names is None else sorted(names))
                    if names is None:
                        break
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("serving a device without knowing whether this copy is complete: %s", exc or "timed out")
            return False
        return True

    def publish(self, items: list[Delta | Snapshot]) -> None:
        """``Engine.publish_to`` of a relay of several: :meth:`SharedLog.publish`,
        then, in the same transaction, this copy's read position moves past
        its own appends where nothing came between (so that the follower does
        not read back what this relay just appended)."""
        for document, (before, after) in self.shared.publish(items).items():
            name = self._cursor_name(document)
            if (self.engine.setting(name) or "0-0") == before and after != before:
                self.engine.set_setting(name, after)

    def _cursor_name(self, document: str) -> str:
        return f"redis.{self.shared.deployment}.{document}"

    async def catch_up(self, documents: Iterable[str] | None = None) -> int:
        """Read every document's new entries (all documents by default) into
        the engine; how many entries were read."""
        names = await self.shared.documents() if documents is None else list(documents)
        read = 0
        for document in names:
            while True:
                got = await self._read_once(document)
                read += got
                if got < READ_COUNT:
                    break
        return read

    async def _read_once(self, document: str) -> int:
        after = self.engine.setting(self._cursor_name(document)) or "0-0"
        snapshot, entries = await self.shared.read(document, after, self.engine.version_vector(document))
        engine = self.engine
        with engine.unpublished(), engine.batch():
            if snapshot is not None and not covers(engine.version_vector(document), snapshot.vv):
                _ingest(engine, [snapshot])  # what it covers may be trimmed already
            _ingest(engine, [item for _, item in entries])
            if entries:
                engine.set_setting(self._cursor_name(document), entries[-1][0])
        self.entries += len(entries)
        return len(entries)

    async def stop(self) -> None:
        """Make :meth:`run` return: its blocked read is broken off by closing
        the connections (cancelling it is not enough: redis-py retries a read
        that a cancellation interrupted)."""
        self._stopping = True
        await self.shared.disconnect()

    async def run(self) -> None:
        """Follow the feed until :meth:`stop`; after a Redis failure, wait
        :attr:`pause` seconds and read every document again."""
        position: str | None = None
        while not self._stopping:
            try:
                if position is None:
                    position = await self.shared.feed_position()
                    await self.catch_up()
                    self._position = position
                position, names = await self.shared.appended(position, self.block)
                await self.catch_up(None if names is None else sorted(names))
                self._position = position
            except (RedisError, OSError) as exc:
                self._position = None
                if self._stopping:
                    return
                log.warning("the shared log (Redis) failed: %s; reading again in %.1f s", exc, self.pause)
                position = None
                await asyncio.sleep(self.pause)
            except errors.StorageError as exc:  # this relay's disk: the entries stay in Redis
                self._position = None
                log.error("could not store what the shared log holds: %s", exc)
                position = None
                await asyncio.sleep(self.pause)


def _ingest(engine: Engine, items: list[Delta | Snapshot]) -> None:
    """Ingest entries of the shared log in order. They were checked before
    they were appended, so a refusal here means this copy holds something
    else (a replica id clash that reached two relays at once): logged and
    skipped, and the rest goes on."""
    run: list[Delta] = []
    for item in [*items, None]:
        if isinstance(item, Delta):
            run.append(item)
            continue
        while run:
            refused = engine.ingest(run).rejected
            if refused is None:
                break
            log.error("the shared log holds a delta this relay refuses: %s", refused)
            at = next(i for i, d in enumerate(run) if (d.origin, d.seq) == (refused.origin, refused.seq))
            run = run[at + 1 :]
        run = []
        if isinstance(item, Snapshot):
            found = engine.ingest_snapshot(item)
            if found.rejected is not None:
                log.error("the shared log holds a snapshot this relay refuses: %s", found.rejected)
