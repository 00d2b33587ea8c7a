"""1,000 devices against one relay process (issue 14).

``devices_1000``: every device (a replica on disk, in one of
``PROCESSES`` child processes) holds 100 deltas of its own in one shared
document. All of them connect at once and sync (upload: the relay stores and
acknowledges 100,000 deltas from 1,000 connections); then every device syncs
again, ``WAVE`` at a time per process, and must end holding all 100,000
(download: the relay's snapshot of the document and the tail). Reported:
p50/p99 sync time of each phase, the wall time of each, the relay's peak
resident memory (VmHWM), and how many deltas any device lacks at the end
(must be 0). Durations are of ``Replica.sync`` calls, connection included.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from benchmarks._common import BenchmarkFailed, Result, Target, register
from benchmarks.relay import ChildProcesses, _scratch, percentile, relay_process, status_mb
from replica import Replica
from replica.status import SyncState

DOCUMENT = "bench/load"
PROCESSES = 2
#: Devices of one process downloading at once in the second phase (each holds the whole document then).
WAVE = 50


def _devices_main(url: str, folder: str, ids_tokens: list[tuple[str, str]], per_device: int, conn: Connection) -> None:
    """Child process: build its devices, then sync them on the parent's word."""
    asyncio.run(_devices(url, Path(folder), ids_tokens, per_device, conn))


async def _sync_one(path: Path, replica_id: str, url: str, token: str) -> tuple[float, str | None, int]:
    with Replica.open(path, replica_id=replica_id) as device:
        began = time.monotonic()
        status = await device.sync(url, credential=token, timeout=120)
        took = time.monotonic() - began
        error = None if status.state is SyncState.SYNCED else f"{replica_id}: {status.error}"
        return took, error, sum(device.version_vector(DOCUMENT).values())


async def _devices(
    url: str, folder: Path, ids_tokens: list[tuple[str, str]], per_device: int, conn: Connection
) -> None:
    loop = asyncio.get_running_loop()
    paths = []
    for replica_id, _ in ids_tokens:
        path = folder / replica_id
        with Replica.open(path, replica_id=replica_id) as device:
            records = device.doc(DOCUMENT).records("r")
            with device.batch():
                for number in range(per_device):
                    records.put(f"{replica_id}-{number}", {"n": number, "by": replica_id})
        paths.append(path)
    conn.send("ready")
    await loop.run_in_executor(None, conn.recv)  # go: upload, everyone at once
    uploads = await asyncio.gather(
        *(_sync_one(path, rid, url, token) for path, (rid, token) in zip(paths, ids_tokens, strict=True))
    )
    conn.send([(took, error) for took, error, _ in uploads])
    await loop.run_in_executor(None, conn.recv)  # go: download, in waves
    downloads: list[tuple[float, str | None, int]] = []
    pairs = list(zip(paths, ids_tokens, strict=True))
    for start in range(0, len(pairs), WAVE):
        wave = pairs[start : start + WAVE]
        downloads += await asyncio.gather(*(_sync_one(path, rid, url, token) for path, (rid, token) in wave))
    conn.send(downloads)


class _Devices(ChildProcesses):
    """The device processes of one run, driven phase by phase."""

    async def step(self, message: object, timeout: float) -> list[Any]:
        loop = asyncio.get_running_loop()
        if message is not None:
            for _, conn in self.procs:
                conn.send(message)
        out: list[Any] = []
        for proc, conn in self.procs:
            if not await loop.run_in_executor(None, conn.poll, timeout):
                raise BenchmarkFailed(f"device process {proc.pid} did not answer within {timeout} s")
            out.append(conn.recv())
        return out


@dataclass
class LoadRun:
    """One run's sync durations (s) per phase, walls, the relay's peak RSS (MB), deltas lacking."""

    upload: list[float]
    download: list[float]
    upload_wall: float
    download_wall: float
    peak: float
    lacking: int


async def _run(folder: Path, devices: int, per_device: int) -> LoadRun:
    async with relay_process(folder / "relay") as (relay, credential):
        ids = [f"dev{i:04d}" for i in range(devices)]
        groups = [[(rid, credential(rid)) for rid in ids[i::PROCESSES]] for i in range(PROCESSES)]
        children = _Devices(_devices_main, [(relay.url, str(folder), group, per_device) for group in groups])
        try:
            await children.step(None, 600)  # built
            began = time.monotonic()
            uploads: list[tuple[float, str | None]] = [
                row for rows in await children.step("upload", 600) for row in rows
            ]
            upload_wall = time.monotonic() - began
            began = time.monotonic()
            downloads: list[tuple[float, str | None, int]] = [
                row for rows in await children.step("download", 1800) for row in rows
            ]
            download_wall = time.monotonic() - began
            peak = status_mb(relay.pid, "VmHWM")
        finally:
            children.close()
        errors = [error for _, error in uploads if error] + [error for _, error, _ in downloads if error]
        if errors:  # with what the relay logged of those devices (its log goes with the scratch directory)
            failed = {error.split(":", 1)[0] for error in errors}
            said = [line for line in relay.log.read_text().splitlines() if any(f" {rid} " in line for rid in failed)]
            raise BenchmarkFailed(
                f"{len(errors)} syncs failed, first: {errors[0]}; the relay's log of them: " + " | ".join(said[-20:])
            )
    lacking = sum(devices * per_device - held for _, _, held in downloads)
    return LoadRun(
        [took for took, _ in uploads], [took for took, _, _ in downloads], upload_wall, download_wall, peak, lacking
    )


@register("devices_1000")
def devices_1000(quick: bool) -> Result:
    """1,000 devices x 100 deltas through one relay: upload all at once, then every device downloads all."""
    devices, per_device = (50, 20) if quick else (1_000, 100)
    result = Result(
        "devices_1000",
        params={"devices": devices, "deltas_per_device": per_device, "processes": PROCESSES, "wave": WAVE},
    )
    with _scratch() as dirs:
        got = asyncio.run(_run(next(dirs), devices, per_device))
    ms = 1000.0
    result.figure("upload: sync p50 (all connecting at once)", "ms", [percentile(got.upload, 0.5) * ms])
    result.figure("upload: sync p99", "ms", [percentile(got.upload, 0.99) * ms])
    result.figure("upload: every device done", "s", [got.upload_wall])
    result.figure(f"download: sync p50 ({WAVE} per process at once)", "ms", [percentile(got.download, 0.5) * ms])
    result.figure("download: sync p99", "ms", [percentile(got.download, 0.99) * ms])
    result.figure("download: every device done", "s", [got.download_wall])
    result.figure("relay peak RSS (VmHWM)", "MB", [got.peak])
    result.figure("deltas any device lacks at the end", "deltas", [float(got.lacking)])
    result.targets.append(Target("deltas lost", float(got.lacking), 0, at_least=False))
    result.notes.append(
        f"{devices} devices on disk in {PROCESSES} processes sharing the machine with the relay; "
        f"{devices * per_device:,} deltas in one document; the relay compacts it as it grows, so a device "
        "downloads its state and the tail"
    )
    return result
