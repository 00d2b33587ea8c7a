"""Who a device trusts: its relay's pinned key, its own key, its credential.

A device holds an Ed25519 key of its own (``device.key`` in its data
directory, mode 0600; a fresh one per process for in-memory replicas). When it
syncs with its relay, it sends the public half; the relay answers with a
credential *bound* to that key (same replica id, documents and expiry as the
one presented) and its own public key, which the device pins on first sight.

With those, two devices in the field authenticate each other offline:

The relay proves it holds its key too: it signs the device's challenge, and
the device checks that signature against the key it pinned (trust on first
use, unless an operator pinned the key beforehand with ``replica peer trust``).

    initiator                                   acceptor
    hello(credential, challenge_i, key)   -->   verify credential with the pinned relay key
                                          <--   welcome(credential, challenge_a, sign(challenge_i))
    verify credential and signature
    proof(sign(challenge_a))              -->   verify signature; only now exchange deltas

so a copied credential without its private key is useless, and documents are
exchanged only where both credentials allow them.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

from replica import wire
from replica.credentials import Credential, CredentialError, DeviceKey, PublicKey, new_challenge, verify_proof
from replica.errors import ReplicaError
from replica.replica import Replica
from replica.session import Grant

KEY_FILE = "device.key"
RELAY_KEY = "relay_public_key"
BOUND_CREDENTIAL = "bound_credential"

_ephemeral: weakref.WeakKeyDictionary[Replica, DeviceKey] = weakref.WeakKeyDictionary()


def device_key(replica: Replica) -> DeviceKey:
    """This device's own key pair, created on first use (kept in the data
    directory; in memory, one per replica object)."""
    if replica.path is None:
        found = _ephemeral.get(replica)
        if found is None:
            found = _ephemeral[replica] = DeviceKey.generate()
        return found
    return DeviceKey.load_or_create(replica.path / KEY_FILE)


def remember_relay_answer(replica: Replica, credential: str | None) -> None:
    """Keep the credential the relay bound to this device's key."""
    if credential is not None and credential != replica.setting(BOUND_CREDENTIAL):
        replica.set_setting(BOUND_CREDENTIAL, credential)


def pinned_relay_key(replica: Replica) -> PublicKey | None:
    """The relay public key this device trusts, if it has one yet."""
    text = replica.setting(RELAY_KEY)
    return None if text is None else PublicKey.from_text(text)


def pin_relay_key(replica: Replica, key: PublicKey, *, replace: bool = False) -> None:
    """Trust ``key`` as the relay's (from a first sync, or an operator's file).
    A different key than the pinned one is refused unless ``replace``."""
    pinned = pinned_relay_key(replica)
    if pinned is not None and pinned.raw != key.raw and not replace:
        raise ReplicaError(
            f"the relay presents key {key.key_id}, but this device trusts {pinned.key_id}; if the relay's key "
            "was really changed, pin the new one with `replica peer trust`",
            code="relay_key_changed",
        )
    replica.set_setting(RELAY_KEY, key.to_text())


class DeviceTrust:
    """The trust decisions of one device: as an initiator (the session's
    ``trust``) and as an acceptor of peers (the session's ``authorize``)."""

    def __init__(self, replica: Replica, credential: str | None = None, *, peer: bool = False) -> None:
        self.replica = replica
        self.peer = peer  # as an initiator: the other side must be a peer (never accept a "relay")
        self.key = device_key(replica)
        self.relay_key = pinned_relay_key(replica)
        self.credential = replica.setting(BOUND_CREDENTIAL) or credential
        self._challenge = new_challenge()

    # -- both roles ----------------------------------------------------------

    def _peer_credential(self, token: str | None, replica_id: str, now: float) -> Credential:
        if self.relay_key is None:
            raise CredentialError(
                f"device {self.replica.id} has no relay key to check other devices with; it must sync with "
                "the relay once first (or have its key pinned with `replica peer trust`)",
                code="credential_invalid",
            )
        if token is None:
            raise CredentialError(f"device {replica_id} presented no credential", code="credential_missing")
        credential = self.relay_key.verify(token)
        credential.check(replica_id=replica_id, now=now)
        return credential

    def _own_credential(self, now: float) -> Credential:
        if self.credential is None or self.relay_key is None:
            raise CredentialError(
                f"device {self.replica.id} has no credential for peers yet; it must sync with the relay once first",
                code="credential_missing",
            )
        own = self.relay_key.verify(self.credential)
        own.check(replica_id=self.replica.id, now=now)
        if own.device_key != self.key.public_raw:
            raise CredentialError(
                f"the credential of device {self.replica.id} is not bound to its key; it must sync with the "
                "relay once to get one",
                code="credential_invalid",
            )
        return own

    @staticmethod
    def _both(own: Credential, other: Credential) -> Callable[[str], bool]:
        return lambda document: own.allows(document) and other.allows(document)

    # -- as the initiator ----------------------------------------------------

    def hello_fields(self) -> tuple[str | None, bytes | None, bytes | None]:
        return self.credential, self._challenge, self.key.public_raw

    def check_welcome(self, welcome: wire.Welcome, now: float) -> tuple[Callable[[str], bool], bytes | None]:
        if welcome.role == "relay" and not self.peer:
            if welcome.relay_key is None:
                raise CredentialError("the relay did not say which key it holds", code="proof_invalid")
            relay_key = PublicKey(welcome.relay_key)
            relay_key.verify_answer(self._challenge, welcome.proof, who=f"relay {welcome.replica_id}")
            pin_relay_key(self.replica, relay_key)
            return (lambda document: True), None
        if welcome.role != "peer":
            expected = "a peer" if self.peer else "a relay or a peer"
            raise ReplicaError(f"expected {expected}, and a {welcome.role} answered", code="unexpected_role")
        other = self._peer_credential(welcome.credential, welcome.replica_id, now)
        if welcome.proof is None or welcome.challenge is None:
            raise CredentialError("the other device did not prove who it is", code="proof_invalid")
        verify_proof(other, self._challenge, welcome.proof)
        own = self._own_credential(now)
        return self._both(own, other), self.key.sign(welcome.challenge)

    # -- as the acceptor of peers --------------------------------------------

    def authorize(self, hello: wire.Hello, now: float) -> Grant:
        if hello.role != "device":
            raise ReplicaError(f"a device accepts devices, not a {hello.role}", code="unexpected_role")
        other = self._peer_credential(hello.credential, hello.replica_id, now)
        own = self._own_credential(now)
        if hello.challenge is None:
            raise CredentialError("the other device sent no challenge", code="proof_invalid")
        challenge = new_challenge()
        return Grant(
            hello.replica_id,
            self._both(own, other),
            credential=self.credential,
            challenge=challenge,
            proof=self.key.sign(hello.challenge),
            verify_proof=lambda proof: verify_proof(other, challenge, proof),
        )
