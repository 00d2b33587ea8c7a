"""A real editing trace typed live on one device, reaching a second device through a relay.

Device A (the writer, a child process) types the automerge-paper trace into
``doc("bench/trace").text("body")``, one ``doc.transaction()`` (one delta) per
trace transaction, while live-synced to a real relay process; device B (the
reader, this process) is live-synced to the same relay and notes when each of
A's deltas becomes visible in its document (``on_change``). Both on their own
LMDB directories. One run has two phases on the same session:

- *max speed*: all but the last ``paced`` transactions, typed as fast as A can
  (``chunk`` transactions per ``replica.batch()``, then a turn of the event loop
  so that the live sync can send): deltas/s end to end, from A's first
  keystroke to B holding the last of them;
- *paced*: once B has caught up, the last ``paced`` transactions typed at
  ``rate`` per second (each due transaction committed, durably, when due; those
  falling due together in one commit): latency from the keystroke on A to the
  text being visible on B, p50/p90/p99/max.

Timestamps are ``time.monotonic()`` (CLOCK_MONOTONIC, one clock for every
process of the machine). The baseline, alternating with the live run, is the
same transactions replayed locally on one device without sync, in the same
chunks (and, as a reference, bare pycrdt). A and B must both end with the
trace's ``endContent`` (full) or the plain replay of the prefix (quick).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from pycrdt import Doc, Text

from benchmarks._common import BenchmarkFailed, Result, Stopwatch, alternate, rates, register
from benchmarks.foundation import TRACE, _plain_replay, trace_dir
from benchmarks.relay import (
    LoadWatch,
    _Children,
    _scratch,
    counting_frames,
    cpu_seconds,
    percentile,
    relay_process,
)
from replica import Replica
from replica.doc import Document
from replica.status import SyncState

DOCUMENT = "bench/trace"
WRITER = "tracewriter"
READER = "tracereader"
#: Transactions per ``replica.batch()`` in the max-speed phase (an editor flushing every few ms).
CHUNK = 100
#: How long B may take to catch up with A before the run is a failure.
CATCH_UP_SECONDS = 120.0

Txn = list[list[Any]]


def _apply(doc: Document, patches: Txn) -> None:
    """One trace transaction as one replica transaction (one delta)."""
    text = doc.text("body")
    with doc.transaction():
        for pos, deleted, inserted in patches:  # ascii-only trace: indices are code points
            if deleted:
                text.delete(pos, deleted)
            if inserted:
                text.insert(pos, inserted)


async def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise BenchmarkFailed(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.005)


# -- the writer (device A, a child process) ------------------------------------


def _writer_main(url: str, token: str, path: str, conn: Connection) -> None:
    """Child process: device A. Says "ready" once live, receives the
    transactions and the phase sizes, types them, and reports."""
    asyncio.run(_writer(url, token, Path(path), conn))


async def _recv(conn: Connection) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, conn.recv)


async def _writer(url: str, token: str, path: Path, conn: Connection) -> None:
    live: asyncio.Task[Any] | None = None
    with counting_frames() as frames, Replica.open(path, replica_id=WRITER) as device:
        try:
            doc = device.doc(DOCUMENT)
            doc.records("meta").put("seed", {"by": WRITER})  # seq 1: the relay holds the document before B connects
            status = await device.sync(url, credential=token)
            if status.state is not SyncState.SYNCED:
                raise BenchmarkFailed(f"the writer's first sync ended {status.state.name}: {status.error}")
            live = asyncio.create_task(device.sync(url, credential=token, live=True))
            await asyncio.sleep(0)
            await _wait_for(lambda: device.status().state is SyncState.SYNCED, 30, "the writer's live sync")
            conn.send("ready")
            txns, fast, rate = await _recv(conn)
            typed: list[float] = []
            cpu0 = cpu_seconds(os.getpid())
            for start in range(0, fast, CHUNK):
                with device.batch():
                    for patches in txns[start : min(start + CHUNK, fast)]:
                        typed.append(time.monotonic())
                        _apply(doc, patches)
                await asyncio.sleep(0)  # the live sync sends what was committed
            fast_cpu = cpu_seconds(os.getpid()) - cpu0
            fast_frames = len(frames.sent)
            conn.send("fast done")
            await _recv(conn)  # B caught up: type the rest at ``rate``
            loop = asyncio.get_running_loop()
            begin = loop.time()
            k = fast
            while k < len(txns):
                due = min(len(txns), fast + 1 + int((loop.time() - begin) * rate))
                with device.batch():
                    while k < due:
                        typed.append(time.monotonic())
                        _apply(doc, txns[k])
                        k += 1
                if k < len(txns):
                    await asyncio.sleep(max(0.0, begin + (k - fast) / rate - loop.time()))
            paced_rate = (len(txns) - fast) / max(loop.time() - begin, 1e-9)
            await _wait_for(lambda: device.status().unsynced == 0, CATCH_UP_SECONDS, "the relay to hold A's deltas")
            payload = sum(len(d.data) for d in device.missing_deltas(DOCUMENT, {}))
            conn.send(
                {
                    "typed": typed,
                    "text": str(doc.text("body")),
                    "held": device.version_vector(DOCUMENT),
                    "payload_bytes": payload,
                    "sent_fast": frames.sent[:fast_frames],
                    "sent_paced": frames.sent[fast_frames:],
                    "received": len(frames.received),
                    "fast_cpu": fast_cpu,
                    "paced_rate": paced_rate,
                }
            )
            await _recv(conn)  # B has everything: close
        except BaseException as exc:
            conn.send({"error": f"{type(exc).__name__}: {exc}"})
            raise
    if live is not None:  # closing the device ended its live sync
        await asyncio.gather(live, return_exceptions=True)


# -- the reader (device B, this process) and one live run -------------------------


@dataclass
class LiveRun:
    """One live run: seconds of the max-speed phase end to end, the paced
    phase's latencies (s), bytes and CPU."""

    fast_seconds: float
    typing_seconds: float
    fast_lag: list[float]
    latencies: list[float]
    paced_rate: float
    frames_fast: list[int]
    frames_paced: list[int]
    received_fast: list[int]
    received_paced: list[int]
    reader_sent: int
    payload_bytes: int
    cores: dict[str, float]


