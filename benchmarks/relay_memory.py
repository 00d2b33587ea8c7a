"""The relay's resident memory with a document cache budget (issue 12).

A writer device (in the benchmark process) holds 100,000 records over 100 documents
(1,000 each, one delta per record) and uploads them to a relay process; then 1,000
fresh in-memory devices each sync one of the documents (10 per document) and read it.
Each reader's credential covers its one document. The relay's ``VmRSS`` is read after
the upload and after the readers, and its ``VmHWM`` (peak) at the end, for a relay
started with ``--doc-cache-mb 64`` and, in the same run, one with a budget too large to
evict anything (the behaviour before the cache). Checks: every reader holds its
document's 1,000 records.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from benchmarks._common import BenchmarkFailed, Result, Target, register
from benchmarks.relay import _scratch, relay_process, status_mb
from replica import Replica
from replica.relay import relay_identity
from replica.status import SyncState

COLLECTION = "r"


def _name(number: int) -> str:
    return f"bench/m{number:03d}"


async def _run(
    relay_dir: Path, writer_dir: Path, documents: int, per_doc: int, readers: int, budget: str
) -> dict[str, float]:
    async with relay_process(relay_dir, "--doc-cache-mb", budget) as (relay, credential):
        with Replica.open(writer_dir, replica_id="memwriter") as writer:
            writer.compact_every = None
            for number in range(documents):
                rows = writer.doc(_name(number)).records(COLLECTION)
                with writer.batch():
                    for k in range(per_doc):
                        rows.put(f"h{k}", {"head": f"name {k}", "members": k % 9, "village": "Kano"})
            status = await writer.sync(relay.url, credential=credential(writer.id), timeout=600)
            if status.state is not SyncState.SYNCED or status.unsynced:
                raise BenchmarkFailed(f"the upload ended {status}")
        after_upload = status_mb(relay.pid, "VmRSS")
        relay_id, key = relay_identity(relay_dir)
        for i in range(readers):
            name = _name(i % documents)
            with Replica.in_memory(replica_id=f"memreader{i:04d}") as reader:
                now = time.time()
                token = key.issue(
                    issuer=relay_id, replica_id=reader.id, documents=[name], expires_at=now + 3600, now=now
                )
                final = await reader.sync(relay.url, credential=token, timeout=120)
                held = len(reader.doc(name).records(COLLECTION))
                if final.state is not SyncState.SYNCED or held != per_doc:
                    raise BenchmarkFailed(f"reader {i} ended {final.state.name} holding {held} of {name}")
        return {
            "after_upload": after_upload,
            "after_readers": status_mb(relay.pid, "VmRSS"),
            "peak": status_mb(relay.pid, "VmHWM"),
        }


@register("relay_memory")
def relay_memory(quick: bool) -> Result:
    """Relay RSS holding 100,000 records over 100 documents with a 64 MB document cache,
    then 1,000 devices each reading one document; against no eviction, same run."""
    documents, per_doc, readers = (10, 200, 20) if quick else (100, 1_000, 1_000)
    result = Result(
        "relay_memory",
        params={"documents": documents, "records_per_document": per_doc, "readers": readers, "budget_mb": 64},
    )
    runs: dict[str, dict[str, float]] = {}
    with _scratch() as dirs:
        for label, budget in (("64 MB cache", "64"), ("no eviction", "1000000")):
            runs[label] = asyncio.run(_run(next(dirs), next(dirs), documents, per_doc, readers, budget))
    for label, got in runs.items():
        result.figure(f"{label}: relay RSS after the upload", "MB", [got["after_upload"]])
        result.figure(f"{label}: relay RSS after the readers", "MB", [got["after_readers"]])
        result.figure(f"{label}: relay peak RSS", "MB", [got["peak"]])
    peak = runs["64 MB cache"]["peak"]
    result.targets.append(Target("relay peak RSS with a 64 MB cache (MB)", peak, 200, at_least=False))
    return result
