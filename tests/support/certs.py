"""A throwaway certificate authority for TLS tests: the one `lamps up --tls` uses, valid a day."""

from __future__ import annotations

from pathlib import Path

from lamps.cli.certs import CertificateAuthority, CertPair

__all__ = ["CertPair", "TestCA"]


class TestCA(CertificateAuthority):
    """A CA that signs server and client certificates for localhost."""

    __test__ = False  # not a test class, despite its name

    def __init__(self, directory: Path, name: str = "lamps test CA") -> None:
        super().__init__(directory, name, valid_days=1)
