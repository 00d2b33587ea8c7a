"""The field day: a campaign's devices register offline, sync in teams, then storm one relay.

Scenario (full size): 50 on-disk devices in 10 teams of 5 each register 2,000
campaign records offline (``benchmarks/_fieldgen.py``: households with members,
individuals, deliveries, stock transactions; one ``records.put`` per record,
so one delta each, all in one ``replica.batch()``). Within each team the
members then sync with the supervisor's device over peer links until every
member holds the team's 10,000 records (a star around member 0, which serves
peers; the teams sync at the same time). The next morning all 50 devices sync
with one relay at once: each device is done when its ``replica.sync`` returns
``SYNCED`` with nothing unsynced ("Data Synced").

Processes: the relay is a separate process (``benchmarks.relay.relay_process``);
the devices run in ``WORKER_PROCESSES`` spawned worker processes, whole teams
each, one asyncio loop each, for the peer phase and for the storm (the storm's
start is a wall-clock time sent to every worker). Every replica commit fsyncs
and blocks its loop, so devices sharing a process wait on each other's commits,
which real phones do not: with all 50 in one process, the storm took 1.6-2.6x
as long. All of them still share one disk and two cores with the relay.

What is measured against what: there is no baseline for a storm; the figures
are the time until every device shows "Data Synced" (and per-device
completion times), the relay's throughput in unique records and in deltas
received (each team's records arrive from five devices: four copies are
duplicates the relay must recognise), its peak memory, and bytes per record
on disk and on the wire against the plain msgpack size of the record.

Untimed setup per repeat: each device's first relay sync (it pins the relay's
key and gets a credential bound to its own key, which peer sync requires),
on the same relay data directory the storm uses later (a new relay process).
Credentials are scoped as in a campaign: a device may sync its team's area
document and the shared stock document, nothing else.

Checks: after the peer phase every member holds exactly its team's records;
after the storm every device is synced with nothing unsynced and still holds
its team's records; the relay's log holds each (origin, seq) exactly once
(its version vectors equal the devices' own counts); and a fresh supervisor
device syncing everything from the relay holds exactly every record made,
field for field.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from benchmarks._common import BenchmarkFailed, Result, Stopwatch, register
from benchmarks._fieldgen import (
    STOCK_DOCUMENT,
    FieldRecord,
    area_document,
    device_id,
    device_records,
    encoded_size,
)
from benchmarks.relay import (
    ChildProcesses,
    LoadWatch,
    _scratch,
    counting_frames,
    cpu_seconds,
    percentile,
    relay_process,
    rss_mb,
    status_mb,
)
from replica import Replica
from replica.relay import relay_identity
from replica.status import SyncState

HOST = "127.0.0.1"
#: Silence allowed on a link before a sync fails: generous, since 50 devices share the relay and 2 cores.
SYNC_TIMEOUT = 300.0
#: The devices run in this many worker processes, whole teams each. Every commit fsyncs and blocks its
#: process's event loop, so devices sharing a process wait on each other's disk writes (profiled with all
#: 50 in one process: two thirds of its loop's time was in LMDB commits); real phones do not.
WORKER_PROCESSES = 5
CREDENTIAL_HOURS = 24.0

Issue = Callable[[str, list[str]], str]


@dataclass(frozen=True)
class Plan:
    """The size of one field day."""

    teams: int
    team_size: int
    per_device: int
    seed: int = 7

    @property
    def devices(self) -> int:
        return self.teams * self.team_size

    @property
    def records(self) -> int:
        return self.devices * self.per_device

    def ids(self, team: int) -> list[str]:
        return [device_id(team, member) for member in range(self.team_size)]


@dataclass
class Fleet:
    """Every record of the day, by the device that makes it (generated once, reused by every repeat)."""

    plan: Plan
    made: dict[str, list[FieldRecord]]

    @classmethod
    def generate(cls, plan: Plan) -> Fleet:
        made = {
            device_id(team, member): device_records(team, member, plan.per_device, plan.seed)
            for team in range(plan.teams)
            for member in range(plan.team_size)
        }
        return cls(plan, made)

    def team_records(self, team: int) -> list[FieldRecord]:
        return [record for rid in self.plan.ids(team) for record in self.made[rid]]

    def expected_vvs(self) -> dict[str, dict[str, int]]:
        """Per document, ``{origin: deltas}``: one delta per record."""
        vvs: dict[str, Counter[str]] = {}
        for rid, records in self.made.items():
            for record in records:
                vvs.setdefault(record.document, Counter())[rid] += 1
        return {document: dict(counts) for document, counts in vvs.items()}


@dataclass
class DayRun:
    """What one field day measured."""

    register_seconds: float = 0.0
    peer_seconds: float = 0.0
    peer_deltas: int = 0  # deltas moved over peer links (each counted once, on the sending side)
    peer_frame_bytes: int = 0
    peer_cores: float = 0.0  # the worker processes (both ends of every peer link)
    peer_others: float = 0.0  # cores the rest of the machine kept busy meanwhile
    storm_done: list[float] = field(default_factory=list)  # per device: seconds from the storm's start
    storm_sent: int = 0  # deltas the devices sent the relay (duplicates included)
    storm_received: int = 0  # deltas the devices received from the relay
    up_bytes: int = 0  # deltas frame bytes, devices -> relay
    down_bytes: int = 0
    up_frames: int = 0
    relay_rss_start: float = 0.0
    relay_hwm: float = 0.0
    relay_rss_end: float = 0.0
    cores: dict[str, float] = field(default_factory=dict)
    relay_disk: int = 0
    device_disk_per_record: list[float] = field(default_factory=list)
    fresh_seconds: float = 0.0


# -- helpers -----------------------------------------------------------------


def _issuer(relay_dir: Path) -> Issue:
    """Credentials signed with the relay's key, scoped to ``documents``."""
    relay_id, key = relay_identity(relay_dir)

    def issue(replica_id: str, documents: list[str]) -> str:
        now = time.time()
        token: str = key.issue(
            issuer=relay_id,
            replica_id=replica_id,
            documents=documents,
            expires_at=now + CREDENTIAL_HOURS * 3600,
            now=now,
        )
        return token

    return issue


