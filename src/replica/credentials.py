"""Credentials: what a relay lets a replica sync, signed so that anyone can check it offline.

The relay's :class:`SigningKey` ``issue()``\\ s a *token*: one line of text naming a replica id, the
document patterns it may read and write, and an expiry. Whoever holds the relay's :class:`PublicKey`
(the relay on connect, or a device during peer sync in the field, offline) gets a :class:`Credential`
from ``PublicKey.verify()``, then calls ``Credential.check()`` and ``check_document()``.

A bare token is a bearer secret. A credential bound to a :class:`DeviceKey` (whose private half never
leaves the device) also needs a proof of possession: the verifier sends :func:`new_challenge`, the
holder answers ``DeviceKey.sign(challenge)``, the verifier calls :func:`verify_proof`. Proofs sign
``b"replica-proof-v1\\x00" + challenge``, so an answer is never a valid signature of anything else.

Token format, version 1: ``rc1.<key id>.<payload>.<signature>``

* key id: 16 hex digits of SHA-256 of the relay's raw public key; names the signing key.
* payload: unpadded base64url of a msgpack map: ``r`` replica id (str), ``d`` document patterns
  (non-empty array of str), ``e`` expires at and ``i`` issued at (unix seconds, int or float), ``s``
  issuer, the relay's replica id (str), optionally ``p`` the device's raw 32-byte Ed25519 public key
  (bin). Unknown keys are refused, not skipped: a later field may narrow what a credential allows,
  and a verifier that ignored it would grant too much; such changes take a new version prefix.
* signature: unpadded base64url Ed25519 signature over the ASCII of ``rc1.<key id>.<payload>``, so
  the version and key id cannot be swapped either.

The signature is checked before the payload is parsed: msgpack only reads bytes the relay signed.
Whatever ``verify()`` is given, it returns a credential or raises :class:`CredentialError`.
This is the only module of replica that imports ``cryptography``.
"""

from __future__ import annotations

import base64
import fnmatch
import functools
import hashlib
import logging
import os
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Self

import msgpack
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)

from replica.errors import ReplicaError
from replica.names import check_replica_id

log = logging.getLogger("replica.credentials")

CREDENTIAL_MISSING = "credential_missing"  # none presented where one is required
CREDENTIAL_INVALID = "credential_invalid"  # malformed, altered, unknown version or signed by another key
CREDENTIAL_EXPIRED = "credential_expired"
CREDENTIAL_WRONG_REPLICA = "credential_wrong_replica"  # names another replica id than the one presenting it
CREDENTIAL_REVOKED = "credential_revoked"  # the relay no longer accepts this replica's credentials
DOCUMENT_OUT_OF_SCOPE = "document_out_of_scope"
PROOF_INVALID = "proof_invalid"  # the holder did not prove it holds the device key its credential names
CODES = frozenset(
    {
        CREDENTIAL_MISSING,
        CREDENTIAL_INVALID,
        CREDENTIAL_EXPIRED,
        CREDENTIAL_WRONG_REPLICA,
        CREDENTIAL_REVOKED,
        DOCUMENT_OUT_OF_SCOPE,
        PROOF_INVALID,
    }
)

MAX_TOKEN_CHARS = 8192
MAX_LIST_CHARS = 1 << 20
MAX_PATTERN_CHARS = 255
PATTERN_RULE = f"a document pattern is 1-{MAX_PATTERN_CHARS} printable characters without spaces, e.g. 'campaign-7/*'"
EXPIRY_RULE = "use a duration such as 30d, 12h, 90m or 3600s, or a UTC date such as 2026-12-01 or 2026-12-01T12:00"

