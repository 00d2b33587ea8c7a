"""CPU profiles (py-spy) of the processes that bound replica's relay benchmarks.

``python -m benchmarks._profile [upload] [download] [fanout] [--out DIR] [--deltas N] [--rate HZ]``

Sets up the workloads of ``relay_upload_download`` and ``fanout_latency``
(``benchmarks/relay.py``) and samples, with ``py-spy record --format raw``
(collapsed stacks, one line per distinct stack and its sample count):

- ``upload``: the relay process (``python -m replica.cli relay``) while a device
  uploads ``--deltas`` offline record puts to it (``sync()`` returns SYNCED);
- ``download``: this process, as a fresh on-disk device downloads them from the
  relay (py-spy is attached to its own parent; needs ptrace rights, e.g. root);
- ``fanout``: the relay and one of the two receiver processes (50 live in-memory
  devices) while a writer in this process makes ``--rate`` puts/s for
  ``--seconds`` to 100 live devices.

Each profile is written to ``DIR/NAME-PROCESS.txt`` (raw) and summarised to
``DIR/NAME-PROCESS.summary.txt``: the functions with the most *own* samples
(the leaf frame: time spent in the function itself, including C code it calls
that is not Python) and the most *cumulative* samples (any frame of the stack,
counted once per sample), as percentages of all samples (py-spy samples only
threads that are not idle, so 100% is the process's CPU time, not wall time).
The script checks the outcome of each workload (counts and final states) and
prints each process's CPU seconds over the sampled wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks._common import BenchmarkFailed
from benchmarks.relay import (
    LIVE_DOCUMENT,
    RECEIVER_PROCESSES,
    _Children,
    _paced,
    _receivers_main,
    _scratch,
    _split,
    cpu_seconds,
    relay_process,
)
from replica import Replica
from replica.status import SyncState

DOCUMENT = "bench/data"
WORKLOADS = ("upload", "download", "fanout")
#: The fan-out writer's puts per second, as in fanout_latency.
FANOUT_RATE = 200.0
PY_SPY = Path(sys.executable).with_name("py-spy")
#: ``py-spy record --nonblocking``: sample without pausing the process (less overhead, rarely torn stacks).
NONBLOCKING = False
#: A collapsed-stack line: ``frame;frame;...;frame count``; a frame is ``function (file:line)``.
FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


# -- py-spy -----------------------------------------------------------------------


@dataclass
class Profile:
    """The py-spy files of one process role over the repeats, and what it used."""

    files: list[Path] = field(default_factory=list)
    wall: float = 0.0
    cpu: float = 0.0
    pids: list[int] = field(default_factory=list)


class Spy:
    """``py-spy record`` attached to one process until :meth:`stop`."""

    def __init__(self, pid: int, output: Path, rate: int) -> None:
        self.pid = pid
        self.output = output
        argv = [str(PY_SPY), "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw", "--function"]
        if NONBLOCKING:
            argv.append("--nonblocking")
        self.proc = subprocess.Popen(
            [*argv, "--output", str(output)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        time.sleep(0.5)  # py-spy attaches before the work starts
        self.started = time.monotonic()
        self.cpu0 = cpu_seconds(pid)

    def stop(self) -> tuple[float, float]:
        """Stop sampling (SIGINT, as Ctrl-C: py-spy writes its file); return
        (wall seconds, CPU seconds of the process) since the start."""
        wall = time.monotonic() - self.started
        cpu = cpu_seconds(self.pid) - self.cpu0
        self.proc.send_signal(signal.SIGINT)
        _, err = self.proc.communicate(timeout=60)
        if not self.output.exists():
            raise BenchmarkFailed(f"py-spy wrote no {self.output}: {err[-2000:]}")
        return wall, cpu


@contextmanager
def spying(pids: dict[str, int], out: Path, name: str, rate: int, profiles: dict[str, Profile]) -> Iterator[None]:
    """Sample each of ``pids`` ({process role: pid}) during the block; adds the
    files to ``profiles[f"{name}-{role}"]``."""
    spies = {}
    for role, pid in pids.items():
        profile = profiles.setdefault(f"{name}-{role}", Profile())
        spies[role] = (profile, Spy(pid, out / f"{name}-{role}-{len(profile.files)}.txt", rate))
    try:
        yield
    finally:
        for profile, spy in spies.values():
            wall, cpu = spy.stop()
            profile.files.append(spy.output)
            profile.wall += wall
            profile.cpu += cpu
            profile.pids.append(spy.pid)


# -- aggregation ------------------------------------------------------------------

#: Frames of the interpreter, the event loop and the scripts: left out of the cumulative table.
PLUMBING = ("<frozen", "asyncio/", "contextlib.py", "runpy", "threading.py", "multiprocessing/", "concurrent/")


def _function(frame: str) -> str:
    """``function (path:line)`` -> ``path:function``, shortened to the package part."""
    found = FRAME.match(frame.strip())
    if found is None:
        return frame.strip()
    path = found["file"]
    for marker in ("site-packages/", "/src/", "/lib/python3.11/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{path}:{found['function']}"


def read_stacks(paths: list[Path]) -> Counter[tuple[str, ...]]:
    """Raw (collapsed) py-spy output: {stack of functions, root first: samples}."""
    stacks: Counter[tuple[str, ...]] = Counter()
    for path in paths:
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if stack and count.isdigit():
                stacks[tuple(_function(f) for f in stack.split(";"))] += int(count)
    return stacks


SPY_FRAME = "benchmarks/_profile.py:Spy"

#: Cost categories, by function-name prefix: a sample goes to the category of
#: the frame nearest its leaf that matches one (so library code counts where it is
#: called from, unless it has a category of its own).
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("pycrdt (apply_update, transactions)", ("pycrdt/",)),
    ("BLAKE2b checksum (delta.checksum)", ("replica/delta.py:checksum",)),
    ("leading varint (delta.leading_varint)", ("replica/delta.py:leading_varint",)),
    (
        "other per-delta checks (precheck, _check_incoming, held_seq)",
        ("replica/delta.py:precheck", "replica/replica.py:Replica._check_incoming", "replica/log.py:DeltaLog.held_seq"),
    ),
    ("Delta objects (frozen dataclass __init__)", ("<string>:__create_fn__",)),
    ("frame rows -> Delta (wire._deltas)", ("replica/wire.py:_deltas",)),
    ("msgpack encode/decode of frames", ("replica/wire.py", "msgpack/")),
    ("store put (LMDB / memory)", ("replica/store/lmdb.py:_LmdbTxn.put", "replica/store/memory.py:_MemoryTxn.put")),
    ("commit + fsync (LmdbStore.write)", ("replica/store/lmdb.py:LmdbStore.write",)),
    ("store reads (get, scan, cursors)", ("replica/store/",)),
    ("delta log Python (log.py)", ("replica/log.py",)),
    ("session, sync, net, replica Python", ("replica/",)),
    ("websockets + asyncio + epoll", ("websockets/", "asyncio/", "selectors.py")),
)


def category(stack: tuple[str, ...]) -> str:
    for frame in reversed(stack):
        for name, prefixes in CATEGORIES:
            if frame.startswith(prefixes):
                return name
    return "other"


def _spy(stacks: Counter[tuple[str, ...]]) -> set[tuple[str, ...]]:
    return {s for s in stacks if any(f.startswith(SPY_FRAME) for f in s)}


def _table(counts: Counter[str], total: int, top: int) -> list[str]:
    return [f"{100 * c / total:5.1f}  {c:6d}  {f}" for f, c in counts.most_common(top)]


def summarise(profile: Profile, heading: str, top: int = 25) -> str:
    """Samples of the main thread (other threads' share is given) by function:
    own (the leaf frame), innermost replica frame (the replica function whose
    call, with the library code below it, the sample is in), and cumulative
    (anywhere on the stack, once per sample), in % of the main thread's samples."""
    stacks = read_stacks(profile.files)
    threads = sum(c for s, c in stacks.items() if s and s[0].startswith("threading.py"))
    # this script's own waits (py-spy attaching to this very process) are not the workload's
    mine = sum(c for s, c in stacks.items() if any(f.startswith(SPY_FRAME) for f in s))
    main = Counter(
        {s: c for s, c in stacks.items() if s and not s[0].startswith("threading.py") and s not in _spy(stacks)}
    )
    total = sum(main.values()) or 1
    own: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    inner: Counter[str] = Counter()
    cumulative: Counter[str] = Counter()
    for stack, count in main.items():
        own[stack[-1]] += count
        kinds[category(stack)] += count
        inner[next((f for f in reversed(stack) if f.startswith("replica/")), "(no replica frame)")] += count
        for function in set(stack):
            if not function.startswith(PLUMBING) and "benchmarks/" not in function and "cli.py" not in function:
                cumulative[function] += count
    lines = [
        heading,
        f"{profile.cpu:.2f} CPU s of the process over {profile.wall:.2f} s sampled "
        f"({profile.cpu / max(profile.wall, 1e-9):.2f} cores), {len(profile.files)} run(s), pids {profile.pids}",
        f"{total} samples of the main thread; left out: {threads} of other threads, {mine} of py-spy starting",
        "",
        "    %  samples  category (of the frame nearest the leaf that has one)",
        *_table(kinds, total, len(CATEGORIES) + 1),
        "",
        "    %  samples  own: function at the leaf of the stack",
        *_table(own, total, top),
        "",
        "    %  samples  innermost replica function on the stack (with the library code it called)",
        *_table(inner, total, top),
        "",
        "    %  samples  cumulative: function anywhere on the stack (event loop and stdlib plumbing left out)",
        *_table(cumulative, total, top + 10),
    ]
    return "\n".join(lines) + "\n"


# -- workloads --------------------------------------------------------------------


def _source(folder: Path, n: int) -> Path:
    """A device holding ``n`` offline record puts in ``DOCUMENT`` (as relay_upload_download)."""
    with Replica.open(folder) as device:
        records = device.doc(DOCUMENT).records("r")
        with device.batch():
            for i in range(n):
                records.put(f"id{i}", {"name": "abc", "n": i})
    return folder


async def _upload_download(
    source: Path, dirs: Iterator[Path], n: int, out: Path, rate: int, profiles: dict[str, Profile]
) -> None:
    """A copy of ``source`` uploads to a fresh relay, then a fresh device
    downloads; both sides sampled in each direction."""
    async with relay_process(next(dirs)) as (relay, credential):
        device = next(dirs)
        shutil.copytree(source, device)
        with Replica.open(device) as up:
            token = credential(up.id)
            with spying({"relay": relay.pid, "device": os.getpid()}, out, "upload", rate, profiles):
                began = time.perf_counter()
                final = await up.sync(relay.url, credential=token)
                seconds = time.perf_counter() - began
            if final.state is not SyncState.SYNCED or final.unsynced:
                raise BenchmarkFailed(f"the upload ended {final.state.name}, {final.unsynced} unsynced: {final.error}")
            origin = up.id
        print(f"upload of {n} deltas: {seconds:.2f} s ({n / seconds:,.0f} deltas/s)", file=sys.stderr)
        with Replica.open(next(dirs)) as down:
            token = credential(down.id)
            with spying({"relay": relay.pid, "device": os.getpid()}, out, "download", rate, profiles):
                began = time.perf_counter()
                final = await down.sync(relay.url, credential=token)
                seconds = time.perf_counter() - began
            if final.state is not SyncState.SYNCED or down.version_vector(DOCUMENT) != {origin: n}:
                raise BenchmarkFailed(f"the download ended {final.state.name} with {down.version_vector(DOCUMENT)}")
            if len(down.doc(DOCUMENT).records("r")) != n:
                raise BenchmarkFailed("the downloaded document does not hold every record")
        print(f"download of {n} deltas: {seconds:.2f} s ({n / seconds:,.0f} deltas/s)", file=sys.stderr)


async def _fanout(
    dirs: Iterator[Path], devices: int, seconds: float, out: Path, rate: int, profiles: dict[str, Profile]
) -> None:
    """As ``fanout_latency``'s replica variant (a writer here making 200 puts/s,
    ``devices`` live in-memory devices in two receiver processes); samples the
    relay, the first receiver process and the writer."""
    count = int(FANOUT_RATE * seconds)
    async with relay_process(next(dirs)) as (relay, credential):
        live = None
        with Replica.open(next(dirs)) as writer:
            records = writer.doc(LIVE_DOCUMENT).records("r")
            records.put("seed", {"t": 0.0, "i": -1})
            final = await writer.sync(relay.url, credential=credential(writer.id))
            if final.state is not SyncState.SYNCED:
                raise BenchmarkFailed(f"the writer's first sync ended {final.state.name}: {final.error}")
            ids = [f"dev{i:04d}" for i in range(devices)]
            groups = _split([(rid, credential(rid)) for rid in ids], RECEIVER_PROCESSES)
            children = _Children(_receivers_main, [(relay.url, writer.id, group) for group in groups])
            try:
                await children.wait_ready(120)
                live = asyncio.create_task(writer.sync(relay.url, credential=credential(writer.id), live=True))
                for _ in range(200):
                    await asyncio.sleep(0.05)
                    if writer.status().state is SyncState.SYNCED:
                        break
                else:
                    raise BenchmarkFailed(f"the writer's live sync did not catch up: {writer.status()}")
                sent_at: list[float] = []

                def write(k: int) -> None:
                    sent_at.append(time.time())
                    records.put(f"k{k}", {"t": sent_at[-1], "i": k})

                pids = {"relay": relay.pid, "receivers": children.procs[0][0].pid, "writer": os.getpid()}
                with spying(pids, out, "fanout", rate, profiles):
                    achieved = await _paced(count, FANOUT_RATE, write)
                rows, problems = await children.collect(count, sent_at)
            finally:
                children.close()
        if live is not None:
            await asyncio.gather(live, return_exceptions=True)
    missing = sum(1 for row in rows for x in row if math.isnan(x))
    if problems or missing:
        raise BenchmarkFailed(f"fan-out: {missing} arrivals missing, problems: {problems[:1]}")
    worst = sorted(max(row[k] for row in rows) for k in range(count))
    print(
        f"fan-out: {count} puts at {achieved:.1f}/s to {devices} devices; writer to every device "
        f"p50 {1000 * worst[len(worst) // 2]:.0f} ms, max {1000 * worst[-1]:.0f} ms",
        file=sys.stderr,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks._profile", description=__doc__.splitlines()[0])
    parser.add_argument("workloads", nargs="*", metavar="WORKLOAD", help="upload, download, fanout (default all)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/profile"), help="default %(default)s")
    parser.add_argument("--deltas", type=int, default=100_000, help="upload/download size (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="upload/download runs (default %(default)s)")
    parser.add_argument("--devices", type=int, default=100, help="fan-out live devices (default %(default)s)")
    parser.add_argument("--seconds", type=float, default=10.0, help="fan-out duration (default %(default)s)")
    parser.add_argument("--rate", type=int, default=500, help="py-spy samples per second (default %(default)s)")
    parser.add_argument("--nonblocking", action="store_true", help="py-spy samples without pausing the processes")
    args = parser.parse_args(argv)
    global NONBLOCKING
    NONBLOCKING = args.nonblocking
    which = set(args.workloads or WORKLOADS)
    if which - set(WORKLOADS):
        parser.error(f"unknown workload(s) {', '.join(sorted(which - set(WORKLOADS)))}; choose from {WORKLOADS}")
    args.out.mkdir(parents=True, exist_ok=True)
    profiles: dict[str, Profile] = {}
    with _scratch() as dirs:
        if which & {"upload", "download"}:
            source = _source(next(dirs), args.deltas)
            for _ in range(args.repeats):
                asyncio.run(_upload_download(source, dirs, args.deltas, args.out, args.rate, profiles))
        if "fanout" in which:
            asyncio.run(_fanout(dirs, args.devices, args.seconds, args.out, args.rate, profiles))
    for name, profile in profiles.items():
        if name.split("-")[0] in which:
            text = summarise(profile, f"== {name} ==")
            (args.out / f"{name}.summary.txt").write_text(text)
            print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
