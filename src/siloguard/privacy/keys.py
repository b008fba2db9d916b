"""Key material of a store: master key, versioned pseudonym secrets, per-subject data keys.

Layout in a :class:`KeyStore` (names, not paths)::

    stores/<store>/master              32 random bytes; wraps subject keys, derives others
    stores/<store>/pseudonym/v<N>      32 random bytes per pseudonym-secret version
    stores/<store>/subjects/<ref>      a subject's AES-256 data key, wrapped (RFC 3394)

``<ref>`` is a keyed hash of the subject id, so file names reveal no customer id.
Personal data at rest is encrypted with the subject's data key (AES-GCM, see
:class:`SubjectVault`); deleting that key makes the subject's data unrecoverable
(crypto-shredding), wherever copies of the ciphertext are.

Keys are :class:`Secret` objects: their ``repr``/``str`` never show the bytes, and they
refuse to be pickled, so a key cannot reach a log line, an exception or an audit event by
accident. Only the cryptographic calls in this package read the bytes.
"""

from __future__ import annotations

import base64
import hmac
import os
import re
import stat
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol, runtime_checkable

import pandas as pd
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.keywrap import (
    InvalidUnwrap,
    aes_key_unwrap,
    aes_key_wrap,
)

from siloguard.errors import ConfigError, DataError

__all__ = [
    "FileKeyStore",
    "KeyStore",
    "Secret",
    "StoreKeys",
    "SubjectVault",
    "existing_store_keys",
    "subject_resolver",
]

KEY_BYTES = 32
_STORE = re.compile(r"[a-z0-9][a-z0-9_-]*")
_NAME_PART = re.compile(r"[a-z0-9][a-z0-9_.-]*")
_TOKEN_PREFIX = "sg1."