_VERSION = "rc1"
_LIST_VERSION = "rl1"
_TEXT_PREFIX = "ed25519:"
_PROOF_DOMAIN = b"replica-proof-v1\x00"
_FIELDS = frozenset("rdeis")
_B64 = re.compile(r"[A-Za-z0-9_-]*")
_KEY_ID = re.compile(r"[0-9a-f]{16}")
_DURATION = re.compile(r"([0-9]{1,12}) ?([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_LATEST = datetime(9999, 12, 31, tzinfo=UTC).timestamp()


@functools.lru_cache(maxsize=4096)
def _covered(patterns: tuple[str, ...], document: str) -> bool:
    """Whether ``document`` matches one of ``patterns``: asked for every link at
    every fan-out of a relay, so remembered (fnmatch compiles each pattern)."""
    return any(fnmatch.fnmatchcase(document, pattern) for pattern in patterns)


class CredentialError(ReplicaError):
    """A credential or a proof of possession was refused; ``code`` is one of :data:`CODES`."""

    def __init__(self, message: str, *, code: str) -> None:
        if code not in CODES:
            raise ValueError(f"unknown credential error code {code!r}")
        super().__init__(message, code=code, retryable=False)


class KeyFileError(ReplicaError):
    """A key file exists but does not hold an Ed25519 private key."""

    code = "key_file_invalid"


def _invalid(why: str, hint: str = "ask the relay operator for a new one") -> CredentialError:
    return CredentialError(f"the credential is not valid: {why}; {hint}", code=CREDENTIAL_INVALID)


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes | None:
    """Strict unpadded base64url, or None; only the canonical spelling of a value is accepted."""
    if len(text) % 4 == 1 or not _B64.fullmatch(text):
        return None
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    return data if _b64encode(data) == text else None


def _utc_text(t: float) -> str:
    try:
        return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M UTC")
    except (OverflowError, OSError, ValueError):
        return f"unix time {t:.0f}"


def _is_pattern(p: object) -> bool:
    return (
        isinstance(p, str) and 0 < len(p) <= MAX_PATTERN_CHARS and p.isprintable() and not any(c.isspace() for c in p)
    )


def _is_time(t: object) -> bool:
    return isinstance(t, int | float) and not isinstance(t, bool) and 0 <= t <= _LATEST


def _is_replica_id(r: object) -> bool:
    try:
        check_replica_id(r)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Credential:
    """What one replica may sync, as signed by a relay; obtained from :meth:`PublicKey.verify`."""

    replica_id: str
    documents: tuple[str, ...]
    expires_at: float
    issued_at: float
    issuer: str
    key_id: str
    device_key: bytes | None
    token: str = field(repr=False)

    def allows(self, document: str) -> bool:
        """Whether ``document`` matches a pattern (``fnmatch`` rules, case-sensitive; ``*`` also
        matches ``/``, so ``campaign-7/*`` covers ``campaign-7/a/b``)."""
        return _covered(self.documents, document)

    def check(self, *, replica_id: str, now: float) -> None:
        """Raise :class:`CredentialError` unless this credential is for ``replica_id`` and unexpired."""
        if replica_id != self.replica_id:
            raise CredentialError(
                f"this credential was issued to replica {self.replica_id!r}, not to {replica_id!r}; "
                "install the credential issued for this device",
                code=CREDENTIAL_WRONG_REPLICA,
            )
        if now >= self.expires_at:
            raise CredentialError(
                f"the credential of replica {self.replica_id!r} expired on "
                f"{_utc_text(self.expires_at)}; ask the relay operator for a new one",
                code=CREDENTIAL_EXPIRED,
            )

    def summary(self, *, now: float) -> list[str]:
        """What a supervisor needs to know of this credential, a line each."""
        state = "expired" if now >= self.expires_at else "valid"
        bound = "none" if self.device_key is None else PublicKey(self.device_key).key_id
        return [
            f"replica id: {self.replica_id}",
            f"documents: {', '.join(self.documents)}",
            f"expires: {_utc_text(self.expires_at)} ({state})",
            f"issued: {_utc_text(self.issued_at)} by relay {self.issuer} (key {self.key_id})",
            f"bound to device key: {bound}",
        ]

    def check_document(self, document: str) -> None:
        """Raise :class:`CredentialError` (``document_out_of_scope``) unless :meth:`allows` ``document``."""
        if not self.allows(document):
            shown = ", ".join(repr(p) for p in self.documents[:5]) + (", ..." if len(self.documents) > 5 else "")
            raise CredentialError(
                f"replica {self.replica_id!r} may not sync document {document!r}: its credential "
                f"allows only {shown}; ask the relay operator for a credential that includes it",
                code=DOCUMENT_OUT_OF_SCOPE,
            )


@dataclass(frozen=True)
class PublicKey:
    """An Ed25519 public key: the relay's, which verifies credentials, or a device's."""

    raw: bytes
    key_id: str = field(init=False)
    _key: Ed25519PublicKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.raw, bytes) or len(self.raw) != 32:
            raise ValueError("an Ed25519 public key is exactly 32 bytes")
        object.__setattr__(self, "key_id", hashlib.sha256(self.raw).hexdigest()[:16])
        object.__setattr__(self, "_key", Ed25519PublicKey.from_public_bytes(self.raw))

    @classmethod
    def from_text(cls, text: str) -> PublicKey:
        """Parse the form printed by :meth:`to_text`; surrounding whitespace is ignored."""
        text = text.strip()
        raw = _b64decode(text[len(_TEXT_PREFIX) :]) if text.startswith(_TEXT_PREFIX) else None
        if raw is None or len(raw) != 32:
            raise ValueError(
                f"{text[:60]!r} is not a public key: expected '{_TEXT_PREFIX}' and 43 base64url "
                "characters, as printed by the relay"
            )
        return cls(raw)

    def to_text(self) -> str:
        """One printable line an operator can copy into a file, e.g. ``ed25519:Ab3...``."""
        return _TEXT_PREFIX + _b64encode(self.raw)

    def verify_answer(self, challenge: bytes, signature: object, *, who: str) -> None:
        """Raise :class:`CredentialError` (``proof_invalid``) unless ``signature`` is this key's
        answer to ``challenge``, which the verifier must have chosen fresh. ``who`` names the holder
        in the message."""
        try:
            if not isinstance(signature, bytes):
                raise TypeError("the signature is not bytes")
            self._key.verify(signature, _PROOF_DOMAIN + challenge)
        except (InvalidSignature, TypeError, ValueError):
            raise CredentialError(
                f"{who} did not prove that it holds key {self.key_id}; it may be an impostor",
                code=PROOF_INVALID,
            ) from None

    def verify(self, token: object) -> Credential:
        """The credential ``token`` carries, if this key signed it; raises :class:`CredentialError`
        (``credential_invalid``) for anything else, whatever its type. Expiry and replica id are
        not checked here: see :meth:`Credential.check`."""
        key_id, payload = self._open(token, _VERSION, "a replica credential", MAX_TOKEN_CHARS)
        assert isinstance(token, str)
        return _parse_payload(payload, key_id=key_id, token=token)

    def verify_revocations(self, token: object) -> RevocationList:
        """The revocation list ``token`` carries, if this key signed it; raises
        :class:`CredentialError` (``credential_invalid``) for anything else."""
        _, payload = self._open(token, _LIST_VERSION, "a revocation list", MAX_LIST_CHARS)
        try:
            fields: Any = msgpack.unpackb(payload, raw=False, strict_map_key=True)
        except (ValueError, TypeError, msgpack.UnpackException):
            raise _invalid("its contents cannot be read") from None
        if not isinstance(fields, dict) or fields.keys() != {"s", "i", "r"} or not isinstance(fields["r"], dict):
            raise _invalid("its contents are not those of a version 1 revocation list")
        revoked = fields["r"]
        if not (
            _is_replica_id(fields["s"])
            and _is_time(fields["i"])
            and all(_is_replica_id(r) and _is_time(t) for r, t in revoked.items())
        ):
            raise _invalid("its contents are not well formed")
        return RevocationList(fields["s"], float(fields["i"]), {r: float(t) for r, t in revoked.items()}, str(token))

    def _open(self, token: object, version: str, what: str, limit: int) -> tuple[str, bytes]:
        """Check the form and signature of a token; return its key id and payload."""
        if not isinstance(token, str):
            raise _invalid(f"expected text, got {type(token).__name__}")
        if len(token) > limit:
            raise _invalid(f"it is {len(token)} characters long, more than the {limit} allowed")
        parts = token.split(".")
        if len(parts) != 4 or not token.isascii():
            raise _invalid(f"it is not {what} (expected {version}.<key id>.<payload>.<signature>)")
        found, key_id, body, signature_text = parts
        if found != version:
            newer = re.fullmatch(rf"{version[:2]}[0-9]{{1,6}}", found) is not None
            raise _invalid(
                "it was made by a newer relay" if newer else f"it is not {what}",
                "update this app" if newer else "ask the relay operator for a new one",
            )
        if not _KEY_ID.fullmatch(key_id):
            raise _invalid("its key id is damaged")
        if key_id != self.key_id:
            raise _invalid(
                f"it was signed with relay key {key_id}, not with relay key {self.key_id} that checks it",
                "check that this device was set up for the right relay, or ask that relay for a new one",
            )
        payload, signature = _b64decode(body), _b64decode(signature_text)
        if payload is None or signature is None or len(signature) != 64:
            raise _invalid("it is damaged (bad encoding)")
        try:
            self._key.verify(signature, token.rpartition(".")[0].encode("ascii"))
        except InvalidSignature:
            raise _invalid("its signature does not match: it was altered or damaged") from None
        return key_id, payload