async def _live(dirs: Iterator[Path], txns: list[Txn], fast: int, rate: float, expected: str) -> LiveRun:
    count = len(txns)
    async with relay_process(next(dirs)) as (relay, credential):
        children = _Children(_writer_main, [(relay.url, credential(WRITER), str(next(dirs)))])
        proc, conn = children.procs[0]
        live: asyncio.Task[Any] | None = None
        try:
            await children.wait_ready(120)
            arrived = [math.nan] * (count + 2)  # by A's seq: seq 1 is the seed, txn k is seq k + 2
            held = 0
            with counting_frames() as frames, Replica.open(next(dirs), replica_id=READER) as reader:

                def changed(document: str) -> None:
                    nonlocal held
                    now = time.monotonic()
                    if document == DOCUMENT:
                        top = reader.version_vector(document).get(WRITER, 0)
                        for seq in range(held + 1, min(top, count + 1) + 1):
                            arrived[seq] = now
                        held = max(held, top)

                reader.on_change(changed)
                live = asyncio.create_task(reader.sync(relay.url, credential=credential(READER), live=True))
                await _wait_for(lambda: held >= 1, 30, "the reader to receive the seed")
                pids = [relay.pid, proc.pid, os.getpid()]
                with LoadWatch(lambda: pids) as load:
                    cpu0 = [cpu_seconds(pid) for pid in pids]
                    began = time.monotonic()
                    conn.send((txns, fast, rate))
                    if await _recv(conn) != "fast done":
                        raise BenchmarkFailed("the writer failed during the max-speed phase")
                    await _wait_for(lambda: held >= fast + 1, CATCH_UP_SECONDS, "B to catch up after max speed")
                    wall = time.monotonic() - began
                    cpu1 = [cpu_seconds(pid) for pid in pids]
                    received_fast = len(frames.received)
                conn.send("go")
                report = await _recv(conn)
                if "error" in report:
                    raise BenchmarkFailed(f"the writer failed: {report['error']}")
                await _wait_for(lambda: held >= count + 1, CATCH_UP_SECONDS, "B to receive the paced phase")
                text_b = str(reader.doc(DOCUMENT).text("body"))
                reader_sent = sum(frames.sent)
                received = frames.received
            conn.send("close")
        except BaseException:
            proc.terminate()
            raise
        finally:
            children.close()
            if live is not None:
                await asyncio.gather(live, return_exceptions=True)
    _check(report, text_b, expected, count)
    typed: list[float] = report["typed"]
    cores = {name: (b - a) / wall for name, a, b in zip(("relay", "writer", "reader"), cpu0, cpu1, strict=True)}
    cores["others"] = load.others
    return LiveRun(
        fast_seconds=arrived[fast + 1] - typed[0],
        typing_seconds=typed[fast - 1] - typed[0],
        fast_lag=[arrived[k + 2] - typed[k] for k in range(fast)],
        latencies=[arrived[k + 2] - typed[k] for k in range(fast, count)],
        paced_rate=report["paced_rate"],
        frames_fast=report["sent_fast"],
        frames_paced=report["sent_paced"],
        received_fast=received[:received_fast],
        received_paced=received[received_fast:],
        reader_sent=reader_sent,
        payload_bytes=report["payload_bytes"],
        cores=cores,
    )


