"""A mistyped path does not create a new identity (issue 11, CLI): the
commands that work on a device or issue a relay's credentials refuse a data
directory that holds nothing, with the command that creates one; ``replica
init`` creates a device, explicitly and once. ``replica relay`` and the
Python API still create their directories.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from relay_process import RelayProcess
from replica import Replica
from replica.credentials import SigningKey
from server_process import CLI

TIMEOUT = 60.0

#: Every command that works on an existing device, with what else it needs.
DEVICE_COMMANDS = {
    "status": ["status"],
    "sync": ["sync", "--relay", "ws://127.0.0.1:9", "--timeout", "2"],
    "peer serve": ["peer", "serve", "--host", "127.0.0.1", "--port", "0"],
    "peer trust": ["peer", "trust", "--relay-key", SigningKey.generate().public_key().to_text()],
    "peer key": ["peer", "key"],
    "peer list": ["peer", "list"],
    "peer discover": ["peer", "discover", "--timeout", "0.1"],
    "credential show": ["credential", "show"],
}
RELAY_COMMANDS = {
    "relay issue-credential": ["relay", "issue-credential", "--replica-id", "tablet-7", "--docs", "c7/*"],
    "relay public-key": ["relay", "public-key"],
}


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=TIMEOUT, check=False)


def error_line(done: subprocess.CompletedProcess[str], code: str) -> str:
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"Error [{code}]: ") and line.endswith("(retrying will not help)"), line
    return line


@pytest.mark.parametrize("command", DEVICE_COMMANDS, ids=str)
def test_a_device_command_refuses_a_missing_data_dir(tmp_path: Path, command: str) -> None:
    typo = tmp_path / "tablet-77"
    line = error_line(run(*DEVICE_COMMANDS[command], "--data", str(typo)), "no_data_dir")
    assert f"no data directory at {typo}; check the path" in line
    assert f"create a device with `replica init --data {typo} --replica-id ID`" in line
    assert not typo.exists()


def test_the_hint_names_the_replica_id_given(tmp_path: Path) -> None:
    typo = tmp_path / "tablet-77"
    line = error_line(run("status", "--data", str(typo), "--replica-id", "tablet-7"), "no_data_dir")
    assert f"`replica init --data {typo} --replica-id tablet-7`" in line


@pytest.mark.parametrize("command", ["status", "sync", "peer key"])
def test_an_empty_or_foreign_folder_is_no_device_either(tmp_path: Path, command: str) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    line = error_line(run(*DEVICE_COMMANDS[command], "--data", str(empty)), "no_data_dir")
    assert "(the folder is empty)" in line and f"replica init --data {empty}" in line
    assert list(empty.iterdir()) == []
    (tmp_path / "notes.txt").write_text("not a replica\n")
    line = error_line(run(*DEVICE_COMMANDS[command], "--data", str(tmp_path)), "no_data_dir")
    assert "is not a device's data directory (it holds no replica)" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "notes.txt"]


@pytest.mark.parametrize("command", RELAY_COMMANDS, ids=str)
def test_a_relay_command_refuses_a_missing_relay_dir(tmp_path: Path, command: str) -> None:
    typo = tmp_path / "relay-dta"
    line = error_line(run(*RELAY_COMMANDS[command], "--data", str(typo)), "no_data_dir")
    assert f"no relay data directory at {typo}" in line and f"`replica relay --data {typo}`" in line
    assert not typo.exists()


def test_init_creates_a_device_once(tmp_path: Path) -> None:
    path = tmp_path / "tablet-7"
    done = run("init", "--data", str(path), "--replica-id", "tablet-7")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"Created device tablet-7 in {path}\n"), done.stdout
    status = run("status", "--data", str(path))
    assert status.returncode == 0 and "Replica: tablet-7" in status.stdout, status.stderr
    again = run("init", "--data", str(path), "--replica-id", "tablet-8")
    line = error_line(again, "replica_exists")
    assert f"{path} already holds a device's data; nothing was changed" in line
    with Replica.open(path) as replica:
        assert replica.id == "tablet-7"


def test_init_picks_an_id_and_uses_an_empty_folder(tmp_path: Path) -> None:
    path = tmp_path / "phone"
    path.mkdir()
    done = run("init", "--data", str(path))
    assert done.returncode == 0, done.stderr
    with Replica.open(path) as replica:
        assert replica.id.startswith("r") and f"Created device {replica.id} in {path}" in done.stdout


def test_init_refuses_a_folder_holding_other_things(tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    line = error_line(run("init", "--data", str(tmp_path)), "data_dir_not_empty")
    assert f"{tmp_path} exists and holds no replica" in line
    assert [p.name for p in tmp_path.iterdir()] == ["photos"]


def test_the_relay_and_the_python_api_still_create_their_directories(tmp_path: Path) -> None:
    with RelayProcess(tmp_path / "new-relay") as relay:  # its first start
        assert relay.issue("tablet-7", ["c7/*"]).startswith("rc1.")
    with Replica.open(tmp_path / "new-device", replica_id="tablet-7") as replica:
        assert replica.id == "tablet-7"
    status = run("status", "--data", str(tmp_path / "new-device"))
    assert status.returncode == 0 and "Replica: tablet-7" in status.stdout, status.stderr
