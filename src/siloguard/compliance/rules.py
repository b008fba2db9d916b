"""The rule set: GDPR/CCPA rules as data in ``policies/rules/*.yaml``.

A rule names the check that evaluates it (:data:`siloguard.compliance.checks.CHECKS`), its
legal source, its severity, what it inspects, its condition in words, the fix in plain
language, and its scope: ``check`` (``siloguard check``) and/or ``training`` (the federation's
pre-flight before round 1). A rule file that names an unknown check, severity, scope or
input, or repeats an id, fails at load with ``file:line: key: problem``: a rule that cannot
run must not silently pass.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from siloguard._yaml import YamlDoc
from siloguard.errors import ConfigError

__all__ = ["INPUTS", "RULES_DIR", "SCOPES", "SEVERITIES", "Rule", "load_rules"]

RULES_DIR = Path(__file__).resolve().parent.parent / "policies" / "rules"

SEVERITIES = ("error", "warning", "info")
SCOPES = ("check", "training")
INPUTS = (
    "data_maps", "processing_records", "consent_registry", "request_queue", "budget_ledger",
    "audit_log", "federation", "store_data", "dpia_register", "transfer_register", "incident_register",
)
_RULE_ID = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*")
_KEYS = ("id", "title", "source", "severity", "inspects", "check", "condition", "fix", "scope")


@dataclass(frozen=True)
class Rule:
    id: str
    title: str
    source: tuple[str, ...]
    severity: str
    inspects: tuple[str, ...]
    check: str
    condition: str
    fix: str
    scope: tuple[str, ...]


def _choices(doc: YamlDoc, node: object, key: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    values = tuple(doc.string(n, key) for n in doc.sequence(node, key))  # type: ignore[arg-type]
    if not values:
        doc.fail(node, key, "list at least one")  # type: ignore[arg-type]
    for value in values:
        if value not in allowed:
            doc.fail(node, key, f"unknown value {value!r}; expected one of {', '.join(allowed)}")  # type: ignore[arg-type]
    return values


def _load_file(path: Path, known_checks: frozenset[str]) -> list[Rule]:
    doc = YamlDoc(path)
    top = {k: v for k, _, v in doc.mapping(doc.root, "")}
    if set(top) != {"rules"}:
        doc.fail(doc.root, "rules", "a rule file holds one key, rules: a list of rules")
    rules = []
    for node in doc.sequence(top["rules"], "rules"):
        fields = {}
        for key, key_node, value in doc.mapping(node, "rules[]"):
            if key not in _KEYS:
                doc.fail(key_node, key, f"unknown key; expected one of {', '.join(_KEYS)}")
            fields[key] = value
        for key in _KEYS:
            if key not in fields:
                doc.fail(node, key, "missing")
        rule_id = doc.string(fields["id"], "id")
        if not _RULE_ID.fullmatch(rule_id):
            doc.fail(fields["id"], "id", "use lower-case words joined by -, e.g. lawful-basis")
        where = f"rules.{rule_id}"
        severity = doc.string(fields["severity"], f"{where}.severity")
        if severity not in SEVERITIES:
            doc.fail(fields["severity"], f"{where}.severity", f"use one of {', '.join(SEVERITIES)}")
        check = doc.string(fields["check"], f"{where}.check")
        if check not in known_checks:
            doc.fail(fields["check"], f"{where}.check", f"no such check; known: {', '.join(sorted(known_checks))}")
        rules.append(
            Rule(
                id=rule_id,
                title=doc.string(fields["title"], f"{where}.title"),
                source=tuple(doc.string(n, f"{where}.source") for n in doc.sequence(fields["source"], f"{where}.source")),
                severity=severity,
                inspects=_choices(doc, fields["inspects"], f"{where}.inspects", INPUTS),
                check=check,
                condition=doc.string(fields["condition"], f"{where}.condition"),
                fix=doc.string(fields["fix"], f"{where}.fix"),
                scope=_choices(doc, fields["scope"], f"{where}.scope", SCOPES),
            )
        )
        if not rules[-1].source:
            doc.fail(fields["source"], f"{where}.source", "name at least one legal provision")
    return rules


def load_rules(directory: Path | None = None) -> dict[str, Rule]:
    """Every rule in ``directory``'s ``*.yaml`` files (default: the package's rules), by id."""
    from siloguard.compliance.checks import CHECKS

    base = Path(directory) if directory is not None else RULES_DIR
    from siloguard._files import parsed_once

    return parsed_once("rules", base, "*.yaml", lambda: _load_rules(base, frozenset(CHECKS)))


def _load_rules(base: Path, checks: frozenset[str]) -> dict[str, Rule]:
    paths = sorted(base.glob("*.yaml"))
    if not paths:
        raise ConfigError(f"{base}: no rule files (*.yaml); set compliance.rules to a directory of rule files")
    rules: dict[str, Rule] = {}
    for path in paths:
        for rule in _load_file(path, checks):
            if rule.id in rules:
                raise ConfigError(f"{path}: rule {rule.id!r} is defined twice; rule ids are unique")
            rules[rule.id] = rule
    return rules
