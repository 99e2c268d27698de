"""Detached Ed25519 signatures over a model: its weights' SHA-256 and its model card.

A signed model folder holds ``model.safetensors``, ``model_card.json``, ``model_card.md`` and
``signature.json``: ``{"algorithm": "ed25519", "public_key", "key_id", "signed": {"weights_sha256",
"card_sha256"}, "signature"}``. ``verify_model_dir`` recomputes both hashes and checks the
signature; pin the coordinator's key (``coordinator.pub``) to rule out a re-signed forgery.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, ValidationError

from medfed.errors import MedFedError
from medfed.io import atomic_write_bytes, atomic_write_json

SIGNING_KEY, SIGNING_PUB = "coordinator-signing.key", "coordinator.pub"
WEIGHTS, CARD_JSON, CARD_MD, SIGNATURE = ("model.safetensors", "model_card.json",
                                          "model_card.md", "signature.json")


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: Ed25519PublicKey) -> str:
    return hashlib.sha256(_raw_public(key)).hexdigest()[:16]


def ensure_signing_key(folder: str | Path) -> Ed25519PrivateKey:
    """The coordinator's signing key in ``folder`` (created on first use, mode 600)."""
    folder = Path(folder)
    path = folder / SIGNING_KEY
    if path.is_file():
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (ValueError, TypeError):
            raise MedFedError("not a PEM Ed25519 key", where=str(path),
                              fix="restore it from a backup") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise MedFedError("not an Ed25519 key", where=str(path),
                              fix="restore it from a backup")
        return key
    key = Ed25519PrivateKey.generate()
    atomic_write_bytes(folder / SIGNING_PUB, key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    atomic_write_bytes(path, key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    path.chmod(0o600)
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    path = Path(path)
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except FileNotFoundError:
        raise MedFedError("public key not found", where=str(path),
                          fix=f"ask the coordinator for {SIGNING_PUB}") from None
    except (ValueError, UnsupportedAlgorithm):
        raise MedFedError("not a PEM public key", where=str(path),
                          fix=f"use the coordinator's {SIGNING_PUB}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise MedFedError("not an Ed25519 public key", where=str(path),
                          fix=f"use the coordinator's {SIGNING_PUB}")
    return key


def _payload(signed: dict[str, str]) -> bytes:
    return json.dumps(signed, sort_keys=True, separators=(",", ":")).encode("utf-8")


def sign_model_dir(folder: str | Path, key: Ed25519PrivateKey) -> dict[str, Any]:
    """Write ``signature.json`` for the weights and card already in ``folder``."""
    folder = Path(folder)
    signed = {"weights_sha256": sha256_file(folder / WEIGHTS),
              "card_sha256": sha256_file(folder / CARD_JSON)}
    public = key.public_key()
    document = {"algorithm": "ed25519",
                "public_key": base64.b64encode(_raw_public(public)).decode(),
                "key_id": key_id(public), "signed": signed,
                "signature": base64.b64encode(key.sign(_payload(signed))).decode()}
    atomic_write_json(folder / SIGNATURE, document)
    return document


class _Signed(BaseModel):
    weights_sha256: str
    card_sha256: str


class _SignatureFile(BaseModel):
    """``signature.json``; strings where strings belong, nothing else required."""

    model_config = ConfigDict(strict=True)
    algorithm: Literal["ed25519"]
    public_key: str
    signed: _Signed
    signature: str
    key_id: str | None = None


def read_signature(path: Path) -> tuple[dict[str, str], bytes, Ed25519PublicKey]:
    """(signed hashes, signature bytes, public key) of a ``signature.json``; every kind of
    damage (not JSON, wrong shape, bad base64, wrong key length) is one clear line."""
    fix = "download the model again with `medfed model download`"
    try:
        raw = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise MedFedError("signature file is not JSON text", where=str(path), fix=fix) from None
    if not isinstance(raw, dict):
        raise MedFedError(f"signature file is a JSON {type(raw).__name__}, not an object",
                          where=str(path), fix=fix)
    try:
        document = _SignatureFile.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise MedFedError(f"signature file has a bad field {field!r} ({err['msg'].lower()})",
                          where=str(path), fix=fix) from None
    try:
        signature = base64.b64decode(document.signature, validate=True)
        public = Ed25519PublicKey.from_public_bytes(
            base64.b64decode(document.public_key, validate=True))
    except ValueError:
        raise MedFedError("signature file's key or signature is not a base64 Ed25519 value",
                          where=str(path), fix=fix) from None
    return document.signed.model_dump(), signature, public


def verify_model_dir(folder: str | Path, trusted: Ed25519PublicKey | None = None) -> dict:
    """Check hashes and signature of a model folder; raise one clear line on any mismatch."""
    folder = Path(folder)
    for name in (WEIGHTS, CARD_JSON, SIGNATURE):
        if not (folder / name).is_file():
            raise MedFedError("model file missing", where=str(folder / name),
                              fix="download the model again with `medfed model download`")
    signed, signature, public = read_signature(folder / SIGNATURE)
    if trusted is not None and _raw_public(trusted) != _raw_public(public):
        raise MedFedError(f"signed by key {key_id(public)}, not by the trusted coordinator "
                          f"key {key_id(trusted)}", where=str(folder / SIGNATURE),
                          fix="do not use this model")
    if sha256_file(folder / WEIGHTS) != signed.get("weights_sha256"):
        raise MedFedError("SHA-256 does not match the signed hash (the weights were altered "
                          "or corrupted)", where=str(folder / WEIGHTS),
                          fix="do not use them; download the model again")
    if sha256_file(folder / CARD_JSON) != signed.get("card_sha256"):
        raise MedFedError("SHA-256 does not match the signed hash (the model card was "
                          "altered)", where=str(folder / CARD_JSON),
                          fix="download the model again")
    try:
        public.verify(signature, _payload(signed))
    except InvalidSignature:
        raise MedFedError("the Ed25519 signature is invalid", where=str(folder / SIGNATURE),
                          fix="do not use this model") from None
    return {"key_id": key_id(public), **signed}
