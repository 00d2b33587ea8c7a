"""Crash test with real processes: SIGKILL a writing child, reopen, verify.

A child (tests/crash_child.py) writes to one document of a data directory and
prints an "intent" line before each call and a "done" line (with the seq the
call made durable) after it returns. The parent kills it with SIGKILL at a
random moment, many times over the same data directory, and after each kill
reopens the directory and checks:

1. every call reported done is there, and the one call in flight at the kill
   (an intent without done) is either wholly there or wholly absent: the seq of
   ``crash-dev`` on disk says which, and the parent's model of the records and
   the text (every done op applied in order, plus the in-flight one if it
   landed) must then equal the document exactly, value types included;
2. the log has no gaps: the deltas of ``crash-dev`` are seqs 1..N, N being the
   version vector;
3. the document equals a replay of its log in a fresh in-memory replica.

Randomness comes from one seed, printed and included in every failure; set
``REPLICA_CRASH_SEED`` to rerun with it (the kill moments still depend on
timing, so a rerun follows the same plan, not the same interleaving).
"""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NoReturn

import pytest

from crash_child import DOC, RECORDS, REPLICA_ID, TEXT, decode
from replica import Replica

CHILD = Path(__file__).with_name("crash_child.py")
#: Longest wait for one line from the child (it writes hundreds a second).
LINE_TIMEOUT = 30.0
#: Chance that a round kills at a random time without waiting for any line,
#: so that some kills land while the child is still starting or opening.
BLIND_KILL = 0.1

#: The call in flight at the kill (an intent line without its done line): the
#: op in wire form and the number of deltas it makes.
Pending = tuple[dict[str, Any], int] | None


@dataclass
class Model:
    """What the data directory must hold: the records, the text, and the
    durable seq of ``crash-dev``."""

    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    text: str = ""
    seq: int = 0

    def apply(self, op: dict[str, Any]) -> None:
        kind = op["kind"]
        if kind == "put":
            self.records[op["id"]] = decode(op["fields"])
        elif kind == "update":
            self.records[op["id"]].update(decode(op["fields"]))
        elif kind == "delete":
            del self.records[op["id"]]
        elif kind == "insert":
            self.text = self.text[: op["index"]] + op["content"] + self.text[op["index"] :]
        elif kind == "erase":
            self.text = self.text[: op["index"]] + self.text[op["index"] + op["length"] :]
        elif kind in ("batch", "txn"):
            for inner in op["ops"]:
                self.apply(inner)
        else:
            raise ValueError(f"unknown op {kind!r}")


@dataclass
class Stats:
    rounds: int = 0
    calls_done: int = 0
    kills_before_open: int = 0
    kills_between_calls: int = 0
    kills_mid_call_kept: int = 0  # intent without done, and the deltas are on disk
    kills_mid_call_lost: int = 0  # intent without done, and nothing of it is on disk

    def summary(self) -> str:
        return (
            f"{self.rounds} rounds, {self.calls_done} calls reported done; kills: "
            f"{self.kills_before_open} before open, {self.kills_between_calls} between calls, "
            f"{self.kills_mid_call_kept + self.kills_mid_call_lost} mid-call "
            f"({self.kills_mid_call_kept} kept, {self.kills_mid_call_lost} lost)"
        )


@dataclass
class Round:
    """One child run, for failure messages."""

    seed: int
    number: int
    stderr: Path
    received: list[bytes] = field(default_factory=list)

    def fail(self, message: str) -> NoReturn:
        tail = b"".join(self.received[-6:]).decode(errors="replace")
        errors = self.stderr.read_text(errors="replace")[-3000:] if self.stderr.exists() else ""
        pytest.fail(
            f"crash test seed={self.seed} round={self.number}: {message}\n"
            f"--- last lines from the child ---\n{tail}\n--- child stderr ---\n{errors}",
            pytrace=False,
        )

    def expect(self, what: str, found: object, expected: object) -> None:
        if found != expected:
            self.fail(f"{what}: found {found!r:.2000}, expected {expected!r:.2000}")


