"""Read YAML data files keeping line numbers, so a bad value is reported as ``file:line: key``.

PyYAML's ``compose`` gives the node tree with start marks; the data files here are small,
so their values are read from the nodes directly instead of from ``safe_load``'s plain
dicts, which have lost the lines. Duplicate keys, which ``safe_load`` silently resolves
to the last value, are refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import yaml

from siloguard.errors import ConfigError

__all__ = ["YamlDoc"]


class YamlDoc:
    """One YAML file: its root node and helpers that fail with ``file:line: key: problem``."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            text = self.path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{self.path}: cannot read ({exc.strerror}); check the path") from exc
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{self.path}:{mark.line + 1}" if mark is not None else str(self.path)
            problem = getattr(exc, "problem", None) or "invalid YAML"
            raise ConfigError(f"{where}: not valid YAML ({problem})") from None
        if root is None:
            raise ConfigError(f"{self.path}: the file is empty")
        self.root: yaml.Node = root

    def fail(self, node: yaml.Node, key: str, problem: str) -> NoReturn:
        raise ConfigError(f"{self.path}:{node.start_mark.line + 1}: {key}: {problem}")

    def mapping(self, node: yaml.Node, key: str) -> Iterator[tuple[str, yaml.Node, yaml.Node]]:
        """(key, key node, value node) of a mapping, in file order; refuses duplicates."""
        if not isinstance(node, yaml.MappingNode):
            self.fail(node, key, "expected a mapping")
        seen: set[str] = set()
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                self.fail(key_node, key, "mapping keys must be plain strings")
            name = str(key_node.value)
            if name in seen:
                self.fail(key_node, f"{key}.{name}" if key else name, "duplicate key")
            seen.add(name)
            yield name, key_node, value_node

    def sequence(self, node: yaml.Node, key: str) -> list[yaml.Node]:
        if not isinstance(node, yaml.SequenceNode):
            self.fail(node, key, "expected a list")
        return list(node.value)

    def string(self, node: yaml.Node, key: str) -> str:
        """A non-empty scalar, as written (YAML's implicit typing is not applied)."""
        if not isinstance(node, yaml.ScalarNode) or node.tag == "tag:yaml.org,2002:null":
            self.fail(node, key, "expected a non-empty string")
        value = str(node.value).strip()
        if not value:
            self.fail(node, key, "expected a non-empty string")
        return value

    def boolean(self, node: yaml.Node, key: str) -> bool:
        if isinstance(node, yaml.ScalarNode) and node.value in ("true", "false"):
            return node.value == "true"
        self.fail(node, key, "expected true or false")

    def integer(self, node: yaml.Node, key: str, *, minimum: int = 0) -> int:
        if isinstance(node, yaml.ScalarNode) and node.value.isdigit() and int(node.value) >= minimum:
            return int(node.value)
        self.fail(node, key, f"expected a whole number >= {minimum}")

    def number(self, node: yaml.Node, key: str, *, low: float, high: float) -> float:
        try:
            value = float(node.value) if isinstance(node, yaml.ScalarNode) else None
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            self.fail(node, key, f"expected a number between {low} and {high}")
        return value