def _scope(team: int) -> list[str]:
    return [area_document(team), STOCK_DOCUMENT]


def _disk_bytes(folder: Path) -> int:
    """Bytes allocated on disk by the files under ``folder`` (LMDB files are not sparse-filled)."""
    return sum(path.stat().st_blocks * 512 for path in folder.rglob("*") if path.is_file())


def _held(device: Replica, records: list[FieldRecord]) -> Counter[tuple[str, str]]:
    """How many records of each (document, collection) in ``records`` ``device`` holds."""
    wanted = Counter((r.document, r.collection) for r in records)
    held: Counter[tuple[str, str]] = Counter()
    for document, collection in wanted:
        table = device.doc(document).records(collection)
        held[(document, collection)] = sum(1 for r in records if r.document == document and r.record_id in table)
    return held


def _check_team(team: int, devices: dict[str, Replica], fleet: Fleet, when: str) -> None:
    """Every member of ``team`` holds every record of its team."""
    expected = fleet.team_records(team)
    want = Counter((r.document, r.collection) for r in expected)
    for rid in fleet.plan.ids(team):
        held = _held(devices[rid], expected)
        if held != want:
            raise BenchmarkFailed(f"{when}: {rid} holds {dict(held)} of its team's records, expected {dict(want)}")


def _records_held(device: Replica) -> int:
    return sum(
        len(device.doc(document).records(collection))
        for document in device.documents()
        for collection in ("households", "individuals", "deliveries", "transactions")
    )


async def _sync(device: Replica, url: str, *, credential: str | None = None, peer: bool = False) -> tuple[int, int]:
    """One sync run that must end ``SYNCED``; returns the deltas it sent and received."""
    status = await device.sync(url, credential=credential, peer=peer, timeout=SYNC_TIMEOUT)
    if status.state is not SyncState.SYNCED:
        raise BenchmarkFailed(f"{device.id}: a {'peer' if peer else 'relay'} sync ended {status.state.name}: {status}")
    return status.progress.sent, status.progress.received


# -- the phases --------------------------------------------------------------


async def _enroll(devices: dict[str, Replica], url: str, issue: Issue, plan: Plan) -> None:
    """Each device's first relay sync, with nothing to send: it pins the relay's key and gets a bound credential."""
    for team in range(plan.teams):
        await asyncio.gather(*(_sync(devices[rid], url, credential=issue(rid, _scope(team))) for rid in plan.ids(team)))


