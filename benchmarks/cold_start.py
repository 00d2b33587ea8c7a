"""Cold start: a brand-new device joining a document that holds n deltas of history.

Built once per size, untimed: a source device writes n deltas into
``bench/cold`` (record puts, field updates, replacements and deletes cycling
over n / 20 records, so each record is rewritten about 20 times: a log much
bigger than the state it leads to) and uploads them to a relay process, whose
data directory is kept and restarted for every repeat.

Timed, in a fresh child process per run (so that its peak RSS is its own): a
new device on a fresh LMDB directory does ``await replica.sync(url,
credential=...)`` (download, store and apply: ingest applies the deltas to
the document as they arrive), then reads the document (``len(records)``): the
time until it is usable. Then, in another fresh process, a reopen of that
device (open + replay of its log). Both must hold exactly the final records.

Baselines in the same run, alternating with the subject: bare pycrdt applying
the same n updates into a fresh ``Doc`` in one transaction (as a replay does,
pycrdt's best case), and applying one update holding the final state: the
``Doc.get_update()`` of that replayed doc, what a snapshot (compaction) would
hand a new device instead of the history, with its size against the log's.
(Taken from a doc built in one transaction: one built in many transactions,
as ingest builds it frame by frame, encodes to a larger update that applies
an order of magnitude slower.)
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pycrdt import Doc, Map

from benchmarks._common import BenchmarkFailed, Result, Stopwatch, alternate, rates, register
from benchmarks.relay import _scratch, counting_frames, cpu_seconds, machine_busy_seconds, relay_process
from replica import Replica, values
from replica.status import SyncState

DOCUMENT = "bench/cold"
SOURCE = "coldsource"
NEW = "coldnew"
#: Records of the history: each is rewritten about this many times.
REWRITES = 20
#: Deltas per ``replica.batch()`` while building the history.
BUILD_BATCH = 50_000
ROOT = Path(__file__).resolve().parents[1]

Expected = dict[str, dict[str, Any]]


# -- the history -----------------------------------------------------------------


def _history(device: Replica, n: int) -> Expected:
    """Write n deltas (one operation each) into ``DOCUMENT``; return the final records."""
    records = device.doc(DOCUMENT).records("r")
    ids = max(1, n // REWRITES)
    state: Expected = {}
    for start in range(0, n, BUILD_BATCH):
        with device.batch():
            for k in range(start, min(n, start + BUILD_BATCH)):
                rid = f"rec{k % ids:07d}"
                op = (k * 7 + k // ids) % 10
                if rid not in state:
                    state[rid] = {"name": rid, "n": k, "tag": "new"}
                    records.put(rid, state[rid])
                elif op == 0:
                    del state[rid]
                    records.delete(rid)
                elif op == 1:
                    state[rid] = {"name": rid, "n": k, "tag": "replaced"}
                    records.put(rid, state[rid])
                else:
                    state[rid] = {**state[rid], "n": k}
                    records.update(rid, {"n": k})
    return state


def digest(items: list[tuple[str, dict[str, Any]]]) -> str:
    """A fingerprint of records (id order, fields sorted), the same in every process."""
    return hashlib.blake2b(json.dumps(items, sort_keys=True).encode(), digest_size=16).hexdigest()


async def _build(source: Path, relay_dir: Path, n: int) -> tuple[Expected, list[bytes], float]:
    """The source device's history, uploaded once to a relay on ``relay_dir``."""
    with Stopwatch() as sw, Replica.open(source, replica_id=SOURCE) as device:
        device.compact_every = None  # its deltas one by one are the baselines' input
        state = _history(device, n)
        held = device.version_vector(DOCUMENT)
        if held != {SOURCE: n}:
            raise BenchmarkFailed(f"the source holds {held}, expected {n} deltas")
        async with relay_process(relay_dir) as (relay, credential):
            status = await device.sync(relay.url, credential=credential(SOURCE), timeout=300)
        if status.state is not SyncState.SYNCED or status.unsynced:
            raise BenchmarkFailed(f"the upload ended {status.state.name}, unsynced {status.unsynced}: {status.error}")
        payloads = [d.data for d in device.missing_deltas(DOCUMENT, {})]
    return state, payloads, sw.seconds


# -- the new device (a child process) --------------------------------------------