def _typed(value: Any) -> Any:
    """``value`` with every type made explicit, so that ``1 == 1.0 == True``
    and ``0.0 == -0.0`` no longer hide a changed value."""
    if isinstance(value, dict):
        return ("dict", sorted(((key, _typed(item)) for key, item in value.items()), key=lambda pair: pair[0]))
    if isinstance(value, list):
        return ("list", [_typed(item) for item in value])
    if isinstance(value, float):
        return ("float", value.hex())
    return (type(value).__name__, value)


def _pump(stream: IO[bytes], lines: queue.Queue[bytes | None]) -> None:
    for raw in iter(stream.readline, b""):
        lines.put(raw)
    lines.put(None)


def _run_child(data_dir: Path, rng: random.Random, max_lines: int, run: Round) -> None:
    """Start the child, kill it with SIGKILL at a random moment, and collect
    into ``run.received`` every line it flushed before dying."""
    child_seed = rng.getrandbits(32)
    blind = rng.random() < BLIND_KILL
    target = rng.randint(1, max_lines)
    extra = rng.uniform(0, 0.002) if rng.random() < 0.5 else 0.0
    blind_delay = rng.uniform(0, 0.4)
    lines: queue.Queue[bytes | None] = queue.Queue()
    with (
        run.stderr.open("wb") as stderr,
        subprocess.Popen(
            [sys.executable, str(CHILD), str(data_dir), str(child_seed)], stdout=subprocess.PIPE, stderr=stderr
        ) as child,
    ):
        assert child.stdout is not None
        reader = threading.Thread(target=_pump, args=(child.stdout, lines), daemon=True)
        reader.start()
        try:
            ended = False
            if blind:
                threading.Event().wait(blind_delay)
            else:
                while len(run.received) < target:
                    try:
                        raw = lines.get(timeout=LINE_TIMEOUT)
                    except queue.Empty:
                        run.fail(f"no line from the child for {LINE_TIMEOUT} s")
                    if raw is None:
                        ended = True
                        break
                    run.received.append(raw)
                if extra:
                    threading.Event().wait(extra)
            os.kill(child.pid, signal.SIGKILL)
        finally:
            if child.poll() is None:
                child.kill()
            child.wait(timeout=LINE_TIMEOUT)
        reader.join(timeout=LINE_TIMEOUT)
        if reader.is_alive():
            run.fail("the child's stdout stayed open after it died")
        while not ended and (raw := lines.get_nowait()) is not None:
            run.received.append(raw)
    if ended or child.returncode != -signal.SIGKILL:
        run.fail(f"the child ended by itself (exit status {child.returncode}) before it was killed")


def _follow(run: Round, model: Model, stats: Stats) -> Pending:
    """Apply every op the child reported done to ``model``; return the op in
    flight at the kill (intent without done) and its delta count, if any."""
    pending: Pending = None
    opened = False
    for index, raw in enumerate(run.received):
        if not raw.endswith(b"\n"):
            # Cut short by the kill. Not an intent whose call started (the call
            # starts after the flush returns); if it is a done line, the intent
            # before it stays pending and the seq on disk settles it.
            if index != len(run.received) - 1:
                run.fail(f"line {index} is incomplete but not the last one")
            break
        event = json.loads(raw)
        kind = event["ev"]
        if kind == "open":
            if opened or index:
                run.fail("'open' line out of place")
            opened = True
            run.expect("seq found by the child at open", event["seq"], model.seq)
            run.expect("record count found by the child at open", event["ids"], len(model.records))
            run.expect("text length found by the child at open", event["text"], len(model.text))
        elif kind == "intent":
            if not opened or pending is not None:
                run.fail(f"'intent' line {index} out of place")
            pending = (event["op"], event["n"])
        elif kind == "done":
            if pending is None:
                run.fail(f"'done' line {index} without an intent")
            op, count = pending
            run.expect(f"seq reported by 'done' line {index}", event["seq"], model.seq + count)
            model.apply(op)
            model.seq += count
            stats.calls_done += 1
            pending = None
        else:
            run.fail(f"unknown line {raw!r}")
    if not opened:
        stats.kills_before_open += 1
    elif pending is None:
        stats.kills_between_calls += 1
    return pending