class Secret:
    """Key bytes that do not show themselves: redacted repr/str, no pickling."""

    __slots__ = ("_value",)

    def __init__(self, value: bytes) -> None:
        if not isinstance(value, bytes) or not value:
            raise ConfigError("a secret must be non-empty bytes")
        self._value = value

    def reveal(self) -> bytes:
        """The key bytes, for a cryptographic call; never log or store the result."""
        return self._value

    def __len__(self) -> int:
        return len(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and hmac.compare_digest(self._value, other._value)

    __hash__ = None  # type: ignore[assignment]  # compared by value, so not hashable

    def __repr__(self) -> str:
        return f"Secret(<{len(self._value)} bytes redacted>)"

    __str__ = __repr__

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("a Secret cannot be pickled or copied out of the process")


@runtime_checkable
class KeyStore(Protocol):
    """Where key material lives. Names are ``/``-separated lower-case segments."""

    def read(self, name: str) -> bytes | None: ...

    def create(self, name: str, data: bytes) -> bool:
        """Store ``data`` under a new name; False (and nothing written) if it exists."""
        ...

    def delete(self, name: str) -> bool: ...

    def names(self, prefix: str) -> list[str]: ...


class FileKeyStore:
    """Keys as files under ``root``: directories 0700, files 0600, never overwritten.

    A key file that group or others can read is refused (like ssh refuses such a key):
    it may have been copied. Deleting overwrites the file before unlinking it; on SSDs and
    copy-on-write or journaling file systems old blocks may survive, so crypto-shredding
    relies on the key never having been copied (backups included), not on the overwrite.
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        mode = stat.S_IMODE(self.root.stat().st_mode)
        if mode & 0o077:
            raise ConfigError(f"key store {self.root} has mode {mode:04o}; run chmod 700 on it")

    def _path(self, name: str) -> Path:
        parts = name.split("/")
        if not parts or not all(_NAME_PART.fullmatch(p) for p in parts):
            raise ConfigError(f"invalid key name {name!r}: use lower-case segments separated by /")
        return self.root.joinpath(*parts)

    def read(self, name: str) -> bytes | None:
        path = self._path(name)
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            return None
        try:
            mode = stat.S_IMODE(os.fstat(fd).st_mode)
            if mode & 0o077:
                raise ConfigError(f"key file {path} has mode {mode:04o}; run chmod 600 on it")
            with os.fdopen(fd, "rb", closefd=False) as fh:
                return fh.read()
        finally:
            os.close(fd)

    def create(self, name: str, data: bytes) -> bool:
        path = self._path(name)
        for parent in reversed(path.relative_to(self.root).parents):
            directory = self.root / parent
            if not directory.exists():
                directory.mkdir(mode=0o700, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, path)  # atomic, and fails if the name exists: never overwrites
            except FileExistsError:
                return False
            return True
        finally:
            tmp.unlink(missing_ok=True)

    def delete(self, name: str) -> bool:
        path = self._path(name)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return False
        with open(path, "r+b") as fh:
            fh.write(b"\0" * size)
            fh.flush()
            os.fsync(fh.fileno())
        path.unlink()
        return True

    def names(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        if not base.is_dir():
            return []
        return sorted(
            f"{prefix}/{p.name}" for p in base.iterdir() if p.is_file() and not p.name.startswith(".")
        )

    def __repr__(self) -> str:
        return f"FileKeyStore({str(self.root)!r})"


def _hkdf(master: Secret, label: str, store: str) -> Secret:
    info = f"siloguard/{label}/{store}".encode()
    return Secret(HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(master.reveal()))


class StoreKeys:
    """One store's keys in a key store. Call :meth:`init` once to create them."""

    def __init__(self, keystore: KeyStore, store: str) -> None:
        if not isinstance(store, str) or not _STORE.fullmatch(store):
            raise ConfigError(f"invalid store id {store!r}: use lower-case letters, digits, - and _")
        self.keystore = keystore
        self.store = store
        self._prefix = f"stores/{store}"

    def init(self) -> None:
        """Create the master key and pseudonym secret v1 if missing (idempotent)."""
        self.keystore.create(f"{self._prefix}/master", os.urandom(KEY_BYTES))
        if not self.pseudonym_versions():
            self.keystore.create(f"{self._prefix}/pseudonym/v1", os.urandom(KEY_BYTES))

    def _master(self) -> Secret:
        data = self.keystore.read(f"{self._prefix}/master")
        if data is None:
            raise ConfigError(f"store {self.store!r} has no master key; create it with StoreKeys.init()")
        if len(data) != KEY_BYTES:
            raise ConfigError(f"store {self.store!r} master key is damaged (wrong length)")
        return Secret(data)

    def derived(self, label: str) -> Secret:
        """A key for one use (``masking-hash``, ``masking-encrypt``, ...), derived by HKDF."""
        return _hkdf(self._master(), label, self.store)

    # --- pseudonym secrets ----------------------------------------------------------------

    def pseudonym_versions(self) -> list[int]:
        versions = []
        for name in self.keystore.names(f"{self._prefix}/pseudonym"):
            leaf = name.rsplit("/", 1)[1]
            if re.fullmatch(r"v[1-9][0-9]*", leaf):
                versions.append(int(leaf[1:]))
        return sorted(versions)

    def pseudonym_secret(self, version: int | None = None) -> tuple[int, Secret]:
        """(version, secret): the newest version unless one is named."""
        versions = self.pseudonym_versions()
        if not versions:
            raise ConfigError(f"store {self.store!r} has no pseudonym secret; create it with StoreKeys.init()")
        chosen = versions[-1] if version is None else version
        data = self.keystore.read(f"{self._prefix}/pseudonym/v{chosen}")
        if data is None:
            raise DataError(f"pseudonym secret v{chosen} of store {self.store!r} is retired or never existed")
        return chosen, Secret(data)

    def rotate_pseudonym_secret(self) -> int:
        """Create the next version and make it current; returns the new version."""
        versions = self.pseudonym_versions()
        new = (versions[-1] if versions else 0) + 1
        if not self.keystore.create(f"{self._prefix}/pseudonym/v{new}", os.urandom(KEY_BYTES)):
            raise ConfigError(f"pseudonym secret v{new} of store {self.store!r} already exists; retry")
        return new

    def retire_pseudonym_secret(self, version: int) -> bool:
        """Delete an old version: its pseudonyms can no longer be linked to anyone."""
        versions = self.pseudonym_versions()
        if versions and version == versions[-1]:
            raise ConfigError("cannot retire the current pseudonym secret; rotate first")
        return self.keystore.delete(f"{self._prefix}/pseudonym/v{version}")

    def __repr__(self) -> str:
        return f"StoreKeys(store={self.store!r}, keystore={self.keystore!r})"


def _blind(data_key: bytes) -> str:
    """``b.`` + 128 bits of HMAC under a key derived (HKDF) from one subject's data key."""
    blind_key = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=b"siloguard/audit-blind").derive(data_key)
    return "b." + hmac.digest(blind_key, b"subject", "sha256").hex()[:32]


