"""C2PA manifests signed with the owner's certificate (issue 22): what a public C2PA reader finds in a
signed PNG, JPEG and WebP, that the picture and its A1111 infotext are untouched, that a changed byte
is caught, and that bad credentials are refused at start with the file named.

The certificates come from a private CA made by ``tests/c2pa_certs.py``. No public validator trusts
it, so readers report ``signingCredential.untrusted`` with the state "Valid" (signature and hashes
check out); with the private root given as a trust anchor the same file reads "Trusted".
"""

from __future__ import annotations

import io
import struct
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.errors import BadRequest
from pipelines.outputs import OutputStore, image_metadata
from pipelines.standards.c2pa_sign import (
    TRAINED_ALGORITHMIC_MEDIA,
    C2paSigner,
    C2paSigningFailed,
    describe,
    read_manifest,
    supports,
)

sys.path.insert(0, str(Path(__file__).parent))
from c2pa_certs import make_chain  # a helper beside the tests (tests/ is no package)

c2pa = pytest.importorskip("c2pa", reason="c2pa-python is not installed (pip install -e '.[c2pa]')")

SOFTWARE, VERSION = "Atelier", "0.1.0"
PROMPT = "a red lighthouse on a cliff, (golden hour:1.2)"
NEGATIVE = "blurry"
INFOTEXT = (
    f"{PROMPT}\nNegative prompt: {NEGATIVE}\n"
    "Steps: 4, Sampler: Euler, Schedule type: Automatic, CFG scale: 7, Seed: 1234, Size: 64x64, Model: demo"
)
FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/webp": "webp"}
OFFLINE = {"verify": {"remote_manifest_fetch": False, "ocsp_fetch": False}}


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_chain(tmp_path_factory.mktemp("c2pa-certs"))


@pytest.fixture(scope="module")
def signer(chain: tuple[Path, Path]) -> C2paSigner:
    return C2paSigner.load(*chain)


def _picture() -> Image.Image:
    """A 64 px picture with detail in it, so that the encoded pixel data is more than a few bytes."""
    y, x = np.mgrid[0:64, 0:64]
    pixels = np.stack([x * 4, y * 4, (x * y) % 256], axis=-1).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def _written(folder: Path, mime: str) -> bytes:
    """A picture as Atelier's outputs folder writes it: infotext in a PNG text chunk or EXIF."""
    path = OutputStore(folder, FORMATS[mime]).save(_picture(), INFOTEXT, {"prompt": PROMPT}, seed=1234)
    return path.read_bytes()


def _pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def _store(data: bytes, mime: str) -> dict:
    """The manifest store as the public c2pa reader reports it (not through the module under test)."""
    import json

    with c2pa.Context.from_dict(OFFLINE) as context, c2pa.Reader(mime, io.BytesIO(data), None, context) as reader:
        return dict(json.loads(reader.json()))


def _codes(statuses: list[dict]) -> list[str]:
    return [str(status["code"]) for status in statuses]


