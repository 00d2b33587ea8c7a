"""Who trusts whom: the relay's admission of devices, and a device's trust in
its relay and its peers. Every trust decision of replica is made here.

:class:`RelayAuthority` is the relay's side: a device is admitted with a
credential the relay signed, naming the replica id it presents, unexpired by
the relay's clock and not revoked; the relay binds it to the device's key and
proves it holds its own key by signing the device's challenge.

:class:`DeviceTrust` is a device's side. A device holds an Ed25519 key of its own (``device.key`` in its data
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
from collections.abc import Callable, Mapping

from replica import wire
from replica.credentials import (
    CREDENTIAL_REVOKED,
    Credential,
    CredentialError,
    DeviceKey,
    PublicKey,
    RevocationList,
    SigningKey,
    new_challenge,
    verify_proof,
)
from replica.engine import Engine
from replica.errors import ReplicaError
from replica.names import MAX_REPLICA_ID, RELAY
from replica.session import Grant

KEY_FILE = "device.key"
RELAY_KEY = "relay_public_key"
#: The newest credential given to this device (``Replica.sync(credential=...)``, ``--credential``).
GIVEN_CREDENTIAL = "credential"
#: The credential the relay bound to this device's key: what peers are shown.
BOUND_CREDENTIAL = "bound_credential"
#: The newest revocation list signed by the relay that this device has seen.
REVOCATIONS = "revocations"
#: What the relay appends to a credential's replica id to name the origin of
#: what stock Yjs clients send with it (``replica.yjs_endpoint``). Reserved:
#: the relay admits no device whose replica id ends with it, so a Yjs origin
#: never clashes with a device's own deltas.
YJS_ORIGIN_SUFFIX = ".yjs"


def yjs_origin(replica_id: str) -> str:
    """The origin under which the relay logs what Yjs clients holding a
    credential of ``replica_id`` send."""
    return replica_id + YJS_ORIGIN_SUFFIX


_ephemeral: weakref.WeakKeyDictionary[Engine, DeviceKey] = weakref.WeakKeyDictionary()


def device_key(replica: Engine) -> DeviceKey:
    """This device's own key pair, created on first use (kept in the data
    directory; in memory, one per replica object)."""
    if replica.path is None:
        found = _ephemeral.get(replica)
        if found is None:
            found = _ephemeral[replica] = DeviceKey.generate()
        return found
    return DeviceKey.load_or_create(replica.path / KEY_FILE)


def give_credential(replica: Engine, token: str) -> None:
    """Keep ``token`` as the newest credential given to this device: the one
    it presents to its relay from now on (the relay binds it to the device's
    key). The relay's lasting refusals are forgotten with the old credential,
    so that what they refused is offered again under the new one."""
    if token != replica.setting(GIVEN_CREDENTIAL):
        with replica.batch():
            replica.set_setting(GIVEN_CREDENTIAL, token)
            replica.clear_rejections(RELAY)


def remember_relay_answer(replica: Engine, credential: str | None) -> None:
    """Keep the credential the relay bound to this device's key."""
    if credential is not None and credential != replica.setting(BOUND_CREDENTIAL):
        replica.set_setting(BOUND_CREDENTIAL, credential)


def pinned_relay_key(replica: Engine) -> PublicKey | None:
    """The relay public key this device trusts, if it has one yet."""
    text = replica.setting(RELAY_KEY)
    return None if text is None else PublicKey.from_text(text)


def known_revocations(replica: Engine) -> RevocationList | None:
    """The newest revocation list of this device's relay that it has seen."""
    token, relay_key = replica.setting(REVOCATIONS), pinned_relay_key(replica)
    if token is None or relay_key is None:
        return None
    try:
        return relay_key.verify_revocations(token)
    except CredentialError:
        return None  # signed by a relay key replaced since: it says nothing about this relay


def adopt_revocations(replica: Engine, token: str | None) -> None:
    """Keep ``token`` if it is a revocation list of this device's relay newer
    than the one it knows (from the relay itself, or carried by a peer)."""
    relay_key = pinned_relay_key(replica)
    if token is None or relay_key is None or token == replica.setting(REVOCATIONS):
        return
    try:
        offered = relay_key.verify_revocations(token)
    except CredentialError:
        return  # not our relay's: a peer set up for another relay, or altered; nothing to learn
    known = known_revocations(replica)
    if known is None or offered.issued_at > known.issued_at:
        replica.set_setting(REVOCATIONS, token)


def _refuse_revoked(revocations: RevocationList | None, credential: Credential, who: str) -> None:
    if revocations is not None and revocations.revokes(credential):
        raise CredentialError(
            f"the relay operator revoked the credential of {who}; it must get a new one from the operator",
            code=CREDENTIAL_REVOKED,
        )


