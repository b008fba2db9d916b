"""Access answers sealed to the data subject: the service keeps ciphertext only.

A subject (their browser, or ``siloguard answer keygen`` for API users) makes an ECDH P-256
key pair and sends the public key, raw and uncompressed (65 bytes, base64; what WebCrypto's
``exportKey("raw", ...)`` gives), when verifying an access request. The answer is sealed to
it the moment it is built and only the sealed form is stored:

* an ephemeral P-256 key pair; the shared secret with the subject's key;
* HKDF-SHA256 over it (info: label, ephemeral and subject public keys) -> a 256-bit key;
* AES-256-GCM with a random 96-bit nonce; the request id is the associated data, so a sealed
  answer moved to another request does not open.

P-256 rather than X25519 because every browser's WebCrypto has it. ``cryptography`` does
the primitives; this module only fixes the construction (an ECIES variant) and its encoding.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from siloguard.dsr.errors import DsrInvalid

__all__ = ["ALGORITHM", "fingerprint", "new_key_pair", "open_answer", "public_key_from_text", "seal_answer"]

ALGORITHM = "ECDH-P256+HKDF-SHA256+A256GCM"
_LABEL = b"siloguard/access-answer/v1"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def public_key_from_text(text: str) -> ec.EllipticCurvePublicKey:
    """A subject's public key from base64 (standard or URL-safe) of its raw uncompressed point."""
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_" if ("-" in text or "_" in text) else None, validate=True)
        if len(raw) != 65 or raw[0] != 4:
            raise ValueError
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)
    except (ValueError, binascii.Error):
        raise DsrInvalid(
            "answer_key must be a P-256 public key: base64 of its raw uncompressed point (65 bytes starting 0x04), "
            "e.g. from WebCrypto exportKey('raw') or `siloguard answer keygen`"
        ) from None


def _key(shared: bytes, ephemeral: bytes, subject: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_LABEL + ephemeral + subject).derive(shared)


def _raw(public: ec.EllipticCurvePublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


def seal_answer(subject_key: ec.EllipticCurvePublicKey, answer: dict[str, Any], request_id: str) -> dict[str, str]:
    """The answer, sealed to the subject's key (only they can open it)."""
    ephemeral = ec.generate_private_key(ec.SECP256R1())
    epk, spk = _raw(ephemeral.public_key()), _raw(subject_key)
    key = _key(ephemeral.exchange(ec.ECDH(), subject_key), epk, spk)
    nonce = os.urandom(12)
    sealed = AESGCM(key).encrypt(nonce, json.dumps(answer, sort_keys=True).encode(), request_id.encode())
    return {"alg": ALGORITHM, "epk": _b64(epk), "nonce": _b64(nonce), "ciphertext": _b64(sealed)}


def open_answer(private_key: ec.EllipticCurvePrivateKey, sealed: dict[str, str], request_id: str) -> dict[str, Any]:
    """Open a sealed answer with the subject's private key; DsrInvalid if it does not open."""
    try:
        if sealed["alg"] != ALGORITHM:
            raise ValueError
        epk = base64.b64decode(sealed["epk"], validate=True)
        ephemeral = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), epk)
        key = _key(private_key.exchange(ec.ECDH(), ephemeral), epk, _raw(private_key.public_key()))
        plain = AESGCM(key).decrypt(base64.b64decode(sealed["nonce"], validate=True),
                                    base64.b64decode(sealed["ciphertext"], validate=True), request_id.encode())
        return json.loads(plain)
    except (KeyError, TypeError, ValueError, binascii.Error, InvalidTag):
        raise DsrInvalid("the sealed answer does not open with this key (another key, another request, or altered)") from None


def part_id(request_id: str, store: str) -> str:
    """What a store's sealed part of an answer is bound to (the associated data): its request and
    its store, so no part can be passed off as another store's or another request's."""
    return f"{request_id}/{store}"


def open_parts(private_key: ec.EllipticCurvePrivateKey, sealed: object, request_id: str) -> dict[str, Any]:
    """Open an access answer sealed store by store (``[{"store", "sealed"}, ...]``) into one answer."""
    if isinstance(sealed, dict):  # one sealed answer for the whole request (older service)
        return open_answer(private_key, sealed, request_id)
    if not isinstance(sealed, list) or not all(isinstance(p, dict) and {"store", "sealed"} <= set(p) for p in sealed):
        raise ValueError("not a sealed answer")
    parts = []
    for p in sealed:
        part = open_answer(private_key, p["sealed"], part_id(request_id, str(p["store"])))
        named = {s.get("store") for s in part.get("stores", []) if isinstance(s, dict)}
        if named - {p["store"]}:
            raise DsrInvalid(f"the part sealed by store {p['store']!r} names records of another store: it is not trusted")
        parts.append(part)
    if not parts:
        return {"stores": [], "records": 0}
    first = parts[0]
    return {
        "stores": [s for part in parts for s in part.get("stores", [])],
        "purposes": first.get("purposes", []), "retention": first.get("retention"),
        "recipients": first.get("recipients", []), "source": first.get("source"),
        "records": sum(int(part.get("records", 0)) for part in parts),
    }


def fingerprint(public: ec.EllipticCurvePublicKey) -> str:
    """A short fingerprint of a subject key (SHA-256 of the raw point, 16 hex), shown in the code's message."""
    import hashlib

    return hashlib.sha256(_raw(public)).hexdigest()[:16]


def new_key_pair() -> tuple[ec.EllipticCurvePrivateKey, str]:
    """A subject key pair: (private key, public key text to send at verification)."""
    private = ec.generate_private_key(ec.SECP256R1())
    return private, _b64(_raw(private.public_key()))