# -- signing ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("mime", list(FORMATS))
def test_a_signed_picture_declares_it_was_made_by_ai(signer: C2paSigner, mime: str, tmp_path: Path) -> None:
    original = _written(tmp_path, mime)
    signed = signer.sign(original, mime, SOFTWARE, VERSION)
    assert signed != original and len(signed) > len(original)

    store = _store(signed, mime)
    manifest = store["manifests"][store["active_manifest"]]
    assert manifest["claim_generator_info"][0]["name"] == SOFTWARE
    assert manifest["claim_generator_info"][0]["version"] == VERSION
    [actions] = [a for a in manifest["assertions"] if a["label"].startswith("c2pa.actions")]
    [created] = [a for a in actions["data"]["actions"] if a["action"] == "c2pa.created"]
    assert created["digitalSourceType"] == TRAINED_ALGORITHMIC_MEDIA
    assert created["softwareAgent"]["name"] == SOFTWARE and created["softwareAgent"]["version"] == VERSION
    # signed by a private CA: valid signature and hashes, only the trust list says no
    assert store["validation_state"] == "Valid"
    assert _codes(store["validation_status"]) == ["signingCredential.untrusted"]
    success = _codes(store["validation_results"]["activeManifest"]["success"])
    assert "claimSignature.validated" in success and "assertion.dataHash.match" in success
    assert manifest["signature_info"]["common_name"] == "Atelier test signer"

    # the picture and its infotext are untouched
    assert np.array_equal(_pixels(signed), _pixels(original))
    with Image.open(io.BytesIO(signed)) as image:
        assert image_metadata(image)["parameters"] == INFOTEXT

    # the module's own reading agrees
    summary = read_manifest(signed, mime)
    assert summary is not None
    assert summary["claim_generator"] == f"{SOFTWARE}/{VERSION}"
    assert summary["digital_source_type"] == TRAINED_ALGORITHMIC_MEDIA
    assert summary["validation_state"] == "Valid"
    assert _codes(summary["validation_status"]) == ["signingCredential.untrusted"]
    assert summary["manifest"]["label"] == store["active_manifest"]


def test_sd_parsers_still_reads_the_a1111_parameters_of_a_signed_png(signer: C2paSigner, tmp_path: Path) -> None:
    from sd_parsers import ParserManager
    from sd_parsers.data import Generators

    signed = signer.sign(_written(tmp_path, "image/png"), "image/png", SOFTWARE, VERSION)
    with Image.open(io.BytesIO(signed)) as image:
        assert image.text["parameters"] == INFOTEXT  # type: ignore[attr-defined]
        found = ParserManager().parse(image)
    assert found is not None and found.generator == Generators.AUTOMATIC1111
    assert found.full_prompt == PROMPT and found.full_negative_prompt == NEGATIVE
    [sampler] = found.samplers
    assert sampler.parameters["seed"] == "1234" and sampler.parameters["steps"] == "4"


def test_the_private_root_as_trust_anchor_makes_the_file_trusted(
    signer: C2paSigner, chain: tuple[Path, Path], tmp_path: Path
) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    _leaf, root = x509.load_pem_x509_certificates(chain[0].read_bytes())
    signed = signer.sign(_written(tmp_path, "image/png"), "image/png", SOFTWARE, VERSION)
    summary = read_manifest(signed, "image/png", trust_anchors=root.public_bytes(serialization.Encoding.PEM).decode())
    assert summary is not None and summary["validation_state"] == "Trusted"
    assert summary["validation_status"] == []
    assert describe(summary)[0] == "C2PA manifest: signature valid, issued by a trusted certificate authority"
    untrusted = read_manifest(signed, "image/png")
    assert untrusted is not None
    assert describe(untrusted) == [
        "C2PA manifest: signature valid; the certificate is not on a trust list this reader knows",
        "Signed by: Atelier test signer (issued by Atelier tests)",
        f"Made with: {SOFTWARE}/{VERSION}",
        "Declared source: generated by a trained AI model (trainedAlgorithmicMedia)",
    ]


