"""Optional C2PA manifests, signed with the server owner's own certificate and key.

The owner starts Atelier with ``--c2pa-cert chain.pem --c2pa-key key.pem``; :meth:`C2paSigner.load`
reads and checks both files once at start, so a bad file stops the server with a message that names
it instead of failing on the first picture. :meth:`C2paSigner.sign` then embeds a manifest in every
PNG, JPEG or WebP the server writes or returns: a ``c2pa.created`` action whose digital source type
is IPTC's ``trainedAlgorithmicMedia``, with Atelier as the software agent and claim generator. The
picture's own bytes (pixels, the A1111 ``parameters`` text, EXIF, XMP) are kept; the manifest goes in
beside them (PNG ``caBX`` chunk, JPEG APP11 segments, WebP ``C2PA`` chunk).

``c2pa`` (c2pa-python, a native library) and ``cryptography`` are imported inside the functions that
need them: the app starts as fast without them, and signing stays optional (``pip install -e '.[c2pa]'``).
"""

from __future__ import annotations

import datetime
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import AtelierError, BadRequest

if TYPE_CHECKING:
    from cryptography import x509

log = logging.getLogger(__name__)

TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
SUPPORTED_MIMES = ("image/png", "image/jpeg", "image/webp")
_MIME_ALIASES = {"image/jpg": "image/jpeg", "image/pjpeg": "image/jpeg", "image/x-png": "image/png"}
INSTALL_HINT = "C2PA signing needs c2pa-python: pip install -e '.[c2pa]'"
# Everything stays on this machine: manifests embedded in the file are the only ones read (never a
# remote manifest URL), certificate status is not fetched over OCSP, and no thumbnail is added (the
# picture is its own preview; a thumbnail would grow every file by a second copy of it).
_OFFLINE_SETTINGS: dict[str, Any] = {
    "verify": {"remote_manifest_fetch": False, "ocsp_fetch": False},
    "builder": {"thumbnail": {"enabled": False}},
}
# Extended key usages a C2PA signing certificate may carry (C2PA 2.x trust model): id-kp-emailProtection,
# id-kp-documentSigning, c2pa-kp-claimSigning, and Microsoft's C2PA signing purpose (c2pa-rs's default list).
_SIGNING_EKUS = {"1.3.6.1.5.5.7.3.4", "1.3.6.1.5.5.7.3.36", "1.3.6.1.4.1.62558.2.1", "1.3.6.1.4.1.311.76.59.1.9"}
_ANY_EKU = "2.5.29.37.0"
_SOON = datetime.timedelta(days=30)


class C2paSigningFailed(AtelierError):
    """A picture could not be signed although the signer loaded (a certificate that expired while the
    server ran, a damaged picture). Nothing unsigned is handed out in its place."""

    http_status = 500


def _c2pa() -> Any:
    try:
        import c2pa
    except ImportError as error:  # the [c2pa] extra is not installed
        raise BadRequest(INSTALL_HINT) from error
    return c2pa


def normalise_mime(mime: str) -> str:
    lowered = mime.strip().lower()
    return _MIME_ALIASES.get(lowered, lowered)


def supports(mime: str) -> bool:
    """True for the picture types :meth:`C2paSigner.sign` embeds a manifest in."""
    return normalise_mime(mime) in SUPPORTED_MIMES


