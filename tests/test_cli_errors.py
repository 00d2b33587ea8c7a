"""A user's mistake on the command line is one line on stderr, never a
traceback: ``Error [code]: reason (whether retrying helps)``, exit 2 when
retrying cannot help, 1 when it can (issue 11, CLI). And ``--help`` lists the
exit codes, the defaults and one example per command.

Most cases run the real ``replica`` process; the ones that simulate a missing
extra call :func:`replica.cli.main` in-process.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from replica import Replica
from replica.cli import main
from replica.credentials import DeviceKey
from replica.relay import relay_identity
from server_process import CLI

TIMEOUT = 60.0
KEY = DeviceKey.generate().public_key().to_text()


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=TIMEOUT, check=False)


def assert_one_line_error(done: subprocess.CompletedProcess[str], code: str, exit_status: int = 2) -> str:
    """The process failed with ``exit_status`` and said why in one line naming ``code``; returns that line."""
    assert done.returncode == exit_status, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    hint = "(retrying will not help)" if exit_status == 2 else "(retrying may help)"
    assert lines[0].startswith(f"Error [{code}]: ") and lines[0].endswith(hint), lines[0]
    return lines[0]


@pytest.fixture
def device(tmp_path: Path) -> Path:
    path = tmp_path / "tablet-7"
    with Replica.open(path, replica_id="tablet-7") as replica:
        replica.doc("campaign-7/households").records("households").put("h1", {"head": "Amina"})
    return path


@pytest.fixture
def relay_data(tmp_path: Path) -> Path:
    path = tmp_path / "relay"
    relay_identity(path)  # what the relay's first start leaves: its key and id
    return path


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port on 127.0.0.1 that this test listens on, so that nobody else can."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


# -- credential files ----------------------------------------------------------


def test_a_missing_credential_file_is_one_line(device: Path, tmp_path: Path) -> None:
    missing = tmp_path / "tablet-7.cred"
    done = run("sync", "--data", str(device), "--relay", "ws://127.0.0.1:9", "--credential", str(missing))
    line = assert_one_line_error(done, "credential_missing")
    assert f"no credential file at {missing}" in line and "replica relay issue-credential" in line


def test_an_empty_credential_file_is_refused_before_syncing(device: Path, tmp_path: Path) -> None:
    empty = tmp_path / "tablet-7.cred"
    empty.write_text("\n")
    done = run("sync", "--data", str(device), "--relay", "ws://127.0.0.1:9", "--credential", str(empty))
    line = assert_one_line_error(done, "credential_missing")
    assert f"the credential file {empty} is empty" in line
    assert "Sync Failed" not in done.stdout  # nothing was tried
    with Replica.open(device) as replica:
        assert replica.status().unsynced == 1


# -- ports ---------------------------------------------------------------------


def test_the_relay_on_a_port_in_use(tmp_path: Path, taken_port: int) -> None:
    done = run("relay", "--data", str(tmp_path / "relay"), "--host", "127.0.0.1", "--port", str(taken_port))
    line = assert_one_line_error(done, "port_in_use")
    assert f"port {taken_port} on 127.0.0.1 is already in use" in line and "--port" in line
    assert "listening" not in done.stdout


def test_a_peer_server_on_a_port_in_use(device: Path, taken_port: int) -> None:
    done = run("peer", "serve", "--data", str(device), "--host", "127.0.0.1", "--port", str(taken_port))
    line = assert_one_line_error(done, "port_in_use")
    assert f"port {taken_port} on 127.0.0.1 is already in use" in line
    assert "serving peers" not in done.stdout
    Replica.open(device).close()  # the server let go of the data directory


@pytest.mark.parametrize("port", ["70000", "-1", "eighty"])
def test_a_port_out_of_range(tmp_path: Path, device: Path, port: str) -> None:
    relay = run("relay", "--data", str(tmp_path / "relay"), "--port", port)
    assert f"port {port!r} is not valid" in assert_one_line_error(relay, "bad_port")
    assert not (tmp_path / "relay").exists()
    peer = run("peer", "serve", "--data", str(device), "--host", "127.0.0.1", "--port", port)
    assert_one_line_error(peer, "bad_port")


# -- what a credential is issued for ---------------------------------------------


@pytest.mark.parametrize("pattern", ["campaign 7/*", ""])
def test_a_bad_docs_pattern(relay_data: Path, pattern: str) -> None:
    done = run("relay", "issue-credential", "--data", str(relay_data), "--replica-id", "tablet-7", "--docs", pattern)
    line = assert_one_line_error(done, "bad_docs_pattern")
    assert f"invalid document pattern {pattern!r}" in line and "e.g. 'campaign-7/*'" in line
    assert done.stdout == ""


def test_a_bad_replica_id(relay_data: Path, device: Path, tmp_path: Path) -> None:
    issue = run("relay", "issue-credential", "--data", str(relay_data), "--replica-id", "tablet 7", "--docs", "c7/*")
    assert "invalid replica id 'tablet 7'" in assert_one_line_error(issue, "bad_replica_id")
    assert issue.stdout == ""
    assert_one_line_error(run("status", "--data", str(device), "--replica-id", "tablet#7"), "bad_replica_id")
    assert_one_line_error(run("init", "--data", str(tmp_path / "new"), "--replica-id", "a/b"), "bad_replica_id")
    assert not (tmp_path / "new").exists()


def test_a_bad_device_key(relay_data: Path) -> None:
    args = ["--data", str(relay_data), "--replica-id", "tablet-7", "--docs", "c7/*", "--device-key", "ed25519:nope"]
    done = run("relay", "issue-credential", *args)
    line = assert_one_line_error(done, "bad_device_key")
    assert "'ed25519:nope' is not a public key" in line and "replica peer key" in line
    assert done.stdout == ""
    good = run("relay", "issue-credential", *args[:-1], KEY)
    assert good.returncode == 0 and good.stdout.startswith("rc1."), good.stderr


def test_a_bad_expiry(relay_data: Path) -> None:
    args = ["--data", str(relay_data), "--replica-id", "tablet-7", "--docs", "c7/*", "--expires", "3x"]
    assert "expiry '3x' is not understood" in assert_one_line_error(
        run("relay", "issue-credential", *args), "bad_expiry"
    )


def test_a_bad_relay_key_to_trust(device: Path) -> None:
    done = run("peer", "trust", "--data", str(device), "--relay-key", "./relay.pub")
    line = assert_one_line_error(done, "bad_relay_key")
    assert "'./relay.pub' is not a public key" in line and "replica relay public-key" in line


def test_argparse_mistakes_are_one_line_too(tmp_path: Path) -> None:
    line = assert_one_line_error(run("status"), "bad_usage")
    assert "the following arguments are required: --data" in line and "`replica status --help`" in line
    assert "invalid choice: 'stauts'" in assert_one_line_error(run("stauts"), "bad_usage")
    assert_one_line_error(run("sync", "--data", str(tmp_path), "--timeout", "soon"), "bad_timeout")


# -- the discovery extra -----------------------------------------------------------


@pytest.fixture
def without_zeroconf(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if the ``discovery`` extra were not installed: ``import zeroconf`` fails."""
    for name in [name for name in sys.modules if name.startswith("zeroconf.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "zeroconf", None)


@pytest.mark.usefixtures("without_zeroconf")
def test_discover_without_the_discovery_extra(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["peer", "discover", "--timeout", "0.1"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith("Error [discovery_not_installed]: ") and "pip install 'replica[discovery]'" in line


@pytest.mark.usefixtures("without_zeroconf")
def test_advertise_without_the_discovery_extra(device: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["peer", "serve", "--data", str(device), "--host", "127.0.0.1", "--port", "0", "--advertise"]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "serving peers" not in captured.out  # refused before serving, not half-way
    (line,) = captured.err.splitlines()
    assert line.startswith("Error [discovery_not_installed]: ") and "without --advertise" in line


# -- --help ----------------------------------------------------------------------------

COMMANDS = [
    ["init"],
    ["status"],
    ["sync"],
    ["relay"],
    ["relay", "issue-credential"],
    ["relay", "public-key"],
    ["credential", "show"],
    ["peer", "serve"],
    ["peer", "discover"],
    ["peer", "trust"],
    ["peer", "key"],
    ["peer", "list"],
]
EXIT_CODE_LINES = ["Exit codes:", "  0  done", "  1  failed; retrying can help", "  2  failed; retrying will not help"]


def help_text(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--help"])
    assert exited.value.code == 0
    return capsys.readouterr().out


def test_help_lists_exit_codes_environment_and_an_example_per_command() -> None:
    done = run("--help")
    assert done.returncode == 0, done.stderr
    for line in EXIT_CODE_LINES:
        assert f"\n{line}" in done.stdout, done.stdout
    for variable in ("REPLICA_DATA", "REPLICA_RELAY", "REPLICA_CREDENTIAL"):
        assert variable in done.stdout
    for command in COMMANDS:
        assert f"\n  replica {' '.join(command)} --data " in done.stdout, command


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_each_commands_help_has_an_example_and_the_exit_codes(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    text = help_text(command, capsys)
    assert f"Example:\n  replica {' '.join(command)} " in text, text
    for line in EXIT_CODE_LINES:
        assert f"\n{line}" in text, text


def test_help_shows_the_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    relay = " ".join(help_text(["relay"], capsys).split())  # argparse wraps lines where it likes
    assert "(default: 127.0.0.1)" in relay and "(default: 8765)" in relay
    serve = " ".join(help_text(["peer", "serve"], capsys).split())
    assert "(default: 0.0.0.0)" in serve and "(default: 8766)" in serve
    assert "(default: 30.0)" in " ".join(help_text(["sync"], capsys).split())
    assert "(default: 30d)" in " ".join(help_text(["relay", "issue-credential"], capsys).split())
    assert "(default: None)" not in relay + serve and "(default: False)" not in serve
