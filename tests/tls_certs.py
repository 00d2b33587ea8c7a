"""Throwaway TLS certificates for tests, made with ``cryptography``.

:func:`make_pki` writes, into a folder, a CA (``ca.pem``) and a server
certificate signed by it (``server.pem`` + ``server.key``) for 127.0.0.1 and
localhost, and a second, unrelated CA (``other-ca.pem``) that a device may
wrongly be given.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class PKI:
    ca: Path  #: the CA certificate that devices are given (``--ca``)
    cert: Path  #: the server's certificate (``--tls-cert``)
    key: Path  #: the server's private key (``--tls-key``)
    other_ca: Path  #: a CA that did not sign the server's certificate
    wrong_host_cert: Path  #: signed by ``ca`` for another name only (``relay.example.org``)
    wrong_host_key: Path


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _ca(common: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common))
        .issuer_name(_name(common))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _leaf(
    ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate, names: list[x509.GeneralName]
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("replica relay (test)"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _write_cert(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.write_bytes(pem)
    path.chmod(0o600)
    return path


def make_pki(folder: Path) -> PKI:
    """A CA, a server certificate for 127.0.0.1/localhost, one for another name, and a foreign CA."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca = _ca("replica test CA")
    here = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    key, cert = _leaf(ca_key, ca, here)
    wrong_key, wrong = _leaf(ca_key, ca, [x509.DNSName("relay.example.org")])
    _, other = _ca("some other CA")
    return PKI(
        ca=_write_cert(folder / "ca.pem", ca),
        cert=_write_cert(folder / "server.pem", cert),
        key=_write_key(folder / "server.key", key),
        other_ca=_write_cert(folder / "other-ca.pem", other),
        wrong_host_cert=_write_cert(folder / "wrong-host.pem", wrong),
        wrong_host_key=_write_key(folder / "wrong-host.key", wrong_key),
    )