@dataclass
class C2paSigner:
    """The owner's signing credentials, checked; signs picture bytes. Safe to share between threads:
    each :meth:`sign` builds its own native signer, builder and context (well under a millisecond)."""

    cert_path: Path
    key_path: Path
    algorithm: str  # "es256", "es384", "es512", "ps256" or "ed25519", as c2pa names them
    chain_pem: bytes = field(repr=False)  # signing certificate first, then its issuers
    key_pem: bytes = field(repr=False)  # unencrypted PKCS#8, the only form c2pa reads
    not_after: datetime.datetime  # when the signing certificate expires (UTC)
    subject: str
    _warned: set[str] = field(default_factory=set, repr=False)

    # -- loading ----------------------------------------------------------------------------
    @classmethod
    def load(cls, cert_path: Path, key_path: Path) -> C2paSigner:
        """Read and check the certificate chain and key; sign a tiny picture to make sure c2pa accepts
        them. Raises BadRequest naming the file and what is wrong with it."""
        _c2pa()  # the install hint comes before any complaint about the files
        cert_path, key_path = Path(cert_path), Path(key_path)
        certificates = _read_certificates(cert_path)
        key = _read_key(key_path)
        algorithm = _algorithm(key, key_path)
        chain = _order_chain(certificates, key, cert_path, key_path)
        _check_dates(chain, cert_path)
        _check_profile(chain[0], cert_path)
        from cryptography.hazmat.primitives import serialization

        signer = cls(
            cert_path=cert_path,
            key_path=key_path,
            algorithm=algorithm,
            chain_pem=b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain),
            key_pem=key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
            not_after=chain[0].not_valid_after_utc,
            subject=chain[0].subject.rfc4514_string(),
        )
        signer._trial()
        if signer.not_after - _now() < _SOON:
            log.warning("The C2PA signing certificate in %s expires on %s", cert_path, signer.not_after.date())
        log.info("C2PA signing with %s (%s), certificate valid until %s", signer.subject, algorithm, signer.not_after)
        return signer

    def _trial(self) -> None:
        """c2pa may have rules beyond those checked in plain words above (its own key parsing, the
        chain); meet them now rather than at the first picture."""
        from PIL import Image

        buffer = io.BytesIO()
        Image.new("RGB", (8, 8)).save(buffer, "PNG")
        try:
            self._embed(buffer.getvalue(), "image/png", "Atelier", "check")
        except Exception as error:  # c2pa raises its own C2paError family (and ValueError for bad input)
            raise BadRequest(f"C2PA certificate {self.cert_path}: c2pa refused it for signing: {error}") from error

    # -- signing ----------------------------------------------------------------------------
    def sign(self, data: bytes, mime: str, software: str, version: str) -> bytes:
        """The same picture bytes with a signed manifest embedded. A type other than PNG, JPEG or WebP
        comes back unchanged (logged once per type; callers that want to tell the user check
        :func:`supports` first). Raises C2paSigningFailed when a supported picture cannot be signed."""
        kind = normalise_mime(mime)
        if kind not in SUPPORTED_MIMES:
            if kind not in self._warned:
                self._warned.add(kind)
                log.warning("No C2PA manifest for %s files: only %s are signed", kind, ", ".join(SUPPORTED_MIMES))
            return data
        if _now() > self.not_after:
            raise C2paSigningFailed(
                f"The C2PA signing certificate in {self.cert_path} expired on {self.not_after:%Y-%m-%d}; "
                "renew it and restart the server"
            )
        try:
            return self._embed(data, kind, software, version)
        except Exception as error:  # c2pa's own errors: a damaged picture, a refusal by the native library
            raise C2paSigningFailed(f"C2PA signing of a {kind} picture failed: {error}") from error

    def _embed(self, data: bytes, mime: str, software: str, version: str) -> bytes:
        c2pa = _c2pa()
        agent = {"name": software, "version": version}
        manifest = {
            "claim_generator_info": [agent],  # C2PA 2 spells the claim generator "<name>/<version>" this way
            "format": mime,
            "assertions": [
                {
                    "label": "c2pa.actions",
                    "data": {
                        "actions": [
                            {
                                "action": "c2pa.created",
                                "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA,
                                "softwareAgent": agent,
                            }
                        ]
                    },
                }
            ],
        }
        # No timestamp authority (ta_url None): Atelier runs offline and must sign without reaching
        # any server. The signature then carries the signing time claimed by this machine only, and a
        # validator checks the certificate against the time it validates; an owner who wants a trusted
        # time (a manifest that stays valid after the certificate expires) can add a TSA URL here later.
        info = c2pa.C2paSignerInfo(self.algorithm.encode(), self.chain_pem, self.key_pem, None)
        output = io.BytesIO()
        with (
            c2pa.Context.from_dict(_OFFLINE_SETTINGS) as context,
            c2pa.Signer.from_info(info) as signer,
            c2pa.Builder(manifest, context=context) as builder,
        ):
            builder.sign(signer, mime, io.BytesIO(data), output)
        return output.getvalue()


# -- reading --------------------------------------------------------------------------------
def read_manifest(data: bytes, mime: str, trust_anchors: str | None = None) -> dict[str, Any] | None:
    """The file's active C2PA manifest and how it validated, or None when it carries none (or c2pa
    is not installed). Keys: ``label``, ``manifest`` (the active manifest as c2pa reports it),
    ``validation_state`` ("Invalid", "Valid": signature and hashes check out, or "Trusted": also
    issued by a trusted CA), ``validation_status`` (the failures: each a dict with ``code`` and
    ``explanation``), ``claim_generator`` ("<name>/<version>"), ``digital_source_type`` (of the
    ``c2pa.created`` action, or None) and ``signer`` (certificate common name and issuer).
    ``trust_anchors``: PEM root certificates to trust besides none (a private CA's root, for one).
    A manifest that cannot be read at all gives state "Invalid" with the reason as its one status."""
    try:
        import c2pa
    except ImportError:
        log.debug("c2pa-python is not installed; C2PA manifests are not read")
        return None
    settings: dict[str, Any] = {"verify": dict(_OFFLINE_SETTINGS["verify"])}
    if trust_anchors:
        settings["trust"] = {"user_anchors": trust_anchors}
    try:
        with c2pa.Context.from_dict(settings) as context:
            reader = c2pa.Reader.try_create(normalise_mime(mime), io.BytesIO(data), None, context)
            if reader is None:
                return None
            with reader:
                store = json.loads(reader.json())
    except Exception as error:  # a damaged or hostile manifest: say so, never crash PNG Info
        log.info("Unreadable C2PA manifest: %s", error)
        return {
            "label": None,
            "manifest": None,
            "validation_state": "Invalid",
            "validation_status": [{"code": "manifest.unreadable", "explanation": str(error)}],
            "claim_generator": None,
            "digital_source_type": None,
            "signer": None,
        }
    return _summarise(store)