@dataclass(frozen=True)
class RevocationList:
    """The replica ids whose credentials a relay revoked, each with when:
    credentials issued to it until then are refused (a credential issued
    later, a renewal, is not). Signed by the relay, so that devices carry it
    to each other and check peers offline (:meth:`PublicKey.verify_revocations`)."""

    issuer: str
    issued_at: float
    revoked: dict[str, float]
    token: str = field(repr=False)

    def revokes(self, credential: Credential) -> bool:
        """True if ``credential`` was issued before its replica id was revoked."""
        revoked_at = self.revoked.get(credential.replica_id)
        return revoked_at is not None and credential.issued_at <= revoked_at


def _parse_payload(payload: bytes, *, key_id: str, token: str) -> Credential:
    try:
        fields: Any = msgpack.unpackb(payload, raw=False, strict_map_key=True, use_list=True)
    except (ValueError, TypeError, msgpack.UnpackException):
        raise _invalid("its contents cannot be read") from None
    if not isinstance(fields, dict) or not _FIELDS <= fields.keys() <= _FIELDS | {"p"}:
        raise _invalid("its contents are not those of a version 1 credential")
    documents, device_key = fields["d"], fields.get("p")
    if not (
        _is_replica_id(fields["r"])
        and _is_replica_id(fields["s"])
        and isinstance(documents, list)
        and documents
        and all(_is_pattern(p) for p in documents)
        and _is_time(fields["i"])
        and _is_time(fields["e"])
        and fields["i"] <= fields["e"]
        and ("p" not in fields or (isinstance(device_key, bytes) and len(device_key) == 32))
    ):
        raise _invalid("its contents are not well formed")
    return Credential(
        fields["r"], tuple(documents), float(fields["e"]), float(fields["i"]), fields["s"], key_id, device_key, token
    )


