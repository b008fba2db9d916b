from __future__ import annotations

import copy
import logging
import os
import pickle
import stat
from pathlib import Path

import pandas as pd
import pytest

from siloguard.errors import ConfigError, DataError
from siloguard.privacy.keys import FileKeyStore, Secret, StoreKeys, SubjectVault


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_when_keys_created_then_files_are_0600_in_0700_directories(store_keys: StoreKeys, keystore: FileKeyStore) -> None:
    SubjectVault(store_keys).encrypt("17850", "email", "x@example.com")
    files = [p for p in keystore.root.rglob("*") if p.is_file()]
    dirs = [keystore.root, *(p for p in keystore.root.rglob("*") if p.is_dir())]
    assert len(files) == 3  # master, pseudonym v1, one subject key
    assert all(_mode(p) == 0o600 for p in files)
    assert all(_mode(p) == 0o700 for p in dirs)


def test_when_key_file_readable_by_others_then_refused(store_keys: StoreKeys, keystore: FileKeyStore) -> None:
    master = keystore.root / "stores" / "united-kingdom-1" / "master"
    os.chmod(master, 0o644)
    with pytest.raises(ConfigError, match="mode 0644; run chmod 600"):
        store_keys.derived("masking-hash")


def test_when_key_name_exists_then_create_does_not_overwrite(keystore: FileKeyStore) -> None:
    assert keystore.create("a/b", b"first")
    assert not keystore.create("a/b", b"second")
    assert keystore.read("a/b") == b"first"


def test_when_key_name_escapes_the_store_then_refused(keystore: FileKeyStore) -> None:
    for name in ("../x", "a/../../x", "/etc/passwd", "A/b", ""):
        with pytest.raises(ConfigError, match="invalid key name"):
            keystore.read(name)


def test_when_store_has_no_master_key_then_error_says_how_to_create_it(keystore: FileKeyStore) -> None:
    with pytest.raises(ConfigError, match=r"no master key; create it with StoreKeys.init\(\)"):
        StoreKeys(keystore, "germany").derived("x")


def test_when_secret_printed_logged_or_pickled_then_bytes_never_show(store_keys: StoreKeys, caplog: pytest.LogCaptureFixture) -> None:
    secret = store_keys.derived("masking-hash")
    raw = secret.reveal()
    shown = [repr(secret), str(secret), f"{secret}", repr([secret]), repr(store_keys), repr(SubjectVault(store_keys))]
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("test").info("key %s %r", secret, secret)
    for text in [*shown, caplog.text]:
        assert raw.hex() not in text and repr(raw) not in text
        assert "redacted" in text or "Secret" not in text
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(secret)
    with pytest.raises(TypeError):
        copy.deepcopy(secret)


def test_when_derived_for_two_uses_or_stores_then_keys_differ(keystore: FileKeyStore) -> None:
    a, b = StoreKeys(keystore, "store-a"), StoreKeys(keystore, "store-b")
    a.init()
    b.init()
    assert a.derived("masking-hash") != a.derived("masking-encrypt")
    assert a.derived("masking-hash") != b.derived("masking-hash")
    assert a.derived("masking-hash") == a.derived("masking-hash")


def test_when_subject_data_encrypted_then_only_that_subject_and_field_decrypt(store_keys: StoreKeys) -> None:
    vault = SubjectVault(store_keys)
    token = vault.encrypt("17850", "email", "ann@example.com")
    assert "ann" not in token
    assert vault.decrypt("17850", "email", token) == "ann@example.com"
    with pytest.raises(DataError, match="does not match this subject and field"):
        vault.decrypt("17850", "phone", token)
    vault.encrypt("12345", "email", "other@example.com")
    with pytest.raises(DataError, match="does not match"):
        vault.decrypt("12345", "email", token)


def test_when_subject_key_destroyed_then_their_data_is_unrecoverable(store_keys: StoreKeys, keystore: FileKeyStore) -> None:
    vault = SubjectVault(store_keys)
    column = vault.encrypt_column(pd.Series(["17850", "17850", "12345"]), pd.Series(["a@x.org", "b@x.org", None]), "email")
    other = vault.encrypt("12345", "email", "c@x.org")
    assert column[2] is None and column[0] != column[1]
    assert vault.shred("17850") is True
    assert vault.has_key("17850") is False
    for token in column[:2]:
        with pytest.raises(DataError, match="destroyed \\(erased\\); the data is unrecoverable"):
            vault.decrypt("17850", "email", token)
    # a fresh vault with the same master key cannot recover it either
    with pytest.raises(DataError, match="destroyed"):
        SubjectVault(store_keys).decrypt("17850", "email", column[0])
    assert vault.decrypt("12345", "email", other) == "c@x.org"  # others unaffected
    assert vault.shred("17850") is False


def test_when_subject_key_stored_then_file_name_reveals_no_customer_id(store_keys: StoreKeys, keystore: FileKeyStore) -> None:
    SubjectVault(store_keys).encrypt("17850", "email", "x")
    names = [str(p.relative_to(keystore.root)) for p in keystore.root.rglob("*")]
    assert not any("17850" in n for n in names)


def test_when_pseudonym_secret_rotated_then_versions_grow_and_current_cannot_be_retired(store_keys: StoreKeys) -> None:
    assert store_keys.pseudonym_versions() == [1]
    assert store_keys.rotate_pseudonym_secret() == 2
    assert store_keys.pseudonym_secret()[0] == 2
    with pytest.raises(ConfigError, match="cannot retire the current"):
        store_keys.retire_pseudonym_secret(2)
    assert store_keys.retire_pseudonym_secret(1)
    with pytest.raises(DataError, match="v1 .* is retired"):
        store_keys.pseudonym_secret(1)


def test_when_secret_is_empty_then_refused() -> None:
    with pytest.raises(ConfigError):
        Secret(b"")