def _check(report: dict[str, Any], text_b: str, expected: str, count: int) -> None:
    if report["held"] != {WRITER: count + 1}:
        raise BenchmarkFailed(f"the writer holds {report['held']}, expected {count + 1} deltas (a seed + one per txn)")
    if report["text"] != expected:
        raise BenchmarkFailed("the writer's text is not the expected one")
    if text_b != expected:
        raise BenchmarkFailed(f"the reader's text ({len(text_b)} chars) is not the expected one ({len(expected)})")


# -- baselines -------------------------------------------------------------------


def _local_seconds(path: Path, txns: list[Txn], expected_prefix: str) -> float:
    """The max-speed phase on one device without sync: same chunks, same commits."""
    with Replica.open(path, replica_id=WRITER) as device:
        doc = device.doc(DOCUMENT)
        with Stopwatch() as sw:
            for start in range(0, len(txns), CHUNK):
                with device.batch():
                    for patches in txns[start : start + CHUNK]:
                        _apply(doc, patches)
        if str(doc.text("body")) != expected_prefix:
            raise BenchmarkFailed("the local replay does not end with the expected text")
    return sw.seconds


def _pycrdt_seconds(txns: list[Txn], expected_prefix: str) -> float:
    """Bare pycrdt making the same transactions, capturing each update."""
    doc: Doc[Any] = Doc()
    updates: list[bytes] = []
    subscription = doc.observe(lambda event: updates.append(event.update))
    text = doc.get("text:body", type=Text)
    with Stopwatch() as sw:
        for patches in txns:
            with doc.transaction():
                for pos, deleted, inserted in patches:
                    if deleted:
                        del text[pos : pos + deleted]
                    if inserted:
                        text.insert(pos, inserted)
    doc.unobserve(subscription)
    if str(text) != expected_prefix or len(updates) != len(txns):
        raise BenchmarkFailed("bare pycrdt does not end with the expected text and one update per txn")
    return sw.seconds


def _load(quick: bool) -> tuple[list[Txn], str] | None:
    path = trace_dir() / TRACE
    if not path.is_file():
        return None
    with gzip.open(path, "rt") as f:
        trace = json.load(f)
    txns: list[Txn] = [t["patches"] for t in trace["txns"]]
    if quick:
        txns = txns[:5_000]
        return txns, _plain_replay(txns)
    return txns, trace["endContent"]


@register("trace_live")
def trace_live(quick: bool) -> Result:
    """The automerge-paper trace typed live on device A, reaching device B through
    a relay: deltas/s end to end and paced latency, vs the same replay on A alone."""
    result = Result("trace_live")
    loaded = _load(quick)
    if loaded is None:
        result.status = "skipped"
        result.notes.append(f"trace not found in {trace_dir()}; set REPLICA_TRACES to the directory holding {TRACE}")
        return result
    txns, expected = loaded
    paced, rate, repeats = (1_000, 2_000.0, 2) if quick else (10_000, 2_000.0, 3)
    fast = len(txns) - paced
    prefix = _plain_replay(txns[:fast])
    result.params.update(
        trace=TRACE, txns=len(txns), max_speed_txns=fast, paced_txns=paced, rate=rate, chunk=CHUNK, repeats=repeats
    )
    runs: list[LiveRun] = []
    bare: list[float] = []
    with _scratch() as dirs:

        def baseline() -> float:
            bare.append(_pycrdt_seconds(txns[:fast], prefix))
            return _local_seconds(next(dirs), txns[:fast], prefix)

        def subject() -> float:
            runs.append(asyncio.run(_live(dirs, txns, fast, rate, expected)))
            return runs[-1].fast_seconds

        base, subj = alternate(repeats, baseline, subject)
    _report(result, runs, base, subj, bare, fast)
    return result


