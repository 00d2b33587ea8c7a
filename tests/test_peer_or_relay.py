"""A relay and a peer are never confused: `replica sync` against a device
serving peers, without `--peer`, says whom it synced with and never "Data
Synced" (issue 11); errors about a peer say "the peer". Real processes."""

from __future__ import annotations

import asyncio
import socket
import subprocess
from pathlib import Path

from peer_process import PeerProcess
from relay_process import CLI, RelayProcess
from replica import Replica, SyncState


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60, check=False)


def test_syncing_with_a_peer_server_as_if_it_were_the_relay_says_so(tmp_path: Path) -> None:
    a, b = tmp_path / "tablet-a", tmp_path / "tablet-b"
    with RelayProcess(tmp_path / "relay") as relay:
        for name, path in (("tablet-a", a), ("tablet-b", b)):
            assert cli("init", "--data", str(path), "--replica-id", name).returncode == 0
            token = tmp_path / f"{name}.cred"
            token.write_text(relay.issue(name, ["campaign-7/*"]) + "\n")
            done = cli("sync", "--data", str(path), "--relay", relay.url, "--credential", str(token))
            assert done.returncode == 0, done.stdout + done.stderr
    with Replica.open(b) as replica:
        replica.doc("campaign-7/households").records("hh").put("h1", {"head": "Amina"})
    with PeerProcess(a) as peer:
        done = cli("sync", "--data", str(b), "--relay", peer.url)  # no --peer: the user thinks it is the relay
        assert done.returncode == 0, done.stdout + done.stderr
        assert "Data Synced" not in done.stdout, done.stdout
        assert done.stdout.startswith("Synced with the peer tablet-a"), done.stdout
        assert "is a device serving peers, not the relay: nothing became safe on the relay" in done.stdout
        assert "Data unsynced: 1" in done.stdout, done.stdout
    with Replica.open(b) as replica:
        status = replica.status()
        assert status.unsynced == 1 and status.state is SyncState.IDLE  # the home screen is about the relay
        assert replica.peers()["tablet-a"].last_synced_at is not None


def test_an_unreachable_peer_is_called_a_peer(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def main() -> None:
        with Replica.in_memory(replica_id="tablet-b") as replica:
            status = await replica.sync(f"ws://127.0.0.1:{port}", peer=True, timeout=5)
            assert status.state is SyncState.FAILED and status.error is not None
            assert status.error.code == "peer_unreachable" and status.error.retryable
            assert status.error.message.startswith("the peer at ws://127.0.0.1:"), status.error.message

    asyncio.run(asyncio.wait_for(main(), 30))
