"""Signed tree heads (Ed25519) and the key files behind them.

A tree head says "the log's first ``tree_size`` events have Merkle root ``root_hash``, as of
``timestamp_ms``", and is the ``seq``-th head this log signed. The signature covers::

    "siloguard-audit-tree-head-v1" 0x00 || uint64 seq || TreeHeadDataV2

where ``TreeHeadDataV2`` is RFC 9162 section 4.9's structure in TLS encoding: ``uint64
timestamp`` (milliseconds since the epoch), ``uint64 tree_size``, ``NodeHash root_hash``
(``NodeHash``: one length byte, then the 32 hash bytes) and empty ``sth_extensions`` (two zero bytes). The
context string keeps these signatures from being valid for anything else; ``seq`` makes a
deleted or reordered head visible.

Keys: :func:`generate_keypair` writes the private key as unencrypted PKCS#8 PEM with mode
0600 (created that way, never wider), and the public key as SubjectPublicKeyInfo PEM.
:func:`load_signing_key` refuses a private key file that group or others can read.
Key material is never logged or put in an error message.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from siloguard.audit.merkle import HASH_SIZE
from siloguard.errors import AuditError, AuditIntegrityError

__all__ = [
    "HeadSigner",
    "SignedTreeHead",
    "generate_keypair",
    "key_id",
    "load_public_key",
    "load_signing_key",
]

_CONTEXT = b"siloguard-audit-tree-head-v1\x00"
_KEY_ID = re.compile(r"[0-9a-f]{64}")
_U64 = 2**64


def key_id(public_key: Ed25519PublicKey) -> str:
    """SHA-256 of the raw 32-byte public key, hex: names the key in heads and reports."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def _u64(name: str, value: int) -> bytes:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < _U64:
        raise AuditIntegrityError(f"tree head {name} must be an unsigned 64-bit integer")
    return value.to_bytes(8, "big")


@dataclass(frozen=True, slots=True)
class SignedTreeHead:
    """A tree head and its Ed25519 signature."""

    seq: int
    tree_size: int
    root_hash: bytes
    timestamp_ms: int
    key_id: str
    signature: bytes

    def message(self) -> bytes:
        """The exact bytes the signature covers."""
        if not isinstance(self.root_hash, bytes) or len(self.root_hash) != HASH_SIZE:
            raise AuditIntegrityError("tree head root hash must be 32 bytes")
        tree_head_data_v2 = (
            _u64("timestamp", self.timestamp_ms) + _u64("tree size", self.tree_size)
            + bytes([HASH_SIZE]) + self.root_hash + b"\x00\x00"
        )
        return _CONTEXT + _u64("number", self.seq) + tree_head_data_v2

    def verify(self, public_key: Ed25519PublicKey) -> None:
        """Raise :class:`AuditIntegrityError` unless ``public_key`` signed exactly this head."""
        if self.key_id != key_id(public_key):
            raise AuditIntegrityError(f"tree head #{self.seq} names signing key {self.key_id[:16]}…, not the trusted key")
        try:
            public_key.verify(self.signature, self.message())
        except InvalidSignature:
            raise AuditIntegrityError(f"tree head #{self.seq}: the signature does not match its contents") from None

    @property
    def time(self) -> datetime:
        return datetime.fromtimestamp(self.timestamp_ms / 1000, timezone.utc)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": "siloguard-audit-tree-head-v1",
            "seq": self.seq,
            "tree_size": self.tree_size,
            "root_hash": base64.b64encode(self.root_hash).decode(),
            "root_hash_hex": self.root_hash.hex(),
            "timestamp_ms": self.timestamp_ms,
            "time": self.time.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
            "key_id": self.key_id,
            "signature": base64.b64encode(self.signature).decode(),
        }

    @classmethod
    def from_json(cls, data: object) -> SignedTreeHead:
        """Parse what :meth:`to_json` wrote; refuse anything malformed (checks no signature)."""
        try:
            if not isinstance(data, dict) or data.get("format") != "siloguard-audit-tree-head-v1":
                raise ValueError
            head = cls(
                seq=_int(data["seq"]),
                tree_size=_int(data["tree_size"]),
                root_hash=base64.b64decode(data["root_hash"], validate=True),
                timestamp_ms=_int(data["timestamp_ms"]),
                key_id=str(data["key_id"]),
                signature=base64.b64decode(data["signature"], validate=True),
            )
        except (KeyError, TypeError, ValueError, binascii.Error):
            raise AuditError(
                "not a siloguard tree head: expected the JSON `siloguard audit head` writes"
            ) from None
        if len(head.root_hash) != HASH_SIZE or len(head.signature) != 64 or not _KEY_ID.fullmatch(head.key_id):
            raise AuditError("not a siloguard tree head: root hash, key id or signature of the wrong form")
        if "root_hash_hex" in data and data["root_hash_hex"] != head.root_hash.hex():
            raise AuditError("tree head file is inconsistent: root_hash and root_hash_hex differ")
        head.message()  # range checks
        return head

    @classmethod
    def read(cls, path: Path) -> SignedTreeHead:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise AuditError(f"{path}: no such tree head file") from None
        except (OSError, UnicodeDecodeError, ValueError):
            raise AuditError(f"{path}: not a readable JSON tree head file") from None
        return cls.from_json(data)


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError
    return value


