"""Ed25519 signatures for bundles: a fleet runs only bundles signed by a key it trusts.

What is signed: the exact bytes of ``manifest.json``. The manifest holds the sha256 and size of every file in
the bundle and `verify_bundle` refuses any file it does not list, so one signature covers the whole directory.
The signature sits beside it in ``manifest.sig`` (JSON: algorithm, key id, base64 signature); signing an
existing bundle never touches its other files.

    cogenesis keygen --out keys/fleet            -> keys/fleet.key (private, 0600) + keys/fleet.pub
    cogenesis export ... --sign-key keys/fleet.key
    cogenesis sign BUNDLE --key keys/fleet.key   (e.g. after `cogenesis finetune`)
    cogenesis info BUNDLE --verify-key keys/fleet.pub
    cogenesis.runtime.load(BUNDLE, trusted_keys=["keys/fleet.pub"])

Ed25519 from the `cryptography` package (PEM keys, PKCS#8 / SubjectPublicKeyInfo): small keys, fast to verify
on a Raspberry Pi, deterministic signatures.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

from cogenesis.runtime.format import MANIFEST, SIGNATURE, BundleError

from cogenesis.core.files import atomic_write_bytes

SIG_FORMAT = "cogenesis-bundle-signature"
ALGORITHM = "ed25519"


def _crypto():
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as e:
        raise BundleError("bundle signing needs the `cryptography` package: pip install cryptography") from e
    return serialization, ed25519, InvalidSignature


def _write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    atomic_write_bytes(path, data, mode)


def generate_key(out: str | Path, force: bool = False) -> tuple[Path, Path]:
    """A new Ed25519 key pair: ``OUT.key`` (PEM PKCS#8, mode 0600) and ``OUT.pub`` (PEM public key)."""
    serialization, ed25519, _ = _crypto()
    out = Path(out)
    priv_path, pub_path = out.with_name(out.name + ".key"), out.with_name(out.name + ".pub")
    for p in (priv_path, pub_path):
        if p.exists() and not force:
            raise BundleError(f"{p} already exists; choose another --out, or pass --force to replace the key pair")
    key = ed25519.Ed25519PrivateKey.generate()
    priv = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    _write_atomic(priv_path, priv, 0o600)
    _write_atomic(pub_path, pub)
    return priv_path, pub_path


def load_private_key(key: str | Path | bytes):
    serialization, ed25519, _ = _crypto()
    data, where = _read(key, "private key")
    try:
        k = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise BundleError(f"{where} is not an unencrypted PEM private key ({e}); make one with `cogenesis keygen`") from e
    if not isinstance(k, ed25519.Ed25519PrivateKey):
        raise BundleError(f"{where} is a {type(k).__name__}, not an Ed25519 key; make one with `cogenesis keygen`")
    return k


def load_public_key(key):
    """A public key from a PEM path, PEM bytes, a private key (its public half) or an Ed25519PublicKey."""
    serialization, ed25519, _ = _crypto()
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.public_key()
    data, where = _read(key, "public key")
    try:
        k = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as e:
        raise BundleError(f"{where} is not a PEM public key ({e}); pass the .pub file `cogenesis keygen` wrote") from e
    if not isinstance(k, ed25519.Ed25519PublicKey):
        raise BundleError(f"{where} is a {type(k).__name__}, not an Ed25519 public key")
    return k


def _read(key: str | Path | bytes, what: str) -> tuple[bytes, str]:
    if isinstance(key, bytes):
        return key, f"the {what} bytes"
    p = Path(key)
    if not p.is_file():
        raise BundleError(f"{what} file {p} not found; make a key pair with `cogenesis keygen --out NAME`")
    return p.read_bytes(), str(p)


def key_id(public_key) -> str:
    """sha256 of the raw 32-byte public key, first 16 hex digits: names the key in manifest.sig and in errors."""
    serialization, _, _ = _crypto()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign_bundle(bundle: str | Path, key: str | Path | bytes) -> str:
    """Sign ``bundle/manifest.json`` with an Ed25519 private key; writes manifest.sig atomically, returns the key id."""
    root = Path(bundle)
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise BundleError(f"{mpath} not found: not a bundle (export one with `cogenesis export`)")
    priv = load_private_key(key)
    raw = mpath.read_bytes()
    sig = {"format": SIG_FORMAT, "algorithm": ALGORITHM, "key_id": key_id(priv.public_key()),
           "manifest_sha256": hashlib.sha256(raw).hexdigest(),
           "signature": base64.b64encode(priv.sign(raw)).decode("ascii")}
    _write_atomic(root / SIGNATURE, (json.dumps(sig, indent=2) + "\n").encode())
    return sig["key_id"]


def verify_manifest_bytes(bundle: str | Path, raw: bytes, trusted_keys: Iterable) -> str:
    """The id of the trusted key whose signature in manifest.sig covers `raw`; BundleError otherwise."""
    _, _, InvalidSignature = _crypto()
    root = Path(bundle)
    keys = [load_public_key(k) for k in trusted_keys]
    if not keys:
        raise BundleError("trusted_keys is empty: pass at least one public key (or None to skip signature checks)")
    spath = root / SIGNATURE
    if spath.is_symlink() or not spath.is_file():
        raise BundleError(f"{spath} is missing: the bundle is not signed, and only signed bundles are trusted here; "
                          "sign it with `cogenesis sign BUNDLE --key KEY` (or export with --sign-key)")
    try:
        sig = json.loads(spath.read_text(encoding="utf-8"))
        if sig.get("format") != SIG_FORMAT or sig.get("algorithm") != ALGORITHM:
            raise ValueError(f"format {sig.get('format')!r}, algorithm {sig.get('algorithm')!r}")
        signature = base64.b64decode(sig["signature"], validate=True)
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
        raise BundleError(f"{spath} is not a valid {ALGORITHM} bundle signature ({e}); sign the bundle again") from e
    for k in keys:
        try:
            k.verify(signature, raw)
            return key_id(k)
        except InvalidSignature:
            continue
    ids = ", ".join(key_id(k) for k in keys)
    raise BundleError(f"{spath}: the signature (key {sig.get('key_id')!r}) does not verify manifest.json with any "
                      f"trusted key ({ids}): the bundle was changed after signing, or signed by another key; "
                      "get the bundle again from its publisher")


def verify_signature(bundle: str | Path, trusted_keys: Iterable) -> str:
    """Check manifest.sig against manifest.json's current bytes; returns the trusted key id that signed it."""
    return verify_manifest_bytes(bundle, (Path(bundle) / MANIFEST).read_bytes(), trusted_keys)
