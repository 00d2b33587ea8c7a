"""What a relay's operator issued and revoked (``replica.registry``), and
revocation against a real relay process driven by the CLI."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from relay_process import CLI, RelayProcess
from replica import registry
from replica.credentials import SigningKey
from replica.errors import DataDirError


def test_issued_credentials_are_recorded(tmp_path: Path) -> None:
    key = SigningKey.generate()
    device = SigningKey.generate().public_key().raw
    registry.issue_credential(
        tmp_path, key, issuer="relay-1", replica_id="dev-a", documents=["c7/*"], expires_at=2e9, now=1e9
    )
    registry.issue_credential(
        tmp_path, key, issuer="relay-1", replica_id="dev-b", documents=["c8/*"], expires_at=2e9, device_key=device
    )
    first, second = registry.issued(tmp_path)
    assert (first["replica_id"], first["documents"], first["issued_at"], first["device_key"]) == (
        "dev-a",
        ["c7/*"],
        1e9,
        None,
    )
    assert second["replica_id"] == "dev-b" and second["device_key"] is not None


def test_revocations_are_read_again_when_the_file_changes(tmp_path: Path) -> None:
    seen = registry.Revocations(tmp_path)
    assert dict(seen) == {} and "dev-a" not in seen
    registry.revoke(tmp_path, "dev-a", now=100.0)
    assert seen["dev-a"] == 100.0
    registry.revoke(tmp_path, "dev-b", now=200.0)
    assert dict(seen) == {"dev-a": 100.0, "dev-b": 200.0}
    assert registry.restore(tmp_path, "dev-a") and not registry.restore(tmp_path, "dev-a")
    assert dict(seen) == {"dev-b": 200.0}
    with pytest.raises(ValueError):
        registry.revoke(tmp_path, "not a replica id")


def test_a_damaged_revocation_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / registry.REVOKED_FILE).write_text(json.dumps(["dev-a"]))
    with pytest.raises(DataDirError, match="restore it from a backup"):
        dict(registry.Revocations(tmp_path))


def sync(data: Path, url: str, credential: Path | None = None) -> subprocess.CompletedProcess[str]:
    command = [*CLI, "sync", "--data", str(data), "--relay", url]
    if credential is not None:
        command += ["--credential", str(credential)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_a_revoked_device_is_refused_at_its_next_handshake_while_the_relay_runs(tmp_path: Path) -> None:
    device = tmp_path / "tablet-7"
    subprocess.run([*CLI, "init", "--data", str(device), "--replica-id", "tablet-7"], check=False, timeout=60)
    with RelayProcess(tmp_path / "relay") as relay:
        token = tmp_path / "tablet-7.cred"
        token.write_text(relay.issue("tablet-7", ["campaign-7/*"]) + "\n")
        first = sync(device, relay.url, token)
        assert first.returncode == 0, first.stdout + first.stderr
        revoke = [*CLI, "relay", "revoke", "--data", str(relay.data), "--replica-id", "tablet-7"]
        done = subprocess.run(revoke, capture_output=True, text=True, timeout=60, check=False)  # while the relay runs
        assert done.returncode == 0 and "tablet-7: every credential issued until" in done.stdout, done.stderr
        listed = subprocess.run(
            [*CLI, "relay", "issued", "--data", str(relay.data)], capture_output=True, text=True, timeout=60
        )
        assert "tablet-7: campaign-7/*" in listed.stdout and "(revoked)" in listed.stdout, listed.stdout
        refused = sync(device, relay.url)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "[credential_revoked]" in refused.stdout and "revoked" in refused.stdout, refused.stdout
        renewed = tmp_path / "renewed.cred"
        renewed.write_text(relay.issue("tablet-7", ["campaign-7/*"]) + "\n")  # issued after the revocation
        again = sync(device, relay.url, renewed)
        assert again.returncode == 0, again.stdout + again.stderr
    assert [entry["replica_id"] for entry in registry.issued(tmp_path / "relay")] == ["tablet-7", "tablet-7"]
