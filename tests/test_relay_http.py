"""``/health``, ``/metrics`` and plain HTTP on the relay's own port, and the
operator's log lines: against real relay processes (and one in-process relay
on a real, deliberately small LMDB map for the storage fault)."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from relay_process import CLI, RelayProcess
from replica import Replica
from replica.relay import Relay
from replica.status import SyncState
from tls_certs import make_pki


def get(url: str, context: ssl.SSLContext | None = None) -> tuple[int, str, str]:
    """Status, content type and body of a plain HTTP GET."""
    try:
        with urllib.request.urlopen(url, timeout=10, context=context) as answer:
            return answer.status, answer.headers["Content-Type"], answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def metric(text: str, name: str) -> float:
    """The value of one sample line ``name value`` of a Prometheus exposition."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name!r} in:\n{text}")


def _device(folder: Path, replica_id: str, changes: int = 1) -> Path:
    with Replica.open(folder, replica_id=replica_id) as replica:
        rows = replica.doc("c7/households").records("households")
        for number in range(changes):
            rows.put(f"h{number}", {"name": f"household {number}"})
    return folder


def _sync(relay: RelayProcess, data: Path, replica_id: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    credential = tmp_path / f"{replica_id}.cred"
    if not credential.exists():
        credential.write_text(relay.issue(replica_id, ["c7/*"]) + "\n")
    command = [*CLI, "sync", "--data", str(data), "--relay", relay.url, "--credential", str(credential)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_health_metrics_and_other_paths_on_the_relay_port(tmp_path: Path) -> None:
    with RelayProcess(tmp_path / "relay") as relay:
        http = relay.url.replace("ws://", "http://")
        status, kind, body = get(http + "/health")
        assert status == 200 and kind == "application/json"
        assert json.loads(body)["status"] == "ok"

        for number in range(3):
            done = _sync(relay, _device(tmp_path / f"t{number}", f"tablet-{number}", 5), f"tablet-{number}", tmp_path)
            assert done.returncode == 0, done.stderr
        bad = tmp_path / "bad.cred"
        bad.write_text("rc1.not-a-credential\n")
        command = [*CLI, "sync", "--data", str(tmp_path / "t0"), "--relay", relay.url, "--credential", str(bad)]
        assert subprocess.run(command, capture_output=True, timeout=60, check=False).returncode == 2

        status, kind, text = get(http + "/metrics")
        assert status == 200 and kind.startswith("text/plain; version=0.0.4")
        assert metric(text, "replica_relay_deltas_received_total") == 15
        assert metric(text, "replica_relay_deltas_sent_total") == 10 + 5  # each device gets the others' (by then)
        assert metric(text, 'replica_relay_handshakes_total{outcome="accepted"}') == 3
        assert metric(text, 'replica_relay_handshakes_total{outcome="refused"}') == 1
        assert metric(text, 'replica_relay_refusals_total{code="credential_invalid"}') == 1
        assert metric(text, 'replica_relay_syncs_total{outcome="synced"}') == 3
        assert metric(text, "replica_relay_commits_total") >= 3
        assert metric(text, "replica_relay_commit_seconds_count") == metric(text, "replica_relay_commits_total")
        assert metric(text, "replica_relay_received_bytes_total") > 0
        assert metric(text, "replica_relay_sent_bytes_total") > 0
        assert metric(text, "replica_relay_acks_received_total") >= 2
        assert metric(text, "replica_relay_documents_loaded") == 1
        assert metric(text, "process_resident_memory_bytes") > 10e6
        assert metric(text, "replica_relay_links") == 0

        status, kind, body = get(http + "/")
        assert status == 404 and "replica relay" in body and "/health" in body
        status, _, _ = get(http + "/anything?x=1")
        assert status == 404


def test_health_and_metrics_over_tls(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    with RelayProcess(tmp_path / "relay", "--tls-cert", str(pki.cert), "--tls-key", str(pki.key)) as relay:
        https = relay.url.replace("wss://", "https://")
        context = ssl.create_default_context(cafile=str(pki.ca))
        assert get(https + "/health", context)[0] == 200
        assert "replica_relay_links" in get(https + "/metrics", context)[2]


def test_the_operator_log_one_line_per_sync_and_per_refusal_none_per_delta(tmp_path: Path) -> None:
    with RelayProcess(tmp_path / "relay", "--log-format", "json") as relay:
        done = _sync(relay, _device(tmp_path / "t1", "tablet-1", 200), "tablet-1", tmp_path)
        assert done.returncode == 0, done.stderr
        (tmp_path / "tablet-2.cred").write_text(relay.issue("tablet-2", ["c7/*"]) + "\n")
        revoke = [*CLI, "relay", "revoke", "--data", str(relay.data), "--replica-id", "tablet-2"]
        subprocess.run(revoke, capture_output=True, timeout=60, check=True)
        assert _sync(relay, _device(tmp_path / "t2", "tablet-2"), "tablet-2", tmp_path).returncode == 2
        relay.terminate()
        lines = [json.loads(line) for line in relay.stderr_text().splitlines() if line.startswith("{")]
    syncs = [line for line in lines if line.get("event") == "sync"]
    refused = [line for line in lines if line.get("event") == "refused"]
    assert len(syncs) == 1 and len(refused) == 1, lines
    (sync,) = syncs
    assert sync["device"] == "tablet-1" and sync["outcome"] == "synced" and sync["code"] is None
    assert sync["deltas_up"] == 200 and sync["deltas_down"] == 0 and sync["documents"] == ["c7/households"]
    assert sync["bytes_up"] > 200 and sync["seconds"] >= 0 and sync["address"].startswith("127.0.0.1:")
    assert sync["level"] == "info" and "tablet-1" in sync["message"]
    (refusal,) = refused
    assert refusal["device"] == "tablet-2" and refusal["code"] == "credential_revoked"
    assert refusal["level"] == "warning" and refusal["outcome"] == "refused"
    assert len(lines) < 10, lines  # nothing per delta, no per-link duplicates


def test_the_human_log_is_one_readable_line(tmp_path: Path) -> None:
    with RelayProcess(tmp_path / "relay") as relay:
        assert _sync(relay, _device(tmp_path / "t1", "tablet-1", 3), "tablet-1", tmp_path).returncode == 0
        relay.terminate()
        lines = [line for line in relay.stderr_text().splitlines() if "replica.oplog" in line]
    assert len(lines) == 1, relay.stderr_text()
    assert "INFO replica.oplog: once sync tablet-1 from 127.0.0.1:" in lines[0]
    assert "synced in" in lines[0] and "1 document, deltas up 3 down 0" in lines[0]
    assert "('127.0.0.1'" not in relay.stderr_text() and "ErrorInfo(" not in relay.stderr_text()


def test_log_options_are_checked(tmp_path: Path) -> None:
    command = [*CLI, "relay", "--data", str(tmp_path), "--log-format", "xml"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2 and "Error [bad_usage]" in done.stderr


def test_health_turns_503_when_the_disk_is_full_and_back_when_it_is_not(tmp_path: Path) -> None:
    """A real LMDB map too small for what a device sends: its sync fails with a
    retryable storage_error, /health says 503 and why; after the relay restarts
    with room, the same device syncs everything and /health is 200."""

    async def health(relay: Relay) -> tuple[int, dict[str, object]]:
        status, _, body = await asyncio.to_thread(get, relay.url.replace("ws://", "http://") + "/health")
        return status, json.loads(body)

    async def main() -> None:
        with Replica.open(tmp_path / "tablet", replica_id="tablet-1") as device:
            text = device.doc("c7/notes").text("day")
            for number in range(300):
                text.insert(0, f"{number:04d} " + "x" * 4000)
            relay = Relay(tmp_path / "relay", port=0, map_size=1 << 20)
            token = relay.issue_credential("tablet-1", ["c7/*"], expires_at=2e9)
            async with relay:
                assert (await health(relay))[0] == 200
                status = await device.sync(relay.url, credential=token, timeout=10)
                assert status.state is SyncState.FAILED and status.error is not None
                assert status.error.code == "storage_error" and status.error.retryable
                code, body = await health(relay)
                assert code == 503 and body["status"] == "failing" and "storage_error" in str(body["error"])
                assert relay.ops is not None
                assert relay.ops.metrics.storage_failures._value.get() >= 1
            async with Relay(tmp_path / "relay", port=0, map_size=64 << 20) as relay:
                status = await device.sync(relay.url, credential=token, timeout=10)
                assert status.state is SyncState.SYNCED and device.status().unsynced == 0
                assert (await health(relay))[0] == 200

    asyncio.run(main())


@pytest.mark.parametrize("path", ["/health", "/metrics"])
def test_http_answers_do_not_count_as_links(tmp_path: Path, path: str) -> None:
    with RelayProcess(tmp_path / "relay") as relay:
        http = relay.url.replace("ws://", "http://")
        for _ in range(5):
            assert get(http + path)[0] == 200
        text = get(http + "/metrics")[2]
        assert metric(text, "replica_relay_sessions_total") == 0
