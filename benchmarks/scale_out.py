"""Several relay processes sharing their log in one Redis (docs/scale-out.md).

``scale_out``, side by side in one run on one ``redis-server`` (its own
directory, ``appendonly yes``, ``appendfsync always``, emptied between runs):

1. **Upload.** ``DEVICES`` in-memory devices, each holding ``PER_DEVICE``
   offline record puts (one delta each) in a document of its own, sync once,
   all at once: (a) all through relay 1 of a Redis deployment, (b) split
   between relays 1 and 2 of one, (c) through one relay without Redis (the
   embedded default). Deltas/s: every delta over the time until every sync
   returned SYNCED. The three variants rotate over the repeats. Each device's
   credential covers its own document only, so a sync is an upload and
   nothing else. Checked after every run: a fresh device syncing from a relay
   the devices did not use holds exactly every delta (version vectors): in
   (a) relay 2, started after the upload (cold: it reads Redis first); in (b)
   each relay, which received half the deltas through the other; in (c) the
   one relay.
2. **Fan-out.** One on-disk writer live through relay 1 makes ``RATE`` record
   puts/s; live in-memory readers, half on relay 1 and half on relay 2 (one
   child process each): latency from the writer's put to each reader's
   ``on_change``, p50/p99 for each relay's readers.
3. **Cost.** ``COST_DEVICES`` devices upload ``COST_PER_DEVICE`` deltas each
   through relay 1 while relay 2 follows: CPU seconds of relay 1 (uploads),
   relay 2 (following), and Redis (``INFO cpu``), Redis memory (``INFO
   memory``) and append-only file bytes, each per 100,000 deltas; then (full
   size only: documents over the relays' 10,000-delta threshold) the CPU of
   the compaction round each relay runs every 30 s, with the trim of Redis's
   streams behind it, and Redis's memory after it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks._common import BenchmarkFailed, Result, Target, register
from benchmarks._redis_server import RedisServer, RedisUsage
from benchmarks.relay import (
    LIVE_DOCUMENT,
    ServerProcess,
    _Children,
    _paced,
    _receivers_main,
    _scratch,
    cpu_seconds,
    machine_busy_seconds,
    percentile,
    relay_process,
)
from replica import Replica
from replica.redis_log import PREFIX
from replica.relay import ID_FILE, KEY_FILE, relay_identity
from replica.status import SyncState
from replica.vv import VersionVector

UPLOAD_PREFIX = "bench/up/"
PER_100K = 100_000
#: How long a process may stay busy after its last visible work before the run fails.
SETTLE_SECONDS = 120.0
#: A process using less than this share of a core over ``IDLE_WINDOW`` seconds is idle.
IDLE_CORES = 0.03
IDLE_WINDOW = 1.0
#: Seconds over which the idle use of each process is measured before the compaction round.
IDLE_SAMPLE = 3.0

Issue = Callable[[str, list[str]], str]


def issuer(data: Path) -> Issue:
    """A function issuing credentials signed with the identity in ``data``
    (every relay of a deployment shares it), for the given document patterns."""
    relay_id, key = relay_identity(data)

    def issue(replica_id: str, documents: list[str]) -> str:
        now = time.time()
        token: str = key.issue(
            issuer=relay_id, replica_id=replica_id, documents=documents, expires_at=now + 3600, now=now
        )
        return token

    return issue


def twin(first: Path, second: Path) -> None:
    """Give ``second`` the identity of ``first`` before its first start (what an operator copies)."""
    second.mkdir(parents=True, exist_ok=True)
    for name in (KEY_FILE, ID_FILE):
        shutil.copy(first / name, second / name)


@asynccontextmanager
async def deployment(first: Path, redis: RedisServer | None, relays: int) -> AsyncIterator[list[ServerProcess]]:
    """``relays`` relay processes with one identity; with ``redis``, sharing its log."""
    extra = ("--redis", redis.url) if redis is not None else ()
    async with AsyncExitStack() as stack:
        started = [(await stack.enter_async_context(relay_process(first, *extra)))[0]]
        for n in range(1, relays):
            data = first.with_name(f"{first.name}-{n + 1}")
            twin(first, data)
            started.append((await stack.enter_async_context(relay_process(data, *extra)))[0])
        yield started


def offline_devices(count: int, per_device: int) -> list[Replica]:
    """In-memory devices, each with ``per_device`` record puts (one delta each) in a document of its own."""
    devices = []
    for n in range(count):
        device = Replica.in_memory(replica_id=f"dev{n:03d}")
        records = device.doc(UPLOAD_PREFIX + device.id).records("hh")
        with device.batch():
            for k in range(per_device):
                records.put(f"{device.id}-{k}", {"n": k, "by": device.id, "note": "household visited"})
        devices.append(device)
    return devices


def expected(devices: list[Replica], per_device: int) -> dict[str, VersionVector]:
    return {UPLOAD_PREFIX + device.id: {device.id: per_device} for device in devices}


async def upload(devices: list[Replica], urls: list[str], issue: Issue) -> float:
    """Every device syncs once, all at once, device n through ``urls[n % len(urls)]``;
    the seconds until every sync returned."""
    began = time.perf_counter()
    statuses = await asyncio.gather(
        *(
            device.sync(urls[n % len(urls)], credential=issue(device.id, [UPLOAD_PREFIX + device.id]), timeout=300)
            for n, device in enumerate(devices)
        )
    )
    seconds = time.perf_counter() - began
    failed = [s for s in statuses if s.state is not SyncState.SYNCED or s.unsynced]
    if failed:
        raise BenchmarkFailed(f"{len(failed)} uploads did not end SYNCED, first: {failed[0]}")
    return seconds


async def check_holds(url: str, issue: Issue, want: dict[str, VersionVector], label: str) -> None:
    """A fresh device syncing from ``url`` must hold exactly ``want`` (the version vector of every document)."""
    with Replica.in_memory(replica_id=f"check{time.monotonic_ns() % 10**9}") as fresh:
        status = await fresh.sync(url, credential=issue(fresh.id, ["bench/*"]), timeout=300)
        if status.state is not SyncState.SYNCED:
            raise BenchmarkFailed(f"{label}: the checking device's sync ended {status.state.name}: {status.error}")
        got = {doc: fresh.version_vector(doc) for doc in fresh.documents() if doc.startswith(UPLOAD_PREFIX)}
    if got != want:
        wrong = sorted(doc for doc in set(got) | set(want) if got.get(doc) != want.get(doc))
        raise BenchmarkFailed(
            f"{label}: a fresh device holds {len(got)} documents, expected {len(want)}; "
            f"{len(wrong)} differ, first {wrong[:1]}: {got.get(wrong[0]) if wrong else None}"
        )


class CPU:
    """CPU seconds of named processes (and the whole machine) between two readings."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.start = self.read()
        self.began = time.monotonic()

    def read(self) -> dict[str, float]:
        return {**{name: cpu_seconds(pid) for name, pid in self.pids.items()}, "machine": machine_busy_seconds()}

    def used(self) -> dict[str, float]:
        """Seconds each process used since the start, and ``others``: the rest of the machine."""
        now = self.read()
        used = {name: now[name] - self.start[name] for name in now}
        machine = used.pop("machine")
        used["others"] = max(0.0, machine - sum(used.values()))
        self.wall = time.monotonic() - self.began  # seconds of the window, for cores
        return used