def _summarise(store: dict[str, Any]) -> dict[str, Any]:
    label = store.get("active_manifest")
    manifest = store.get("manifests", {}).get(label) or {}
    generators = manifest.get("claim_generator_info") or []
    generator = manifest.get("claim_generator")  # C2PA 1 manifests made by other tools
    if generators and isinstance(generators[0], dict):
        first = generators[0]
        generator = "/".join(str(part) for part in (first.get("name"), first.get("version")) if part)
    signature = manifest.get("signature_info") or {}
    return {
        "label": label,
        "manifest": manifest or None,
        "validation_state": store.get("validation_state", "Invalid"),
        "validation_status": list(store.get("validation_status") or []),
        "claim_generator": generator,
        "digital_source_type": _created_source(manifest),
        "signer": {"common_name": signature.get("common_name"), "issuer": signature.get("issuer")},
    }


def _created_source(manifest: dict[str, Any]) -> str | None:
    for assertion in manifest.get("assertions") or []:
        if not str(assertion.get("label", "")).startswith("c2pa.actions"):
            continue
        for action in (assertion.get("data") or {}).get("actions") or []:
            if action.get("action") == "c2pa.created":
                source = action.get("digitalSourceType")
                return str(source) if source else None
    return None


def describe(summary: dict[str, Any]) -> list[str]:
    """Short lines for PNG Info from :func:`read_manifest`'s answer."""
    state = summary["validation_state"]
    codes = [str(status.get("code")) for status in summary["validation_status"]]
    problems = [code for code in codes if code != "signingCredential.untrusted"]
    if state == "Trusted":
        verdict = "signature valid, issued by a trusted certificate authority"
    elif state == "Valid":
        verdict = "signature valid; the certificate is not on a trust list this reader knows"
    else:
        verdict = "INVALID: " + (", ".join(problems) or "unknown reason")
    lines = [f"C2PA manifest: {verdict}"]
    signer = summary.get("signer") or {}
    if signer.get("common_name") or signer.get("issuer"):
        lines.append(f"Signed by: {signer.get('common_name') or '?'} (issued by {signer.get('issuer') or '?'})")
    if summary.get("claim_generator"):
        lines.append(f"Made with: {summary['claim_generator']}")
    if summary.get("digital_source_type") == TRAINED_ALGORITHMIC_MEDIA:
        lines.append("Declared source: generated by a trained AI model (trainedAlgorithmicMedia)")
    elif summary.get("digital_source_type"):
        lines.append(f"Declared source: {summary['digital_source_type']}")
    return lines


