"""What scripts read from ``replica`` (issue 11, CLI): ``--json`` for
``status``, ``sync`` (one object per status change with ``--live``) and
``peer list``; ``--version``; ``REPLICA_DATA``, ``REPLICA_RELAY`` and
``REPLICA_CREDENTIAL`` as defaults, an option on the command line winning.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

import replica
from relay_process import RelayProcess
from replica import Replica
from replica.cli import main
from replica.testing import Fleet, LmdbBackend
from server_process import CLI, pump_lines

TIMEOUT = 60.0
DOC = "campaign-7/households"


def run(*args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("REPLICA_")} | dict(env or {})
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=TIMEOUT, check=False, env=environ)


def one_object(text: str) -> dict[str, Any]:
    """The only line of ``text``, a JSON object."""
    (line,) = text.splitlines()
    value = json.loads(line)
    assert isinstance(value, dict), value
    return value


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def device(tmp_path: Path) -> Path:
    path = tmp_path / "tablet-7"
    with Replica.open(path, replica_id="tablet-7") as opened:
        rows = opened.doc(DOC).records("households")
        rows.put("h1", {"head": "Amina"})
        rows.put("h2", {"head": "Bello"})
    return path


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[RelayProcess]:
    with RelayProcess(tmp_path / "relay") as process:
        yield process


@pytest.fixture
def credential_file(tmp_path: Path, relay: RelayProcess) -> Path:
    path = tmp_path / "tablet-7.cred"
    path.write_text(relay.issue("tablet-7", ["campaign-7/*"]) + "\n")
    return path


def test_version() -> None:
    done = run("--version")
    assert done.returncode == 0 and done.stdout == f"replica {replica.__version__}\n", done


def test_status_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with Replica.open(tmp_path, replica_id="tablet-3") as opened:
        opened.doc(DOC).records("households").put("h1", {"head": "Ada"})
        opened.doc("campaign-7/notes").text("day").insert(0, "rain")
    assert main(["status", "--data", str(tmp_path), "--json"]) == 0
    status = one_object(capsys.readouterr().out)
    assert status["replica_id"] == "tablet-3" and status["data"] == str(tmp_path)
    assert status["documents"] == [{"name": DOC, "changes": 1}, {"name": "campaign-7/notes", "changes": 1}]
    assert (status["unsynced"], status["rejected"], status["rejections"]) == (2, 0, [])
    assert (status["state"], status["error"], status["last_synced_at"]) == ("idle", None, None)
    assert status["label"] == "Data unsynced: 2"


def test_sync_json_prints_the_final_status(
    device: Path, relay: RelayProcess, credential_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = time.time()
    done = run("sync", "--data", str(device), "--relay", relay.url, "--credential", str(credential_file), "--json")
    assert done.returncode == 0, done.stderr
    final = one_object(done.stdout)
    assert (final["replica_id"], final["state"], final["label"]) == ("tablet-7", "synced", "Data Synced")
    assert (final["unsynced"], final["rejected"], final["error"], final["peer"]) == (0, 0, None, False)
    assert final["progress"]["sent"] == 2
    assert before <= final["last_synced_at"] <= time.time()
    assert main(["status", "--data", str(device), "--json"]) == 0
    status = one_object(capsys.readouterr().out)
    assert status["unsynced"] == 0 and status["last_synced_at"] == pytest.approx(final["last_synced_at"])


def test_sync_json_of_a_failure_says_why_and_exits_by_it(device: Path, tmp_path: Path) -> None:
    token = tmp_path / "tablet-7.cred"
    token.write_text("rc1.unused\n")
    url = f"ws://127.0.0.1:{free_port()}"
    done = run("sync", "--data", str(device), "--relay", url, "--credential", str(token), "--timeout", "5", "--json")
    assert done.returncode == 1, (done.stdout, done.stderr)
    final = one_object(done.stdout)
    assert final["state"] == "failed" and final["unsynced"] == 2
    assert final["error"]["code"] == "relay_unreachable" and final["error"]["retryable"] is True


def test_live_sync_json_prints_one_object_per_status_change(
    device: Path, relay: RelayProcess, credential_file: Path
) -> None:
    command = [*CLI, "sync", "--data", str(device), "--relay", relay.url, "--credential", str(credential_file)]
    lines: queue.Queue[str | None] = queue.Queue()
    seen: list[dict[str, Any]] = []
    with subprocess.Popen([*command, "--live", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE) as child:
        assert child.stdout is not None and child.stderr is not None
        reader = threading.Thread(target=pump_lines, args=(child.stdout, lines), daemon=True)
        reader.start()
        try:
            deadline = time.monotonic() + TIMEOUT
            while not (seen and seen[-1]["state"] == "synced" and seen[-1]["unsynced"] == 0):
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
                assert line is not None, f"the live sync ended: {child.wait(TIMEOUT)} {child.stderr.read()!r}"
                seen.append(json.loads(line))
            child.send_signal(signal.SIGINT)
            assert child.wait(TIMEOUT) == 0  # stopped when everything was synced
        finally:
            child.kill()
        reader.join(TIMEOUT)
        assert child.stderr.read().decode().strip().endswith("Sync stopped. Data unsynced: 0")
    while (line := lines.get_nowait()) is not None:
        seen.append(json.loads(line))
    states = [status["state"] for status in seen]
    assert states[0] == "syncing" and "synced" in states, states
    assert any(status["connected"] for status in seen) and not seen[-1]["connected"], seen
    assert seen[-1]["stopped"] is True and seen[-1]["state"] == "synced", seen[-1]
    assert not any("stopped" in status for status in seen[:-1])
    assert all(a != b for a, b in itertools.pairwise(seen)), "an object repeated without a change"
    assert {status["replica_id"] for status in seen} == {"tablet-7"}


def test_peer_list_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with Fleet(2, backend=LmdbBackend(tmp_path)) as fleet:
        fleet.edit("dev-0", "c7/households", lambda doc: doc.records("households").put("h1", {"head": "Amina"}))
        assert fleet.sync("dev-0").completed and fleet.sync("dev-1").completed
        assert fleet.sync("dev-1", "dev-0").completed
        expected = fleet.replica("dev-1").peers()["dev-0"]
        fleet.replica("dev-1").close()  # the CLI opens the data directory itself
        assert main(["peer", "list", "--data", str(tmp_path / "dev-1"), "--json"]) == 0
    listing = one_object(capsys.readouterr().out)
    assert listing == {
        "replica_id": "dev-1",
        "peers": [
            {
                "peer_id": "dev-0",
                "to_send": expected.to_send,
                "to_receive": expected.to_receive,
                "last_synced_at": expected.last_synced_at,
                "error": None,
            }
        ],
    }


def test_peer_list_json_before_any_peer(device: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["peer", "list", "--data", str(device), "--json"]) == 0
    assert one_object(capsys.readouterr().out) == {"replica_id": "tablet-7", "peers": []}


# -- the environment -----------------------------------------------------------


def test_replica_data_is_the_default_data_dir(device: Path, tmp_path: Path) -> None:
    done = run("status", "--json", env={"REPLICA_DATA": str(device)})
    assert done.returncode == 0, done.stderr
    assert one_object(done.stdout)["replica_id"] == "tablet-7"
    other = tmp_path / "phone-3"
    Replica.open(other, replica_id="phone-3").close()
    done = run("status", "--json", "--data", str(other), env={"REPLICA_DATA": str(device)})
    assert one_object(done.stdout)["replica_id"] == "phone-3"  # the option wins


def test_sync_reads_its_relay_and_credential_from_the_environment(
    device: Path, relay: RelayProcess, credential_file: Path, tmp_path: Path
) -> None:
    env = {"REPLICA_DATA": str(device), "REPLICA_RELAY": relay.url, "REPLICA_CREDENTIAL": str(credential_file)}
    elsewhere = f"ws://127.0.0.1:{free_port()}"
    done = run("sync", "--json", "--relay", elsewhere, "--timeout", "5", env=env)
    assert done.returncode == 1 and one_object(done.stdout)["error"]["code"] == "relay_unreachable"  # --relay wins
    missing = tmp_path / "missing.cred"
    done = run("sync", "--credential", str(missing), env=env)
    assert done.returncode == 2 and f"Error [credential_missing]: no credential file at {missing}" in done.stderr
    done = run("sync", "--json", env=env)
    assert done.returncode == 0, done.stderr
    assert one_object(done.stdout)["label"] == "Data Synced"


def test_the_relays_commands_never_take_a_devices_data_dir(device: Path) -> None:
    env = {"REPLICA_DATA": str(device)}
    for command in (["relay"], ["relay", "public-key"]):
        done = run(*command, env=env)
        assert done.returncode == 2 and "--data" in done.stderr and "Error [bad_usage]" in done.stderr, done
    assert not any(p.name.startswith("relay") for p in device.iterdir())