async def settle(pids: list[int], timeout: float = SETTLE_SECONDS) -> None:
    """Wait until every process in ``pids`` is idle (a follower done reading, a compaction done)."""
    deadline = time.monotonic() + timeout
    while True:
        before = [cpu_seconds(pid) for pid in pids]
        await asyncio.sleep(IDLE_WINDOW)
        if all(cpu_seconds(pid) - b < IDLE_CORES * IDLE_WINDOW for pid, b in zip(pids, before, strict=True)):
            return
        if time.monotonic() > deadline:
            raise BenchmarkFailed(f"processes {pids} were still busy {timeout} s after the work")


# -- 1. upload ---------------------------------------------------------------


@dataclass
class UploadRun:
    seconds: float
    cpu: dict[str, float]  # seconds of each process during the upload and until the relays were idle
    wall: float  # seconds of that window


async def _upload_run(dirs: Iterator[Path], redis: RedisServer, variant: str, count: int, per: int) -> UploadRun:
    """One upload of variant ``one`` (all through relay 1 with Redis), ``two`` (split), ``plain`` (no Redis)."""
    redis.flush()
    devices = offline_devices(count, per)
    want = expected(devices, per)
    first = next(dirs)
    try:
        async with deployment(first, None if variant == "plain" else redis, 2 if variant == "two" else 1) as relays:
            issue = issuer(first)
            pids = {f"relay {n + 1}": relay.pid for n, relay in enumerate(relays)}
            if variant != "plain":
                pids["redis"] = redis.pid
            cpu = CPU({**pids, "devices": os.getpid()})
            seconds = await upload(devices, [relay.url for relay in relays], issue)
            await settle([relay.pid for relay in relays])  # with two, each reads the other's uploads too
            used = cpu.used()
            if variant == "one":  # the relay not used: a second one, started cold from Redis
                second = first.with_name(first.name + "-cold")
                twin(first, second)
                async with relay_process(second, "--redis", redis.url) as (cold, _):
                    await check_holds(cold.url, issue, want, "a relay started after the upload")
            else:
                for n, relay in enumerate(relays):
                    await check_holds(relay.url, issue, want, f"relay {n + 1} of {len(relays)}")
    finally:
        for device in devices:
            device.close()
    return UploadRun(seconds, used, cpu.wall)