# -- checking the owner's files ----------------------------------------------------------------
def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _read_file(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BadRequest(f"C2PA {what} {path}: no such file") from None
    except IsADirectoryError:
        raise BadRequest(f"C2PA {what} {path}: is a folder, not a file") from None
    except OSError as error:
        raise BadRequest(f"C2PA {what} {path}: cannot be read ({error.strerror or error})") from None
    if not data.strip():
        raise BadRequest(f"C2PA {what} {path}: the file is empty")
    return data


def _read_certificates(path: Path) -> list[x509.Certificate]:
    from cryptography import x509

    data = _read_file(path, "certificate")
    if b"PRIVATE KEY-----" in data and b"-----BEGIN CERTIFICATE" not in data:
        raise BadRequest(f"C2PA certificate {path}: holds a private key, not a certificate (were the files swapped?)")
    try:
        certificates = x509.load_pem_x509_certificates(data) if b"-----BEGIN" in data else []
        if not certificates:
            certificates = [x509.load_der_x509_certificate(data)]
    except ValueError as error:
        raise BadRequest(f"C2PA certificate {path}: not a PEM or DER X.509 certificate ({error})") from None
    return certificates


def _read_key(path: Path) -> Any:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    data = _read_file(path, "key")
    if b"-----BEGIN CERTIFICATE" in data and b"PRIVATE KEY" not in data:
        raise BadRequest(f"C2PA key {path}: holds a certificate, not a private key (were the files swapped?)")
    loader = serialization.load_pem_private_key if b"-----BEGIN" in data else serialization.load_der_private_key
    try:
        return loader(data, password=None)
    except TypeError:  # cryptography's way of saying the key is encrypted
        raise BadRequest(
            f"C2PA key {path}: the key is protected by a password; give an unencrypted PKCS#8 key "
            "(openssl pkcs8 -topk8 -nocrypt) and keep the file readable only by the server's user"
        ) from None
    except (ValueError, UnsupportedAlgorithm) as error:
        raise BadRequest(f"C2PA key {path}: not a readable private key ({error})") from None


def _algorithm(key: Any, path: Path) -> str:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    if isinstance(key, ec.EllipticCurvePrivateKey):
        by_curve = {"secp256r1": "es256", "secp384r1": "es384", "secp521r1": "es512"}
        if key.curve.name in by_curve:
            return by_curve[key.curve.name]
        problem = f"an elliptic-curve key on {key.curve.name}"
    elif isinstance(key, rsa.RSAPrivateKey):
        if key.key_size >= 2048:
            return "ps256"
        problem = f"a {key.key_size}-bit RSA key (C2PA needs at least 2048 bits)"
    elif isinstance(key, ed25519.Ed25519PrivateKey):
        return "ed25519"
    else:
        problem = f"a {type(key).__name__.lstrip('_')}"
    raise BadRequest(
        f"C2PA key {path}: {problem} is not supported; use ECDSA P-256 (ES256), P-384 (ES384), "
        "RSA of 2048 bits or more (PS256) or Ed25519"
    )


def _public_bytes(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return bytes(key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))


def _order_chain(
    certificates: list[x509.Certificate], key: Any, cert_path: Path, key_path: Path
) -> list[x509.Certificate]:
    """The signing certificate (the one whose public key is the key's) first, then each issuer in
    turn, whatever order the file had them in; unrelated certificates are left out."""
    wanted = _public_bytes(key.public_key())
    leaves = [c for c in certificates if _public_bytes(c.public_key()) == wanted]
    if not leaves:
        raise BadRequest(
            f"C2PA key {key_path} does not match the certificate in {cert_path}: "
            f"no certificate there has this key's public key (it has {len(certificates)} certificate(s))"
        )
    chain = [leaves[0]]
    rest = [c for c in certificates if c is not leaves[0]]
    while rest:
        issuer = next((c for c in rest if c.subject == chain[-1].issuer and c.subject != chain[-1].subject), None)
        if issuer is None:
            break
        chain.append(issuer)
        rest.remove(issuer)
    if rest:
        log.warning(
            "C2PA certificate %s: %d certificate(s) not in the signing chain are left out", cert_path, len(rest)
        )
    return chain


def _check_dates(chain: list[x509.Certificate], path: Path) -> None:
    now = _now()
    for position, certificate in enumerate(chain):
        which = (
            "the signing certificate" if position == 0 else f"issuer certificate {certificate.subject.rfc4514_string()}"
        )
        if certificate.not_valid_after_utc < now:
            raise BadRequest(
                f"C2PA certificate {path}: {which} expired on {certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
            )
        if certificate.not_valid_before_utc > now:
            raise BadRequest(
                f"C2PA certificate {path}: {which} is not valid before "
                f"{certificate.not_valid_before_utc:%Y-%m-%d %H:%M} UTC (check the clock)"
            )


def _check_profile(leaf: x509.Certificate, path: Path) -> None:
    """The C2PA rules for a signing certificate that can be told from the certificate alone, with a
    message that says which one is broken (c2pa's own refusal only says "the certificate is invalid")."""
    from cryptography import x509

    def extension(kind: type[x509.ExtensionType]) -> Any:
        try:
            return leaf.extensions.get_extension_for_class(kind).value
        except x509.ExtensionNotFound:
            return None

    problems = []
    if leaf.version != x509.Version.v3:
        problems.append("it is not an X.509 version 3 certificate")
    if leaf.issuer == leaf.subject:
        problems.append("it is self-signed; C2PA needs a certificate issued by a certificate authority")
    constraints = extension(x509.BasicConstraints)
    if constraints is not None and constraints.ca:
        problems.append("it is a CA certificate; sign with an end-entity certificate it issued")
    usage = extension(x509.KeyUsage)
    if usage is None or not usage.digital_signature:
        problems.append("its key usage does not include digitalSignature")
    purposes = extension(x509.ExtendedKeyUsage)
    dotted = {oid.dotted_string for oid in purposes} if purposes is not None else set()
    if _ANY_EKU in dotted:
        problems.append("its extended key usage includes anyExtendedKeyUsage, which C2PA forbids")
    elif not dotted & _SIGNING_EKUS:
        problems.append("its extended key usage has neither emailProtection nor documentSigning")
    if problems:
        raise BadRequest([f"C2PA certificate {path}: {problem}" for problem in problems])
