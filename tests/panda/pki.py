"""Throwaway certificate authorities for TLS tests, made with the openssl command line."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

OPENSSL_TIMEOUT_S = 30
KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=OPENSSL_TIMEOUT_S)


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path
    proxy: Path  # certificate and key in one file, as an X.509 proxy file holds them


@dataclass(frozen=True)
class Authority:
    name: str
    directory: Path

    @property
    def cert(self) -> Path:
        return self.directory / f"{self.name}.pem"

    @classmethod
    def create(cls, directory: Path, name: str) -> Authority:
        directory.mkdir(parents=True, exist_ok=True)
        _openssl("req", "-x509", *KEY, "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2",
                 "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)
        return cls(name, directory)

    def issue(self, name: str, subject: str, server: bool) -> Issued:
        ext = self.directory / f"{name}.ext"
        ext.write_text("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                       + ("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n" if server
                          else "extendedKeyUsage=clientAuth\n"))
        _openssl("req", "-new", *KEY, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject,
                 cwd=self.directory)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", self.cert.name, "-CAkey", f"{self.name}.key",
                 "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", ext.name, cwd=self.directory)
        cert, key, proxy = (self.directory / f"{name}{suffix}" for suffix in (".pem", ".key", ".proxy.pem"))
        proxy.write_text(cert.read_text() + key.read_text())
        proxy.chmod(0o600)
        return Issued(cert, key, proxy)

    def hashed_dir(self) -> Path:
        """A CA directory as X509_CERT_DIR holds it (certificates named by subject hash)."""
        target = self.directory / f"{self.name}-certdir"
        target.mkdir(exist_ok=True)
        (target / self.cert.name).write_text(self.cert.read_text())
        _openssl("rehash", str(target), cwd=self.directory)
        return target


@dataclass(frozen=True)
class Pki:
    ca: Authority
    server: Issued
    client: Issued
    rogue_ca: Authority
    rogue_client: Issued
    rogue_server: Issued


def make_pki(directory: Path) -> Pki:
    ca = Authority.create(directory, "test-ca")
    rogue = Authority.create(directory, "rogue-ca")
    return Pki(
        ca=ca,
        server=ca.issue("server", "/CN=127.0.0.1", server=True),
        client=ca.issue("pilot", "/DC=org/DC=example/CN=nodepilot test pilot", server=False),
        rogue_ca=rogue,
        rogue_client=rogue.issue("rogue-pilot", "/CN=someone else", server=False),
        rogue_server=rogue.issue("rogue-server", "/CN=127.0.0.1", server=True),
    )