class _KeyPair:
    """An Ed25519 private key, in memory and optionally in a PEM (PKCS#8) file."""

    _if_lost: ClassVar[str] = ""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        raw = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self._public = PublicKey(raw)

    @classmethod
    def generate(cls) -> Self:
        """A fresh random key pair, not stored anywhere."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Self:
        """The key pair whose 32-byte private seed is ``seed`` (deterministic
        simulations; a real key comes from :meth:`generate`)."""
        if len(seed) != 32:
            raise ValueError("an Ed25519 seed is 32 bytes")
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    @classmethod
    def load_or_create(cls, path: Path) -> Self:
        """The key pair stored at ``path``; if there is no file, a new one, written atomically and
        readable by its owner only (mode 0o600). Raises :class:`KeyFileError` if the file is not a key."""
        path = Path(path)
        if not path.exists():
            key = cls.generate()
            pem = key._private.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
            if _create_exclusive(path, pem):
                log.info("created a new key %s at %s", key._public.key_id, path)
                return key
        if os.name == "posix" and path.stat().st_mode & 0o077:
            log.warning("key file %s is readable by other users; restrict it with: chmod 600 %s", path, path)
        try:
            private = load_pem_private_key(path.read_bytes(), password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            private = None
        if not isinstance(private, Ed25519PrivateKey):
            raise KeyFileError(
                f"{path} does not hold an unencrypted Ed25519 private key in PEM form; restore it from "
                f"a backup, or delete it to make {cls._if_lost}"
            )
        return cls(private)

    def public_key(self) -> PublicKey:
        """The public half, to publish (:meth:`PublicKey.to_text`)."""
        return self._public

    def sign(self, challenge: bytes) -> bytes:
        """The answer to a verifier's challenge (:meth:`PublicKey.verify_answer`, :func:`verify_proof`)."""
        return self._private.sign(_PROOF_DOMAIN + challenge)