class SubjectVault:
    """Encrypts personal data per subject (AES-256-GCM) under keys wrapped by the store.

    A token is ``sg1.`` + base64url(nonce || ciphertext || tag); the associated data binds
    it to the store, the subject and the field, so a token moved to another subject or
    column does not decrypt. :meth:`shred` deletes the subject's key: every token ever
    made for that subject becomes undecryptable.
    """

    def __init__(self, store_keys: StoreKeys) -> None:
        self._keys = store_keys
        self._ref_key = store_keys.derived("subject-ref")
        self._kek = store_keys.derived("subject-kek")

    def subject_ref(self, subject_id: str) -> str:
        """Keyed hash of a subject id: names the subject's key without revealing the id."""
        return hmac.digest(self._ref_key.reveal(), str(subject_id).encode(), "sha256").hex()[:40]

    def subject_refs(self, subject_ids: Iterable[str]) -> list[str]:
        """:meth:`subject_ref` of many ids: the HMAC is keyed once and copied per id."""
        keyed = hmac.new(self._ref_key.reveal(), digestmod="sha256")
        out = []
        for sid in subject_ids:
            mac = keyed.copy()
            mac.update(str(sid).encode())
            out.append(mac.hexdigest()[:40])
        return out

    def _key_name(self, subject_id: str) -> str:
        return f"stores/{self._keys.store}/subjects/{self.subject_ref(subject_id)}"

    def _data_key(self, subject_id: str, *, create: bool) -> AESGCM | None:
        wrapped = self._wrapped(subject_id, create=create)
        return None if wrapped is None else AESGCM(self._unwrap(wrapped))

    def audit_ref(self, subject_id: str) -> str:
        """The subject's blinded reference for audit events: ``b.<32 hex>``.

        A keyed hash under a key that exists only for this subject (derived from the subject's
        data key, created if missing): while the key exists, whoever holds the store's keys can
        recompute it from the customer id and find the subject's events; after erasure
        (:meth:`shred`) nobody can, while the events themselves stay byte for byte the same.
        """
        wrapped = self._wrapped(subject_id, create=True)
        return _blind(self._unwrap(wrapped))

    def audit_refs(self) -> dict[str, str]:
        """Every blinded reference this store can still resolve: ``b.<hex>`` -> subject key name.

        One unwrap per subject key: for reports, not for hot paths.
        """
        out = {}
        for name in self._keys.keystore.names(f"stores/{self._keys.store}/subjects"):
            wrapped = self._keys.keystore.read(name)
            if wrapped is not None:
                out[_blind(self._unwrap(wrapped))] = name.rsplit("/", 1)[1]
        return out

    def _wrapped(self, subject_id: str, *, create: bool) -> bytes | None:
        name = self._key_name(subject_id)
        wrapped = self._keys.keystore.read(name)
        if wrapped is None and create:
            self._keys.keystore.create(name, aes_key_wrap(self._kek.reveal(), AESGCM.generate_key(256)))
            wrapped = self._keys.keystore.read(name)  # another writer may have won the race
        return wrapped

    def _unwrap(self, wrapped: bytes) -> bytes:
        try:
            return aes_key_unwrap(self._kek.reveal(), wrapped)
        except InvalidUnwrap:
            raise DataError(f"a subject key of store {self._keys.store!r} is damaged or from another store") from None

    def _aad(self, subject_id: str, field: str) -> bytes:
        return f"{self._keys.store}\0{self.subject_ref(subject_id)}\0{field}".encode()

    def encrypt(self, subject_id: str, field: str, plaintext: str) -> str:
        key = self._data_key(subject_id, create=True)
        assert key is not None
        nonce = os.urandom(12)
        sealed = key.encrypt(nonce, plaintext.encode(), self._aad(subject_id, field))
        return _TOKEN_PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode()

    def decrypt(self, subject_id: str, field: str, token: str) -> str:
        key = self._data_key(subject_id, create=False)
        if key is None:
            raise DataError("this subject's data key was destroyed (erased); the data is unrecoverable")
        if not isinstance(token, str) or not token.startswith(_TOKEN_PREFIX):
            raise DataError(f"not a siloguard ciphertext (expected the {_TOKEN_PREFIX} prefix)")
        raw = base64.urlsafe_b64decode(token[len(_TOKEN_PREFIX) :])
        try:
            return key.decrypt(raw[:12], raw[12:], self._aad(subject_id, field)).decode()
        except InvalidTag:
            raise DataError("ciphertext does not match this subject and field (or was altered)") from None

    def encrypt_column(self, subject_ids: pd.Series, values: pd.Series, field: str) -> pd.Series:
        """Encrypt ``values`` row by row under each row's subject key (nulls stay null)."""
        keys: dict[str, AESGCM] = {}
        out: list[object] = []
        for sid, value in zip(subject_ids.astype(str), values):
            if value is None or pd.isna(value):
                out.append(None)
                continue
            if sid not in keys:
                key = self._data_key(sid, create=True)
                assert key is not None
                keys[sid] = key
            nonce = os.urandom(12)
            sealed = keys[sid].encrypt(nonce, str(value).encode(), self._aad(sid, field))
            out.append(_TOKEN_PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode())
        return pd.Series(out, index=values.index, dtype="object")

    def shred(self, subject_id: str) -> bool:
        """Destroy the subject's data key; True if there was one."""
        return self._keys.keystore.delete(self._key_name(subject_id))

    def shred_many(self, subject_ids: Iterable[str]) -> int:
        return sum(self.shred(s) for s in subject_ids)

    def has_key(self, subject_id: str) -> bool:
        return self._keys.keystore.read(self._key_name(subject_id)) is not None

    def __repr__(self) -> str:
        return f"SubjectVault(store={self._keys.store!r})"