def _check_reopened(data_dir: Path, run: Round, model: Model, stats: Stats, pending: Pending) -> None:
    with Replica.open(data_dir, replica_id=REPLICA_ID) as replica:
        vv = replica.version_vector(DOC)
        durable = vv.get(REPLICA_ID, 0)

        # 1. Every call reported done is durable; the one in flight is all or nothing.
        if durable < model.seq:
            run.fail(f"calls reported done are lost: durable seq {durable}, the last done line said {model.seq}")
        if pending is None:
            run.expect("durable seq (no call in flight at the kill)", durable, model.seq)
        else:
            op, count = pending
            if durable == model.seq + count:
                model.apply(op)
                model.seq += count
                stats.kills_mid_call_kept += 1
            elif durable == model.seq:
                stats.kills_mid_call_lost += 1
            else:
                run.fail(
                    f"durable seq {durable}: the call in flight ({count} deltas) is partly on disk, or more "
                    f"was written than reported; expected {model.seq} or {model.seq + count}; op {op!r:.500}"
                )
        doc = replica.doc(DOC)
        records = doc.records(RECORDS)
        run.expect("record ids", records.ids(), sorted(model.records))
        for record_id, fields in model.records.items():
            run.expect(f"record {record_id!r}", _typed(records.get(record_id)), _typed(fields))
        run.expect("text", str(doc.text(TEXT)), model.text)
        contents = doc.contents()
        run.expect("contents() records", _typed(contents["records"].get(RECORDS, {})), _typed(model.records))
        run.expect("contents() text", contents["texts"].get(TEXT, ""), model.text)

        # 2. No gaps: the deltas of crash-dev are seqs 1..N, N the version vector.
        log = replica.missing_deltas(DOC, {})
        run.expect("version vector", vv, {REPLICA_ID: durable} if durable else {})
        run.expect("origins in the log", {delta.origin for delta in log}, {REPLICA_ID} if durable else set())
        run.expect("seqs in the log", [delta.seq for delta in log], list(range(1, durable + 1)))

        # 3. The document equals a replay of its log.
        fresh = Replica.in_memory()
        result = fresh.ingest(log)
        if result.rejected is not None:
            run.fail(f"the replay rejected a delta: {result.rejected!r}")
        run.expect("deltas applied by the replay", (result.applied, result.duplicates), (len(log), 0))
        run.expect("version vector of the replay", fresh.version_vector(DOC), vv)
        run.expect("contents of the replay", _typed(fresh.doc(DOC).contents()), _typed(contents))
        fresh.close()


def _crash_rounds(tmp_path: Path, rounds: int, max_lines: int) -> None:
    seed = int(os.environ.get("REPLICA_CRASH_SEED", "0")) or random.SystemRandom().getrandbits(32)
    print(f"crash test seed {seed} (rerun with REPLICA_CRASH_SEED={seed})")
    rng = random.Random(seed)
    data_dir = tmp_path / "data"
    model = Model()
    stats = Stats()
    started = time.monotonic()
    for number in range(rounds):
        run = Round(seed, number, tmp_path / "child-stderr.txt")
        _run_child(data_dir, rng, max_lines, run)
        pending = _follow(run, model, stats)
        _check_reopened(data_dir, run, model, stats, pending)
        stats.rounds += 1
    print(
        f"{stats.summary()}; {model.seq} deltas, {len(model.records)} records, "
        f"{len(model.text)} characters of text; {time.monotonic() - started:.1f} s"
    )
    assert stats.calls_done > 0, "no call ever completed: the kills all came too early"


def test_sigkill_at_random_moments_loses_no_returned_call(tmp_path: Path) -> None:
    _crash_rounds(tmp_path, rounds=25, max_lines=400)


@pytest.mark.slow
def test_sigkill_many_times(tmp_path: Path) -> None:
    _crash_rounds(tmp_path, rounds=300, max_lines=80)