# -- 2. fan-out --------------------------------------------------------------


@dataclass
class FanoutRun:
    pairs: dict[str, list[float]]  # per relay: every (reader, delta) latency, s
    worst: dict[str, list[float]]  # per relay: per delta, the max over its readers
    write_rate: float
    cpu: dict[str, float]
    seconds: float


async def _fanout_run(dirs: Iterator[Path], redis: RedisServer, readers: int, count: int, rate: float) -> FanoutRun:
    redis.flush()
    first = next(dirs)
    async with deployment(first, redis, 2) as relays:
        credential = issuer(first)
        live: asyncio.Task[Any] | None = None
        with Replica.open(next(dirs)) as writer:
            token = credential(writer.id, ["bench/*"])
            records = writer.doc(LIVE_DOCUMENT).records("r")
            records.put("seed", {"t": 0.0, "i": -1})  # the readers wait for it: they are connected
            status = await writer.sync(relays[0].url, credential=token)
            if status.state is not SyncState.SYNCED:
                raise BenchmarkFailed(f"the writer's first sync ended {status.state.name}: {status.error}")
            groups = [[(f"r{n}-{k:03d}", "") for k in range(readers)] for n in (1, 2)]
            groups = [[(rid, credential(rid, ["bench/*"])) for rid, _ in group] for group in groups]
            children = _Children(
                _receivers_main, [(relay.url, writer.id, group) for relay, group in zip(relays, groups, strict=True)]
            )
            try:
                await children.wait_ready(120)
                live = asyncio.create_task(writer.sync(relays[0].url, credential=token, live=True))
                await asyncio.sleep(0)  # the sync starts: SYNCING until the live link has caught up
                deadline = time.monotonic() + 10
                while writer.status().state is not SyncState.SYNCED:
                    if time.monotonic() > deadline:
                        raise BenchmarkFailed(f"the writer's live sync did not catch up: {writer.status()}")
                    await asyncio.sleep(0.05)
                pids = {"relay 1": relays[0].pid, "relay 2": relays[1].pid, "redis": redis.pid}
                cpu = CPU({**pids, "writer": os.getpid(), "readers 1": children.pids[0], "readers 2": children.pids[1]})
                began = time.monotonic()
                sent_at: list[float] = []

                def write(k: int) -> None:
                    sent_at.append(time.time())
                    records.put(f"k{k}", {"t": sent_at[-1], "i": k})

                write_rate = await _paced(count, rate, write)
                seconds = time.monotonic() - began
                used = cpu.used()
                rows, problems = await children.collect(count, sent_at)
            finally:
                children.close()
        if live is not None:
            await asyncio.gather(live, return_exceptions=True)
    if problems:
        raise BenchmarkFailed(f"{len(problems)} wrong arrivals, first: {problems[0]}")
    missing = sum(1 for row in rows for x in row if x != x)
    if missing:
        raise BenchmarkFailed(f"{missing} of {count * len(rows)} (reader, delta) arrivals missing")
    by_relay = {"relay 1": rows[:readers], "relay 2": rows[readers:]}
    return FanoutRun(
        {name: [x for row in got for x in row] for name, got in by_relay.items()},
        {name: [max(row[k] for row in got) for k in range(count)] for name, got in by_relay.items()},
        write_rate,
        used,
        seconds,
    )


# -- 3. cost per delta ---------------------------------------------------------


@dataclass
class CostRun:
    deltas: int
    upload_cpu: dict[str, float]
    upload_redis: tuple[RedisUsage, RedisUsage]
    compaction_cpu: dict[str, float] | None
    after_compaction: RedisUsage | None
    stream_entries: tuple[int, int]  # after the upload, after the compaction round
    memory_by_kind: dict[str, dict[str, int]]  # bytes per kind of key (MEMORY USAGE), after each phase
    idle_cores: dict[str, float]  # what each process uses doing nothing, subtracted from the compaction round
    notes: list[str]


