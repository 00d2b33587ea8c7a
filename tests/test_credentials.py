from __future__ import annotations

import base64
import math
import os
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from replica.credentials import (
    CODES,
    MAX_TOKEN_CHARS,
    Credential,
    CredentialError,
    DeviceKey,
    KeyFileError,
    PublicKey,
    SigningKey,
    _create_exclusive,
    new_challenge,
    parse_expiry,
    verify_proof,
)
from replica.errors import ReplicaError

NOW = 1_800_000_000.0  # 2027-01-15 08:00 UTC
DAY = 86400.0
RELAY = SigningKey.generate()
OTHER_RELAY = SigningKey.generate()
DEVICE = DeviceKey.generate()


def issue(**overrides: Any) -> str:
    args: dict[str, Any] = dict(
        issuer="relay-1",
        replica_id="tablet-7",
        documents=["campaign-7/*", "shared"],
        expires_at=NOW + 30 * DAY,
        now=NOW,
    )
    args.update(overrides)
    return RELAY.issue(**args)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def assert_invalid(key: PublicKey, token: object) -> CredentialError:
    with pytest.raises(CredentialError) as caught:
        key.verify(token)
    assert caught.value.code == "credential_invalid"
    assert caught.value.retryable is False
    return caught.value


# -- round trip ---------------------------------------------------------------------------------------------------


def test_issue_then_verify_round_trips() -> None:
    token = issue()
    credential = RELAY.public_key().verify(token)
    assert credential == Credential(
        replica_id="tablet-7",
        documents=("campaign-7/*", "shared"),
        expires_at=NOW + 30 * DAY,
        issued_at=NOW,
        issuer="relay-1",
        key_id=RELAY.public_key().key_id,
        device_key=None,
        token=token,
    )
    credential.check(replica_id="tablet-7", now=NOW + 29 * DAY)


def test_token_format_is_versioned_and_printable() -> None:
    token = issue(device_key=DEVICE.public_raw)
    version, key_id, payload, signature = token.split(".")
    assert version == "rc1"
    assert key_id == RELAY.public_key().key_id and len(key_id) == 16
    assert len(unb64(signature)) == 64
    fields = msgpack.unpackb(unb64(payload))
    assert set(fields) == {"r", "d", "e", "i", "s", "p"}
    assert token.isascii() and token.isprintable() and " " not in token
    assert len(token) < 300
    assert "rc1." not in repr(RELAY.public_key().verify(token))  # the bearer token stays out of logs


def test_device_key_round_trips() -> None:
    credential = RELAY.public_key().verify(issue(device_key=DEVICE.public_raw))
    assert credential.device_key == DEVICE.public_raw


def test_integer_times_are_accepted() -> None:
    credential = RELAY.public_key().verify(issue(now=int(NOW), expires_at=int(NOW) + 60))
    assert credential.expires_at == NOW + 60 and isinstance(credential.expires_at, float)


# -- scope, expiry, replica ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("patterns", "document", "allowed"),
    [
        (["campaign-7/*"], "campaign-7/households", True),
        (["campaign-7/*"], "campaign-7/a/b", True),  # fnmatch: '*' crosses '/'
        (["campaign-7/*"], "campaign-7", False),
        (["campaign-7/*"], "campaign-70/x", False),
        (["campaign-7/*"], "Campaign-7/x", False),  # case-sensitive everywhere
        (["*"], "anything/at/all", True),
        (["shared"], "shared", True),
        (["shared"], "shared/x", False),
        (["a", "b/?"], "b/1", True),
        (["a", "b/?"], "b/12", False),
        (["site-[0-9]"], "site-4", True),
    ],
)
def test_allows_matches_patterns(patterns: list[str], document: str, allowed: bool) -> None:
    credential = RELAY.public_key().verify(issue(documents=patterns))
    assert credential.allows(document) is allowed
    if allowed:
        credential.check_document(document)
    else:
        with pytest.raises(CredentialError) as caught:
            credential.check_document(document)
        assert caught.value.code == "document_out_of_scope"
        assert repr(document) in caught.value.message