def _register(devices: dict[str, Replica], fleet: Fleet) -> float:
    """Every device makes its records offline, one put (one delta) each, in one batch per device."""
    with Stopwatch() as sw:
        for rid, device in devices.items():
            with device.batch():
                for record in fleet.made[rid]:
                    device.doc(record.document).records(record.collection).put(record.record_id, record.fields)
    for rid, device in devices.items():
        unsynced = device.status().unsynced
        if unsynced != fleet.plan.per_device:
            raise BenchmarkFailed(f"{rid} counts {unsynced} unsynced after registering {fleet.plan.per_device}")
    return sw.seconds


async def _team_peer_sync(members: list[Replica]) -> int:
    """A star around the supervisor (member 0, serving peers): every other member syncs with it,
    then all but the last sync again to pick up what came after them. Returns the deltas moved."""
    supervisor, others = members[0], members[1:]
    moved = 0
    async with await supervisor.serve_peers(HOST, 0) as server:
        for member in [*others, *others[:-1]]:
            sent, received = await _sync(member, server.url, peer=True)
            moved += sent + received
    return moved


async def _storm(devices: dict[str, Replica], url: str, tokens: dict[str, str], start_at: float) -> dict[str, float]:
    """Every device syncs with the relay at once; returns each one's seconds from ``start_at`` (wall clock,
    shared by the processes) until it shows "Data Synced"."""

    async def one(rid: str) -> float:
        device = devices[rid]
        await _sync(device, url, credential=tokens[rid])
        done = time.time() - start_at
        status = device.status()
        if status.label != "Data Synced" or status.unsynced:
            raise BenchmarkFailed(f"{rid} shows {status.label!r} after its sync returned")
        return done

    await asyncio.sleep(max(0.0, start_at - time.time()))
    return dict(zip(devices, await asyncio.gather(*(one(rid) for rid in devices)), strict=True))


@dataclass
class PeerShare:
    """What the teams of one worker process did in the peer phase."""

    seconds: float  # from the shared start until its last team was done
    moved: int  # deltas moved, counted by the initiators (each once)
    frame_bytes: int  # deltas frames sent by either end
    cpu: float  # CPU seconds of the process during the phase


@dataclass
class StormShare:
    """What the devices of one worker process did in the storm."""

    done: dict[str, float]
    sent: int
    received: int
    up_bytes: int
    down_bytes: int
    up_frames: int


async def _peer_work(devices: dict[str, Replica], teams: list[list[str]], start_at: float) -> PeerShare:
    await asyncio.sleep(max(0.0, start_at - time.time()))
    cpu = cpu_seconds(os.getpid())
    with counting_frames() as frames:
        moved = await asyncio.gather(*(_team_peer_sync([devices[rid] for rid in team]) for team in teams))
    return PeerShare(time.time() - start_at, sum(moved), sum(frames.sent), cpu_seconds(os.getpid()) - cpu)


async def _storm_work(
    devices: dict[str, Replica], url_tokens: tuple[str, dict[str, str]], start_at: float
) -> StormShare:
    url, tokens = url_tokens
    with counting_frames() as frames:
        done = await _storm(devices, url, tokens, start_at)
    statuses = [device.status() for device in devices.values()]
    return StormShare(
        done,
        sum(status.progress.sent for status in statuses),
        sum(status.progress.received for status in statuses),
        sum(frames.sent),
        sum(frames.received),
        len(frames.sent),
    )


def _worker_main(phase: str, root: str, ids: list[str], work: Any, conn: Connection) -> None:
    """Child process: open the devices ``ids`` (the apps start), say ready, run ``phase`` ("peer": the
    team peer syncs of ``work``, a list of teams; "storm": sync with the relay, ``work`` = (url, tokens))
    at the time the parent sends, send back its share (or the error, as a string)."""
    try:
        asyncio.run(_worker(phase, Path(root), ids, work, conn))
    except BaseException as exc:
        conn.send(f"{type(exc).__name__}: {exc}")
        raise