def _vm(field: str) -> float:
    """``VmHWM`` / ``VmRSS`` of this process in MB (10^6 bytes)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024 / 1e6
    return float("nan")


def _disk_bytes(path: Path) -> int:
    """Bytes allocated on disk by the files under ``path``."""
    return sum(f.stat().st_blocks * 512 for f in path.rglob("*") if f.is_file())


def _read(device: Replica) -> tuple[int, str]:
    records = device.doc(DOCUMENT).records("r")
    return len(records), digest(list(records.items()))


async def _join(path: Path, url: str, token: str) -> dict[str, Any]:
    rss_before = _vm("VmRSS")
    with counting_frames() as frames, Replica.open(path, replica_id=NEW) as device:
        with Stopwatch() as sw:
            status = await device.sync(url, credential=token, timeout=300)
            synced = sw.lap()
            count = len(device.doc(DOCUMENT).records("r"))  # usable: the document is loaded and readable
        if status.state is not SyncState.SYNCED or status.unsynced:
            raise BenchmarkFailed(f"the new device's sync ended {status.state.name}: {status.error}")
        _, fingerprint = _read(device)
        held = device.version_vector(DOCUMENT)
    return {
        "sync": synced,
        "usable": sw.seconds,
        "count": count,
        "digest": fingerprint,
        "held": held,
        "frame_bytes": sum(frames.received),
        "frames": len(frames.received),
        "sent": sum(frames.sent),
        "rss_before": rss_before,
        "rss_peak": _vm("VmHWM"),
        "disk": _disk_bytes(path),
    }


def _reopen(path: Path) -> dict[str, Any]:
    rss_before = _vm("VmRSS")
    with Stopwatch() as sw, Replica.open(path) as device:
        opened = sw.lap()
        count = len(device.doc(DOCUMENT).records("r"))
        seconds = sw.lap()
        _, fingerprint = _read(device)
    return {
        "open": opened,
        "usable": seconds,
        "count": count,
        "digest": fingerprint,
        "rss_before": rss_before,
        "rss_peak": _vm("VmHWM"),
    }


def _child_main() -> None:
    """Entry point of a child process: a JSON request on stdin, a JSON answer on stdout."""
    request = json.loads(sys.stdin.read())
    path = Path(request["path"])
    join = request["what"] == "join"
    answer = asyncio.run(_join(path, request["url"], request["token"])) if join else _reopen(path)
    times = os.times()
    answer["cpu"] = times.user + times.system  # the whole process, for the rest of the machine's share
    sys.stdout.write(json.dumps(answer))


def _child(request: dict[str, Any]) -> dict[str, Any]:
    """Run ``request`` in a fresh Python process."""
    done = subprocess.run(
        [sys.executable, "-c", "from benchmarks.cold_start import _child_main; _child_main()"],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=900,
    )
    if done.returncode:
        raise BenchmarkFailed(f"the {request['what']} process failed: {done.stderr[-3000:]}")
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


# -- one size --------------------------------------------------------------------


def _check(answer: dict[str, Any], expected: Expected, fingerprint: str, what: str) -> None:
    if answer["count"] != len(expected) or answer["digest"] != fingerprint:
        raise BenchmarkFailed(
            f"the {what} device holds {answer['count']} records (expected {len(expected)}) "
            f"{'with' if answer['digest'] == fingerprint else 'not matching'} the expected contents"
        )


async def _cold_run(relay_dir: Path, device_dir: Path, n: int) -> dict[str, Any]:
    async with relay_process(relay_dir) as (relay, credential):
        began, busy0 = time.monotonic(), machine_busy_seconds()
        ours0 = cpu_seconds(os.getpid()) + (relay0 := cpu_seconds(relay.pid))
        request = {"what": "join", "path": str(device_dir), "url": relay.url, "token": credential(NEW)}
        answer = await asyncio.get_running_loop().run_in_executor(None, _child, request)
        relay1 = cpu_seconds(relay.pid)
        ours = cpu_seconds(os.getpid()) + relay1 - ours0 + answer["cpu"]
        answer["relay_cpu"] = relay1 - relay0
        answer["others"] = max(0.0, machine_busy_seconds() - busy0 - ours) / (time.monotonic() - began)
    if answer["held"] != {SOURCE: n}:
        raise BenchmarkFailed(f"the new device holds {answer['held']}, expected {{{SOURCE!r}: {n}}}")
    return answer


def _pycrdt_apply(updates: list[bytes], expected: int) -> tuple[float, Doc[Any]]:
    doc: Doc[Any] = Doc()
    with Stopwatch() as sw:
        with doc.transaction():
            for update in updates:
                doc.apply_update(update)
        count = len(doc.get("records:r", type=Map))
    if count != expected:
        raise BenchmarkFailed(f"bare pycrdt holds {count} records, expected {expected}")
    return sw.seconds, doc


def _check_snapshot(snapshot: bytes, expected: Expected, fingerprint: str) -> None:
    doc: Doc[Any] = Doc()
    doc.apply_update(snapshot)
    root = doc.get("records:r", type=Map)
    items = [
        (rid, {name: values.decode(raw) for name, raw in sorted(root[rid].items())}) for rid in sorted(root.keys())
    ]
    if len(items) != len(expected) or digest(items) != fingerprint:
        raise BenchmarkFailed("the merged state update does not hold the expected records")


def _size(result: Result, dirs: Iterator[Path], n: int, repeats: int) -> None:
    """Build a history of n deltas, then cold starts against the baselines."""
    label = f"{n // 1000:,}k" if n < 1_000_000 else f"{n / 1e6:g}M"
    source, relay_dir = next(dirs), next(dirs)
    state, payloads, build = asyncio.run(_build(source, relay_dir, n))
    expected = [(rid, dict(sorted(state[rid].items()))) for rid in sorted(state)]
    fingerprint = digest(expected)
    snapshots: list[bytes] = []  # the final state as one update, as a compacted log would hold it
    joins: list[dict[str, Any]] = []
    reopens: list[dict[str, Any]] = []
    merged: list[float] = []

    def baseline() -> float:
        seconds, replayed = _pycrdt_apply(payloads, len(state))
        if not snapshots:
            snapshots.append(replayed.get_update())
            _check_snapshot(snapshots[0], state, fingerprint)
        del replayed
        doc: Doc[Any] = Doc()
        with Stopwatch() as sw:
            doc.apply_update(snapshots[0])
            count = len(doc.get("records:r", type=Map))
        if count != len(state):
            raise BenchmarkFailed(f"the merged state update holds {count} records, expected {len(state)}")
        merged.append(sw.seconds)
        return seconds

    def subject() -> float:
        device_dir = next(dirs)
        joins.append(asyncio.run(_cold_run(relay_dir, device_dir, n)))
        _check(joins[-1], state, fingerprint, "new")
        reopens.append(_child({"what": "reopen", "path": str(device_dir)}))
        _check(reopens[-1], state, fingerprint, "reopened")
        return float(joins[-1]["usable"])

    base, subj = alternate(repeats, baseline, subject)
    log_bytes, snapshot = sum(map(len, payloads)), snapshots[0]
    us = 1e6 / n
    cold = result.figure(f"{label}: new device sync + read", "s", subj)
    result.figure(f"{label}:   of which sync", "s", [j["sync"] for j in joins])
    result.figure(f"{label}:   cold start rate", "deltas/s", rates(n, subj))
    result.figure(f"{label}:   per delta", "us", [s * us for s in subj])
    result.figure(f"{label}:   wire, deltas frames", "MB", [j["frame_bytes"] / 1e6 for j in joins])
    result.figure(f"{label}:   device disk", "MB", [j["disk"] / 1e6 for j in joins])
    result.figure(f"{label}:   device RSS peak", "MB", [j["rss_peak"] for j in joins])
    result.figure(f"{label}:   relay CPU", "s", [j["relay_cpu"] for j in joins])
    result.figure(f"{label}: reopen (open + replay + read)", "s", [r["usable"] for r in reopens])
    result.figure(f"{label}:   reopen RSS peak", "MB", [r["rss_peak"] for r in reopens])
    apply = result.figure(f"{label}: bare pycrdt apply of the log, one txn", "s", base)
    result.figure(f"{label}:   bare pycrdt per delta", "us", [s * us for s in base])
    snap = result.figure(f"{label}: bare pycrdt apply of one merged state update", "s", merged)
    result.ratio(f"{label}: cold start / pycrdt apply of the log", cold, apply)
    result.ratio(f"{label}: cold start / merged state apply", cold, snap)
    result.params[f"n{label}"] = {
        "deltas": n,
        "records_final": len(state),
        "record_ids": max(1, n // REWRITES),
        "repeats": repeats,
        "build_seconds": round(build, 1),
        "log_payload_bytes": log_bytes,
        "merged_state_bytes": len(snapshot),
        "wire_frames": [j["frames"] for j in joins],
        "wire_bytes": [j["frame_bytes"] for j in joins],
        "device_sent_deltas_bytes": [j["sent"] for j in joins],
        "device_rss_before_mb": [round(j["rss_before"], 1) for j in joins],
        "reopen_open_seconds": [round(r["open"], 4) for r in reopens],
        "relay_disk_bytes": _disk_bytes(relay_dir),
        "others_cores": [round(j["others"], 2) for j in joins],
    }
    result.notes.append(
        f"{label}: log {log_bytes / 1e6:.1f} MB of updates ({log_bytes / n:.0f} B/delta) for {len(state):,} records; "
        f"the merged state is {len(snapshot) / 1e6:.2f} MB ({len(snapshot) / log_bytes:.1%} of the log); "
        f"history built and uploaded in {build:.1f} s"
    )
    if max(j["others"] for j in joins) > 0.2:
        result.notes.append(f"{label}: other processes kept more than 0.2 cores busy during some runs")


@register("cold_start")
def cold_start(quick: bool) -> Result:
    """A new device syncing a document of n deltas of history and reading it, at
    several n, vs bare pycrdt applying the log and applying one merged state."""
    sizes = [(10_000, 1), (30_000, 1)] if quick else [(10_000, 3), (100_000, 3), (1_000_000, 1)]
    result = Result("cold_start", params={"sizes": [n for n, _ in sizes], "rewrites_per_record": REWRITES})
    began = time.perf_counter()
    with _scratch() as dirs:
        for n, repeats in sizes:
            _size(result, dirs, n, repeats)
    for what, suffix in (("cold start", ":   per delta"), ("bare pycrdt", ":   bare pycrdt per delta")):
        per = {f.name.split(":")[0]: f.median for f in result.figures if f.name.endswith(suffix)}
        first, last = next(iter(per)), list(per)[-1]
        result.ratios[f"{what} per-delta time {last} / {first}"] = per[last] / per[first]
    result.params["wall_seconds"] = round(time.perf_counter() - began, 1)
    result.notes.append(
        "the new device applies deltas as they arrive (ingest), so the document is loaded when sync returns; "
        "'reopen' is a later start of that device, replaying its whole log"
    )
    return result