def _logged(relay: ServerProcess, words: str) -> bool:
    return words in relay.log.read_text()


async def _cost_run(dirs: Iterator[Path], redis: RedisServer, count: int, per: int, compaction: bool) -> CostRun:
    redis.flush()
    devices = offline_devices(count, per)
    want = expected(devices, per)
    first = next(dirs)
    notes: list[str] = []
    try:
        async with deployment(first, redis, 2) as relays:
            issue = issuer(first)
            pids = {"relay 1 (uploads)": relays[0].pid, "relay 2 (follows)": relays[1].pid, "redis": redis.pid}
            before = redis.usage()
            cpu = CPU(pids)
            await upload(devices, [relays[0].url], issue)
            await settle([relay.pid for relay in relays])  # relay 2 has read everything into its copy
            upload_cpu = cpu.used()
            after = redis.usage()
            entries = redis.stream_entries(PREFIX + "log:")
            memory = {"after upload": redis.memory_by_kind()}
            if any(_logged(relay, "compacted") for relay in relays):
                notes.append("a compaction round ran within the upload's window: its CPU is in the upload figures")
            compaction_cpu = trimmed = None
            left = entries
            idle: dict[str, float] = {}
            if compaction:
                cpu = CPU(pids)
                await asyncio.sleep(IDLE_SAMPLE)
                idle = {name: used / IDLE_SAMPLE for name, used in cpu.used().items()}
                cpu = CPU(pids)
                began = time.monotonic()
                deadline = time.monotonic() + SETTLE_SECONDS
                while (
                    not all(_logged(relay, "compacted") for relay in relays)
                    or redis.stream_entries(PREFIX + "log:") >= entries
                ):
                    if time.monotonic() > deadline:
                        raise BenchmarkFailed("the relays did not compact and trim within the deadline")
                    await asyncio.sleep(0.2)
                await settle([relay.pid for relay in relays])
                window = time.monotonic() - began
                compaction_cpu = {
                    name: used - idle[name] * window for name, used in cpu.used().items() if name != "others"
                }
                trimmed = redis.usage()
                left = redis.stream_entries(PREFIX + "log:")
                memory["after compaction"] = redis.memory_by_kind()
            await check_holds(relays[1].url, issue, want, "relay 2 (it followed every delta)")
    finally:
        for device in devices:
            device.close()
    return CostRun(
        count * per, upload_cpu, (before, after), compaction_cpu, trimmed, (entries, left), memory, idle, notes
    )


# -- the benchmark -------------------------------------------------------------

VARIANTS = {"one": "1 relay + Redis", "two": "2 relays + Redis", "plain": "1 relay, no Redis"}


def _record_upload(result: Result, runs: dict[str, list[UploadRun]], deltas: int) -> None:
    figures = {}
    for variant, label in VARIANTS.items():
        figures[variant] = result.figure(f"upload, {label}", "deltas/s", [deltas / r.seconds for r in runs[variant]])
        for name in runs[variant][0].cpu:
            per = [r.cpu[name] / deltas * PER_100K for r in runs[variant]]
            if name != "others":
                result.figure(f"  {label}: {name} CPU per 100k deltas", "s", per)
        result.params[f"upload_cores_{variant}"] = [
            {k: round(v / r.wall, 2) for k, v in r.cpu.items()} for r in runs[variant]
        ]
    result.ratio("upload: 2 relays / 1 relay (both with Redis)", figures["two"], figures["one"])
    result.ratio("upload: 1 relay with Redis / without", figures["one"], figures["plain"])
    result.ratio("upload: 2 relays with Redis / 1 without", figures["two"], figures["plain"])


def _record_fanout(result: Result, runs: list[FanoutRun], readers: int) -> None:
    ms = 1000.0
    for name, where in (("relay 1", "the writer's relay"), ("relay 2", "the other relay")):
        for q in (0.5, 0.99):
            result.figure(
                f"fan-out p{q * 100:.0f}, readers on {where}", "ms", [percentile(r.pairs[name], q) * ms for r in runs]
            )
        result.figure(
            f"  to all {readers} readers on {where}: p99", "ms", [percentile(r.worst[name], 0.99) * ms for r in runs]
        )
    deliveries = [len(r.pairs["relay 1"]) + len(r.pairs["relay 2"]) for r in runs]
    for name in ("relay 1", "relay 2", "redis"):
        per = [r.cpu[name] / d * 1e6 for r, d in zip(runs, deliveries, strict=True)]
        result.figure(f"  fan-out: {name} CPU per delivered delta", "us", per)
    result.params["fanout_write_rate"] = [round(r.write_rate, 1) for r in runs]
    result.params["fanout_cores"] = [{k: round(v / r.seconds, 3) for k, v in r.cpu.items()} for r in runs]


