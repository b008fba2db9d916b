"""RFC 9162 Merkle tree: every shared test vector, and generation against the RFC's definitions."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any

import pytest

from siloguard.audit import merkle
from siloguard.audit.merkle import (
    EMPTY_ROOT,
    Frontier,
    MerkleTree,
    consistency_ranges,
    inclusion_ranges,
    is_valid_subtree,
    leaf_hash,
    node_hash,
    verify_consistency,
    verify_inclusion,
)
from siloguard.errors import AuditIntegrityError

REPO = Path(__file__).resolve().parents[2]
VECTORS = Path(os.environ.get("SILOGUARD_RFC9162_VECTORS", REPO.parent / "shared" / "testvectors" / "rfc9162"))
KINDS = ("inclusion", "consistency", "subtreeinclusion", "subtreeconsistency")
# The 8 inputs of the RFC 6962 / transparency-dev reference tree the vectors are built on.
REFERENCE_LEAVES = [bytes.fromhex(h) for h in (
    "", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"
)]


def _vector_files() -> list[Path]:
    return sorted(p for kind in KINDS for p in (VECTORS / kind).rglob("*.json")) if VECTORS.is_dir() else []


def _b(x: str) -> bytes:
    return base64.b64decode(x)


def _bl(xs: list[str] | None) -> list[bytes] | None:
    return None if xs is None else [_b(x) for x in xs]


def _check(kind: str, d: dict[str, Any]) -> None:
    if kind == "inclusion":
        verify_inclusion(_b(d["leafHash"]), d["leafIdx"], d["treeSize"], _bl(d["proof"]), _b(d["root"]))
    elif kind == "consistency":
        verify_consistency(d["size1"], d["size2"], _b(d["root1"]), _b(d["root2"]), _bl(d["proof"]))
    elif kind == "subtreeinclusion":
        merkle.verify_subtree_inclusion(_b(d["leafHash"]), d["leafIdx"], d["start"], d["end"], _bl(d["proof"]), _b(d["root"]))
    else:
        merkle.verify_subtree_consistency(d["start"], d["end"], d["size"], _b(d["root1"]), _b(d["root2"]), _bl(d["proof"]))


def test_the_shared_vectors_are_all_there() -> None:
    """Fails (rather than silently testing nothing) if ../shared/testvectors/rfc9162 is missing."""
    files = _vector_files()
    assert VECTORS.is_dir(), f"test vectors not found at {VECTORS} (set SILOGUARD_RFC9162_VECTORS)"
    per_kind = {kind: sum(1 for f in files if f.relative_to(VECTORS).parts[0] == kind) for kind in KINDS}
    assert per_kind == {"inclusion": 98, "consistency": 98, "subtreeinclusion": 204, "subtreeconsistency": 118}


@pytest.mark.parametrize("path", _vector_files(), ids=lambda p: str(p.relative_to(VECTORS)))
def test_vector_is_accepted_or_rejected_as_its_wantErr_says(path: Path) -> None:
    data = json.loads(path.read_text())
    kind = path.relative_to(VECTORS).parts[0]
    if data["wantErr"]:
        with pytest.raises(AuditIntegrityError):
            _check(kind, data)
    else:
        _check(kind, data)


# ---- generation ----------------------------------------------------------------------
# Straight transcriptions of RFC 9162 2.1.1, 2.1.3.1 and 2.1.4.1, as the oracle.


def _k(n: int) -> int:
    return 1 << ((n - 1).bit_length() - 1)


def rfc_mth(d: list[bytes]) -> bytes:
    if not d:
        return hashlib.sha256(b"").digest()
    if len(d) == 1:
        return leaf_hash(d[0])
    k = _k(len(d))
    return node_hash(rfc_mth(d[:k]), rfc_mth(d[k:]))


def rfc_path(m: int, d: list[bytes]) -> list[bytes]:
    if len(d) <= 1:
        return []
    k = _k(len(d))
    return rfc_path(m, d[:k]) + [rfc_mth(d[k:])] if m < k else rfc_path(m - k, d[k:]) + [rfc_mth(d[:k])]


def rfc_subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    if m == len(d):
        return [] if b else [rfc_mth(d)]
    k = _k(len(d))
    if m <= k:
        return rfc_subproof(m, d[:k], b) + [rfc_mth(d[k:])]
    return rfc_subproof(m - k, d[k:], False) + [rfc_mth(d[:k])]


@pytest.mark.parametrize("n", range(0, 41))
def test_roots_and_proofs_match_the_rfc_definitions_and_verify(n: int) -> None:
    data = [i.to_bytes(2, "big") for i in range(n)]
    tree = MerkleTree(leaf_hash(x) for x in data)
    frontier = Frontier(0, [])
    for x in data:
        frontier.append(leaf_hash(x))
    root = rfc_mth(data)
    assert tree.root() == frontier.root() == root == merkle.mth([leaf_hash(x) for x in data])
    for m in range(n):
        proof = tree.inclusion_proof(m)
        assert proof == rfc_path(m, data)
        verify_inclusion(leaf_hash(data[m]), m, n, proof, root)
    for m in range(1, n + 1):
        proof = tree.consistency_proof(m)
        assert proof == rfc_subproof(m, data, True)
        verify_consistency(m, n, rfc_mth(data[:m]), root, proof)


def test_reference_tree_reproduces_the_vectors_happy_paths() -> None:
    """Our generator yields exactly the proofs the shared vectors carry."""
    tree = MerkleTree(leaf_hash(x) for x in REFERENCE_LEAVES)
    assert base64.b64encode(tree.root()).decode() == "XcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg="
    checked = 0
    for path in sorted(VECTORS.glob("inclusion/*/happy-path.json")):
        d = json.loads(path.read_text())
        assert [base64.b64encode(p).decode() for p in tree.inclusion_proof(d["leafIdx"], d["treeSize"])] == (d["proof"] or [])
        assert base64.b64encode(tree.root(d["treeSize"])).decode() == d["root"]
        checked += 1
    for path in sorted(VECTORS.glob("consistency/*/happy-path.json")):
        d = json.loads(path.read_text())
        assert [base64.b64encode(p).decode() for p in tree.consistency_proof(d["size1"], d["size2"])] == (d["proof"] or [])
        checked += 1
    assert checked == 10


def test_frontier_reports_exactly_the_perfect_nodes_each_leaf_completes() -> None:
    tree = MerkleTree()
    frontier = Frontier(0, [])
    completed: set[tuple[int, int, bytes]] = set()
    for i in range(100):
        h = leaf_hash(bytes([i]))
        tree.append(h)
        completed.update(frontier.append(h))
        restored = Frontier(frontier.size, [tree.node(k) for k in Frontier.keys(frontier.size)])
        assert restored.root() == frontier.root() == tree.root()
    expected = {(lvl, idx, h) for lvl, row in enumerate(tree.levels) if lvl > 0 for idx, h in enumerate(row)}
    assert completed == expected


@pytest.mark.parametrize("n", [1, 2, 3, 7, 8, 9, 31, 64, 100])
def test_any_single_bit_flip_in_a_proof_is_rejected(n: int) -> None:
    rng = random.Random(n)
    tree = MerkleTree(leaf_hash(bytes([i])) for i in range(n))
    root = tree.root()
    for _ in range(30):
        m = rng.randrange(n)
        proof = tree.inclusion_proof(m)
        if proof:
            j, bit = rng.randrange(len(proof)), rng.randrange(256)
            bad = list(proof)
            bad[j] = (int.from_bytes(bad[j], "big") ^ (1 << bit)).to_bytes(32, "big")
            with pytest.raises(AuditIntegrityError):
                verify_inclusion(tree.node((0, m)), m, n, bad, root)
        with pytest.raises(AuditIntegrityError):
            verify_inclusion(tree.node((0, (m + 1) % n)) if n > 1 else b"\0" * 32, m, n, proof, root)  # wrong leaf
        old = rng.randrange(1, n + 1)
        cproof = tree.consistency_proof(old)
        if cproof:
            j = rng.randrange(len(cproof))
            bad = list(cproof)
            bad[j] = bytes([bad[j][0] ^ 1]) + bad[j][1:]
            with pytest.raises(AuditIntegrityError):
                verify_consistency(old, n, tree.root(old), root, bad)


def test_ranges_are_valid_subtrees_and_reject_impossible_requests() -> None:
    for n in range(1, 70):
        for m in range(n):
            assert all(is_valid_subtree(a, b) for a, b in inclusion_ranges(m, n))
        for m in range(1, n + 1):
            assert all(is_valid_subtree(a, b) for a, b in consistency_ranges(m, n))
    with pytest.raises(ValueError):
        inclusion_ranges(5, 5)
    with pytest.raises(ValueError):
        consistency_ranges(0, 5)
    with pytest.raises(ValueError):
        consistency_ranges(6, 5)
    assert merkle.mth([]) == EMPTY_ROOT == hashlib.sha256(b"").digest()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((b"x" * 31, 0, 1, [], b"x" * 32), "leaf hash must be a 32-byte"),
        ((b"x" * 32, -1, 1, [], b"x" * 32), "non-negative integer"),
        ((b"x" * 32, True, 2, [], b"x" * 32), "non-negative integer"),
        ((b"x" * 32, 0, 2, [b"y" * 33], b"x" * 32), r"proof\[0\] must be a 32-byte"),
    ],
)
def test_inclusion_verifier_refuses_malformed_input(args: tuple[Any, ...], message: str) -> None:
    with pytest.raises(AuditIntegrityError, match=message):
        verify_inclusion(*args)