# --- a store's keys, opened read-only (nothing is ever created) -----------------------------


def existing_store_keys(root: Path, store: str) -> StoreKeys:
    """The store's keys in the key store at ``root``; an error (never new keys) if there are none."""
    keys = StoreKeys(FileKeyStore(root), store)
    if keys.keystore.read(f"stores/{store}/master") is None:
        raise ConfigError(
            f"store {store!r} has no keys under {Path(root).resolve()}: point SILOGUARD_KEYS__ROOT "
            "at the store's own key directory (new keys would sign receipts the API refuses)"
        )
    return keys


def subject_resolver(keys_root: Path) -> tuple[Callable[[str], bool], list[str]] | None:
    """A resolver for the blinded subject references of every store under ``keys_root``.

    Reads ``<keys_root>/stores/<store>/`` with :meth:`SubjectVault.audit_refs` (one unwrap
    per subject key); creates nothing: a store without a master key is skipped. Returns
    ``(resolver, stores used)``, where the resolver says whether a ``b.<hex>`` reference still
    resolves (the officer's report, :mod:`siloguard.audit.report`, shows the others as erased
    subjects), or None when the directory does not exist or holds no store with a master key
    (the report then says subjects were not resolved).
    """
    root = Path(keys_root)
    stores_dir = root / "stores"
    if not root.is_dir() or not stores_dir.is_dir():
        return None  # FileKeyStore would create the directory: do not
    keystore = FileKeyStore(root)
    refs: set[str] = set()
    used: list[str] = []
    for entry in sorted(stores_dir.iterdir()):
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        try:
            store_keys = StoreKeys(keystore, entry.name)
        except ConfigError:  # not a valid store id (a stray directory): not a store
            continue
        if keystore.read(f"stores/{entry.name}/master") is None:
            continue  # never call StoreKeys.init(): the report creates no keys
        refs.update(SubjectVault(store_keys).audit_refs())
        used.append(entry.name)
    if not used:
        return None
    frozen = frozenset(refs)
    return frozen.__contains__, used