def test_expired_credential_names_the_date() -> None:
    expires = datetime(2027, 12, 1, 12, 0, tzinfo=UTC).timestamp()
    credential = RELAY.public_key().verify(issue(expires_at=expires))
    credential.check(replica_id="tablet-7", now=expires - 1)
    for now in (expires, expires + 1, expires + 400 * DAY):
        with pytest.raises(CredentialError) as caught:
            credential.check(replica_id="tablet-7", now=now)
        assert caught.value.code == "credential_expired"
        assert "2027-12-01 12:00 UTC" in caught.value.message
        assert "new one" in caught.value.message


def test_wrong_replica() -> None:
    credential = RELAY.public_key().verify(issue())
    with pytest.raises(CredentialError) as caught:
        credential.check(replica_id="tablet-8", now=NOW)
    assert caught.value.code == "credential_wrong_replica"
    assert "'tablet-7'" in caught.value.message and "'tablet-8'" in caught.value.message


def test_error_shape() -> None:
    error = CredentialError("x", code="credential_missing")
    assert isinstance(error, ReplicaError) and not isinstance(error, ValueError)
    assert error.info().code == "credential_missing" and not error.info().retryable
    assert {
        "credential_missing",
        "credential_invalid",
        "credential_expired",
        "credential_wrong_replica",
        "credential_revoked",
        "document_out_of_scope",
        "proof_invalid",
    } == CODES
    with pytest.raises(ValueError, match="unknown credential error code"):
        CredentialError("x", code="nope")


# -- tampering and foreign keys -----------------------------------------------------------------------------------


def test_every_single_character_change_is_refused() -> None:
    token = issue(device_key=DEVICE.public_raw)
    key = RELAY.public_key()
    for i, c in enumerate(token):
        for replacement in {"A" if c != "A" else "B", "." if c != "." else "x", "-" if c != "-" else "_"}:
            assert_invalid(key, token[:i] + replacement + token[i + 1 :])


@pytest.mark.parametrize("region", [1, 2, 3])  # key id, payload, signature
def test_every_byte_flip_is_refused(region: int) -> None:
    token = issue(device_key=DEVICE.public_raw)
    parts = token.split(".")
    key = RELAY.public_key()
    raw = parts[region].encode() if region == 1 else unb64(parts[region])
    for i in range(len(raw)):
        for mask in (0x01, 0x80):
            flipped = bytearray(raw)
            flipped[i] ^= mask
            text = flipped.decode("latin-1") if region == 1 else b64(bytes(flipped))
            assert_invalid(key, ".".join([*parts[:region], text, *parts[region + 1 :]]))


def test_truncated_extended_and_reassembled_tokens_are_refused() -> None:
    token, other = issue(), issue(replica_id="tablet-8")
    key = RELAY.public_key()
    for cut in range(len(token)):
        assert_invalid(key, token[:cut])
    assert_invalid(key, token + "A")
    assert_invalid(key, token + ".")
    assert_invalid(key, " " + token)
    a, b = token.split("."), other.split(".")
    assert_invalid(key, ".".join([*a[:3], b[3]]))  # payload of one, signature of the other
    assert_invalid(key, token.replace("rc1.", "rc2.", 1))


def test_non_canonical_base64_signature_is_refused() -> None:
    token = issue()
    head, _, signature = token.rpartition(".")
    last = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".index(signature[-1])
    assert last % 16 == 0  # 64 bytes end on 4 spare bits: other values decode to the same bytes
    tweaked = signature[:-1] + "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"[last + 1]
    assert unb64(tweaked) == unb64(signature)
    assert_invalid(RELAY.public_key(), f"{head}.{tweaked}")


def test_token_from_another_relay_is_refused_with_both_key_ids() -> None:
    token = OTHER_RELAY.issue(issuer="relay-2", replica_id="tablet-7", documents=["*"], expires_at=NOW + DAY, now=NOW)
    error = assert_invalid(RELAY.public_key(), token)
    assert OTHER_RELAY.public_key().key_id in error.message and RELAY.public_key().key_id in error.message
    # Claiming the trusted key id does not help: the signature is still the other relay's.
    forged = token.replace(OTHER_RELAY.public_key().key_id, RELAY.public_key().key_id, 1)
    assert "signature" in assert_invalid(RELAY.public_key(), forged).message


