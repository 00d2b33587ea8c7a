"""``replica status`` on a large device: it answers from the log's version
vectors, without replaying any document (issue 11: 25-30 s at 1,000,000
records before, because it replayed every document to count records)."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import BenchmarkFailed, Result, Target, register
from replica import Replica

DOCUMENT = "campaign-7/households"


def _build(path: Path, records: int) -> None:
    with Replica.open(path, replica_id="tablet-1") as replica:
        rows = replica.doc(DOCUMENT).records("households")
        for start in range(0, records, 100_000):
            with replica.batch():
                for i in range(start, min(records, start + 100_000)):
                    rows.put(f"h{i}", {"head": "Amina", "members": i % 9})


def _timed(command: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise BenchmarkFailed(f"{' '.join(command)} exited {done.returncode}: {done.stderr.strip()[:300]}")
    return elapsed, done.stdout


@register("status_large_device")
def status_large_device(quick: bool) -> Result:
    """`replica status` (a fresh process) on a device of n records vs starting Python and importing the CLI."""
    records, repeats = (100_000, 3) if quick else (1_000_000, 5)
    result = Result("status_large_device", params={"records": records, "repeats": repeats})
    with tempfile.TemporaryDirectory(prefix="replica-status-") as folder:
        path = Path(folder) / "device"
        _build(path, records)
        status = [sys.executable, "-m", "replica.cli", "status", "--data", str(path)]
        startup = [sys.executable, "-c", "import replica.cli"]
        subject, baseline = [], []
        for _ in range(repeats):
            elapsed, out = _timed(status)
            if f"({records} changes)" not in out or f"Data unsynced: {records}" not in out:
                raise BenchmarkFailed(f"replica status printed the wrong counts:\n{out}")
            subject.append(elapsed)
            baseline.append(_timed(startup)[0])
    answer = result.figure("replica status", "s", subject)
    start = result.figure("python -c 'import replica.cli' (startup)", "s", baseline)
    ratio = result.ratio("status / startup", answer, start)
    result.targets.append(Target("status / startup", ratio, 3.0, at_least=False))
    if not quick:
        result.targets.append(
            Target("replica status at 1M records (s)", answer.median, 1.0, at_least=False, guard=False)
        )
    return result
