"""Certificates generated at test time for the TLS tests (no files in the repo).

`make_pki(directory)` writes a private CA, a server certificate signed by it
(valid for ``localhost``, ``127.0.0.1`` and ``::1``) and an unrelated
self-signed certificate, and returns their paths. The contexts built from them:

- `server_context(pki)`: presents the CA-signed certificate;
- `client_context(pki)`: trusts only the private CA, verifies host names;
- `untrusted_server_context(pki)`: presents the self-signed certificate,
  which no client context here (nor the system store) trusts.

Generating RSA keys costs a noticeable fraction of a second, so the PKI is
built once per process (`shared_pki()`), in a temporary directory removed at exit.
"""

from __future__ import annotations

import atexit
import datetime
import ipaddress
import shutil
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVER_NAMES = ("localhost",)
SERVER_IPS = ("127.0.0.1", "::1")


@dataclass(frozen=True)
class Pki:
    """Paths of the generated PEM files."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    self_signed_cert: Path
    self_signed_key: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ferroloop tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _san() -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = [x509.DNSName(n) for n in SERVER_NAMES]
    entries += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in SERVER_IPS]
    return x509.SubjectAlternativeName(entries)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def make_pki(directory: Path) -> Pki:
    """Generate the CA, the server certificate and a self-signed one into `directory`."""
    now = datetime.datetime.now(datetime.UTC)
    not_before = now - datetime.timedelta(days=1)
    not_after = now + datetime.timedelta(days=30)

    ca_key = _key()
    ca_name = _name("ferroloop test CA")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    server_key = _key()
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_san(), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    rogue_key = _key()
    rogue_name = _name("localhost")
    rogue_cert = (
        x509.CertificateBuilder()
        .subject_name(rogue_name)
        .issuer_name(rogue_name)
        .public_key(rogue_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(_san(), critical=False)
        .sign(rogue_key, hashes.SHA256())
    )

    directory.mkdir(parents=True, exist_ok=True)
    pki = Pki(
        ca_cert=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        self_signed_cert=directory / "self_signed.pem",
        self_signed_key=directory / "self_signed.key",
    )
    _write_cert(pki.ca_cert, ca_cert)
    _write_cert(pki.server_cert, server_cert)
    _write_key(pki.server_key, server_key)
    _write_cert(pki.self_signed_cert, rogue_cert)
    _write_key(pki.self_signed_key, rogue_key)
    return pki


_SHARED: Pki | None = None


def shared_pki() -> Pki:
    """The per-process PKI (generated on first use)."""
    global _SHARED
    if _SHARED is None:
        directory = Path(tempfile.mkdtemp(prefix="ferroloop-tls-"))
        atexit.register(shutil.rmtree, directory, ignore_errors=True)
        _SHARED = make_pki(directory)
    return _SHARED


def server_context(pki: Pki | None = None) -> ssl.SSLContext:
    """A server context presenting the CA-signed certificate."""
    pki = pki or shared_pki()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.server_cert, pki.server_key)
    return ctx


def client_context(pki: Pki | None = None) -> ssl.SSLContext:
    """A client context trusting only the test CA (host names are checked)."""
    pki = pki or shared_pki()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=pki.ca_cert)
    return ctx


def untrusted_server_context(pki: Pki | None = None) -> ssl.SSLContext:
    """A server context presenting the self-signed certificate nobody trusts."""
    pki = pki or shared_pki()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.self_signed_cert, pki.self_signed_key)
    return ctx
