"""The devices view: ``replica relay devices`` read while a real relay
process runs, and the devices-seen gauge on /metrics."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from relay_process import CLI, RelayProcess
from replica import Replica, devices
from replica.errors import DataDirError
from test_relay_http import get, metric


def _device(folder: Path, replica_id: str, changes: int) -> Path:
    with Replica.open(folder, replica_id=replica_id) as replica:
        rows = replica.doc("c7/households").records("households")
        for number in range(changes):
            rows.put(f"{replica_id}-{number}", {"n": number})
    return folder


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60, check=False)


def _listing(relay: RelayProcess, *extra: str) -> dict[str, Any]:
    done = _run("relay", "devices", "--data", str(relay.data), "--json", *extra)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _wait_listing(relay: RelayProcess, ready: Any, timeout: float = 15.0) -> dict[str, Any]:
    """The listing, once ``ready(rows by id)`` holds (the relay writes it every 2 s)."""
    deadline = time.monotonic() + timeout
    while True:
        listing = _listing(relay)
        rows = {row["replica_id"]: row for row in listing["devices"]}
        if ready(rows):
            return listing
        if time.monotonic() > deadline:
            raise AssertionError(f"the devices view never showed what was expected: {listing}")
        time.sleep(0.2)  # polling a file another process writes: the condition above ends it


def test_the_devices_view_while_the_relay_runs(tmp_path: Path) -> None:
    with RelayProcess(tmp_path / "relay") as relay:
        for name, changes in (("tablet-1", 3), ("tablet-2", 2)):
            credential = tmp_path / f"{name}.cred"
            credential.write_text(relay.issue(name, ["c7/*"], expires="30d") + "\n")
            data = _device(tmp_path / name, name, changes)
            done = _run("sync", "--data", str(data), "--relay", relay.url, "--credential", str(credential))
            assert done.returncode == 0, done.stderr
        relay.issue("tablet-3", ["c7/*"])  # issued, never synced
        assert _run("relay", "revoke", "--data", str(relay.data), "--replica-id", "tablet-2").returncode == 0
        done = _run("sync", "--data", str(tmp_path / "tablet-2"), "--relay", relay.url)  # the given one is kept
        assert done.returncode == 2

        listing = _wait_listing(relay, lambda rows: rows.get("tablet-2", {}).get("last_outcome") == "refused")
        rows = {row["replica_id"]: row for row in listing["devices"]}
        assert set(rows) == {"tablet-1", "tablet-2", "tablet-3"}
        one, two, three = rows["tablet-1"], rows["tablet-2"], rows["tablet-3"]
        assert one["last_outcome"] == "synced" and one["last_code"] is None and not one["stale"]
        assert one["documents"] == {"c7/households": 3}  # it synced first: the others' came later
        assert one["credential_expires_at"] > time.time() + 29 * 86400 and not one["revoked"]
        assert two["revoked"] and two["last_outcome"] == "refused" and two["last_code"] == "credential_revoked"
        assert two["documents"] == {"c7/households": 3 + 2}  # what it held after its sync
        assert three["last_contact"] is None and three["stale"] and three["syncs"] == 0
        assert listing["devices"][0]["replica_id"] == "tablet-3"  # never heard from: first

        done = _run("relay", "devices", "--data", str(relay.data))
        assert done.returncode == 0, done.stderr
        assert "3 device(s); 1 not heard from in 24 h:" in done.stdout
        line = next(line for line in done.stdout.splitlines() if "tablet-2" in line)
        assert "REVOKED" in line and "refused [credential_revoked]" in line and "c7/households 5" in line
        assert "tablet-3 STALE: last contact never" in done.stdout

        later = devices.view(relay.data, now=time.time() + 3600, stale=60)  # an hour on, a minute is stale
        assert all(row["stale"] for row in later)
        done = _run("relay", "devices", "--data", str(relay.data), "--stale", "30m")
        assert "not heard from in 30 min:" in done.stdout

        text = get(relay.url.replace("ws://", "http://") + "/metrics")[2]
        assert metric(text, "replica_relay_devices_seen_24h") == 2


def test_a_relay_that_never_saw_a_device(tmp_path: Path) -> None:
    with RelayProcess(tmp_path / "relay") as relay:
        done = _run("relay", "devices", "--data", str(relay.data))
    assert done.returncode == 0 and "No device has synced" in done.stdout


def test_a_damaged_devices_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / devices.DEVICES_FILE).write_text("{not json")
    with pytest.raises(DataDirError) as caught:
        devices.read(tmp_path)
    assert "move it away" in caught.value.message


def test_the_devices_command_checks_its_input(tmp_path: Path) -> None:
    done = _run("relay", "devices", "--data", str(tmp_path / "none"))
    assert done.returncode == 2 and "Error [no_data_dir]" in done.stderr
    with RelayProcess(tmp_path / "relay") as relay:
        done = _run("relay", "devices", "--data", str(relay.data), "--stale", "soon")
    assert done.returncode == 2 and "Error [bad_duration]" in done.stderr


def test_a_relay_with_a_damaged_devices_file_still_serves(tmp_path: Path) -> None:
    """The view is rebuilt; the damaged file is kept aside for the operator."""
    with RelayProcess(tmp_path / "relay") as relay:
        pass
    (relay.data / devices.DEVICES_FILE).write_text("{not json")
    with RelayProcess(tmp_path / "relay") as relay:
        credential = tmp_path / "tablet-1.cred"
        credential.write_text(relay.issue("tablet-1", ["c7/*"]) + "\n")
        data = _device(tmp_path / "tablet-1", "tablet-1", 1)
        done = _run("sync", "--data", str(data), "--relay", relay.url, "--credential", str(credential))
        assert done.returncode == 0, done.stderr
        _wait_listing(relay, lambda rows: rows.get("tablet-1", {}).get("last_outcome") == "synced")
        assert (relay.data / "devices.damaged").read_text() == "{not json"
        relay.terminate()
        assert "moved to" in relay.stderr_text()
