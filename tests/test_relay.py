"""The relay (``replica.relay``) and its admission of devices (``replica.trust.RelayAuthority``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from replica import Replica, SyncState, wire
from replica.credentials import CredentialError, DeviceKey, SigningKey, new_challenge, verify_proof
from replica.errors import ReplicaError
from replica.relay import Relay
from replica.trust import RelayAuthority, pinned_relay_key

RELAY_ID = "relay-1"
NOW = 1_700_000_000.0
HOUR = 3600.0


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.generate()


def issue(
    key: SigningKey,
    replica_id: str = "dev-a",
    documents: Sequence[str] = ("c7/*",),
    *,
    expires_at: float = NOW + HOUR,
    device_key: bytes | None = None,
) -> str:
    return key.issue(
        issuer=RELAY_ID,
        replica_id=replica_id,
        documents=list(documents),
        expires_at=expires_at,
        now=NOW - 60,
        device_key=device_key,
    )


def hello(
    credential: str | None,
    replica_id: str = "dev-a",
    *,
    role: str = "device",
    challenge: bytes | None = None,
    device_key: bytes | None = None,
) -> wire.Hello:
    return wire.Hello(replica_id, role, credential, {}, challenge=challenge, device_key=device_key)


def refusal(authority: RelayAuthority, frame: wire.Hello, now: float = NOW) -> ReplicaError:
    with pytest.raises(ReplicaError) as caught:
        authority.authorize(frame, now)
    assert not caught.value.retryable  # the same hello is refused again: retrying cannot help
    return caught.value


# -- admission ---------------------------------------------------------------


def test_a_valid_credential_is_admitted_for_its_documents(key: SigningKey) -> None:
    authority = RelayAuthority(RELAY_ID, key)
    grant = authority.authorize(hello(issue(key, documents=["c7/*", "shared/forms"])), NOW)
    assert grant.replica_id == "dev-a"
    assert grant.allows("c7/households") and grant.allows("c7/a/b") and grant.allows("shared/forms")
    assert not grant.allows("c8/households") and not grant.allows("shared/other")
    assert grant.relay_key == key.public_key().raw
    assert grant.credential is None  # no device key to bind to
    assert grant.proof is None and grant.verify_proof is None


def test_the_relay_proves_it_holds_its_key(key: SigningKey) -> None:
    challenge = new_challenge()
    grant = RelayAuthority(RELAY_ID, key).authorize(hello(issue(key), challenge=challenge), NOW)
    assert grant.proof is not None
    key.public_key().verify_answer(challenge, grant.proof, who="the relay")
    with pytest.raises(CredentialError) as caught:
        SigningKey.generate().public_key().verify_answer(challenge, grant.proof, who="the relay")
    assert caught.value.code == "proof_invalid"


def test_the_credential_is_bound_to_the_device_key(key: SigningKey) -> None:
    device = DeviceKey.generate()
    token = issue(key, documents=["c7/*"], expires_at=NOW + 2 * HOUR)
    grant = RelayAuthority(RELAY_ID, key).authorize(hello(token, device_key=device.public_raw), NOW)
    assert grant.credential is not None and grant.credential != token
    bound = key.public_key().verify(grant.credential)
    original = key.public_key().verify(token)
    assert bound.device_key == device.public_raw
    assert (bound.replica_id, bound.documents, bound.expires_at) == ("dev-a", ("c7/*",), NOW + 2 * HOUR)
    assert (bound.replica_id, bound.documents, bound.expires_at) == (
        original.replica_id,
        original.documents,
        original.expires_at,
    )
    assert bound.issuer == RELAY_ID
    challenge = new_challenge()
    verify_proof(bound, challenge, device.sign(challenge))  # the device can prove it holds it
    with pytest.raises(CredentialError):
        verify_proof(bound, challenge, DeviceKey.generate().sign(challenge))


def test_a_credential_already_bound_to_this_device_is_handed_back(key: SigningKey) -> None:
    device = DeviceKey.generate()
    token = issue(key, device_key=device.public_raw)
    grant = RelayAuthority(RELAY_ID, key).authorize(hello(token, device_key=device.public_raw), NOW)
    assert grant.credential == token


def test_an_expired_credential_is_refused(key: SigningKey) -> None:
    authority = RelayAuthority(RELAY_ID, key)
    token = issue(key, expires_at=NOW + 10)
    authority.authorize(hello(token), NOW + 9.999)
    error = refusal(authority, hello(token), NOW + 10)
    assert isinstance(error, CredentialError) and error.code == "credential_expired"
    assert refusal(authority, hello(token), NOW + HOUR).code == "credential_expired"


def test_a_credential_of_another_replica_is_refused(key: SigningKey) -> None:
    error = refusal(RelayAuthority(RELAY_ID, key), hello(issue(key, "dev-b"), "dev-a"))
    assert isinstance(error, CredentialError) and error.code == "credential_wrong_replica"


def test_no_credential_is_refused(key: SigningKey) -> None:
    error = refusal(RelayAuthority(RELAY_ID, key), hello(None))
    assert isinstance(error, CredentialError) and error.code == "credential_missing"


def test_a_revoked_replica_is_refused(key: SigningKey) -> None:
    authority = RelayAuthority(RELAY_ID, key, revoked={"dev-a": NOW})
    error = refusal(authority, hello(issue(key)))
    assert isinstance(error, CredentialError) and error.code == "credential_revoked"
    assert authority.authorize(hello(issue(key, "dev-b"), "dev-b"), NOW).replica_id == "dev-b"


def test_a_relay_serves_devices_only(key: SigningKey) -> None:
    authority = RelayAuthority(RELAY_ID, key)
    for role in ("peer", "relay"):
        error = refusal(authority, hello(issue(key), role=role))
        assert error.code == "unexpected_role"


def test_a_device_using_the_relay_id_is_refused(key: SigningKey) -> None:
    error = refusal(RelayAuthority(RELAY_ID, key), hello(issue(key, RELAY_ID), RELAY_ID))
    assert error.code == "replica_id_clash"


def test_a_credential_bound_to_another_device_is_refused(key: SigningKey) -> None:
    token = issue(key, device_key=DeviceKey.generate().public_raw)
    error = refusal(RelayAuthority(RELAY_ID, key), hello(token, device_key=DeviceKey.generate().public_raw))
    assert isinstance(error, CredentialError) and error.code == "credential_invalid"


def test_a_credential_signed_by_another_relay_is_refused(key: SigningKey) -> None:
    error = refusal(RelayAuthority(RELAY_ID, key), hello(issue(SigningKey.generate())))
    assert isinstance(error, CredentialError) and error.code == "credential_invalid"


def test_an_altered_credential_is_refused(key: SigningKey) -> None:
    token = issue(key)
    version, key_id, payload, signature = token.split(".")
    forged = issue(key, documents=["*"]).split(".")[2]  # a wider payload under the old signature
    error = refusal(RelayAuthority(RELAY_ID, key), hello(f"{version}.{key_id}.{forged}.{signature}"))
    assert error.code == "credential_invalid"
    assert payload != forged


# -- the relay server --------------------------------------------------------


def test_a_device_syncs_with_a_running_relay(tmp_path: Path) -> None:
    async def main() -> None:
        async with Relay(tmp_path, port=0) as relay:
            token = relay.issue_credential("dev-a", ["c7/*"], expires_at=time.time() + HOUR)
            with Replica.in_memory(replica_id="dev-a") as replica:
                replica.doc("c7/h").records("hh").put("h1", {"n": 1})
                assert replica.status().unsynced == 1
                status = await replica.sync(relay.url, credential=token)
                assert status.state is SyncState.SYNCED and status.error is None
                assert replica.status().unsynced == 0
                assert replica.status().state is SyncState.SYNCED
                assert relay.replica is not None
                assert relay.replica.version_vector("c7/h") == {"dev-a": 1}
                assert relay.replica.doc("c7/h").records("hh").get("h1") == {"n": 1}
                assert pinned_relay_key(replica) == relay.public_key

    asyncio.run(asyncio.wait_for(main(), 30))


def test_a_relay_refuses_a_credential_it_did_not_sign(tmp_path: Path) -> None:
    async def main() -> None:
        async with Relay(tmp_path, port=0) as relay:
            token = SigningKey.generate().issue(
                issuer=relay.replica_id,
                replica_id="dev-a",
                documents=["*"],
                expires_at=time.time() + HOUR,
                now=time.time(),
            )
            with Replica.in_memory(replica_id="dev-a") as replica:
                replica.doc("c7/h").records("hh").put("h1", {"n": 1})
                status = await replica.sync(relay.url, credential=token)
                assert status.state is SyncState.FAILED
                assert status.error is not None
                assert status.error.code == "credential_invalid" and not status.error.retryable
                assert replica.status().unsynced == 1
                assert relay.replica is not None and relay.replica.documents() == []

    asyncio.run(asyncio.wait_for(main(), 30))