def _flip_pixel_byte(data: bytes, mime: str) -> bytes:
    """Change one byte of the encoded pixels and leave the file well-formed around it."""
    out = bytearray(data)
    if mime == "image/png":
        at = data.index(b"IDAT")
        (length,) = struct.unpack(">I", data[at - 4 : at])
        out[at + 4 + length // 2] ^= 0x01
        out[at + 4 + length : at + 8 + length] = struct.pack(">I", zlib.crc32(bytes(out[at : at + 4 + length])))
    elif mime == "image/jpeg":
        scan = data.index(b"\xff\xda")
        middle = scan + (len(data) - scan) // 2
        while out[middle] in (0xFF, 0xFE, 0x00) or out[middle - 1] == 0xFF:  # no marker made or broken
            middle += 1
        out[middle] ^= 0x01
    else:
        at = data.index(b"VP8")
        (length,) = struct.unpack("<I", data[at + 4 : at + 8])
        out[at + 8 + length // 2] ^= 0x01
    return bytes(out)


@pytest.mark.parametrize("mime", list(FORMATS))
def test_a_changed_pixel_byte_fails_validation(signer: C2paSigner, mime: str, tmp_path: Path) -> None:
    signed = signer.sign(_written(tmp_path, mime), mime, SOFTWARE, VERSION)
    tampered = _flip_pixel_byte(signed, mime)
    assert len(tampered) == len(signed) and tampered != signed
    summary = read_manifest(tampered, mime)
    assert summary is not None, "the manifest itself is still there"
    assert summary["validation_state"] == "Invalid"
    assert "assertion.dataHash.mismatch" in _codes(summary["validation_status"])
    assert describe(summary)[0].startswith("C2PA manifest: INVALID: assertion.dataHash.mismatch")
    assert read_manifest(signed, mime)["validation_state"] == "Valid"  # type: ignore[index]


def test_other_types_come_back_unchanged_and_plain_files_have_no_manifest(signer: C2paSigner) -> None:
    gif = io.BytesIO()
    _picture().convert("P").save(gif, "GIF")
    assert not supports("image/gif") and supports("image/JPG") and supports("image/webp")
    assert signer.sign(gif.getvalue(), "image/gif", SOFTWARE, VERSION) == gif.getvalue()
    plain = io.BytesIO()
    _picture().save(plain, "PNG")
    assert read_manifest(plain.getvalue(), "image/png") is None
    assert read_manifest(gif.getvalue(), "image/gif") is None


def test_signing_from_several_threads_at_once(signer: C2paSigner, tmp_path: Path) -> None:
    original = _written(tmp_path, "image/png")
    results: list[bytes] = []

    def work() -> None:
        for _ in range(4):
            results.append(signer.sign(original, "image/png", SOFTWARE, VERSION))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 16
    for signed in results:
        summary = read_manifest(signed, "image/png")
        assert summary is not None and summary["validation_state"] == "Valid"


def test_a_certificate_that_expires_while_serving_stops_signing(chain: tuple[Path, Path]) -> None:
    import datetime

    signer = C2paSigner.load(*chain)
    signer.not_after = datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc)
    plain = io.BytesIO()
    _picture().save(plain, "PNG")
    with pytest.raises(C2paSigningFailed, match="expired on 2000-01-01") as caught:
        signer.sign(plain.getvalue(), "image/png", SOFTWARE, VERSION)
    assert str(chain[0]) in str(caught.value)


@pytest.mark.parametrize(("kind", "algorithm"), [("es384", "es384"), ("ps256", "ps256"), ("ed25519", "ed25519")])
def test_the_algorithm_follows_the_key(kind: str, algorithm: str, tmp_path: Path) -> None:
    signer = C2paSigner.load(*make_chain(tmp_path, kind=kind))  # type: ignore[arg-type]
    assert signer.algorithm == algorithm
    plain = io.BytesIO()
    _picture().save(plain, "PNG")
    summary = read_manifest(signer.sign(plain.getvalue(), "image/png", SOFTWARE, VERSION), "image/png")
    assert summary is not None and summary["validation_state"] == "Valid"
    assert summary["manifest"]["signature_info"]["alg"].lower() == algorithm


def test_a_chain_in_any_order_and_an_openssl_ec_key_are_accepted(chain: tuple[Path, Path], tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    pem = serialization.Encoding.PEM
    leaf, root = x509.load_pem_x509_certificates(chain[0].read_bytes())
    key = serialization.load_pem_private_key(chain[1].read_bytes(), None)
    (tmp_path / "chain.pem").write_bytes(root.public_bytes(pem) + leaf.public_bytes(pem))  # root first
    sec1 = key.private_bytes(pem, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())
    assert b"BEGIN EC PRIVATE KEY" in sec1  # the form `openssl ecparam -genkey` writes; c2pa wants PKCS#8
    (tmp_path / "key.pem").write_bytes(sec1)
    signer = C2paSigner.load(tmp_path / "chain.pem", tmp_path / "key.pem")
    assert signer.chain_pem == leaf.public_bytes(pem) + root.public_bytes(pem)
    plain = io.BytesIO()
    _picture().save(plain, "PNG")
    summary = read_manifest(signer.sign(plain.getvalue(), "image/png", SOFTWARE, VERSION), "image/png")
    assert summary is not None and summary["validation_state"] == "Valid"


# -- refusing bad credentials at start -----------------------------------------------------------------
def test_an_expired_certificate_is_refused_at_load(tmp_path: Path) -> None:
    cert, key = make_chain(tmp_path, expired=True)
    with pytest.raises(BadRequest, match="the signing certificate expired on") as caught:
        C2paSigner.load(cert, key)
    assert str(cert) in str(caught.value)


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate with every C2PA usage but signed by its own key."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "myself")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "self.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "self-key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return folder / "self.pem", folder / "self-key.pem"


def _bad_files(case: str, good: tuple[Path, Path], folder: Path) -> tuple[Path, Path, Path, str]:
    """(cert, key, the file the message must name, words it must hold) for one kind of mistake."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    cert, key = good
    if case == "missing cert":
        return folder / "nope.pem", key, folder / "nope.pem", "no such file"
    if case == "missing key":
        return cert, folder / "nokey.pem", folder / "nokey.pem", "no such file"
    if case == "folder as key":
        return cert, folder, folder, "is a folder"
    if case == "garbage cert":
        (folder / "junk.pem").write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
        return folder / "junk.pem", key, folder / "junk.pem", "not a PEM or DER X.509 certificate"
    if case == "garbage key":
        (folder / "junk.key").write_bytes(b"\x00\x01 definitely not a key")
        return cert, folder / "junk.key", folder / "junk.key", "not a readable private key"
    if case == "empty key":
        (folder / "empty.key").write_bytes(b"")
        return cert, folder / "empty.key", folder / "empty.key", "empty"
    if case == "swapped":
        return key, cert, key, "holds a private key, not a certificate"
    if case == "certificate as key":
        return cert, cert, cert, "holds a certificate, not a private key"
    if case == "other key":
        _, other = make_chain(folder / "other")
        return cert, other, other, "does not match the certificate"
    if case == "password":
        loaded = serialization.load_pem_private_key(key.read_bytes(), None)
        locked = serialization.BestAvailableEncryption(b"secret")
        (folder / "locked.pem").write_bytes(
            loaded.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, locked)
        )
        return cert, folder / "locked.pem", folder / "locked.pem", "protected by a password"
    if case == "unsupported key":
        odd = ec.generate_private_key(ec.SECP256K1())
        (folder / "k1.pem").write_bytes(
            odd.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return cert, folder / "k1.pem", folder / "k1.pem", "secp256k1 is not supported"
    assert case == "self-signed"
    own_cert, own_key = _self_signed(folder)
    return own_cert, own_key, own_cert, "self-signed"


@pytest.mark.parametrize(
    "case",
    [
        "missing cert",
        "missing key",
        "folder as key",
        "garbage cert",
        "garbage key",
        "empty key",
        "swapped",
        "certificate as key",
        "other key",
        "password",
        "unsupported key",
        "self-signed",
    ],
)
def test_bad_credentials_are_refused_naming_the_file(case: str, chain: tuple[Path, Path], tmp_path: Path) -> None:
    cert, key, named, words = _bad_files(case, chain, tmp_path)
    with pytest.raises(BadRequest) as caught:
        C2paSigner.load(cert, key)
    message = str(caught.value)
    assert str(named) in message and words in message, message


def test_without_c2pa_python_load_says_how_to_install_it(
    chain: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "c2pa", None)  # what a missing package looks like to `import`
    with pytest.raises(BadRequest, match=r"pip install -e '\.\[c2pa\]'"):
        C2paSigner.load(*chain)
    assert read_manifest(b"\x89PNG\r\n\x1a\n", "image/png") is None