def _record_cost(result: Result, run: CostRun) -> None:
    scale = PER_100K / run.deltas
    before, after = run.upload_redis
    result.figure("cost: Redis CPU per 100k deltas (INFO cpu)", "s", [(after.cpu - before.cpu) * scale])
    result.figure(
        "cost: Redis memory per 100k deltas (INFO memory)", "MB", [(after.memory - before.memory) * scale / 1e6]
    )
    result.figure("cost: Redis append-only file per 100k deltas", "MB", [(after.disk - before.disk) * scale / 1e6])
    for name in ("relay 1 (uploads)", "relay 2 (follows)"):
        result.figure(f"cost: {name} CPU per 100k deltas", "s", [run.upload_cpu[name] * scale])
    result.params["cost_redis_children_cpu"] = after.children_cpu - before.children_cpu
    result.params["cost_upload_cpu_seconds"] = {k: round(v, 3) for k, v in run.upload_cpu.items()}
    result.params["redis_memory_by_kind_bytes"] = run.memory_by_kind
    result.params["idle_cores"] = {k: round(v, 4) for k, v in run.idle_cores.items()}
    result.params["stream_entries"] = {"after upload": run.stream_entries[0], "after compaction": run.stream_entries[1]}
    if run.compaction_cpu is not None and run.after_compaction is not None:
        for name in ("relay 1 (uploads)", "relay 2 (follows)", "redis"):
            result.figure(
                f"cost: compaction + trim, {name} CPU per 100k deltas", "s", [run.compaction_cpu[name] * scale]
            )
        result.figure(
            "cost: Redis memory after compaction and trim, per 100k deltas",
            "MB",
            [(run.after_compaction.memory - before.memory) * scale / 1e6],
        )
        result.params["cost_compaction_cpu_seconds"] = {k: round(v, 3) for k, v in run.compaction_cpu.items()}
    result.notes.extend(run.notes)


@register("scale_out")
def scale_out(quick: bool) -> Result:
    """Upload through 1 and 2 relays on one Redis and 1 without, fan-out across relays, cost per delta."""
    devices, per, repeats = (4, 200, 1) if quick else (20, 1_000, 3)
    readers, rate, seconds = (3, 200.0, 1.0) if quick else (20, 200.0, 10.0)
    cost_devices, cost_per = (4, 500) if quick else (10, 11_000)
    count = int(rate * seconds)
    result = Result(
        "scale_out",
        params={
            "devices": devices,
            "deltas_per_device": per,
            "repeats": repeats,
            "fanout_readers_per_relay": readers,
            "fanout_rate": rate,
            "fanout_deltas": count,
            "cost_devices": cost_devices,
            "cost_deltas_per_device": cost_per,
            "nproc": len(os.sched_getaffinity(0)),
        },
    )
    uploads: dict[str, list[UploadRun]] = {v: [] for v in VARIANTS}
    order = list(VARIANTS)
    with _scratch() as dirs:
        redis = RedisServer(next(dirs)).start()
        try:
            if not quick:  # a first run pays for cold caches; not measured
                asyncio.run(_upload_run(dirs, redis, "two", devices, per))
            for i in range(repeats):  # rotate the order, so that drift hits every variant alike
                for variant in order[i % 3 :] + order[: i % 3]:
                    uploads[variant].append(asyncio.run(_upload_run(dirs, redis, variant, devices, per)))
            fanouts = [asyncio.run(_fanout_run(dirs, redis, readers, count, rate)) for _ in range(repeats)]
            cost = asyncio.run(_cost_run(dirs, redis, cost_devices, cost_per, compaction=not quick))
        finally:
            redis.stop()
    _record_upload(result, uploads, devices * per)
    _record_fanout(result, fanouts, readers)
    _record_cost(result, cost)
    ratio = result.ratios["upload: 2 relays / 1 relay (both with Redis)"]
    result.targets.append(Target("upload: 2 relays / 1 relay", ratio, 1.0, guard=False))
    others = max(r.cpu["others"] / r.wall for rs in uploads.values() for r in rs)
    if others > 0.2:
        result.notes.append(f"other processes kept up to {others:.2f} cores busy during an upload: figures are skewed")
    result.notes.append(
        f"{result.params['nproc']} cores shared by Redis, the relays, and the devices (this process; "
        "the fan-out's readers in one child process per relay): two relays cannot use more than the cores left"
    )
    return result
