"""Signed tree heads and key files."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from siloguard.audit.heads import SignedTreeHead, generate_keypair, key_id, load_public_key, load_signing_key
from siloguard.errors import AuditError, AuditIntegrityError
from tests.audit.helpers import make_keys

ROOT = hashlib.sha256(b"root").digest()


def test_keygen_writes_private_key_0600_and_public_key_0644_even_with_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        kid = generate_keypair(tmp_path / "k" / "audit.key", tmp_path / "k" / "audit.pub")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "k" / "audit.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "k" / "audit.pub").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o700
    assert key_id(load_public_key(tmp_path / "k" / "audit.pub")) == kid == load_signing_key(tmp_path / "k" / "audit.key").key_id


def test_keygen_refuses_to_overwrite_and_leaves_the_old_key(tmp_path: Path) -> None:
    kid = generate_keypair(tmp_path / "a.key", tmp_path / "a.pub")
    before = (tmp_path / "a.key").read_bytes()
    with pytest.raises(AuditError, match="already exists"):
        generate_keypair(tmp_path / "a.key", tmp_path / "other.pub")
    assert (tmp_path / "a.key").read_bytes() == before and not (tmp_path / "other.pub").exists()
    assert load_signing_key(tmp_path / "a.key").key_id == kid


def test_when_private_key_is_readable_by_others_then_refused(tmp_path: Path) -> None:
    generate_keypair(tmp_path / "a.key", tmp_path / "a.pub")
    (tmp_path / "a.key").chmod(0o644)
    with pytest.raises(AuditError, match=r"readable by group or others \(mode 0644\): run chmod 600"):
        load_signing_key(tmp_path / "a.key")


@pytest.mark.parametrize("content", [b"", b"garbage", "ec"], ids=["empty", "garbage", "not-ed25519"])
def test_when_key_file_is_not_an_ed25519_pem_then_refused_without_echoing_it(tmp_path: Path, content: object) -> None:
    path = tmp_path / "bad.key"
    if content == "ec":
        key = ec.generate_private_key(ec.SECP256R1())
        data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    else:
        data = content  # type: ignore[assignment]
    path.write_bytes(data)
    path.chmod(0o600)
    with pytest.raises(AuditError) as info:
        load_signing_key(path)
    assert "PRIVATE KEY" not in str(info.value)


def test_missing_key_file_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(AuditError, match="siloguard audit keygen"):
        load_signing_key(tmp_path / "none.key")
    with pytest.raises(AuditError, match="siloguard audit keygen"):
        load_public_key(tmp_path / "none.pub")


def test_signed_message_is_context_seq_and_rfc9162_tree_head_data(tmp_path: Path) -> None:
    keys = make_keys(tmp_path)
    head = keys.signer.sign(seq=7, tree_size=1000, root_hash=ROOT, timestamp_ms=1_700_000_000_000)
    message = head.message()
    assert message == (
        b"siloguard-audit-tree-head-v1\x00"
        + (7).to_bytes(8, "big")
        + (1_700_000_000_000).to_bytes(8, "big")  # TreeHeadDataV2.timestamp
        + (1000).to_bytes(8, "big")  # tree_size
        + b"\x20" + ROOT  # NodeHash root_hash<32..2^8-1>
        + b"\x00\x00"  # sth_extensions<0..2^16-1>, empty
    )
    keys.public_key.verify(head.signature, message)
    head.verify(keys.public_key)


@pytest.mark.parametrize(
    "change",
    [
        {"seq": 8}, {"tree_size": 1001}, {"timestamp_ms": 1_700_000_000_001},
        {"root_hash": hashlib.sha256(b"other").digest()}, {"signature": b"\x00" * 64},
    ],
    ids=["seq", "size", "time", "root", "signature"],
)
def test_any_change_to_a_signed_head_breaks_its_signature(tmp_path: Path, change: dict[str, object]) -> None:
    keys = make_keys(tmp_path)
    head = keys.signer.sign(seq=7, tree_size=1000, root_hash=ROOT, timestamp_ms=1_700_000_000_000)
    with pytest.raises(AuditIntegrityError, match="signature does not match"):
        dataclasses.replace(head, **change).verify(keys.public_key)


def test_head_from_another_key_is_refused_even_if_it_claims_the_trusted_key_id(tmp_path: Path) -> None:
    ours, theirs = make_keys(tmp_path, "ours"), make_keys(tmp_path, "theirs")
    forged = theirs.signer.sign(seq=0, tree_size=1, root_hash=ROOT, timestamp_ms=1)
    with pytest.raises(AuditIntegrityError, match="not the trusted key"):
        forged.verify(ours.public_key)
    with pytest.raises(AuditIntegrityError, match="signature does not match"):
        dataclasses.replace(forged, key_id=ours.signer.key_id).verify(ours.public_key)


def test_head_json_round_trip_and_malformed_files(tmp_path: Path) -> None:
    keys = make_keys(tmp_path)
    head = keys.signer.sign(seq=1, tree_size=5, root_hash=ROOT, timestamp_ms=1_700_000_000_000)
    path = tmp_path / "head.json"
    path.write_text(json.dumps(head.to_json()))
    assert SignedTreeHead.read(path) == head
    data = head.to_json()
    for broken in ({**data, "format": "x"}, {**data, "tree_size": "5"}, {**data, "root_hash": "!!"},
                   {k: v for k, v in data.items() if k != "signature"}, {**data, "root_hash_hex": "00" * 32}, [1, 2]):
        path.write_text(json.dumps(broken))
        with pytest.raises(AuditError):
            SignedTreeHead.read(path)
    path.write_text("{not json")
    with pytest.raises(AuditError, match="not a readable JSON tree head"):
        SignedTreeHead.read(path)
    with pytest.raises(AuditError, match="no such tree head file"):
        SignedTreeHead.read(tmp_path / "missing.json")


def test_key_material_never_appears_in_repr_or_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    keys = make_keys(tmp_path)
    pem = keys.private_path.read_text()
    body = "".join(pem.splitlines()[1:-1])
    keys.signer.sign(seq=0, tree_size=0, root_hash=ROOT, timestamp_ms=0)
    assert body not in repr(keys.signer) and body not in caplog.text
