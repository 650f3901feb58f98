"""A certificate authority of one machine's own, for `lamps up --tls`: a CA, and certificates it
signs for `localhost` and 127.0.0.1 (every part of a local system listens there)."""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Clocks of the processes that check the certificates may lag the one that made them a little.
BACKDATE = datetime.timedelta(minutes=5)
LOOPBACK_NAMES = ("localhost", "127.0.0.1")


@dataclass(frozen=True)
class CertPair:
    """A PEM certificate and its private key (readable by this user only)."""

    cert: Path
    key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(
    directory: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> CertPair:
    pair = CertPair(cert=directory / f"{stem}.crt", key=directory / f"{stem}.key")
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Created 0600, never briefly readable by others.
    descriptor = os.open(pair.key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as out:
        out.write(key_pem)
    return pair


def _subject_alt_names() -> x509.SubjectAlternativeName:
    return x509.SubjectAlternativeName(
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    )


class CertificateAuthority:
    """A new CA whose certificate and key are written to `directory` as `<name>.crt/.key`
    (spaces become dashes); `issue` signs certificates for localhost and 127.0.0.1."""

    def __init__(self, directory: Path, name: str, valid_days: int = 30) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self._validity = datetime.timedelta(days=valid_days)
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + self._validity)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.pair = _write(directory, name.replace(" ", "-"), self._cert, self._key)

    def issue(self, stem: str, *, server: bool) -> CertPair:
        """A certificate for `localhost` and 127.0.0.1, for a server or (mutual TLS) a client,
        written as `<stem>.crt/.key`."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name("localhost" if server else stem))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + self._validity)
            .add_extension(_subject_alt_names(), critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        return _write(self.directory, stem, cert, key)


@dataclass(frozen=True)
class LocalTls:
    """What `lamps up --tls` made: the CA every client must trust, and the certificate every
    service presents."""

    ca_file: Path
    server: CertPair

    @classmethod
    def create(cls, directory: Path) -> LocalTls:
        """A fresh CA and server certificate in `directory` (replacing an earlier run's: a key
        that never outlives its run cannot leak from an old one)."""
        ca = CertificateAuthority(directory, "lamps local CA")
        return cls(ca_file=ca.pair.cert, server=ca.issue("server", server=True))
