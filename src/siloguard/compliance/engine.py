"""Run the rules against a context, record the results in the audit log, gate a training run.

:func:`evaluate` runs every rule of a scope (or the ones asked for) and never lets a check's
own failure pass: a check that raises is a failed result naming the error (fail closed).
:func:`audit_events` turns results into audit events (``check.result`` per rule, which the
officer report shows, ``consent.coverage`` per store and purpose, and one summary event).
:func:`preflight` is the federation's gate: the rules of scope ``training``, audited, and a
:class:`~siloguard.errors.ComplianceError` naming the rule and the fix on any error.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from siloguard.audit.events import AuditEvent
from siloguard.audit.vocabulary import (
    CHECK_RESULT,
    COMPLIANCE_PREFLIGHT,
    CONSENT_COVERAGE,
    COUNT_CONSENTED,
    COUNT_SUBJECTS,
)
from siloguard.compliance.checks import CHECKS, Outcome
from siloguard.compliance.context import TRAINING_PURPOSE, Context
from siloguard.compliance.rules import Rule, load_rules
from siloguard.config import Settings
from siloguard.errors import ComplianceError, ConfigError

if TYPE_CHECKING:
    from siloguard.audit.log import AuditLog

__all__ = [
    "CHECK_PURPOSE",
    "Result",
    "audit_events",
    "evaluate",
    "failed_errors",
    "preflight",
    "refusal_message",
    "select_rules",
]

log = logging.getLogger(__name__)

#: The purpose of the checks' own audit events: accountability (GDPR Art. 5(2)).
CHECK_PURPOSE = "essential.legal_obligation"
_DECISION = {"passed": "allow", "failed": "deny", "warning": "info", "not_applicable": "info"}


@dataclass(frozen=True)
class Result:
    rule: Rule
    outcome: Outcome

    @property
    def status(self) -> str:
        """passed | failed | warning | not_applicable, with a failed warning-rule shown as warning."""
        if self.outcome.status == "failed" and self.rule.severity != "error":
            return "warning" if self.rule.severity == "warning" else "info"
        return self.outcome.status

    @property
    def is_error(self) -> bool:
        return self.outcome.status == "failed" and self.rule.severity == "error"

    def to_json(self) -> dict[str, object]:
        r = self.rule
        return {
            "id": r.id, "title": r.title, "source": list(r.source), "severity": r.severity, "status": self.status,
            "inspects": list(r.inspects), "condition": r.condition, "findings": list(self.outcome.findings),
            "fix": r.fix if self.outcome.status in ("failed", "warning") else None, "counts": dict(self.outcome.counts),
        }


def select_rules(rules: dict[str, Rule], *, scope: str, only: Sequence[str] = ()) -> list[Rule]:
    """The rules of ``scope``, or exactly ``only`` (each must exist)."""
    unknown = [r for r in only if r not in rules]
    if unknown:
        raise ConfigError(f"unknown rule(s) {', '.join(unknown)}; known: {', '.join(rules)}")
    if only:
        return [rules[r] for r in rules if r in only]
    return [r for r in rules.values() if scope in r.scope]


def _run(rule: Rule, ctx: Context, scope: str) -> Outcome:
    try:
        return CHECKS[rule.check](ctx, scope)
    except Exception as exc:  # noqa: BLE001 - fail closed: a rule that cannot be evaluated fails
        log.warning("compliance rule %s could not be evaluated: %s", rule.id, type(exc).__name__)
        message = str(exc) if hasattr(exc, "exit_code") else f"{type(exc).__name__} while evaluating"
        return Outcome("failed", [f"the check could not be evaluated: {message}"])


def evaluate(ctx: Context, rules: Iterable[Rule], *, scope: str = "check") -> list[Result]:
    return [Result(rule, _run(rule, ctx, scope)) for rule in rules]


def failed_errors(results: Iterable[Result]) -> list[Result]:
    return [r for r in results if r.is_error]


def audit_events(results: Sequence[Result], *, actor: str, action: str, purpose: str = CHECK_PURPOSE,
                 store: str | None = None) -> list[AuditEvent]:
    """One ``check.result`` per rule, ``consent.coverage`` per store and purpose, one summary."""
    events = []
    for res in results:
        events.append(
            AuditEvent(
                actor=actor, action=CHECK_RESULT, resource=f"check:{res.rule.id}", purpose=purpose,
                decision=_DECISION[res.status] if res.status in _DECISION else "info",  # type: ignore[arg-type]
                reason=res.status.replace("_", "-"), counts=dict(res.outcome.counts), store=store,
            )
        )
        for cov in res.outcome.coverage:
            events.append(
                AuditEvent(
                    actor=actor, action=CONSENT_COVERAGE, resource="dataset:transactions", purpose=cov.purpose,
                    decision="info", counts={COUNT_SUBJECTS: cov.subjects, COUNT_CONSENTED: cov.consented}, store=cov.store,
                )
            )
    errors = failed_errors(results)
    events.append(
        AuditEvent(
            actor=actor, action=action, resource="rules:gdpr-ccpa", purpose=purpose,
            decision="deny" if errors else "allow", store=store,
            reason=f"failed:{errors[0].rule.id}" if errors else "passed",
            counts={
                "rules": len(results), "failed": len(errors),
                "warnings": sum(r.status == "warning" for r in results),
                "not_applicable": sum(r.status == "not_applicable" for r in results),
            },
        )
    )
    return events


def refusal_message(errors: Sequence[Result]) -> str:
    first = errors[0]
    finding = first.outcome.findings[0] if first.outcome.findings else "failed"
    more = f" (and {len(errors) - 1} more failed rule(s): {', '.join(r.rule.id for r in errors[1:])})" if len(errors) > 1 else ""
    return (
        f"training refused by compliance rule {first.rule.id} ({'; '.join(first.rule.source)}): {finding}. "
        f"Fix: {first.rule.fix}{more}"
    )


def store_preflight(settings: Settings, stores: dict, audit: AuditLog, *, store: str) -> list[Result]:
    """A store's own pre-flight on its site: the training rules over its rows, database and keys.

    Audited in the store's own log (actor ``store:<store>``); raises :class:`ComplianceError`
    on an error-severity failure, so the store does not train.
    """
    ctx = Context(settings, stores=stores)
    try:
        results = evaluate(ctx, select_rules(load_rules(settings.compliance.rules), scope="training"), scope="training")
    finally:
        ctx.close()
    audit.append(audit_events(results, actor=f"store:{store}", action=COMPLIANCE_PREFLIGHT, purpose=TRAINING_PURPOSE,
                              store=store))
    errors = failed_errors(results)
    if errors:
        raise ComplianceError(refusal_message(errors), tuple(r.rule.id for r in errors))
    return results


def preflight(settings: Settings, audit: AuditLog) -> list[Result]:
    """The rules of scope ``training``, before round 1; audited; raises on any error.

    ``audit`` is the run's :class:`~siloguard.audit.log.AuditLog`; the results are appended
    in one transaction before the decision is acted on (if they cannot be recorded, the
    run does not start either).
    """
    ctx = Context(settings)
    try:
        results = evaluate(ctx, select_rules(load_rules(settings.compliance.rules), scope="training"), scope="training")
    finally:
        ctx.close()
    audit.append(audit_events(results, actor="coordinator", action=COMPLIANCE_PREFLIGHT, purpose=TRAINING_PURPOSE))
    errors = failed_errors(results)
    if errors:
        raise ComplianceError(refusal_message(errors), tuple(r.rule.id for r in errors))
    return results