def pin_relay_key(replica: Engine, key: PublicKey, *, replace: bool = False) -> None:
    """Trust ``key`` as the relay's (from a first sync, or an operator's file).
    A different key than the pinned one is refused unless ``replace``."""
    pinned = pinned_relay_key(replica)
    if pinned is not None and pinned.raw != key.raw and not replace:
        data = replica.path if replica.path is not None else "DIR"
        raise ReplicaError(
            f"the relay's key changed (was {pinned.key_id}, now {key.key_id}); if that is expected, run "
            f"`replica peer trust --data {data} --relay-key {key.to_text()} --replace`, "
            "otherwise this is not your relay: ask its operator",
            code="relay_key_changed",
        )
    if pinned is None or pinned.raw != key.raw:  # not on every sync: each write is a durable commit
        replica.set_setting(RELAY_KEY, key.to_text())


class DeviceTrust:
    """The trust decisions of one device: as an initiator (the session's
    ``trust``) and as an acceptor of peers (the session's ``authorize``).

    ``key``: the device's key pair (default: :func:`device_key`);
    ``challenges``: where fresh challenges come from (default: random, as
    they must be; a simulation passes a deterministic source)."""

    def __init__(
        self,
        replica: Engine,
        credential: str | None = None,
        *,
        peer: bool = False,
        key: DeviceKey | None = None,
        challenges: Callable[[], bytes] = new_challenge,
    ) -> None:
        self.replica = replica
        self.peer = peer  # as an initiator: the other side must be a peer (never accept a "relay")
        self.key = device_key(replica) if key is None else key
        self._given = credential
        self._challenges = challenges
        self._challenge = challenges()

    # -- both roles ----------------------------------------------------------

    # Read at each decision, not when the session was made: a device may sync
    # with its relay (and pin its key) between a peer connecting and its hello.

    @property
    def relay_key(self) -> PublicKey | None:
        """The relay key this device checks credentials with, if pinned yet."""
        return pinned_relay_key(self.replica)

    @property
    def credential(self) -> str | None:
        """What this device shows peers: its credential bound to its key (the
        newest the relay bound), or the one it was given if none is bound yet."""
        return self.replica.setting(BOUND_CREDENTIAL) or self._newest_given()

    def for_relay(self) -> str | None:
        """What this device presents to its relay: the newest credential given
        to it, or that same credential as the relay bound it to this key."""
        given, bound = self._newest_given(), self.replica.setting(BOUND_CREDENTIAL)
        if given is None or bound is None:
            return given or bound
        return bound if self._same_rights(given, bound) else given

    def _newest_given(self) -> str | None:
        return self._given if self._given is not None else self.replica.setting(GIVEN_CREDENTIAL)

    def _same_rights(self, given: str, bound: str) -> bool:
        relay_key = self.relay_key
        if relay_key is None:
            return False
        try:
            a, b = relay_key.verify(given), relay_key.verify(bound)
        except CredentialError:
            return False  # the given one is from another relay key (replaced), or damaged: present it as it is
        same = (a.replica_id, a.documents, a.expires_at) == (b.replica_id, b.documents, b.expires_at)
        return same and b.issued_at >= a.issued_at  # bound from this one, not from an older twin

    def _peer_credential(self, token: str | None, replica_id: str, now: float) -> Credential:
        relay_key = self.relay_key
        if relay_key is None:
            raise CredentialError(
                f"device {self.replica.id} has no relay key to check other devices with; it must sync with "
                "the relay once first (or have its key pinned with `replica peer trust`)",
                code="credential_invalid",
            )
        if token is None:
            raise CredentialError(f"device {replica_id} presented no credential", code="credential_missing")
        credential = relay_key.verify(token)
        credential.check(replica_id=replica_id, now=now)
        _refuse_revoked(known_revocations(self.replica), credential, f"device {replica_id}")
        return credential

    def _own_credential(self, now: float) -> Credential:
        token, relay_key = self.credential, self.relay_key
        if token is None or relay_key is None:
            raise CredentialError(
                f"device {self.replica.id} has no credential for peers yet; it must sync with the relay once first",
                code="credential_missing",
            )
        own = relay_key.verify(token)
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

    def hello_fields(self) -> tuple[str | None, bytes | None, bytes | None, str | None]:
        credential = self.credential if self.peer else self.for_relay()
        return credential, self._challenge, self.key.public_raw, self.replica.setting(REVOCATIONS)

    def check_welcome(self, welcome: wire.Welcome, now: float) -> tuple[Callable[[str], bool], bytes | None]:
        if welcome.role == "relay" and not self.peer:
            if welcome.relay_key is None:
                raise CredentialError("the relay did not say which key it holds", code="proof_invalid")
            relay_key = PublicKey(welcome.relay_key)
            relay_key.verify_answer(self._challenge, welcome.proof, who=f"relay {welcome.replica_id}")
            pin_relay_key(self.replica, relay_key)
            adopt_revocations(self.replica, welcome.revocations)
            return (lambda document: True), None
        if welcome.role != "peer":
            expected = "a peer" if self.peer else "a relay or a peer"
            raise ReplicaError(f"expected {expected}, and a {welcome.role} answered", code="unexpected_role")
        adopt_revocations(self.replica, welcome.revocations)  # what the relay revoked, carried by the peer
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
        adopt_revocations(self.replica, hello.revocations)
        other = self._peer_credential(hello.credential, hello.replica_id, now)
        own = self._own_credential(now)
        if hello.challenge is None:
            raise CredentialError("the other device sent no challenge", code="proof_invalid")
        challenge = self._challenges()
        return Grant(
            hello.replica_id,
            self._both(own, other),
            credential=self.credential,
            challenge=challenge,
            proof=self.key.sign(hello.challenge),
            verify_proof=lambda proof: verify_proof(other, challenge, proof),
            revocations=self.replica.setting(REVOCATIONS),
        )