def test_newer_version_says_to_update() -> None:
    assert "update this app" in assert_invalid(RELAY.public_key(), "rc2.x.y.z").message


# -- garbage ------------------------------------------------------------------------------------------------------

junk = st.one_of(
    st.text(),
    st.binary(),
    st.none(),
    st.integers(),
    st.floats(),
    st.booleans(),
    st.lists(st.text(max_size=5)),
    st.dictionaries(st.text(max_size=3), st.integers()),
    st.builds(lambda parts: ".".join(parts), st.lists(st.text(max_size=20), min_size=1, max_size=6)),
    st.builds(lambda parts: "rc1." + ".".join(parts), st.lists(st.text("AZaz09-_", max_size=60), max_size=4)),
)


@given(junk)
def test_garbage_raises_credential_invalid_only(value: object) -> None:
    assert_invalid(RELAY.public_key(), value)


@given(st.data())
def test_random_mutations_of_a_valid_token_are_refused(data: st.DataObject) -> None:
    original = issue(device_key=DEVICE.public_raw)
    token = list(original)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(token) - 1))
        action = data.draw(st.sampled_from(["replace", "insert", "delete", "swap"]))
        char = data.draw(st.characters(codec="utf-8") | st.sampled_from("Aa0-_."))
        if action == "replace":
            token[i] = char
        elif action == "insert":
            token.insert(i, char)
        elif action == "delete":
            del token[i]
        else:
            j = data.draw(st.integers(0, len(token) - 1))
            token[i], token[j] = token[j], token[i]
    mutated = "".join(token)
    if mutated != original:  # swaps of equal characters cancel out
        assert_invalid(RELAY.public_key(), mutated)


def test_oversized_token_is_refused_before_any_work() -> None:
    error = assert_invalid(RELAY.public_key(), "rc1." + "A" * (MAX_TOKEN_CHARS * 100))
    assert str(MAX_TOKEN_CHARS) in error.message


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=10) | st.binary(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from("rdeisp") | st.text(max_size=2), inner),
    max_leaves=12,
)


@given(st.binary(max_size=300))
def test_signed_garbage_payloads_raise_credential_invalid_only(payload: bytes) -> None:
    assert_invalid(RELAY.public_key(), RELAY._seal(payload))


@given(msgpack_values)
def test_signed_well_encoded_payloads_are_type_checked(value: object) -> None:
    token = RELAY._seal(msgpack.packb(value, use_bin_type=True))
    try:
        credential = RELAY.public_key().verify(token)
    except CredentialError as error:
        assert error.code == "credential_invalid"
        return
    assert isinstance(credential.replica_id, str) and isinstance(credential.documents, tuple)


GOOD: dict[str, Any] = {"r": "tablet-7", "d": ["*"], "e": NOW + DAY, "i": NOW, "s": "relay-1"}


@pytest.mark.parametrize(
    "change",
    [
        {"r": None},
        {"r": "bad id"},
        {"r": b"tablet-7"},
        {"s": ""},
        {"d": []},
        {"d": "campaign-7/*"},
        {"d": ["a b"]},
        {"d": [""]},
        {"d": [7]},
        {"d": ["x\n"]},
        {"e": True},
        {"e": math.nan},
        {"e": math.inf},
        {"e": -1},
        {"e": "2027-01-01"},
        {"i": NOW + 2 * DAY},  # issued after it expires
        {"p": b"\x01" * 31},
        {"p": None},
        {"p": "x" * 32},
        {"x": 1},  # unknown field: refused, never ignored
        {"v": 2},
    ],
)
def test_signed_but_ill_typed_fields_are_refused(change: dict[str, Any]) -> None:
    RELAY.public_key().verify(RELAY._seal(msgpack.packb(GOOD, use_bin_type=True)))  # the baseline is fine
    assert_invalid(RELAY.public_key(), RELAY._seal(msgpack.packb(GOOD | change, use_bin_type=True)))