class HeadSigner:
    """Signs tree heads with an Ed25519 private key."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.public_key = private_key.public_key()
        self.key_id = key_id(self.public_key)

    def __repr__(self) -> str:  # never show key material
        return f"HeadSigner(key_id={self.key_id[:16]}…)"

    def sign(self, *, seq: int, tree_size: int, root_hash: bytes, timestamp_ms: int) -> SignedTreeHead:
        unsigned = SignedTreeHead(seq, tree_size, root_hash, timestamp_ms, self.key_id, b"")
        return SignedTreeHead(seq, tree_size, root_hash, timestamp_ms, self.key_id, self._key.sign(unsigned.message()))


# ---- key files ------------------------------------------------------------------------


def generate_keypair(private_path: Path, public_path: Path) -> str:
    """Write a new Ed25519 key pair (private 0600, public 0644); return its key id.

    Refuses to overwrite either file: replacing a log's key would orphan the heads it signed.
    """
    private_path, public_path = Path(private_path), Path(public_path)
    if private_path.resolve() == public_path.resolve():
        raise AuditError("the private and public key paths must differ")
    for path in (private_path, public_path):
        if path.exists():
            raise AuditError(f"{path} already exists: keep it, or move it away before generating a new key")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    for path in (private_path, public_path):
        if not path.parent.exists():
            path.parent.mkdir(mode=0o700, parents=True)
    _write_new(private_path, private_pem, 0o600)
    try:
        _write_new(public_path, public_pem, 0o644)
    except BaseException:
        private_path.unlink(missing_ok=True)
        raise
    return key_id(key.public_key())


def _write_new(path: Path, data: bytes, mode: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise AuditError(f"{path} already exists: keep it, or move it away before generating a new key") from None
    except OSError as exc:
        raise AuditError(f"{path}: cannot create the key file ({exc.strerror})") from None
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def _read_key_file(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise AuditError(f"{path}: no {what} there; create one with `siloguard audit keygen`") from None
    except OSError as exc:
        raise AuditError(f"{path}: cannot read the {what} ({exc.strerror})") from None


def load_signing_key(path: Path) -> HeadSigner:
    """Load the private key; refuse one that is not Ed25519 or that group/others can read."""
    path = Path(path)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        raise AuditError(f"{path}: no signing key there; create one with `siloguard audit keygen`") from None
    if mode & 0o077:
        raise AuditError(f"{path}: the signing key is readable by group or others (mode {mode:04o}): run chmod 600 {path}")
    data = _read_key_file(path, "signing key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise AuditError(f"{path}: not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise AuditError(f"{path}: not an Ed25519 key; create one with `siloguard audit keygen`")
    return HeadSigner(key)


def load_public_key(path: Path) -> Ed25519PublicKey:
    data = _read_key_file(Path(path), "public key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise AuditError(f"{path}: not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise AuditError(f"{path}: not an Ed25519 public key")
    return key