def _report(
    result: Result, runs: list[LiveRun], base: list[float], subj: list[float], bare: list[float], fast: int
) -> None:
    ms = 1000.0
    s = result.figure("live A -> relay -> B, max speed, end to end", "deltas/s", rates(fast, subj))
    result.figure("  A typing rate while live", "deltas/s", [fast / r.typing_seconds for r in runs])
    b = result.figure("A alone, same chunks, no sync", "deltas/s", rates(fast, base))
    p = result.figure("  bare pycrdt, same txns", "txn/s", rates(fast, bare))
    result.ratio("live end to end / A alone", s, b)
    result.ratio("live end to end / bare pycrdt", s, p)
    result.figure("  max-speed lag A -> B p50", "ms", [percentile(r.fast_lag, 0.5) * ms for r in runs])
    result.figure("  max-speed lag A -> B max", "ms", [max(r.fast_lag) * ms for r in runs])
    for name, fraction in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
        result.figure(f"paced latency A -> B {name}", "ms", [percentile(r.latencies, fraction) * ms for r in runs])
    result.figure("paced latency A -> B max", "ms", [max(r.latencies) * ms for r in runs])
    result.figure("  paced rate achieved", "txn/s", [r.paced_rate for r in runs])
    paced = len(runs[0].latencies)
    result.figure(
        "wire A -> relay: deltas frame bytes per delta, max speed", "B", [sum(r.frames_fast) / fast for r in runs]
    )
    result.figure(
        "wire relay -> B: deltas frame bytes per delta, max speed", "B", [sum(r.received_fast) / fast for r in runs]
    )
    result.figure(
        "wire A -> relay: deltas frame bytes per delta, paced", "B", [sum(r.frames_paced) / paced for r in runs]
    )
    result.figure(
        "wire relay -> B: deltas frame bytes per delta, paced", "B", [sum(r.received_paced) / paced for r in runs]
    )
    result.figure("  update payload bytes per delta", "B", [r.payload_bytes / (fast + paced + 1) for r in runs])
    last = runs[-1]
    result.params.update(
        wire_bytes_up_max_speed=[sum(r.frames_fast) for r in runs],
        wire_frames_up_max_speed=[len(r.frames_fast) for r in runs],
        wire_bytes_up_paced=[sum(r.frames_paced) for r in runs],
        wire_frames_up_paced=[len(r.frames_paced) for r in runs],
        wire_bytes_down_max_speed=[sum(r.received_fast) for r in runs],
        wire_frames_down_max_speed=[len(r.received_fast) for r in runs],
        wire_bytes_down_paced=[sum(r.received_paced) for r in runs],
        wire_frames_down_paced=[len(r.received_paced) for r in runs],
        payload_bytes=[r.payload_bytes for r in runs],
        reader_sent_deltas_bytes=[r.reader_sent for r in runs],
        cores_max_speed=[{k: round(v, 2) for k, v in r.cores.items()} for r in runs],
    )
    result.notes.append(
        "cores busy in the max-speed phase (last run): " + ", ".join(f"{k} {v:.2f}" for k, v in last.cores.items())
    )
    result.notes.append(
        "wire bytes: the deltas frames A sent and B received (msgpack, websocket framing not counted); "
        "latency counts from the keystroke on A (before its durable commit) to B's on_change"
    )
    if any(r.reader_sent for r in runs):
        result.notes.append(f"B sent deltas frames back ({last.reader_sent} B): an echo")
    if max(r.cores["others"] for r in runs) > 0.2:
        result.notes.append("other processes kept more than 0.2 cores busy during some runs: figures are skewed")
