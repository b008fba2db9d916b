"""The Merkle tree of RFC 9162, section 2.1, with SHA-256: hashes, proofs, verification.

Written from the RFC's text:

- 2.1.1 Merkle Tree Hash: ``MTH({}) = SHA-256()``, ``MTH({d}) = SHA-256(0x00 || d)`` and
  ``MTH(D_n) = SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n]))`` with ``k`` the largest power of
  two smaller than ``n``.
- 2.1.3 inclusion proofs: ``PATH(m, D_n)`` (generation, 2.1.3.1) and the verification
  algorithm of 2.1.3.2.
- 2.1.4 consistency proofs: ``PROOF(m, D_n)`` (generation, 2.1.4.1) and the verification
  algorithm of 2.1.4.2.

It also verifies the *subtree* inclusion and consistency proofs of the Merkle Tree
Certificates draft (draft-ietf-plants-merkle-tree-certs, sections 4.1, 4.3.2 and 4.4.3),
which extend RFC 9162 to aligned intervals ``[start, end)`` of a tree; the shared test
vectors cover both.

Every element of a proof produced here is the hash of an interval of leaves that is a
*valid subtree* (its start is a multiple of BIT_CEIL(size)), so it is the fold of at most
log2(n) *perfect* nodes: node ``(level, index)`` covers leaves
``[index * 2**level, (index + 1) * 2**level)``. Perfect nodes never change once complete,
which is what lets the audit log store them and answer proofs without rehashing.

The verifiers raise :class:`~siloguard.errors.AuditIntegrityError` and return nothing:
there is no boolean to forget to check.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable, Mapping, Sequence

from siloguard.errors import AuditIntegrityError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "Frontier",
    "MerkleTree",
    "NodeKey",
    "consistency_ranges",
    "fold",
    "inclusion_ranges",
    "is_valid_subtree",
    "leaf_hash",
    "mth",
    "node_hash",
    "perfect_nodes",
    "resolve",
    "verify_consistency",
    "verify_inclusion",
    "verify_subtree_consistency",
    "verify_subtree_inclusion",
]

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
_LEAF = b"\x00"
_NODE = b"\x01"

NodeKey = tuple[int, int]  # (level, index)


def leaf_hash(data: bytes) -> bytes:
    """``MTH({d}) = SHA-256(0x00 || d)``."""
    return hashlib.sha256(_LEAF + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 || left || right)``."""
    return hashlib.sha256(_NODE + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


def is_valid_subtree(start: int, end: int) -> bool:
    """``0 <= start <= end`` and ``start`` is a multiple of BIT_CEIL(end - start) (MTC draft 4.1)."""
    if start < 0 or start > end:
        return False
    size = end - start
    ceil = 1 if size <= 1 else 1 << (size - 1).bit_length()
    return start % ceil == 0


def perfect_nodes(start: int, end: int) -> list[NodeKey]:
    """The perfect nodes whose fold is ``MTH(D[start:end])``, left to right.

    ``[start, end)`` must be a non-empty valid subtree; the pieces follow the binary digits
    of its size, largest first, exactly as RFC 9162's recursive split does.
    """
    if end <= start or not is_valid_subtree(start, end):
        raise ValueError(f"[{start}, {end}) is not a non-empty valid subtree")
    out: list[NodeKey] = []
    pos, size = start, end - start
    for level in range(size.bit_length() - 1, -1, -1):
        if size >> level & 1:
            out.append((level, pos >> level))
            pos += 1 << level
    return out


def fold(hashes: Sequence[bytes]) -> bytes:
    """Combine perfect-node hashes (largest first) into the hash of their interval."""
    it = reversed(hashes)
    acc = next(it)
    for h in it:
        acc = node_hash(h, acc)
    return acc


def mth(leaf_hashes: Sequence[bytes]) -> bytes:
    """``MTH`` of a list given by its leaf hashes (RFC 9162 2.1.1); the empty list hashes to ``EMPTY_ROOT``."""
    if not leaf_hashes:
        return EMPTY_ROOT
    return MerkleTree(leaf_hashes).root()


def inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """``PATH(index, D[0:size])`` (RFC 9162 2.1.3.1) as leaf intervals, leaf side first."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of size {size}")
    out: list[tuple[int, int]] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            out.append((lo + k, hi))
            hi = lo + k
        else:
            out.append((lo, lo + k))
            lo += k
    out.reverse()
    return out


def consistency_ranges(old: int, new: int) -> list[tuple[int, int]]:
    """``PROOF(old, D[0:new])`` (RFC 9162 2.1.4.1) as leaf intervals, in proof order."""
    if not 0 < old <= new:
        raise ValueError(f"no consistency proof from size {old} to size {new}: need 0 < old <= new")
    out: list[tuple[int, int]] = []
    lo, hi, m, complete = 0, new, old, True
    while m != hi - lo:
        k = _split(hi - lo)
        if m <= k:
            out.append((lo + k, hi))
            hi = lo + k
        else:
            out.append((lo, lo + k))
            lo += k
            m -= k
            complete = False
    if not complete:  # SUBPROOF(m, D_m, false) = {MTH(D_m)}
        out.append((lo, hi))
    out.reverse()
    return out


def resolve(ranges: Sequence[tuple[int, int]], lookup: Callable[[Iterable[NodeKey]], Mapping[NodeKey, bytes]]) -> list[bytes]:
    """Hash each interval from perfect nodes fetched in one ``lookup`` call."""
    pieces = [perfect_nodes(a, b) for a, b in ranges]
    found = lookup({key for piece in pieces for key in piece})
    try:
        return [fold([found[key] for key in piece]) for piece in pieces]
    except KeyError as exc:
        raise AuditIntegrityError(f"Merkle node {exc.args[0]} is missing from the log's node store") from None


class MerkleTree:
    """An in-memory tree over leaf hashes: every perfect node kept, proofs in O(log n).

    Used by the verifier (recomputing a log from its events) and by tests as the oracle.
    """

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        self._levels: list[list[bytes]] = [[]]
        for h in leaf_hashes:
            self.append(h)

    def __len__(self) -> int:
        return len(self._levels[0])

    def append(self, leaf: bytes) -> None:
        """Add one leaf hash and every perfect node it completes."""
        level, h = 0, leaf
        while True:
            row = self._levels[level]
            row.append(h)
            if len(row) % 2:
                return
            h = node_hash(row[-2], row[-1])
            level += 1
            if level == len(self._levels):
                self._levels.append([])

    @property
    def levels(self) -> list[list[bytes]]:
        """``levels[l][i]`` is perfect node ``(l, i)``."""
        return self._levels

    def node(self, key: NodeKey) -> bytes:
        level, index = key
        return self._levels[level][index]

    def _lookup(self, keys: Iterable[NodeKey]) -> dict[NodeKey, bytes]:
        return {key: self.node(key) for key in keys}

    def range_hash(self, start: int, end: int) -> bytes:
        if start == end:
            return EMPTY_ROOT
        return fold([self.node(key) for key in perfect_nodes(start, end)])

    def root(self, size: int | None = None) -> bytes:
        """``MTH(D[0:size])``; the whole tree by default."""
        n = len(self) if size is None else size
        if not 0 <= n <= len(self):
            raise ValueError(f"no tree of size {n}: the tree has {len(self)} leaves")
        return self.range_hash(0, n)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        n = len(self) if size is None else size
        return resolve(inclusion_ranges(index, n), self._lookup)

    def consistency_proof(self, old: int, new: int | None = None) -> list[bytes]:
        n = len(self) if new is None else new
        return resolve(consistency_ranges(old, n), self._lookup)


class Frontier:
    """The perfect nodes that make up a tree of ``size`` leaves, largest first.

    This is all an appender needs: adding a leaf completes zero or more perfect nodes
    (returned so they can be stored), and the fold of the frontier is the tree's root.
    """

    def __init__(self, size: int, hashes: Sequence[bytes]) -> None:
        keys = self.keys(size)
        if len(keys) != len(hashes):
            raise ValueError(f"a tree of size {size} has {len(keys)} frontier nodes, got {len(hashes)}")
        self.size = size
        self._nodes: list[tuple[int, int, bytes]] = [(lvl, idx, h) for (lvl, idx), h in zip(keys, hashes)]

    @staticmethod
    def keys(size: int) -> list[NodeKey]:
        """The ``(level, index)`` of the frontier of a tree of ``size`` leaves."""
        return perfect_nodes(0, size) if size else []

    def append(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        """Add a leaf hash; return the perfect nodes of level >= 1 it completed."""
        nodes = self._nodes
        nodes.append((0, self.size, leaf))
        self.size += 1
        done: list[tuple[int, int, bytes]] = []
        while len(nodes) >= 2 and nodes[-1][0] == nodes[-2][0]:
            level, index, right = nodes.pop()
            _, _, left = nodes.pop()
            parent = (level + 1, index >> 1, node_hash(left, right))
            nodes.append(parent)
            done.append(parent)
        return done

    def root(self) -> bytes:
        return fold([h for _, _, h in self._nodes]) if self._nodes else EMPTY_ROOT


# ---- verification ----------------------------------------------------------------


def _fail(message: str) -> AuditIntegrityError:
    return AuditIntegrityError(message)


def _check_size(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _fail(f"{name} must be a non-negative integer")
    return value


def _check_hash(name: str, value: object) -> bytes:
    if not isinstance(value, (bytes, bytearray)) or len(value) != HASH_SIZE:
        raise _fail(f"{name} must be a {HASH_SIZE}-byte SHA-256 hash")
    return bytes(value)


def _check_proof(proof: Sequence[bytes] | None) -> list[bytes]:
    return [_check_hash(f"proof[{i}]", p) for i, p in enumerate(proof or ())]


def _same(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


def _evaluate_inclusion(leaf: bytes, fn: int, sn: int, proof: list[bytes]) -> bytes:
    """Steps 2-5 of RFC 9162 2.1.3.2 (= steps 2-6 of the MTC draft's 4.3.2): the implied root."""
    r = leaf
    for p in proof:
        if sn == 0:
            raise _fail("inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise _fail("inclusion proof is shorter than the tree is deep")
    return r


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes] | None, root: bytes) -> None:
    """RFC 9162 2.1.3.2: does ``proof`` show leaf hash ``leaf`` at ``index`` in the tree ``root`` of ``size``?"""
    index, size = _check_size("leaf index", index), _check_size("tree size", size)
    leaf, root = _check_hash("leaf hash", leaf), _check_hash("root hash", root)
    path = _check_proof(proof)
    if index >= size:
        raise _fail(f"leaf index {index} is outside a tree of size {size}")
    if not _same(_evaluate_inclusion(leaf, index, size - 1, path), root):
        raise _fail("inclusion proof does not lead to the root hash")


def verify_consistency(size1: int, size2: int, root1: bytes, root2: bytes, proof: Sequence[bytes] | None) -> None:
    """RFC 9162 2.1.4.2: is the tree ``root1`` of ``size1`` a prefix of the tree ``root2`` of ``size2``?"""
    size1, size2 = _check_size("first tree size", size1), _check_size("second tree size", size2)
    if size1 == 0:
        raise _fail("a consistency proof from the empty tree proves nothing: the first tree size must be > 0")
    if size1 > size2:
        raise _fail(f"first tree size {size1} is larger than second tree size {size2}")
    if size1 == size2:
        if proof:
            raise _fail("trees of equal size need an empty consistency proof")
        if not _same(bytes(root1), bytes(root2)):
            raise _fail("trees of equal size have different roots")
        return
    root1, root2 = _check_hash("first root hash", root1), _check_hash("second root hash", root2)
    path = _check_proof(proof)
    if not path:
        raise _fail("consistency proof is empty")
    if size1 & (size1 - 1) == 0:  # an exact power of 2: the proof omits root1
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise _fail("consistency proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise _fail("consistency proof is shorter than the tree is deep")
    if not _same(fr, root1):
        raise _fail("consistency proof does not lead to the first root hash")
    if not _same(sr, root2):
        raise _fail("consistency proof does not lead to the second root hash")


def verify_subtree_inclusion(
    entry: bytes, index: int, start: int, end: int, proof: Sequence[bytes] | None, subtree: bytes
) -> None:
    """MTC draft 4.3.3: does ``proof`` show entry hash ``entry`` at ``index`` in subtree ``[start, end)``?"""
    index, start, end = (_check_size(n, v) for n, v in (("index", index), ("start", start), ("end", end)))
    entry, subtree = _check_hash("entry hash", entry), _check_hash("subtree hash", subtree)
    path = _check_proof(proof)
    if not is_valid_subtree(start, end):
        raise _fail(f"[{start}, {end}) is not a valid subtree")
    if not start <= index < end:
        raise _fail(f"entry {index} is outside subtree [{start}, {end})")
    if not _same(_evaluate_inclusion(entry, index - start, end - start - 1, path), subtree):
        raise _fail("subtree inclusion proof does not lead to the subtree hash")


def verify_subtree_consistency(
    start: int, end: int, size: int, subtree: bytes, root: bytes, proof: Sequence[bytes] | None
) -> None:
    """MTC draft 4.4.3: is subtree ``[start, end)`` with hash ``subtree`` part of the tree ``root`` of ``size``?"""
    start, end, size = (_check_size(n, v) for n, v in (("start", start), ("end", end), ("tree size", size)))
    if not is_valid_subtree(start, end) or end > size:
        raise _fail(f"[{start}, {end}) is not a valid subtree of a tree of size {size}")
    if start == end:
        if proof:
            raise _fail("an empty subtree needs an empty consistency proof")
        if not _same(bytes(subtree), EMPTY_ROOT):
            raise _fail("an empty subtree must hash to SHA-256 of the empty string")
        return
    # No length check on the two hashes: when the subtree is the whole tree the proof is
    # empty and they are compared as they are; otherwise a hash of the wrong length can
    # never equal a SHA-256 output computed below.
    subtree, root = bytes(subtree), bytes(root)
    path = _check_proof(proof)
    fn, sn, tn = start, end - 1, size - 1
    if sn == tn:
        while fn != sn:
            fn, sn, tn = fn >> 1, sn >> 1, tn >> 1
    else:
        while fn != sn and sn & 1:
            fn, sn, tn = fn >> 1, sn >> 1, tn >> 1
    if fn == sn:
        fr = sr = subtree
    else:
        if not path:
            raise _fail("subtree consistency proof is empty")
        fr = sr = path.pop(0)
    for c in path:
        if tn == 0:
            raise _fail("subtree consistency proof is longer than the tree is deep")
        if sn & 1 or sn == tn:
            if fn < sn:
                fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not sn & 1:
                fn, sn, tn = fn >> 1, sn >> 1, tn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn, tn = fn >> 1, sn >> 1, tn >> 1
    if tn != 0:
        raise _fail("subtree consistency proof is shorter than the tree is deep")
    if not _same(fr, subtree):
        raise _fail("subtree consistency proof does not lead to the subtree hash")
    if not _same(sr, root):
        raise _fail("subtree consistency proof does not lead to the root hash")
