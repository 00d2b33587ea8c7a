"""A new credential replaces the old one: the device presents the newest
credential it was given, the relay binds it to the device's key, peers see
the newest bound one, and what the relay refused under the old one is
offered again (issue 11's first bug: a device stuck with its first bound
credential for good).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from relay_process import CLI, RelayProcess
from replica import Replica
from replica.cli import main
from replica.credentials import CredentialError, SigningKey
from replica.errors import ReplicaError
from replica.names import RELAY
from replica.testing import Fleet, LmdbBackend
from replica.testing.network import EXPIRY_STEP, LIFETIME
from replica.trust import BOUND_CREDENTIAL, GIVEN_CREDENTIAL, DeviceTrust, give_credential, pin_relay_key

RELAY_ID = "relay-1"
NOW = 1_700_000_000.0


def credential(key: SigningKey, documents: list[str], expires_at: float, device_key: bytes | None = None) -> str:
    return key.issue(
        issuer=RELAY_ID, replica_id="dev-a", documents=documents, expires_at=expires_at, now=NOW, device_key=device_key
    )


# -- which credential a device presents ---------------------------------------


def test_the_device_presents_the_newest_credential_to_its_relay() -> None:
    key = SigningKey.generate()
    with Replica.in_memory(replica_id="dev-a") as device:
        trust = DeviceTrust(device)
        pin_relay_key(device, key.public_key())
        first = credential(key, ["c7/*"], NOW + 3600)
        give_credential(device, first)
        assert trust.for_relay() == first  # nothing bound yet
        bound = credential(key, ["c7/*"], NOW + 3600, device_key=trust.key.public_raw)
        device.set_setting(BOUND_CREDENTIAL, bound)  # what the relay answered
        assert trust.for_relay() == bound  # the same rights, bound: shown to the relay and to peers
        assert trust.credential == bound
        renewed = credential(key, ["c7/*"], NOW + 7200)
        give_credential(device, renewed)
        assert trust.for_relay() == renewed  # the relay will bind the new one
        assert trust.credential == bound  # peers see the newest *bound* credential until then
        assert DeviceTrust(device, renewed).for_relay() == renewed


def test_a_twin_issued_after_the_binding_is_presented_as_given() -> None:
    """Re-issued with the same rights (after a revocation, say): the new one is newer than the bound one."""
    key = SigningKey.generate()
    with Replica.in_memory(replica_id="dev-a") as device:
        trust = DeviceTrust(device)
        pin_relay_key(device, key.public_key())
        device.set_setting(BOUND_CREDENTIAL, credential(key, ["c7/*"], NOW + 3600, trust.key.public_raw))
        twin = key.issue(issuer=RELAY_ID, replica_id="dev-a", documents=["c7/*"], expires_at=NOW + 3600, now=NOW + 60)
        give_credential(device, twin)
        assert trust.for_relay() == twin


def test_a_credential_from_a_new_relay_key_is_presented_as_given() -> None:
    old, new = SigningKey.generate(), SigningKey.generate()
    with Replica.in_memory(replica_id="dev-a") as device:
        trust = DeviceTrust(device)
        pin_relay_key(device, old.public_key())
        device.set_setting(BOUND_CREDENTIAL, credential(old, ["c7/*"], NOW + 3600, trust.key.public_raw))
        pin_relay_key(device, new.public_key(), replace=True)  # `replica peer trust --replace`
        fresh = credential(new, ["c7/*"], NOW + 3600)
        give_credential(device, fresh)
        assert trust.for_relay() == fresh


def test_a_new_credential_forgets_the_refusals_made_under_the_old_one() -> None:
    with Fleet(1, scope=("c7/*",)) as fleet:
        fleet.edit("dev-0", "c8/households", lambda d: d.records("hh").put("h1", {"n": 1}))
        device = fleet.replica("dev-0")
        give_credential(device, fleet.credentials["dev-0"])  # what Replica.sync(credential=...) does
        assert fleet.sync("dev-0").completed
        assert device.status().rejected == 1 and device.rejections(RELAY)
        give_credential(device, fleet.credentials["dev-0"])  # the same one again: nothing changes
        assert device.rejections(RELAY)
        give_credential(
            device,
            fleet.relay_key.issue(
                issuer=RELAY_ID, replica_id="dev-0", documents=["c7/*", "c8/*"], expires_at=LIFETIME, now=0.0
            ),
        )
        assert device.rejections(RELAY) == [] and device.status().rejected == 0 and device.status().unsynced == 1
        assert device.setting(GIVEN_CREDENTIAL) is not None


# -- renewal in the fleet: expiry by the relay's clock, then a new credential --


def test_a_device_whose_credential_expired_syncs_again_with_a_renewed_one() -> None:
    with Fleet(2) as fleet:
        for name in ("dev-0", "dev-1"):
            assert fleet.sync(name).completed
        fleet.set_skew("relay-1", LIFETIME + EXPIRY_STEP / 2)  # dev-0's credential has expired for the relay
        session = fleet.sync("dev-0")
        assert session.error is not None and session.error.code == "credential_expired"
        fleet.renew("dev-0")
        assert fleet.sync("dev-0").completed  # presented the new one; the relay bound it
        bound = fleet.replica("dev-0").setting(BOUND_CREDENTIAL)
        assert bound is not None and fleet.relay_key.public_key().verify(bound).expires_at == fleet.expires["dev-0"]
        fleet.set_skew("dev-1", LIFETIME + EXPIRY_STEP / 2)  # dev-1 checks dev-0 offline: the new bound one is valid
        assert fleet.sync("dev-1", "dev-0").completed
        assert not fleet.ledger.violations, fleet.ledger.violations


# -- the CLI, against a real relay process ------------------------------------


def sync(data: Path, url: str, credential_file: Path) -> subprocess.CompletedProcess[str]:
    command = [*CLI, "sync", "--data", str(data), "--replica-id", "tablet-7", "--relay", url]
    return subprocess.run(
        [*command, "--credential", str(credential_file)], capture_output=True, text=True, timeout=60, check=False
    )


def test_a_corrected_credential_replaces_one_with_a_wrong_scope(tmp_path: Path) -> None:
    device = tmp_path / "tablet-7"
    with Replica.open(device, replica_id="tablet-7") as replica:
        replica.doc("campaign-8/households").records("hh").put("h1", {"head": "Amina"})
    with RelayProcess(tmp_path / "relay") as relay:
        wrong = tmp_path / "wrong.cred"
        wrong.write_text(relay.issue("tablet-7", ["campaign-7/*"]) + "\n")  # a typo: 7 for 8
        first = sync(device, relay.url, wrong)
        assert first.returncode == 2, first.stdout + first.stderr  # retrying cannot help: it needs an operator
        assert first.stdout.startswith("Sync Failed: the relay refused 1 change to campaign-8/households"), first.stdout
        assert "[changes_refused]" in first.stdout and "Data Synced" not in first.stdout, first.stdout
        assert "Refused by the relay: 1 changes to campaign-8/households" in first.stdout, first.stdout
        right = tmp_path / "right.cred"
        right.write_text(relay.issue("tablet-7", ["campaign-8/*"]) + "\n")
        second = sync(device, relay.url, right)
        assert second.returncode == 0, second.stdout + second.stderr
        assert "Data Synced" in second.stdout and "Refused" not in second.stdout, second.stdout
    with Replica.open(device) as replica:
        status = replica.status()
        assert (status.unsynced, status.rejected) == (0, 0)
        assert replica.watermark(RELAY, "campaign-8/households") == {"tablet-7": 1}


# -- messages and introspection -----------------------------------------------


def test_a_changed_relay_key_is_told_from_the_devices_side(tmp_path: Path) -> None:
    old, new = SigningKey.generate(), SigningKey.generate()
    with Replica.open(tmp_path / "dev", replica_id="dev-a") as device:
        pin_relay_key(device, old.public_key())
        try:
            pin_relay_key(device, new.public_key())
        except ReplicaError as exc:
            error = exc
        else:
            raise AssertionError("a different relay key was pinned without --replace")
    assert error.code == "relay_key_changed" and not error.retryable
    assert f"the relay's key changed (was {old.public_key().key_id}, now {new.public_key().key_id})" in error.message
    assert f"--data {tmp_path / 'dev'} --relay-key {new.public_key().to_text()} --replace" in error.message
    assert "this device trusts" not in error.message


def test_a_credential_signed_by_another_relay_names_both_keys_neutrally() -> None:
    mine, other = SigningKey.generate(), SigningKey.generate()
    token = credential(other, ["c7/*"], NOW + 3600)
    try:
        mine.public_key().verify(token)
    except CredentialError as exc:
        message = exc.message
    else:
        raise AssertionError("a credential of another relay was accepted")
    assert f"signed with relay key {other.public_key().key_id}" in message
    assert f"not with relay key {mine.public_key().key_id} that checks it" in message
    assert "this device trusts" not in message


def test_credential_show_tells_what_the_device_holds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with Fleet(1, backend=LmdbBackend(tmp_path)) as fleet:
        give_credential(fleet.replica("dev-0"), fleet.credentials["dev-0"])
        assert fleet.sync("dev-0").completed
        fleet.replica("dev-0").close()  # the CLI opens the data directory itself
        assert main(["credential", "show", "--data", str(tmp_path / "dev-0")]) == 0
    out = capsys.readouterr().out
    assert "Replica: dev-0" in out and f"Relay key: {fleet.relay_key.public_key().key_id}" in out
    assert out.count("replica id: dev-0") == 2 and out.count("documents: c7/*") == 2  # given, and bound
    assert "Bound to this device's key:" in out and "bound to device key: none" in out  # the given one is not
    assert f"bound to device key: {fleet.device_key('dev-0').public_key().key_id}" in out
    assert "by relay relay-1" in out and "(expired)" in out  # 1970 + 30 days: long gone by the real clock


def test_credential_show_on_a_device_that_never_synced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    Replica.open(tmp_path / "new", replica_id="tablet-1").close()
    assert main(["credential", "show", "--data", str(tmp_path / "new")]) == 0
    out = capsys.readouterr().out
    assert "Relay key: not pinned yet" in out and "Given: none" in out and "Bound to this device's key: none" in out
