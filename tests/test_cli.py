from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from relay_process import CLI, RelayProcess
from replica import Replica
from replica.cli import main
from replica.errors import ReplicaError


def test_status_of_a_new_data_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init", "--data", str(tmp_path / "new")]) == 0
    assert main(["status", "--data", str(tmp_path / "new")]) == 0
    out = capsys.readouterr().out
    assert "Replica: r" in out and "Documents: 0" in out and "Data unsynced: 0" in out


def test_status_lists_documents_and_unsynced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with Replica.open(tmp_path, replica_id="tablet-3") as replica:
        rows = replica.doc("campaign-7/households").records("households")
        rows.put("h1", {"name": "Ada"})
        rows.put("h2", {"name": "Bo"})
        replica.doc("campaign-7/notes").text("day").insert(0, "rain")
    assert main(["status", "--data", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Replica: tablet-3" in out
    assert "campaign-7/households  (2 changes)" in out  # from the log's version vectors: no replay
    assert "campaign-7/notes  (1 change)" in out
    assert out.rstrip().endswith("Data unsynced: 3")


def test_status_reads_a_data_dir_another_process_holds(tmp_path: Path) -> None:
    """A peer server (or a live sync) holds the directory: `replica status` still answers."""
    from peer_process import PeerProcess

    with Replica.open(tmp_path, replica_id="tablet-3") as replica:
        replica.doc("campaign-7/households").records("households").put("h1", {"name": "Ada"})
    with RelayProcess(tmp_path / "relay") as relay:  # a bound credential, so that it can serve peers
        token = tmp_path / "t.cred"
        token.write_text(relay.issue("tablet-3", ["campaign-7/*"]) + "\n")
        assert main(["sync", "--data", str(tmp_path), "--relay", relay.url, "--credential", str(token)]) == 0
        with Replica.open(tmp_path) as replica:
            replica.doc("campaign-7/households").records("households").put("h2", {"name": "Bo"})
        with PeerProcess(tmp_path) as peer:
            assert peer.running
            done = subprocess.run([*CLI, "status", "--data", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Replica: tablet-3" in done.stdout and "campaign-7/households  (2 changes)" in done.stdout
    assert done.stdout.rstrip().endswith("Data unsynced: 1"), done.stdout


def test_a_data_dir_open_in_this_process_is_a_clear_error(tmp_path: Path) -> None:
    with Replica.open(tmp_path), pytest.raises(ReplicaError) as caught:
        Replica.open(tmp_path)
    assert caught.value.code == "replica_locked" and caught.value.retryable


def test_console_script_runs(tmp_path: Path) -> None:
    command = shutil.which("replica") or ""
    args = [command] if command else [sys.executable, "-m", "replica.cli"]
    Replica.open(tmp_path, replica_id="tablet-1").close()
    done = subprocess.run([*args, "status", "--data", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Data unsynced: 0" in done.stdout


def test_sync_moves_on_to_the_next_relay_given(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--relay`` repeated (the relays of one deployment): an unreachable
    first relay is skipped for the next."""
    import socket

    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        dead = f"ws://127.0.0.1:{probe.getsockname()[1]}"
    with Replica.open(tmp_path / "tab", replica_id="tablet-3") as replica:
        replica.doc("campaign-7/households").records("households").put("h1", {"name": "Ada"})
    with RelayProcess(tmp_path / "relay") as relay:
        token = tmp_path / "t.cred"
        token.write_text(relay.issue("tablet-3", ["campaign-7/*"]) + "\n")
        command = ["sync", "--data", str(tmp_path / "tab"), "--relay", dead, "--relay", relay.url]
        assert main([*command, "--credential", str(token)]) == 0
        out = capsys.readouterr().out
        assert out.rstrip().endswith("Data Synced"), out
    with Replica.open(tmp_path / "tab") as replica:
        assert replica.status().unsynced == 0
