"""The relay's memory budget for loaded documents (issue 12): least recently
used documents are unloaded over the budget and loaded again (snapshot +
tail) when needed; what they hold never changes, and a relay with a tiny
budget serves every document right."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from replica import Replica
from replica.doccache import MEMORY_PER_UPDATE_BYTE
from replica.engine import Engine
from replica.relay import Relay
from replica.status import SyncState


def put(replica: Engine, name: str, n: int) -> None:
    rows = replica.doc(name).records("r")
    with replica.batch():
        for i in range(n):
            rows.put(f"k{i}", {"n": i, "name": name})


def test_without_a_budget_every_document_stays_loaded(tmp_path: Path) -> None:
    with Engine.open(tmp_path, replica_id="dev-a") as replica:
        docs = [replica.doc(f"c/{i}") for i in range(5)]
        for number in range(5):
            put(replica, f"c/{number}", 50)
        assert all(replica.doc(f"c/{i}") is docs[i] for i in range(5))


def test_over_the_budget_the_least_recently_used_are_unloaded_and_come_back(tmp_path: Path) -> None:
    with Engine.open(tmp_path / "seed", replica_id="seed") as seed:
        for number in range(4):
            put(seed, f"c/{number}", 200)
        batches = {f"c/{i}": seed.missing_deltas(f"c/{i}", {}) for i in range(4)}
        expected = {name: seed.doc(name).contents() for name in batches}
    one = sum(len(d.data) for d in batches["c/0"]) * MEMORY_PER_UPDATE_BYTE
    with Engine.open(tmp_path / "relay", replica_id="relay-a", doc_cache_bytes=int(one * 2.5)) as relay:
        first = None
        for items in batches.values():
            assert relay.ingest(items).applied == 200
            first = first or relay.doc("c/0")
        loaded, estimate = relay.loaded()
        assert loaded == ["c/2", "c/3"] and estimate <= one * 2.5, (loaded, estimate)
        again = relay.doc("c/0")  # loaded again from the log
        assert again is not first and again.contents() == expected["c/0"]
        assert all(relay.doc(name).contents() == expected[name] for name in batches)
        assert relay.ingest(batches["c/1"]).duplicates == 200  # an unloaded document still checks its log


def test_a_relay_with_a_tiny_budget_serves_every_document(tmp_path: Path) -> None:
    async def main() -> None:
        async with Relay(tmp_path / "relay", port=0, doc_cache_mb=0.001) as relay:
            token = lambda name: relay.issue_credential(name, ["c/*"], expires_at=time.time() + 3600)  # noqa: E731
            with Replica.open(tmp_path / "writer", replica_id="writer") as writer:
                for number in range(6):
                    put(writer, f"c/{number}", 30)
                assert (await writer.sync(relay.url, credential=token("writer"))).state is SyncState.SYNCED
                expected = {f"c/{i}": writer.doc(f"c/{i}").contents() for i in range(6)}
            assert relay.replica is not None and len(relay.replica.loaded()[0]) == 1
            with Replica.open(tmp_path / "reader", replica_id="reader") as reader:
                final = await reader.sync(relay.url, credential=token("reader"))
                assert final.state is SyncState.SYNCED and final.progress.received == 180
                assert {name: reader.doc(name).contents() for name in expected} == expected

    asyncio.run(asyncio.wait_for(main(), 60))
