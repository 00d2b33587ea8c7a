"""TLS for the relay, peer servers and devices (``wss://``), with Python's ``ssl``.

A server loads its certificate chain and key with :func:`server_context`; a
device verifies the server with :func:`client_context` (the system's trust
store, or one CA file such as a campaign's own). What can go wrong becomes a
:class:`~replica.errors.ReplicaError` with a stable code and a message a
field supervisor can act on:

- reading the files (``tls_cert_unreadable``, ``tls_key_mismatch``,
  ``tls_ca_unreadable``), before anything listens or connects;
- connecting (:func:`connect_error`): a certificate that does not verify
  (``tls_untrusted``), one issued for another name (``tls_wrong_host``), a
  server that does not speak TLS at all (``tls_not_offered``), other TLS
  failures (``tls_failed``). None of these is cured by retrying: someone
  must change the URL, the CA file or the server's certificate. A failed
  handshake is told apart from a network fault by asking the server again
  the other way (:func:`answers_plain_http`, :func:`answers_tls`), so that a
  ``ws://``/``wss://`` mix-up is named (``tls_not_offered``,
  ``tls_required``) instead of being retried for ever.

The library never reads files on its own account: the command line builds
the contexts and hands them to :class:`~replica.relay.Relay`,
``Replica.sync(tls=...)`` and ``Replica.serve_peers(tls=...)``.
"""

from __future__ import annotations

import asyncio
import os
import ssl

from replica.errors import ErrorInfo, ReplicaError

#: Oldest protocol a server or device accepts.
MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


class TLSError(ReplicaError):
    """A certificate, key or CA file cannot be used."""

    code = "tls_error"


def server_context(cert: str | os.PathLike[str], key: str | os.PathLike[str]) -> ssl.SSLContext:
    """A server's context from a PEM certificate chain and its private key."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MINIMUM_VERSION
    try:
        context.load_cert_chain(os.fspath(cert), os.fspath(key))
    except FileNotFoundError as exc:
        raise TLSError(
            f"no such file: {exc.filename}; check --tls-cert and --tls-key", code="tls_cert_unreadable"
        ) from None
    except ssl.SSLError as exc:  # before OSError, which it is
        # Also a key that does not belong to the certificate (KEY_VALUES_MISMATCH).
        raise TLSError(
            f"the certificate {cert} and key {key} cannot be used together ({exc.reason or exc}); give the PEM "
            "certificate chain with --tls-cert and its own private key with --tls-key",
            code="tls_key_mismatch",
        ) from None
    except OSError as exc:
        raise TLSError(
            f"cannot read {exc.filename or cert}: {exc.strerror or exc}", code="tls_cert_unreadable"
        ) from None
    return context


def client_context(ca: str | os.PathLike[str] | None = None) -> ssl.SSLContext:
    """A device's context: verify servers with the system's trust store, or
    only with the CA certificates in ``ca`` (a PEM file)."""
    if ca is None:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        context.minimum_version = MINIMUM_VERSION
        return context
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname and CERT_REQUIRED by default
    context.minimum_version = MINIMUM_VERSION
    try:
        context.load_verify_locations(cafile=os.fspath(ca))
    except FileNotFoundError:
        raise TLSError(f"no CA file at {ca}; check --ca", code="tls_ca_unreadable") from None
    except ssl.SSLError as exc:  # before OSError, which it is
        raise TLSError(
            f"{ca} holds no usable CA certificate ({exc.reason or exc}); give a PEM file with --ca",
            code="tls_ca_unreadable",
        ) from None
    except OSError as exc:
        raise TLSError(f"cannot read the CA file {ca}: {exc.strerror or exc}", code="tls_ca_unreadable") from None
    return context


def connect_error(url: str, exc: ssl.SSLError, who: str) -> ErrorInfo:
    """What a device shows when the TLS handshake with ``who`` at ``url`` failed."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = exc.verify_message or exc.reason or "not verified"
        if exc.verify_code == 62 or "hostname" in reason.lower() or "IP address mismatch" in reason:
            return ErrorInfo(
                "tls_wrong_host",
                f"{who} at {url} showed a certificate issued for another name ({reason}); use the host name "
                "the certificate names, or ask its operator for a certificate for this one",
                False,
            )
        return ErrorInfo(
            "tls_untrusted",
            f"{who} at {url} showed a certificate this device does not trust ({reason}); if it is your "
            "campaign's, give its CA certificate with --ca FILE, otherwise do not connect and tell the operator",
            False,
        )
    reason = exc.reason or str(exc)
    if reason in {"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "UNKNOWN_PROTOCOL", "HTTP_REQUEST"}:
        return not_offered(url, who)
    return ErrorInfo("tls_failed", f"the TLS handshake with {who} at {url} failed ({reason}); tell its operator", False)


async def answers_plain_http(host: str, port: int, timeout: float) -> bool:
    """True if ``host:port`` answers a plain HTTP request with an HTTP
    response: what a ``wss://`` URL that failed in its TLS handshake learns
    about the server (a ``ws://`` one, not a network fault)."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(b"GET / HTTP/1.1\r\nHost: " + host.encode("idna") + b"\r\nConnection: close\r\n\r\n")
                await writer.drain()
                first = await reader.read(9)
            finally:
                writer.close()
    except (OSError, TimeoutError, UnicodeError):
        return False
    return first.startswith(b"HTTP/1.")


async def answers_tls(host: str, port: int, timeout: float) -> bool:
    """True if ``host:port`` completes a TLS handshake (any certificate): what
    a ``ws://`` URL whose handshake got no HTTP answer learns about the server."""
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    probe.check_hostname = False
    probe.verify_mode = ssl.CERT_NONE  # only asks whether it speaks TLS; nothing is sent over it
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(host, port, ssl=probe)
            writer.close()
    except (OSError, TimeoutError):
        return False
    return True


def not_offered(url: str, who: str) -> ErrorInfo:
    """A ``wss://`` URL naming a server that speaks plain ``ws://``."""
    return ErrorInfo(
        "tls_not_offered",
        f"{who} at {url} does not speak TLS; use ws:// instead of wss://, or ask its operator to "
        "start it with --tls-cert and --tls-key",
        False,
    )


def required(url: str, who: str) -> ErrorInfo:
    """A ``ws://`` URL naming a server that speaks TLS only."""
    return ErrorInfo("tls_required", f"{who} at {url} accepts TLS connections only; use wss:// instead of ws://", False)
