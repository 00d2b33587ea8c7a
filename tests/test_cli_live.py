"""What ``replica sync`` tells while it runs (issue 11, CLI), with real
processes on 127.0.0.1: a live sync's story one line per change (connected,
counts, caught up, connection lost and the next try, stopped) also when its
output is not a terminal; a one-shot sync's progress ending with the final
counts; Ctrl-C printing the unsynced count; and ``replica peer serve --relay``
serving peers while it syncs with the relay.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from peer_process import PeerProcess
from relay_process import RelayProcess
from replica import Replica
from replica.status import SyncState
from server_process import CLI, HOST, ServerProcess, ServerProcessError

DOC = "campaign-7/households"
TIMEOUT = 60.0


class LiveSync(ServerProcess):
    """``replica sync --live`` as a process; "ready" once connected to the relay."""

    NAME = "live sync"
    READY = re.compile(r"^Connected to (?P<id>the relay) at (?P<url>ws://\S+)$")
    STOPPED = "Sync stopped. Data unsynced: "
    Error = ServerProcessError

    def __init__(self, data: Path, relay: str) -> None:
        super().__init__(data, timeout=TIMEOUT)
        self.relay = relay

    def command(self, port: int) -> list[str]:
        return [*CLI, "sync", "--live", "--data", str(self.data), "--relay", self.relay]


def records(replica: Replica) -> dict[str, object]:
    return dict(replica.doc(DOC).records("households").items())


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[RelayProcess]:
    with RelayProcess(tmp_path / "relay") as process:
        yield process


def device(tmp_path: Path, relay: RelayProcess, name: str, heads: list[str]) -> Path:
    """A device that synced once with the relay (which pinned its key and bound
    its credential), then saved ``heads`` offline; its data directory."""
    path = tmp_path / name
    with Replica.open(path, replica_id=name) as opened:
        token = relay.issue(name, ["campaign-7/*"])
        assert opened.sync_blocking(relay.url, credential=token).state is SyncState.SYNCED
        rows = opened.doc(DOC).records("households")
        for number, head in enumerate(heads):
            rows.put(f"{name}-h{number}", {"head": head})
    return path


def test_a_live_sync_tells_what_happens_one_line_each(tmp_path: Path, relay: RelayProcess) -> None:
    path = device(tmp_path, relay, "tablet-7", ["Amina", "Bello"])
    url = relay.url
    port = int(url.rsplit(":", 1)[1])
    with LiveSync(path, relay.url) as live:  # the credential given before is remembered
        assert live.output[0] == f"Connecting to the relay at {relay.url}", live.output
        live.expect(r"^Caught up: sent 2/2, received 0/0\. Data Synced$")

        # another device's change reaches it live
        with Replica.open(tmp_path / "phone-3", replica_id="phone-3") as other:
            other.doc(DOC).records("households").put("p1", {"head": "Chidi"})
            token = relay.issue("phone-3", ["campaign-7/*"])
            assert other.sync_blocking(relay.url, credential=token).state is SyncState.SYNCED
        live.expect(r"^Live: sent 2, received 1 on this connection\. Data unsynced: 0$")

        # the relay dies: the connection is lost, and it says when it tries again
        relay.kill()
        live.expect(r"^Connection lost$")
        before = time.time()
        found = re.match(
            r"^Next try at (\d\d:\d\d:\d\d) \(in (\d+) s\)\. Data unsynced: 0$", live.expect(r"^Next try at ")
        )
        assert found is not None and int(found[2]) <= 1, live.output  # the first delay after a caught-up run
        live.expect(f"^Connecting to the relay at {re.escape(url)}$")
        failed = live.expect(r"^Sync Failed: ")
        assert failed.endswith("[relay_unreachable]") and "refused the connection" in failed, failed
        live.expect(r"^Next try at ")
        assert time.time() - before < TIMEOUT

        # it comes back on the same port: the live sync reconnects and catches up
        relay.start(port)
        assert relay.url == url
        live.expect(f"^Connected to the relay at {re.escape(url)}$")
        live.expect(r"^Caught up: sent 0/0, received 0/0\. Data Synced$")

        live.send_signal(signal.SIGINT)
        output = live.wait_stopped()
    assert output[-1] == "Sync stopped. Data unsynced: 0", output
    assert "Traceback" not in live.stderr_text(), live.stderr_text()
    with Replica.open(path) as opened:
        assert "p1" in records(opened) and opened.status().unsynced == 0


def test_ctrl_c_in_a_live_sync_prints_what_is_not_on_the_relay(tmp_path: Path, relay: RelayProcess) -> None:
    path = device(tmp_path, relay, "tablet-7", [])
    with LiveSync(path, relay.url) as live:
        live.expect(r"^Caught up: ")
        live.send_signal(signal.SIGINT)
        assert live.wait_stopped()[-1] == "Sync stopped. Data unsynced: 0"


def test_a_live_sync_refused_for_good_says_so_and_exits_2(tmp_path: Path, relay: RelayProcess) -> None:
    path = device(tmp_path, relay, "tablet-7", ["Amina"])
    url = relay.url
    with LiveSync(path, url) as live:
        live.expect(r"^Caught up: ")
        revoke = [*CLI, "relay", "revoke", "--data", str(relay.data), "--replica-id", "tablet-7"]
        subprocess.run(revoke, check=True, capture_output=True, timeout=TIMEOUT)
        relay.restart(int(url.rsplit(":", 1)[1]))  # the revocation counts at the next handshake
        failed = live.expect(r"^Sync Failed: .*\[credential_revoked\]$")  # after any try while it restarted
        assert live.wait_exit() == 2
    assert live.output[-1] == "The live sync stopped: retrying will not help. Data unsynced: 0", live.output
    assert not any(line.startswith("Next try at") for line in live.output[live.output.index(failed) :])


class SilentListener:
    """A TCP port that accepts connections and never answers (a relay that hangs)."""

    def __init__(self) -> None:
        self.sock = socket.create_server((HOST, 0))
        self.url = f"ws://{HOST}:{self.sock.getsockname()[1]}"
        self.accepted = threading.Event()
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        try:
            while True:
                conn, _ = self.sock.accept()
                self.held.append(conn)
                self.accepted.set()
        except OSError:
            return

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_ctrl_c_in_a_one_shot_sync_prints_the_unsynced_count(tmp_path: Path, as_json: bool) -> None:
    path = tmp_path / "tablet-7"
    with Replica.open(path, replica_id="tablet-7") as opened:
        opened.doc(DOC).records("households").put("h1", {"head": "Amina"})
        opened.doc(DOC).records("households").put("h2", {"head": "Bello"})
    hanging = SilentListener()
    command = [*CLI, "sync", "--data", str(path), "--relay", hanging.url, "--timeout", "60"]
    command += ["--json"] if as_json else []
    try:
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as child:
            try:
                assert hanging.accepted.wait(TIMEOUT), "the sync never connected"
                started = time.monotonic()
                child.send_signal(signal.SIGINT)
                out, err = child.communicate(timeout=TIMEOUT)
            finally:
                child.kill()
    finally:
        hanging.close()
    assert time.monotonic() - started < 10, "Ctrl-C waited for the relay's timeout"
    assert child.returncode == 1, (out, err)  # it had not finished: retrying can help
    assert "Traceback" not in err, err
    if as_json:
        (line,) = out.splitlines()
        final = json.loads(line)
        assert final["stopped"] is True and final["state"] == "failed" and final["unsynced"] == 2, final
        assert final["error"]["code"] == "stopped" and final["error"]["retryable"] is True, final
        assert final["connected"] is False and final["retry_at"] is None
        assert err.strip().endswith("Sync stopped. Data unsynced: 2"), err
    else:
        assert out.splitlines() == ["Sync stopped. Data unsynced: 2"], out


def test_one_shot_progress_off_a_terminal_ends_with_the_final_counts(tmp_path: Path, relay: RelayProcess) -> None:
    path = device(tmp_path, relay, "tablet-7", ["Amina", "Bello", "Chidi"])
    done = subprocess.run(
        [*CLI, "sync", "--data", str(path), "--relay", relay.url], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert done.returncode == 0, done
    assert done.stdout.splitlines()[0] == "Data Synced", done.stdout
    progress = done.stderr.splitlines()
    assert progress and progress[-1] == "Sync ended: sent 3/3, received 0/0", progress
    assert all(line.startswith("Sync in Progress: ") for line in progress[:-1]), progress


# -- peer serve --relay ----------------------------------------------------------


def test_peer_serve_syncs_live_with_the_relay_and_carries_what_peers_bring(tmp_path: Path, relay: RelayProcess) -> None:
    tablet = device(tmp_path, relay, "tablet-7", ["Amina"])
    phone = device(tmp_path, relay, "phone-3", [])
    with PeerProcess(tablet, "--relay", relay.url, "--live") as served:
        served.expect(f"^Connected to the relay at {re.escape(relay.url)}$")
        served.expect(r"^Caught up: sent 1/1, received 0/0\. Data Synced$")
        with Replica.open(phone) as worker:
            worker.doc(DOC).records("households").put("p1", {"head": "Chidi"})  # offline
            final = worker.sync_blocking(served.url, peer=True)  # in the field, with the tablet
            assert final.state is SyncState.SYNCED and final.peer == "tablet-7", final
            # a peer is not the relay: its own change, and the tablet's it cannot know is on the relay
            assert worker.status().unsynced == 2
            # the tablet carries it up at once, on its live link
            served.expect(r"^Live: sent 2, received 0 on this connection\. Data unsynced: 0$")
            final = worker.sync_blocking(relay.url)
            assert final.state is SyncState.SYNCED and final.unsynced == 0, final
            assert final.progress.sent == 0, "the relay did not have it from the tablet"
            assert {"tablet-7-h0", "p1"} <= set(records(worker))
        served.send_signal(signal.SIGINT)
        output = served.wait_stopped()
    assert output[-2:] == ["Sync stopped. Data unsynced: 0", "Peer server stopped."], output


def test_peer_serve_syncs_once_with_the_relay_then_keeps_serving(tmp_path: Path, relay: RelayProcess) -> None:
    tablet = device(tmp_path, relay, "tablet-7", ["Amina", "Bello"])
    with PeerProcess(tablet, "--relay", relay.url) as served:
        served.expect(r"^Data Synced$")
        served.expect(r"^Still serving peers until Ctrl-C\.$")
        with Replica.open(tmp_path / "phone-3", replica_id="phone-3") as worker:
            worker.sync_blocking(relay.url, credential=relay.issue("phone-3", ["campaign-7/*"]))
            assert worker.sync_blocking(served.url, peer=True).state is SyncState.SYNCED
        served.send_signal(signal.SIGTERM)
        served.wait_stopped()


def test_peer_serve_live_needs_a_relay(tmp_path: Path) -> None:
    Replica.open(tmp_path, replica_id="tablet-7").close()
    done = subprocess.run(
        [*CLI, "peer", "serve", "--data", str(tmp_path), "--port", "0", "--live"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 2 and done.stderr.startswith("Error [bad_usage]: --live syncs with the relay"), done
    assert "Traceback" not in done.stderr
