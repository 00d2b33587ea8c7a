"""TLS (``wss://``) for the relay and peer servers, with real processes on
127.0.0.1 and a throwaway CA and certificates (``tls_certs``)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from peer_process import PeerProcess
from relay_process import CLI, RelayProcess
from replica import Replica, tls
from replica.errors import ReplicaError
from tls_certs import PKI, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _device(folder: Path, replica_id: str) -> Path:
    with Replica.open(folder, replica_id=replica_id) as replica:
        replica.doc("c7/households").records("households").put("h1", {"name": "Ada"})
    return folder


def _sync(data: Path, url: str, credential: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [*CLI, "sync", "--data", str(data), "--relay", url, "--credential", str(credential), "--timeout", "10"]
    return subprocess.run([*command, *extra], capture_output=True, text=True, timeout=60, check=False)


def _credential(relay: RelayProcess, folder: Path, replica_id: str) -> Path:
    path = folder / f"{replica_id}.cred"
    path.write_text(relay.issue(replica_id, ["c7/*"]) + "\n")
    return path


def test_a_device_syncs_over_wss_with_the_campaign_ca(tmp_path: Path, pki: PKI) -> None:
    secure = ("--tls-cert", str(pki.cert), "--tls-key", str(pki.key))
    with RelayProcess(tmp_path / "relay", *secure) as relay:
        assert relay.url.startswith("wss://127.0.0.1:")
        device = _device(tmp_path / "tablet", "tablet-1")
        done = _sync(device, relay.url, _credential(relay, tmp_path, "tablet-1"), "--ca", str(pki.ca))
        assert done.returncode == 0, done.stderr
        assert "Data Synced" in done.stdout
        with Replica.open(device, readonly=True) as replica:
            assert replica.status().unsynced == 0
        # localhost is in the certificate too
        other = _device(tmp_path / "phone", "phone-1")
        url = relay.url.replace("127.0.0.1", "localhost")
        done = _sync(other, url, _credential(relay, tmp_path, "phone-1"), "--ca", str(pki.ca))
        assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("ca", "code"),
    [(None, "tls_untrusted"), ("other", "tls_untrusted")],
    ids=["system-store", "another-ca"],
)
def test_a_certificate_that_does_not_verify_is_a_clear_final_error(
    tmp_path: Path, pki: PKI, ca: str | None, code: str
) -> None:
    with RelayProcess(tmp_path / "relay", "--tls-cert", str(pki.cert), "--tls-key", str(pki.key)) as relay:
        device = _device(tmp_path / "tablet", "tablet-1")
        extra = () if ca is None else ("--ca", str(pki.other_ca))
        done = _sync(device, relay.url, _credential(relay, tmp_path, "tablet-1"), *extra)
    assert done.returncode == 2, done.stdout + done.stderr  # retrying will not help
    assert f"[{code}]" in done.stdout + done.stderr
    assert "--ca FILE" in done.stdout + done.stderr
    assert "Traceback" not in done.stderr


def test_a_certificate_for_another_name_is_named(tmp_path: Path, pki: PKI) -> None:
    secure = ("--tls-cert", str(pki.wrong_host_cert), "--tls-key", str(pki.wrong_host_key))
    with RelayProcess(tmp_path / "relay", *secure) as relay:
        device = _device(tmp_path / "tablet", "tablet-1")
        done = _sync(device, relay.url, _credential(relay, tmp_path, "tablet-1"), "--ca", str(pki.ca))
    assert done.returncode == 2
    assert "[tls_wrong_host]" in done.stdout + done.stderr


def test_wss_to_a_plain_relay_and_ws_to_a_tls_relay_are_named(tmp_path: Path, pki: PKI) -> None:
    device = _device(tmp_path / "tablet", "tablet-1")
    with RelayProcess(tmp_path / "plain") as plain:
        credential = _credential(plain, tmp_path, "tablet-1")
        done = _sync(device, plain.url.replace("ws://", "wss://"), credential, "--ca", str(pki.ca))
    assert done.returncode == 2
    assert "[tls_not_offered]" in done.stdout + done.stderr and "use ws://" in done.stdout + done.stderr
    with RelayProcess(tmp_path / "secure", "--tls-cert", str(pki.cert), "--tls-key", str(pki.key)) as relay:
        done = _sync(device, relay.url.replace("wss://", "ws://"), _credential(relay, tmp_path, "tablet-1"))
    assert done.returncode == 2
    assert "[tls_required]" in done.stdout + done.stderr and "use wss://" in done.stdout + done.stderr


def test_a_relay_with_unusable_tls_files_says_which(tmp_path: Path, pki: PKI) -> None:
    cases = [
        (("--tls-cert", str(pki.cert)), "bad_usage"),
        (("--tls-cert", str(tmp_path / "missing.pem"), "--tls-key", str(pki.key)), "tls_cert_unreadable"),
        (("--tls-cert", str(pki.cert), "--tls-key", str(pki.wrong_host_key)), "tls_key_mismatch"),
    ]
    for extra, code in cases:
        command = [*CLI, "relay", "--data", str(tmp_path / "relay"), "--port", "0", *extra]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 2, (extra, done.stderr)
        assert f"Error [{code}]" in done.stderr and "Traceback" not in done.stderr


def test_a_ca_file_that_is_not_one(tmp_path: Path) -> None:
    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate\n")
    for path, code in ((bogus, "tls_ca_unreadable"), (tmp_path / "none.pem", "tls_ca_unreadable")):
        with pytest.raises(ReplicaError) as caught:
            tls.client_context(path)
        assert caught.value.code == code and not caught.value.retryable


def test_peers_sync_over_wss(tmp_path: Path, pki: PKI) -> None:
    """A device serving peers with TLS; another syncs with it with --peer --ca."""
    with RelayProcess(tmp_path / "relay") as relay:  # credentials bound to each device's key first
        server, client = _device(tmp_path / "tablet", "tablet-1"), _device(tmp_path / "phone", "phone-1")
        for data, name in ((server, "tablet-1"), (client, "phone-1")):
            done = _sync(data, relay.url, _credential(relay, tmp_path, name))
            assert done.returncode == 0, done.stderr
    with Replica.open(server) as replica:
        replica.doc("c7/households").records("households").put("h9", {"name": "Cy"})
    with PeerProcess(server, "--tls-cert", str(pki.cert), "--tls-key", str(pki.key)) as peer:
        assert peer.url.startswith("wss://")
        command = [*CLI, "sync", "--data", str(client), "--relay", peer.url, "--peer", "--ca", str(pki.ca)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    with Replica.open(client, readonly=True) as replica:
        assert replica.doc("c7/households").records("households").get("h9") == {"name": "Cy"}