class RelayAuthority:
    """The relay's admission of devices (the session's ``authorize``).

    ``revoked``: replica id -> when the relay operator revoked it; a
    credential issued to that id until then is refused (``credential_revoked``),
    a later one (a renewal) is not. Every ``welcome`` carries the list, signed,
    so that devices carry it to each other and refuse revoked peers offline.
    """

    def __init__(self, replica_id: str, key: SigningKey, *, revoked: Mapping[str, float] | None = None) -> None:
        self.replica_id = replica_id
        self.key = key
        self.public_key = key.public_key()
        self.revoked: Mapping[str, float] = {} if revoked is None else revoked
        self._signed: tuple[dict[str, float], str] | None = None

    def revocations(self, now: float) -> str:
        """The signed revocation list as it stands (signed again only when it changed)."""
        current = dict(self.revoked.items())
        if self._signed is None or self._signed[0] != current:
            self._signed = (current, self.key.sign_revocations(issuer=self.replica_id, revoked=current, now=now))
        return self._signed[1]

    def _refuse_revoked(self, credential: Credential) -> None:
        revoked_at = self.revoked.get(credential.replica_id)
        if revoked_at is not None and credential.issued_at <= revoked_at:
            raise CredentialError(
                f"the relay operator revoked the credential of {credential.replica_id}; ask the operator for a new one",
                code=CREDENTIAL_REVOKED,
            )

    def authorize_bearer(self, token: str | None, document: str, now: float) -> Credential:
        """Admit a stock Yjs client presenting ``token`` for ``document`` at
        ``now`` (``replica.yjs_endpoint``), or raise :class:`CredentialError`.

        The same rules as a device's hello: signed by this relay, unexpired,
        not revoked, ``document`` in scope. A Yjs client cannot prove it holds
        a device key, so a credential bound to one (what the relay hands a
        device) is refused here: a copied bound credential stays useless
        without its private key. Issue the dashboard a credential of its own.
        """
        if not token:
            raise CredentialError(
                "no credential was presented (?token=...); ask the relay operator for one", code="credential_missing"
            )
        credential = self.public_key.verify(token)
        credential.check(replica_id=credential.replica_id, now=now)
        if credential.device_key is not None:
            raise CredentialError(
                "this credential is bound to a device's key and only that device may use it; "
                "ask the relay operator for a credential for this Yjs client",
                code="credential_invalid",
            )
        if credential.replica_id == self.replica_id:
            raise CredentialError("a credential for the relay's own replica id", code="credential_invalid")
        if len(yjs_origin(credential.replica_id)) > MAX_REPLICA_ID:
            raise CredentialError(
                f"the replica id {credential.replica_id!r} is too long for a Yjs client (at most "
                f"{MAX_REPLICA_ID - len(YJS_ORIGIN_SUFFIX)} characters); issue a credential with a shorter one",
                code="credential_invalid",
            )
        self._refuse_revoked(credential)
        credential.check_document(document)
        return credential

    def authorize(self, hello: wire.Hello, now: float) -> Grant:
        """Admit the device saying ``hello`` at time ``now``, or raise."""
        if hello.role != "device":
            raise ReplicaError(f"a relay serves devices, not a {hello.role}", code="unexpected_role")
        if hello.credential is None:
            raise CredentialError(
                "no credential was presented; ask the relay operator for one", code="credential_missing"
            )
        credential = self.public_key.verify(hello.credential)
        credential.check(replica_id=hello.replica_id, now=now)
        if hello.replica_id == self.replica_id:
            raise ReplicaError("a device is using the relay's own replica id", code="replica_id_clash")
        if hello.replica_id.endswith(YJS_ORIGIN_SUFFIX):
            raise ReplicaError(
                f"replica ids ending in {YJS_ORIGIN_SUFFIX!r} are reserved for the relay's Yjs clients; "
                "give this device another replica id",
                code="replica_id_clash",
            )
        self._refuse_revoked(credential)
        bound = None
        if hello.device_key is not None:
            if credential.device_key not in (None, hello.device_key):
                raise CredentialError(
                    "this credential is bound to another device's key; install the credential issued for this device",
                    code="credential_invalid",
                )
            # The same rights, bound to the device's key, so that peers can check who holds it.
            bound = (
                hello.credential
                if credential.device_key
                else self.key.issue(
                    issuer=self.replica_id,
                    replica_id=credential.replica_id,
                    documents=credential.documents,
                    expires_at=credential.expires_at,
                    now=now,
                    device_key=hello.device_key,
                )
            )
        proof = None if hello.challenge is None else self.key.sign(hello.challenge)
        return Grant(
            hello.replica_id,
            credential.allows,
            credential=bound,
            relay_key=self.public_key.raw,
            proof=proof,
            revocations=self.revocations(now),
        )