@pytest.mark.parametrize("field", sorted(GOOD))
def test_signed_but_missing_fields_are_refused(field: str) -> None:
    fields = {k: v for k, v in GOOD.items() if k != field}
    assert_invalid(RELAY.public_key(), RELAY._seal(msgpack.packb(fields, use_bin_type=True)))


def test_signed_non_map_and_trailing_bytes_are_refused() -> None:
    good = msgpack.packb(GOOD, use_bin_type=True)
    for payload in (good + b"\x00", msgpack.packb([GOOD]), b"", b"\xc1", b"\x91" * 5000):
        assert_invalid(RELAY.public_key(), RELAY._seal(payload))


# -- issuing ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {"replica_id": "bad id"},
        {"replica_id": ""},
        {"issuer": "-relay"},
        {"documents": []},
        {"documents": "campaign-7/*"},  # a str, not a list of patterns
        {"documents": ["ok", "has space"]},
        {"documents": [""]},
        {"documents": [None]},
        {"documents": ["x" * 256]},
        {"documents": ["p" + str(i) + "x" * 200 for i in range(60)]},  # token would exceed the cap
        {"expires_at": NOW},
        {"expires_at": NOW - 1},
        {"expires_at": math.nan},
        {"expires_at": math.inf},
        {"now": -1.0},
        {"device_key": b"\x00" * 31},
        {"device_key": "a" * 32},
    ],
)
def test_issue_refuses_bad_arguments(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        issue(**overrides)


# -- proofs of possession -----------------------------------------------------------------------------------------


def test_proof_of_possession() -> None:
    credential = RELAY.public_key().verify(issue(device_key=DEVICE.public_raw))
    challenge = new_challenge()
    assert len(challenge) == 32 and challenge != new_challenge()
    verify_proof(credential, challenge, DEVICE.sign(challenge))


def test_proof_by_another_device_is_refused() -> None:
    credential = RELAY.public_key().verify(issue(device_key=DEVICE.public_raw))
    challenge = new_challenge()
    with pytest.raises(CredentialError) as caught:
        verify_proof(credential, challenge, DeviceKey.generate().sign(challenge))
    assert caught.value.code == "proof_invalid" and "copied" in caught.value.message


@pytest.mark.parametrize(
    "signature",
    [b"", b"\x00" * 64, b"\x00" * 63, "not bytes", None, DEVICE.sign(b"another challenge")],
)
def test_bad_proofs_are_refused(signature: Any) -> None:
    credential = RELAY.public_key().verify(issue(device_key=DEVICE.public_raw))
    with pytest.raises(CredentialError) as caught:
        verify_proof(credential, b"the challenge", signature)
    assert caught.value.code == "proof_invalid"


def test_proof_for_credential_without_device_key_is_refused() -> None:
    credential = RELAY.public_key().verify(issue())
    challenge = new_challenge()
    with pytest.raises(CredentialError) as caught:
        verify_proof(credential, challenge, DEVICE.sign(challenge))
    assert caught.value.code == "proof_invalid" and "not bound" in caught.value.message


def test_a_relay_signature_is_not_a_device_proof() -> None:
    # The relay's key signs "rc1..." text, the device's signs a domain-separated challenge: never interchangeable.
    token = issue(device_key=RELAY.public_key().raw)
    credential = RELAY.public_key().verify(token)
    head, _, signature = token.rpartition(".")
    with pytest.raises(CredentialError):
        verify_proof(credential, head.encode(), unb64(signature))


# -- key files ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [SigningKey, DeviceKey])
def test_load_or_create_creates_once_with_owner_only_mode(tmp_path: Path, cls: type[SigningKey | DeviceKey]) -> None:
    path = tmp_path / "keys" / "relay.key"
    path.parent.mkdir()
    first = cls.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    content = path.read_bytes()
    assert content.startswith(b"-----BEGIN PRIVATE KEY-----")
    again = cls.load_or_create(path)
    assert again.public_key() == first.public_key()
    assert path.read_bytes() == content
    assert os.listdir(path.parent) == ["relay.key"]  # no temporary file left behind


def test_loaded_relay_key_verifies_tokens_of_the_original(tmp_path: Path) -> None:
    relay = SigningKey.load_or_create(tmp_path / "relay.key")
    token = relay.issue(issuer="relay-1", replica_id="tablet-7", documents=["*"], expires_at=NOW + DAY, now=NOW)
    assert SigningKey.load_or_create(tmp_path / "relay.key").public_key().verify(token).replica_id == "tablet-7"


def test_loaded_device_key_proves_possession(tmp_path: Path) -> None:
    device = DeviceKey.load_or_create(tmp_path / "device.key")
    credential = RELAY.public_key().verify(issue(device_key=device.public_raw))
    challenge = new_challenge()
    verify_proof(credential, challenge, DeviceKey.load_or_create(tmp_path / "device.key").sign(challenge))


def test_a_key_made_concurrently_by_another_process_is_never_replaced(tmp_path: Path) -> None:
    path = tmp_path / "relay.key"
    path.write_bytes(b"the other process's key")
    assert _create_exclusive(path, b"ours") is False
    assert path.read_bytes() == b"the other process's key"
    assert os.listdir(tmp_path) == ["relay.key"]


def test_loading_a_key_readable_by_others_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "device.key"
    key = DeviceKey.load_or_create(path)
    path.chmod(0o644)
    assert DeviceKey.load_or_create(path).public_key() == key.public_key()
    assert "chmod 600" in caplog.text


@pytest.mark.parametrize(
    "content", [b"", b"garbage", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"]
)
def test_corrupt_key_file_is_reported_not_replaced(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "relay.key"
    path.write_bytes(content)
    with pytest.raises(KeyFileError) as caught:
        SigningKey.load_or_create(path)
    assert str(path) in caught.value.message and "stops working" in caught.value.message
    assert path.read_bytes() == content


# -- public key text ----------------------------------------------------------------------------------------------


def test_public_key_text_round_trips() -> None:
    key = RELAY.public_key()
    text = key.to_text()
    assert text.startswith("ed25519:") and text.isprintable() and len(text) == 8 + 43
    assert PublicKey.from_text(text) == key
    assert PublicKey.from_text(f"  {text}\n") == key
    assert PublicKey.from_text(text).verify(issue()).replica_id == "tablet-7"


@pytest.mark.parametrize(
    "text", ["", "ed25519:", "ed25519:abc", "rsa:" + "A" * 43, "ed25519:" + "A" * 42, "ed25519:" + "A" * 44, "A" * 51]
)
def test_public_key_from_bad_text(text: str) -> None:
    with pytest.raises(ValueError, match="not a public key"):
        PublicKey.from_text(text)


# -- parse_expiry -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30d", NOW + 30 * DAY),
        ("12h", NOW + 12 * 3600),
        ("90m", NOW + 90 * 60),
        ("3600s", NOW + 3600),
        ("2w", NOW + 14 * DAY),
        (" 7D ", NOW + 7 * DAY),
        ("2027-12-01", datetime(2027, 12, 1, tzinfo=UTC).timestamp()),
        ("2027-12-01T12:00", datetime(2027, 12, 1, 12, tzinfo=UTC).timestamp()),
        ("2027-12-01 12:00:30Z", datetime(2027, 12, 1, 12, 0, 30, tzinfo=UTC).timestamp()),
        ("2027-12-01T14:00+02:00", datetime(2027, 12, 1, 12, tzinfo=UTC).timestamp()),
    ],
)
def test_parse_expiry(text: str, expected: float) -> None:
    assert parse_expiry(text, now=NOW) == expected


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("", "not understood"),
        ("soon", "not understood"),
        ("30x", "not understood"),
        ("-5d", "not understood"),
        ("1.5d", "not understood"),
        ("d", "not understood"),
        ("0d", "not in the future"),
        ("2020-01-01", "not in the future"),
        ("999999999999w", "after the year 9999"),
    ],
)
def test_parse_expiry_refuses(text: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint) as caught:
        parse_expiry(text, now=NOW)
    assert "30d" in str(caught.value)  # every refusal shows an example that works