async def _worker(phase: str, root: Path, ids: list[str], work: Any, conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    devices = {rid: Replica.open(root / rid) for rid in ids}
    try:
        conn.send("ready")
        start_at = await loop.run_in_executor(None, conn.recv)
        share: PeerShare | StormShare
        if phase == "peer":
            share = await _peer_work(devices, work, start_at)
        else:
            share = await _storm_work(devices, work, start_at)
    finally:
        for device in devices.values():
            device.close()
    conn.send(share)


class _Workers(ChildProcesses):
    """Device worker processes (spawned), each owning whole teams, each with a pipe. Real devices do
    not share a disk or an event loop; devices in one process wait on each other's commits (fsync)."""

    def __init__(self, phase: str, root: Path, groups: list[list[str]], works: list[Any]) -> None:
        super().__init__(_worker_main, [(phase, str(root), ids, work) for ids, work in zip(groups, works, strict=True)])

    async def _receive(self, conn: Connection, timeout: float) -> object:
        loop = asyncio.get_running_loop()
        try:
            if not await loop.run_in_executor(None, conn.poll, timeout):
                raise EOFError
            message: object = conn.recv()
        except EOFError:
            raise BenchmarkFailed(f"a device worker process did not answer within {timeout} s") from None
        if isinstance(message, str) and message != "ready":
            raise BenchmarkFailed(f"a device worker process failed: {message}")
        return message

    async def ready(self) -> None:
        for _, conn in self.procs:
            await self._receive(conn, 120)

    async def go(self, start_at: float) -> list[Any]:
        for _, conn in self.procs:
            conn.send(start_at)
        return [await self._receive(conn, 2 * SYNC_TIMEOUT) for _, conn in self.procs]


async def _fresh_download(folder: Path, url: str, issue: Issue, fleet: Fleet) -> float:
    """A fresh supervisor device allowed every document syncs from the relay and must hold exactly
    every record made, field for field."""
    with Replica.open(folder, replica_id="field-supervisor") as fresh:
        token = issue(fresh.id, ["bench/*"])
        with Stopwatch() as sw:
            await _sync(fresh, url, credential=token)
        made = [record for records in fleet.made.values() for record in records]
        total = _records_held(fresh)
        if total != len(made):
            raise BenchmarkFailed(f"a fresh device holds {total} records after the storm, expected {len(made)}")
        for record in made:
            got = fresh.doc(record.document).records(record.collection).get(record.record_id)
            if got != record.fields:
                raise BenchmarkFailed(f"record {record.record_id} reads {got!r}, expected {record.fields!r}")
    return sw.seconds


def _check_relay_log(relay_dir: Path, fleet: Fleet) -> None:
    """The relay's log holds every (origin, seq) exactly once: contiguous version vectors equal to what
    each device made, and one stored delta per (origin, seq) after the document's snapshot."""
    expected = fleet.expected_vvs()
    with Replica.open(relay_dir) as stored:
        held = {document: stored.version_vector(document) for document in stored.documents()}
        if held != expected:
            raise BenchmarkFailed(f"the relay holds version vectors {held}, expected {expected}")
        for document, vv in expected.items():
            items = stored.missing_deltas(document, {})  # after its snapshot; a span holds several
            keys = [(item.origin, seq) for item in items for seq in range(item.start, item.seq + 1)]
            if len(keys) != len(set(keys)) or len(keys) != stored.tail_length(document):
                raise BenchmarkFailed(f"the relay's log of {document} holds {len(keys)} deltas, expected {vv}")


async def _field_day(root: Path, fleet: Fleet, processes: int) -> DayRun:
    plan = fleet.plan
    run = DayRun()
    relay_dir = root / "relay"
    issue = _issuer(relay_dir)
    ids = [rid for team in range(plan.teams) for rid in plan.ids(team)]
    # Whole teams per worker process: team i goes to process i % processes.
    teams = [[plan.ids(team) for team in range(i, plan.teams, processes)] for i in range(processes)]
    groups = [[rid for team in group for rid in team] for group in teams]
    devices = {rid: Replica.open(root / rid, replica_id=rid) for rid in ids}
    try:
        async with relay_process(relay_dir) as (relay, _):
            await _enroll(devices, relay.url, issue, plan)
        # In the field: no relay.
        run.register_seconds = _register(devices, fleet)
    finally:
        for device in devices.values():
            device.close()

    workers = _Workers("peer", root, groups, teams)
    try:
        await workers.ready()
        with LoadWatch(lambda: [os.getpid(), *workers.pids]) as load:
            start_at = time.time() + 0.1
            peer_shares: list[PeerShare] = await workers.go(start_at)
    finally:
        workers.close()
    run.peer_seconds = max(share.seconds for share in peer_shares)
    run.peer_cores = sum(share.cpu for share in peer_shares) / run.peer_seconds
    run.peer_others = load.others
    run.peer_deltas = sum(share.moved for share in peer_shares)
    run.peer_frame_bytes = sum(share.frame_bytes for share in peer_shares)
    devices = {rid: Replica.open(root / rid) for rid in ids}
    try:
        for team in range(plan.teams):
            _check_team(team, devices, fleet, "after the peer phase")
    finally:
        for device in devices.values():
            device.close()

    # The next morning: the apps start (reopen, in the storm processes), the relay runs, everyone syncs at once.
    tokens = {rid: issue(rid, _scope(team)) for team in range(plan.teams) for rid in plan.ids(team)}
    async with relay_process(relay_dir) as (relay, _):
        run.relay_rss_start = rss_mb(relay.pid)
        storm = _Workers("storm", root, groups, [(relay.url, {rid: tokens[rid] for rid in group}) for group in groups])
        try:
            await storm.ready()
            cpu0 = cpu_seconds(relay.pid), storm.cpu()
            with LoadWatch(lambda: [os.getpid(), relay.pid, *storm.pids]) as load:
                start_at = time.time() + 0.1
                shares: list[StormShare] = await storm.go(start_at)
                wall = time.time() - start_at
            run.cores = {"relay": (cpu_seconds(relay.pid) - cpu0[0]) / wall, "devices": (storm.cpu() - cpu0[1]) / wall}
        finally:
            storm.close()
        run.cores["others"] = load.others
        run.relay_hwm = status_mb(relay.pid, "VmHWM")
        run.relay_rss_end = rss_mb(relay.pid)
        done = {rid: seconds for share in shares for rid, seconds in share.done.items()}
        if sorted(done) != sorted(ids):
            raise BenchmarkFailed(f"{len(done)} of {len(ids)} devices reported from the storm")
        run.storm_done = [done[rid] for rid in ids]
        run.storm_sent = sum(share.sent for share in shares)
        run.storm_received = sum(share.received for share in shares)
        run.up_bytes = sum(share.up_bytes for share in shares)
        run.down_bytes = sum(share.down_bytes for share in shares)
        run.up_frames = sum(share.up_frames for share in shares)
        devices = {rid: Replica.open(root / rid) for rid in ids}
        try:
            for team in range(plan.teams):
                _check_team(team, devices, fleet, "after the storm")
            run.device_disk_per_record = [_records_held(device) for device in devices.values()]
        finally:
            for device in devices.values():
                device.close()
        run.fresh_seconds = await _fresh_download(root / "fresh", relay.url, issue, fleet)
    run.device_disk_per_record = [
        _disk_bytes(root / rid) / held for rid, held in zip(ids, run.device_disk_per_record, strict=True)
    ]
    run.relay_disk = _disk_bytes(relay_dir)
    _check_relay_log(relay_dir, fleet)
    return run


# -- the benchmark -----------------------------------------------------------


@register("field_day")
def field_day(quick: bool) -> Result:
    """A campaign's field day: offline registration, team peer sync, then a morning storm of every
    device to one relay: time to "Data Synced", relay throughput and memory, bytes per record."""
    plan, repeats = (Plan(teams=2, team_size=3, per_device=300), 1) if quick else (Plan(10, 5, 2_000), 2)
    processes = min(WORKER_PROCESSES, plan.teams)
    fleet = Fleet.generate(plan)
    made = [record for records in fleet.made.values() for record in records]
    result = Result(
        "field_day",
        params={
            "teams": plan.teams,
            "team_size": plan.team_size,
            "devices": plan.devices,
            "records_per_device": plan.per_device,
            "records": plan.records,
            "repeats": repeats,
            "seed": plan.seed,
            "mix": dict(Counter(record.collection for record in made)),
            "peer_topology": "star around member 0: members 1..n-1 sync with it, then 1..n-2 again",
            "credential_scope": "bench/area-<team> and bench/stock",
            "worker_processes": processes,
        },
    )
    runs: list[DayRun] = []
    for _ in range(repeats):
        with _scratch() as dirs:
            runs.append(asyncio.run(_field_day(next(dirs), fleet, processes)))
    n = plan.records
    result.figure("offline registration (one delta per record)", "records/s", [n / r.register_seconds for r in runs])
    result.figure("team peer phase: every member holds its team's records", "s", [r.peer_seconds for r in runs])
    result.figure("  deltas moved over peer links", "deltas/s", [r.peer_deltas / r.peer_seconds for r in runs])
    result.figure("  CPU of the device processes (both ends of each link)", "cores", [r.peer_cores for r in runs])
    every = result.figure('storm: every device shows "Data Synced"', "s", [max(r.storm_done) for r in runs])
    result.figure("  per-device completion p50", "s", [percentile(r.storm_done, 0.5) for r in runs])
    result.figure("  per-device completion p90", "s", [percentile(r.storm_done, 0.9) for r in runs])
    result.figure("  first device done", "s", [min(r.storm_done) for r in runs])
    result.figure("relay throughput: unique records stored", "records/s", [n / max(r.storm_done) for r in runs])
    result.figure(
        "relay throughput: deltas received (duplicates included)",
        "deltas/s",
        [r.storm_sent / max(r.storm_done) for r in runs],
    )
    result.figure("  deltas uploaded per unique record", "x", [r.storm_sent / n for r in runs])
    result.figure("  deltas sent back to devices", "deltas", [float(r.storm_received) for r in runs])
    result.figure("relay peak memory (VmHWM)", "MB", [r.relay_hwm for r in runs])
    result.figure("relay RSS before the storm", "MB", [r.relay_rss_start for r in runs])
    result.figure("relay RSS after the storm", "MB", [r.relay_rss_end for r in runs])
    result.figure(
        "  relay peak memory growth per record stored",
        "kB",
        [(r.relay_hwm - r.relay_rss_start) * 1e3 / n for r in runs],
    )
    result.figure("relay CPU during the storm", "cores", [r.cores["relay"] for r in runs])
    result.figure("device processes' CPU during the storm", "cores", [r.cores["devices"] for r in runs])
    record_size = statistics.mean(encoded_size(record) for record in made)
    reference = result.figure("msgpack record (id + fields), reference", "B", [record_size for _ in runs])
    disk = result.figure("relay disk per record", "B", [r.relay_disk / n for r in runs])
    device_disk = result.figure(
        "device disk per record held (median device)", "B", [statistics.median(r.device_disk_per_record) for r in runs]
    )
    up = result.figure(
        "wire up: deltas frame bytes per delta sent", "B", [r.up_bytes / max(r.storm_sent, 1) for r in runs]
    )
    result.figure("wire up: deltas frame bytes per unique record", "B", [r.up_bytes / n for r in runs])
    down = [r.down_bytes / r.storm_received for r in runs if r.storm_received]
    if down:
        result.figure("wire down: deltas frame bytes per delta received", "B", down)
    peer = result.figure(
        "wire peer: deltas frame bytes per delta", "B", [r.peer_frame_bytes / r.peer_deltas for r in runs]
    )
    result.figure("fresh device downloads every record", "records/s", [n / r.fresh_seconds for r in runs])
    result.ratio("relay disk per record / msgpack record", disk, reference)
    result.ratio("device disk per record / msgpack record", device_disk, reference)
    result.ratio("wire up per delta / msgpack record", up, reference)
    result.ratio("wire peer per delta / msgpack record", peer, reference)
    result.params["storm_seconds_per_run"] = [round(max(r.storm_done), 2) for r in runs]
    result.params["cores_per_run"] = [{k: round(v, 2) for k, v in r.cores.items()} for r in runs]
    result.params["other_processes_cores_peer_phase"] = [round(r.peer_others, 2) for r in runs]
    result.params["storm_up_frames"] = [r.up_frames for r in runs]
    result.params["storm_mean_up_frame_bytes"] = [round(r.up_bytes / max(r.up_frames, 1)) for r in runs]
    result.params["peer_deltas"] = [r.peer_deltas for r in runs]
    result.params["storm_deltas_uploaded"] = [r.storm_sent for r in runs]
    result.params["fresh_download_seconds"] = [round(r.fresh_seconds, 2) for r in runs]
    result.notes.append(
        f"{plan.devices} devices in {plan.teams} teams of {plan.team_size}, {plan.per_device} records each "
        f"({n} records, {every.median:.1f} s storm); the devices run in {processes} worker processes (whole teams "
        "each, one asyncio loop each), the relay in another; wire bytes count deltas frames only (not "
        "hello/welcome/ack)"
    )
    busiest = max(max(r.cores["others"], r.peer_others) for r in runs)
    if busiest > 0.2:
        result.notes.append(
            f"other processes kept up to {busiest:.2f} cores busy during a peer phase or a storm: figures are skewed"
        )
    if max(r.cores["devices"] for r in runs) > 0.9:
        result.notes.append(
            "the device processes used more than 0.9 cores during a storm: the simulated devices, sharing the "
            "machine's cores with the relay, may limit the storm as much as the relay does"
        )
    return result
