"""The fideslang keys (data categories, data uses) and GDPR lawful bases siloguard accepts.

The keys live in ``taxonomy.yaml`` next to this module. Keys are hierarchical: a key covers
itself and every key below it, so a grant on ``user.behavior`` covers
``user.behavior.purchase_history``, and ``user.behavior`` does not cover ``user.behaviour``
or ``user.behavior_extra``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from siloguard._dotted import ancestors, covers  # re-exported: part of this module's API
from siloguard._yaml import YamlDoc

__all__ = ["PURPOSE_NAMES_PATH", "TAXONOMY_PATH", "Taxonomy", "ancestors", "covers", "load_taxonomy", "purpose_name"]

TAXONOMY_PATH = Path(__file__).with_name("taxonomy.yaml")

_KEY = re.compile(r"[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)*")


@dataclass(frozen=True)
class Taxonomy:
    """Accepted data categories, data uses (purposes) and lawful bases."""

    data_categories: frozenset[str]
    data_uses: frozenset[str]
    lawful_bases: tuple[str, ...]
    deprecated: Mapping[str, str] = field(default_factory=dict)

    def is_category(self, key: object) -> bool:
        return isinstance(key, str) and key in self.data_categories

    def is_use(self, key: object) -> bool:
        return isinstance(key, str) and key in self.data_uses


def _keys(doc: YamlDoc, node: object, section: str) -> frozenset[str]:
    keys: set[str] = set()
    for item in doc.sequence(node, section):  # type: ignore[arg-type]
        key = doc.string(item, section)
        if not _KEY.fullmatch(key):
            doc.fail(item, section, f"{key!r} is not a dotted lower-case key")
        if key in keys:
            doc.fail(item, section, f"{key!r} is listed twice")
        parent = key.rpartition(".")[0]
        if parent and parent not in keys:
            doc.fail(item, section, f"{key!r} is listed before (or without) its parent {parent!r}")
        keys.add(key)
    return frozenset(keys)


@lru_cache(maxsize=8)
def load_taxonomy(path: Path = TAXONOMY_PATH) -> Taxonomy:
    """Read and check a taxonomy file (cached per path)."""
    doc = YamlDoc(path)
    sections = {name: value for name, _, value in doc.mapping(doc.root, "")}
    for required in ("data_categories", "data_uses", "lawful_bases"):
        if required not in sections:
            doc.fail(doc.root, required, "missing section")
    categories = _keys(doc, sections["data_categories"], "data_categories")
    uses = _keys(doc, sections["data_uses"], "data_uses")
    bases = tuple(doc.string(n, "lawful_bases") for n in doc.sequence(sections["lawful_bases"], "lawful_bases"))
    deprecated: dict[str, str] = {}
    if "deprecated" in sections:
        for old, key_node, value_node in doc.mapping(sections["deprecated"], "deprecated"):
            new = doc.string(value_node, f"deprecated.{old}")
            if old not in categories | uses or new not in categories | uses:
                doc.fail(key_node, f"deprecated.{old}", "both keys must be listed above")
            deprecated[old] = new
    return Taxonomy(categories, uses, bases, deprecated)


PURPOSE_NAMES_PATH = Path(__file__).with_name("purpose_names.yaml")


@lru_cache(maxsize=1)
def _purpose_names() -> dict[str, str]:
    doc = YamlDoc(PURPOSE_NAMES_PATH)
    uses = load_taxonomy().data_uses
    names: dict[str, str] = {}
    for key, key_node, value_node in doc.mapping(doc.root, ""):
        if key not in uses:
            doc.fail(key_node, key, "not a data use of taxonomy.yaml")
        names[key] = doc.string(value_node, key)
    return names


def purpose_name(purpose: str) -> str:
    """Plain words for a purpose (purpose_names.yaml): its own, its nearest parent's, else the key."""
    names = _purpose_names()
    for key in ancestors(purpose):
        if key in names:
            return names[key]
    return purpose
