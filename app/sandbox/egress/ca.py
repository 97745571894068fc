"""A per-run certificate authority: the sandbox trusts it, the egress proxy signs leaf certs with it.

The CA key lives only in this process's memory. Leaf keys and certificates are written to the
run's private directory (never bound into the sandbox) because `ssl.SSLContext` loads them from files.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEBIAN_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def system_bundle() -> Path | None:
    """The system's CA bundle file: OpenSSL's default cafile, Debian's path, or certifi's; None if none exists."""
    candidates: list[Path] = []
    cafile = ssl.get_default_verify_paths().cafile
    if cafile:
        candidates.append(Path(cafile))
    candidates.append(DEBIAN_BUNDLE)
    try:
        import certifi

        candidates.append(Path(certifi.where()))
    except ImportError:
        pass
    return next((c for c in candidates if c.is_file()), None)


class RunCA:
    """One run's CA (EC P-256, valid for `validity_s`) and the leaf certificates it has issued.

    `directory` must be private to the worker (mode 0700 is applied); it receives `ca.pem`,
    the bundle and one key/cert pair per intercepted host.
    """

    def __init__(self, directory: Path, *, name: str = "Routines run CA", validity_s: int = 86_400) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o700)
        now = dt.datetime.now(dt.UTC)
        self._not_before = now - dt.timedelta(minutes=5)
        self._not_after = now + dt.timedelta(seconds=validity_s)
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._leaf_key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        public = self._key.public_key()
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(self._not_before)
            .not_valid_after(self._not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_ca_usage(), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self.cert_path = directory / "ca.pem"
        self.cert_path.write_bytes(self.cert_pem)
        self._contexts: dict[str, ssl.SSLContext] = {}

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def bundle_path(self, system: Path | None = None) -> Path:
        """Write `system` (default: `system_bundle()`) followed by this CA into one PEM file; return its path."""
        source = system if system is not None else system_bundle()
        base = source.read_bytes() if source is not None else b""
        if base and not base.endswith(b"\n"):
            base += b"\n"
        path = self.directory / "ca-bundle.pem"
        path.write_bytes(base + self.cert_pem)
        return path

    def server_context(self, host: str) -> ssl.SSLContext:
        """A TLS server context presenting a leaf certificate for `host` (cached per host), HTTP/1.1 only."""
        ctx = self._contexts.get(host)
        if ctx is None:
            cert_file, key_file = self.issue(host)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(cert_file, key_file)
            ctx.set_alpn_protocols(["http/1.1"])
            self._contexts[host] = ctx
        return ctx

    def issue(self, host: str) -> tuple[Path, Path]:
        """Sign a fresh leaf certificate for `host` (DNS name or IP); returns its (cert, key) file paths."""
        public = self._leaf_key.public_key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host[:64])]))
            .issuer_name(self.cert.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(self._not_before)
            .not_valid_after(self._not_after)
            .add_extension(x509.SubjectAlternativeName([_general_name(host)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False)
        )
        cert = builder.sign(self._key, hashes.SHA256())
        stem = "leaf-" + "".join(c if c.isalnum() or c in ".-" else "_" for c in host)
        cert_file, key_file = self.directory / f"{stem}.pem", self.directory / f"{stem}.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(
                self._leaf_key.private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                )
            )
        return cert_file, key_file


def _ca_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)