def _create_exclusive(path: Path, data: bytes) -> bool:
    """Write a new owner-only file at ``path``, complete or not at all; False if ``path`` exists
    (another process won the race, and its key is the one to use)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # unlike rename, a link never replaces a key another process just made
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links
            if path.exists():
                return False
            os.replace(tmp, path)
        if os.name == "posix":
            fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return True
    finally:
        tmp.unlink(missing_ok=True)


class SigningKey(_KeyPair):
    """The relay's key pair, which signs credentials."""

    _if_lost = "a new relay key (every credential signed with the old one then stops working)"

    def issue(
        self,
        *,
        issuer: str,
        replica_id: str,
        documents: Sequence[str],
        expires_at: float,
        now: float,
        device_key: bytes | None = None,
    ) -> str:
        """A signed token for ``replica_id``; raises ``ValueError`` for bad arguments."""
        check_replica_id(issuer)
        check_replica_id(replica_id)
        if isinstance(documents, str) or not documents:
            raise ValueError(f"documents must be a non-empty list of patterns, got {documents!r}")
        for pattern in documents:
            if not _is_pattern(pattern):
                raise ValueError(f"invalid document pattern {pattern!r}: {PATTERN_RULE}")
        if not 0 <= now < expires_at <= _LATEST:
            raise ValueError(f"expires_at ({expires_at!r}) must be after now ({now!r}) and before the year 9999")
        fields: dict[str, object] = {"r": replica_id, "d": list(documents), "e": expires_at, "i": now, "s": issuer}
        if device_key is not None:
            if not isinstance(device_key, bytes) or len(device_key) != 32:
                raise ValueError("device_key must be a raw 32-byte Ed25519 public key (DeviceKey.public_raw)")
            fields["p"] = device_key
        token = self._seal(msgpack.packb(fields, use_bin_type=True))
        if len(token) > MAX_TOKEN_CHARS:
            raise ValueError(f"the credential would exceed {MAX_TOKEN_CHARS} characters: use fewer, broader patterns")
        return token

    def sign_revocations(self, *, issuer: str, revoked: Mapping[str, float], now: float) -> str:
        """A signed :class:`RevocationList` of ``revoked`` (replica id -> revoked at), issued at ``now``."""
        check_replica_id(issuer)
        for replica_id in revoked:
            check_replica_id(replica_id)
        token = self._seal(
            msgpack.packb({"s": issuer, "i": now, "r": dict(revoked)}, use_bin_type=True), version=_LIST_VERSION
        )
        if len(token) > MAX_LIST_CHARS:
            raise ValueError(f"the revocation list would exceed {MAX_LIST_CHARS} characters")
        return token

    def _seal(self, payload: bytes, *, version: str = _VERSION) -> str:
        signed = f"{version}.{self._public.key_id}.{_b64encode(payload)}"
        return f"{signed}.{_b64encode(self._private.sign(signed.encode('ascii')))}"


class DeviceKey(_KeyPair):
    """A device's own key pair, which proves that a credential bound to it is used by its device."""

    _if_lost = "a new device key (this device then needs a new credential)"

    @property
    def public_raw(self) -> bytes:
        """The raw 32-byte public key, for ``SigningKey.issue(device_key=...)``."""
        return self._public.raw


def new_challenge() -> bytes:
    """A fresh random challenge (32 bytes); a verifier must never reuse one."""
    return secrets.token_bytes(32)


def verify_proof(credential: Credential, challenge: bytes, signature: bytes) -> None:
    """Raise :class:`CredentialError` (``proof_invalid``) unless ``signature`` is the answer of the
    device key ``credential`` names to ``challenge``, which the verifier must have chosen fresh."""
    if credential.device_key is None:
        raise CredentialError(
            f"the credential of replica {credential.replica_id!r} is not bound to a device key, "
            "so it cannot prove which device holds it; ask the relay operator for a credential "
            "bound to this device",
            code=PROOF_INVALID,
        )
    try:
        Ed25519PublicKey.from_public_bytes(credential.device_key).verify(signature, _PROOF_DOMAIN + challenge)
    except (InvalidSignature, TypeError, ValueError):
        raise CredentialError(
            f"replica {credential.replica_id!r} did not prove that it holds the device key its "
            "credential names; the credential may have been copied from another device",
            code=PROOF_INVALID,
        ) from None


def parse_expiry(text: str, *, now: float) -> float:
    """Unix time from a duration after ``now`` (``30d``, ``12h``, ``90m``, ``3600s``, ``2w``) or an
    ISO-8601 date or date-time (UTC unless it names a zone; a bare date means 00:00 UTC)."""
    spec = text.strip()
    duration = _DURATION.fullmatch(spec.lower())
    if duration:
        expires = now + int(duration[1]) * _UNITS[duration[2]]
    else:
        try:
            when = datetime.fromisoformat(spec)
        except ValueError:
            raise ValueError(f"expiry {text!r} is not understood: {EXPIRY_RULE}") from None
        expires = (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
    if expires <= now:
        raise ValueError(f"expiry {text!r} ({_utc_text(expires)}) is not in the future: {EXPIRY_RULE}")
    if expires > _LATEST:
        raise ValueError(f"expiry {text!r} is after the year 9999: {EXPIRY_RULE}")
    return expires
