"""A private certificate chain for the C2PA tests: a root CA and an end-entity signing certificate.

c2pa-rs refuses to sign with a certificate that does not follow the C2PA signing profile, so the leaf
has what it asks for: X.509 v3, not a CA, not self-signed (issued by the root), key usage
``digitalSignature`` marked critical, an extended key usage of ``emailProtection`` and
``documentSigning`` (never ``anyExtendedKeyUsage``), subject and authority key identifiers, and
validity dates around now. Keys are ES256 (P-256) unless a test asks for another type. Nothing here is
trusted by any public validator: readers report ``signingCredential.untrusted``, which is expected.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KeyKind = Literal["es256", "es384", "ps256", "ed25519"]
SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
DOCUMENT_SIGNING = x509.ObjectIdentifier("1.3.6.1.5.5.7.3.36")  # id-kp-documentSigning (RFC 9336)


def _new_key(kind: KeyKind) -> SigningKey:
    if kind == "es256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "es384":
        return ec.generate_private_key(ec.SECP384R1())
    if kind == "ps256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ed25519.Ed25519PrivateKey.generate()


def _digest(key: SigningKey) -> hashes.HashAlgorithm | None:
    # Ed25519 signs without a separate digest; the others sign with SHA-256.
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Atelier tests"),
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
        ]
    )


def _root(key: ec.EllipticCurvePrivateKey, start: datetime.datetime) -> x509.Certificate:
    name = _name("Atelier test root CA")
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _leaf(
    key: SigningKey, root: x509.Certificate, root_key: ec.EllipticCurvePrivateKey, start: datetime.datetime, days: int
) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(_name("Atelier test signer"))
        .issuer_name(root.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION, DOCUMENT_SIGNING]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False)
        .sign(root_key, hashes.SHA256())
    )


def make_chain(folder: Path, expired: bool = False, kind: KeyKind = "es256") -> tuple[Path, Path]:
    """Write ``chain.pem`` (the signing certificate, then the root CA) and ``key.pem`` (the signing
    key, unencrypted PKCS#8) into ``folder``; return their paths. ``expired``: the signing
    certificate's validity ended yesterday."""
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = _root(root_key, now - datetime.timedelta(days=30))
    key = _new_key(kind)
    start, days = (now - datetime.timedelta(days=20), 19) if expired else (now - datetime.timedelta(days=1), 365)
    leaf = _leaf(key, root, root_key, start, days)
    chain_path, key_path = folder / "chain.pem", folder / "key.pem"
    chain_path.write_bytes(
        leaf.public_bytes(serialization.Encoding.PEM) + root.public_bytes(serialization.Encoding.PEM)
    )
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return chain_path, key_path
