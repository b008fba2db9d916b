"""The data-flow gate: every flow of customer data passes :meth:`Gate.admit`.

``admit(principal, purpose, dataset_name, frame)`` returns the part of ``frame`` the
principal may have for that purpose, made safe, or raises :class:`AccessDenied`. In order:

1. **Declared?** The dataset needs a data map with a lawful basis for the purpose. A column
   the map does not declare never passes; if a sample of it looks like personal data the
   whole flow is refused until it is declared.
2. **Policy.** One Casbin decision per data category of the columns the map allows for the
   purpose (role, store, category, action, purpose, owner). Columns whose category is denied
   are dropped; if nothing is left, or a column asked for by name is denied, the flow is
   refused. A data subject reaches only rows about themself.
3. **Erased and consent.** Rows of customers on the store's suppression list (erased,
   :class:`SuppressionSource`) never pass, whatever the purpose or lawful basis. When the
   purpose rests on consent, only rows of subjects that the :class:`ConsentSource` says have
   a valid basis at ``at`` are kept.
4. **Minimisation, masking, pseudonymisation.** Only the allowed columns are kept; each is
   passed clear, masked by category, scanned (free text) or pseudonymised (the subject id,
   always) as its data map says for the purpose.
5. **Record.** One decision event per call, allowed or denied, through the
   :class:`DecisionRecorder`. Events hold ids, names of columns and counts: never a cell
   value, and data subjects only as blinded references (keyed per subject, unlinkable after
   erasure). If recording fails nothing is released.

Anything unexpected on the way is a refusal, never a pass-through.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

import pandas as pd

from siloguard.errors import AccessDenied
from siloguard.policies.datamap import DataMap, Treatment, load_datamaps
from siloguard.policies.enforcer import (
    SUBJECT_ROLE,
    AccessRequest,
    Decision,
    PolicyEnforcer,
)
from siloguard.policies.taxonomy import ancestors, load_taxonomy
from siloguard.privacy.masking import Masker
from siloguard.privacy.pseudonyms import Pseudonymiser, normalise_ids

__all__ = [
    "ConsentSource",
    "DecisionRecorder",
    "Gate",
    "GatedData",
    "InMemoryConsentSource",
    "MemoryRecorder",
    "Principal",
    "SuppressionSource",
]

log = logging.getLogger(__name__)

_SUBJECT_PREFIX = "subject:"


@dataclass(frozen=True)
class Principal:
    """Who asks: an id ``<kind>:<name>`` and the role they act in.

    A data subject's id is ``subject:<customer id>``; its repr hides the customer id.
    """

    id: str
    role: str

    @property
    def is_subject(self) -> bool:
        return self.role == SUBJECT_ROLE

    def __repr__(self) -> str:
        shown = f"{_SUBJECT_PREFIX}<hidden>" if self.id.startswith(_SUBJECT_PREFIX) else self.id
        return f"Principal(id={shown!r}, role={self.role!r})"


@runtime_checkable
class ConsentSource(Protocol):
    """Answers: which of these subjects had a valid basis for this purpose at this time?"""

    def subjects_with_basis(self, purpose: str, subject_ids: Collection[str], at: datetime) -> set[str]: ...


@runtime_checkable
class SuppressionSource(Protocol):
    """Answers: which of these subjects were erased by the store (its suppression list)?"""

    def suppressed(self, subject_ids: Collection[str]) -> set[str]: ...


@runtime_checkable
class DecisionRecorder(Protocol):
    """Where decision events go (the audit log implements this)."""

    def record(self, event: dict[str, Any]) -> None: ...


class InMemoryConsentSource:
    """Consent events held in memory, until the database consent registry replaces it.

    An event for a purpose also speaks for every purpose below it (consent to ``marketing``
    covers ``marketing.advertising.first_party.targeted``). For a subject and purpose the
    latest event at or before ``at`` among the purpose and its ancestors decides; on equal
    times a withdrawal wins. No event means no consent.
    """

    def __init__(self) -> None:
        # subject -> purpose -> list of (time, granted)
        self._events: dict[str, dict[str, list[tuple[datetime, bool]]]] = defaultdict(lambda: defaultdict(list))

    @staticmethod
    def _time(at: datetime) -> datetime:
        if at.tzinfo is None:
            raise ValueError("consent times must be timezone-aware (e.g. datetime.now(timezone.utc))")
        return at

    def grant(self, subject_id: object, purpose: str, at: datetime) -> None:
        self._events[str(subject_id)][purpose].append((self._time(at), True))

    def withdraw(self, subject_id: object, purpose: str, at: datetime) -> None:
        self._events[str(subject_id)][purpose].append((self._time(at), False))

    def grant_all(self, subject_ids: Collection[object], purpose: str, at: datetime) -> None:
        for sid in subject_ids:
            self.grant(sid, purpose, at)

    def subjects_with_basis(self, purpose: str, subject_ids: Collection[str], at: datetime) -> set[str]:
        at = self._time(at)
        keys = ancestors(purpose)
        out = set()
        for sid in subject_ids:
            by_purpose = self._events.get(sid)
            if not by_purpose:
                continue
            latest: tuple[datetime, bool] | None = None
            for key in keys:
                for when, granted in by_purpose.get(key, ()):
                    # later wins; at equal times a withdrawal (False) sorts after a grant
                    if when <= at and (latest is None or (when, not granted) > (latest[0], not latest[1])):
                        latest = (when, granted)
            if latest is not None and latest[1]:
                out.add(sid)
        return out


class MemoryRecorder:
    """Keeps decision events in a list (tests, demos); the audit log replaces it."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def record(self, event: dict[str, Any]) -> None:
        self.events.append(event)


@dataclass(frozen=True)
class GatedData:
    """What the gate let through, and the decision event it recorded."""

    frame: pd.DataFrame
    decision_id: str
    dataset: str
    purpose: str
    lawful_basis: str
    rows_in: int
    rows_out: int
    columns_dropped: Mapping[str, str]
    values_masked: Mapping[str, int]
    event: Mapping[str, Any] = field(repr=False)


@dataclass
class _Flow:
    """Bookkeeping of one admit() call, turned into the decision event."""

    decision_id: str
    at: datetime
    principal: Principal
    actor: str
    action: str
    purpose: str
    dataset: str
    rows_in: int
    columns_in: list[str]
    lawful_basis: str | None = None
    datamap_digest: str | None = None
    rows_out: int = 0
    rows_without_basis: int = 0
    rows_suppressed: int = 0
    columns_out: list[str] = field(default_factory=list)
    columns_dropped: dict[str, str] = field(default_factory=dict)
    values_masked: dict[str, int] = field(default_factory=dict)
    values_pseudonymised: int = 0
    findings: Counter[str] = field(default_factory=Counter)
    decisions: list[str] = field(default_factory=list)


class Gate:
    """One store's gate. Build it once with the store's enforcer, keys, consent and recorder."""

    def __init__(
        self,
        *,
        store: str,
        enforcer: PolicyEnforcer,
        consent: ConsentSource,
        recorder: DecisionRecorder,
        pseudonymiser: Pseudonymiser,
        masker: Masker,
        datamaps: Mapping[str, DataMap] | None = None,
        store_country: str | None = None,
        clock: Callable[[], datetime] | None = None,
        suppression: SuppressionSource | None = None,
        blind: Callable[[str], str] | None = None,
    ) -> None:
        self.store = store
        self._suppression = suppression
        # A data subject's reference in decision events: blinded per subject (the store's
        # SubjectVault.audit_ref), so it names nobody once the subject is erased.
        self._blind = blind
        self._enforcer = enforcer
        self._consent = consent
        self._recorder = recorder
        self._pseudonymiser = pseudonymiser
        self._masker = masker
        self._datamaps = dict(datamaps) if datamaps is not None else load_datamaps()
        self._store_country = store_country
        self._clock = clock or (lambda: datetime.now(UTC))
        self._taxonomy = load_taxonomy()
        if pseudonymiser.store != store:
            raise ValueError("the pseudonymiser belongs to another store")

    # --- public ---------------------------------------------------------------------------

    def admit(
        self,
        principal: Principal,
        purpose: str,
        dataset_name: str,
        frame: pd.DataFrame,
        *,
        action: str = "read",
        columns: Sequence[str] | None = None,
        at: datetime | None = None,
    ) -> GatedData:
        """The gated part of ``frame`` for ``purpose``; raises :class:`AccessDenied`."""
        flow = _Flow(
            decision_id=str(uuid.uuid4()),
            at=at or self._clock(),
            principal=principal,
            actor=self._actor(principal),
            action=str(action),
            purpose=str(purpose),
            dataset=str(dataset_name),
            rows_in=len(frame) if isinstance(frame, pd.DataFrame) else 0,
            columns_in=[str(c) for c in frame.columns] if isinstance(frame, pd.DataFrame) else [],
        )
        try:
            out = self._admit(flow, principal, frame, columns)
        except _Refused as refusal:
            self._emit(flow, allowed=False, code=refusal.code, reason=refusal.reason)
            raise AccessDenied(refusal.reason, decision=refusal.decision) from None
        except Exception as exc:  # noqa: BLE001  fail closed: an unexpected error is a refusal
            reason = f"the gate failed ({type(exc).__name__}); nothing was released"
            log.error("gate %s: %s", flow.decision_id, reason)
            self._emit(flow, allowed=False, code="gate_error", reason=reason)
            raise AccessDenied(reason) from None
        event = self._emit(flow, allowed=True, code="allowed", reason="allowed")
        return GatedData(
            frame=out,
            decision_id=flow.decision_id,
            dataset=flow.dataset,
            purpose=flow.purpose,
            lawful_basis=flow.lawful_basis or "",
            rows_in=flow.rows_in,
            rows_out=flow.rows_out,
            columns_dropped=dict(flow.columns_dropped),
            values_masked=dict(flow.values_masked),
            event=event,
        )

    # --- steps ----------------------------------------------------------------------------

    def _admit(
        self, flow: _Flow, principal: Principal, frame: pd.DataFrame, columns: Sequence[str] | None
    ) -> pd.DataFrame:
        if not isinstance(principal, Principal):
            raise _Refused("bad_request", "the principal must be a Principal")
        if not isinstance(frame, pd.DataFrame):
            raise _Refused("bad_request", "the data must be a pandas DataFrame")
        if not isinstance(flow.at, datetime) or flow.at.tzinfo is None:
            raise _Refused("bad_request", "at must be a timezone-aware datetime")
        datamap = self._datamaps.get(flow.dataset)
        if datamap is None:
            raise _Refused("undeclared_dataset", f"dataset {flow.dataset!r} has no data map; declare it first")
        flow.datamap_digest = datamap.digest
        if not self._taxonomy.is_use(flow.purpose):
            raise _Refused("unknown_purpose", f"purpose {flow.purpose!r} is not a known fideslang data use")
        basis = datamap.lawful_basis(flow.purpose)
        if basis is None:
            raise _Refused("no_lawful_basis", f"dataset {flow.dataset!r} declares no lawful basis for {flow.purpose}")
        flow.lawful_basis = basis
        if self._store_country and self._store_country not in datamap.countries:
            raise _Refused("region", f"dataset {flow.dataset!r} may not be held in {self._store_country}")
        if frame.columns.duplicated().any():
            raise _Refused("bad_request", "the frame has duplicate column names")
        subject_col = datamap.subject_column
        if subject_col not in frame.columns:
            raise _Refused("bad_request", f"the frame lacks the subject column {subject_col!r}")

        # 1. undeclared columns never pass; personal-looking ones stop the flow
        for name in frame.columns:
            if name in datamap.columns:
                continue
            evidence = self._masker.pii_evidence(str(name), frame[name])
            if evidence:
                raise _Refused(
                    "undeclared_personal_data",
                    f"undeclared column {name!r} looks like personal data ({'; '.join(evidence)}); "
                    f"declare it in {datamap.path.name} or remove it",
                )
            flow.columns_dropped[str(name)] = "undeclared"

        # 2. the data map's columns for the purpose, then the policy per category
        serving = datamap.columns_for(flow.purpose)
        for name in frame.columns:
            if name in datamap.columns and name not in serving:
                flow.columns_dropped[str(name)] = "not_for_purpose"
        candidates = [c for c in serving if c in frame.columns]
        if columns is not None:
            unknown = [c for c in columns if c not in candidates]
            if unknown:
                raise _Refused(
                    "not_for_purpose", f"column(s) {', '.join(map(repr, unknown))} may not serve {flow.purpose}"
                )
            for name in candidates:
                if name not in columns:
                    flow.columns_dropped[name] = "not_requested"
            candidates = [c for c in candidates if c in columns]

        ids = normalise_ids(frame[subject_col])
        owner = self._owner(principal, ids)
        verdicts: dict[str, Decision] = {}
        for category in dict.fromkeys(datamap.columns[c].category for c in candidates):
            verdicts[category] = self._enforcer.decide(
                AccessRequest(
                    role=principal.role,
                    principal=principal.id,
                    store=self.store,
                    category=category,
                    action=flow.action,
                    purpose=flow.purpose,
                    owner=owner,
                )
            )
            flow.decisions.append(f"{category}: {verdicts[category].reason}")
        kept = []
        for name in candidates:
            verdict = verdicts[datamap.columns[name].category]
            if verdict.allowed is True:
                kept.append(name)
            elif columns is not None:
                raise _Refused("policy_denied", verdict.reason, verdict)
            else:
                flow.columns_dropped[name] = "policy_denied"
        if not kept:
            first = next(iter(verdicts.values()), None)
            reason = first.reason if first else f"no column of {flow.dataset!r} may serve {flow.purpose}"
            raise _Refused("policy_denied", reason, first)

        # 3. erased customers never pass; then consent
        rows = pd.Series(True, index=frame.index)
        if self._suppression is not None:
            present = ids.notna()
            try:
                erased = self._suppression.suppressed(set(ids[present].unique()))
            except Exception as exc:  # noqa: BLE001  no answer: nobody passes
                raise _Refused("suppression_unavailable", f"the suppression list failed ({type(exc).__name__})") from None
            if erased:
                rows = ~ids.isin(erased)
                flow.rows_suppressed = int((~rows).sum())
        if basis == "consent":
            present = ids.notna()
            unique = set(ids[present].unique())
            try:
                granted = self._consent.subjects_with_basis(flow.purpose, unique, flow.at)
            except Exception as exc:  # noqa: BLE001  no answer is no consent
                raise _Refused("consent_unavailable", f"the consent source failed ({type(exc).__name__})") from None
            with_basis = present & ids.isin(set(granted) & unique)
            flow.rows_without_basis = int((rows & ~with_basis).sum())
            rows = rows & with_basis
        gated = frame.loc[rows.to_numpy(), kept]

        # 4. minimise, mask, pseudonymise
        out = {}
        for name in kept:
            spec = datamap.columns[name]
            treatment = serving[name]
            values = gated[name]
            if treatment is Treatment.PSEUDONYMISE:
                out[name] = self._pseudonymiser.pseudonymise(values)
                flow.values_pseudonymised += int(values.notna().sum())
            elif treatment is Treatment.MASK:
                out[name], n = self._masker.mask_column(values, spec.category)
                flow.values_masked[name] = n
            elif treatment is Treatment.SCAN:
                out[name], found = self._masker.scan_texts(values)
                flow.findings.update(found)
                changed = values.notna().to_numpy() & (out[name].to_numpy() != values.astype(object).to_numpy())
                flow.values_masked[name] = int(changed.sum())
            elif treatment is Treatment.CLEAR:
                out[name] = values
            else:  # a treatment this gate does not know is never passed through
                raise _Refused("gate_error", f"unknown treatment for column {name!r}")
        result = pd.DataFrame(out, columns=kept).reset_index(drop=True)
        flow.rows_out = len(result)
        flow.columns_out = list(kept)
        return result

    def _owner(self, principal: Principal, ids: pd.Series) -> str:
        """'store' for staff and services; for a data subject, themself if every row is theirs."""
        if not principal.is_subject:
            return "store"
        own = principal.id[len(_SUBJECT_PREFIX) :] if principal.id.startswith(_SUBJECT_PREFIX) else None
        present = set(ids.dropna().unique())
        if own is None or present - {own} or ids.isna().any():
            raise _Refused("not_own_data", "a data subject may only receive rows about themself")
        return principal.id

    def _actor(self, principal: Any) -> str:
        pid = getattr(principal, "id", None)
        if not isinstance(pid, str):
            return "unknown"
        if pid.startswith(_SUBJECT_PREFIX):
            if self._blind is None:
                return f"{_SUBJECT_PREFIX}unidentified"
            try:
                return _SUBJECT_PREFIX + self._blind(pid[len(_SUBJECT_PREFIX) :])
            except Exception:  # noqa: BLE001  the event must not fail on a bad id
                return f"{_SUBJECT_PREFIX}unidentified"
        return pid

    # --- the decision event -------------------------------------------------------------

    def _emit(self, flow: _Flow, *, allowed: bool, code: str, reason: str) -> dict[str, Any]:
        event: dict[str, Any] = {
            "type": "gate.decision",
            "decision_id": flow.decision_id,
            "time": flow.at.astimezone(UTC).isoformat() if isinstance(flow.at, datetime) else None,
            "store": self.store,
            "actor": flow.actor,
            "role": getattr(flow.principal, "role", None),
            "action": f"gate.{flow.action}",
            "resource": f"dataset:{flow.dataset}",
            "purpose": flow.purpose,
            "lawful_basis": flow.lawful_basis,
            "decision": "allow" if allowed else "deny",
            "reason_code": code,
            "reason": reason,
            "policy": flow.decisions,
            "policy_version": self._enforcer.version,
            "datamap_digest": flow.datamap_digest,
            "pseudonym_version": self._safe_pseudonym_version(),
            "columns_out": list(flow.columns_out),
            "columns_dropped": dict(flow.columns_dropped),
            "values_masked": dict(flow.values_masked),
            "free_text_findings": dict(flow.findings),
            "counts": {
                "rows_in": flow.rows_in,
                "rows_out": flow.rows_out if allowed else 0,
                "rows_without_basis": flow.rows_without_basis,
                "rows_suppressed": flow.rows_suppressed,
                "columns_in": len(flow.columns_in),
                "columns_out": len(flow.columns_out) if allowed else 0,
                "columns_dropped": len(flow.columns_dropped),
                "values_masked": sum(flow.values_masked.values()),
                "values_pseudonymised": flow.values_pseudonymised,
                "free_text_findings": sum(flow.findings.values()),
            },
        }
        try:
            self._recorder.record(event)
        except Exception as exc:  # noqa: BLE001  unrecorded means unreleased
            log.error("gate %s: the decision could not be recorded (%s)", flow.decision_id, type(exc).__name__)
            raise AccessDenied(
                f"the gate's decision could not be recorded ({type(exc).__name__}); nothing was released"
            ) from None
        if getattr(flow.principal, "is_subject", False) is True:
            # A data subject's own flow: which store answered and how many rows it held say
            # where the person shops and how much. The decision id and counts, at debug only.
            log.debug("gate %s: %s (%s), rows %d -> %d", flow.decision_id, event["decision"], code,
                      flow.rows_in, event["counts"]["rows_out"])
            return event
        log.info(
            "gate %s: %s %s %s for %s on %s: %s (%s), rows %d -> %d",
            flow.decision_id,
            event["role"],
            flow.action,
            flow.dataset,
            flow.purpose,
            self.store,
            event["decision"],
            code,
            flow.rows_in,
            event["counts"]["rows_out"],
        )
        return event

    def _safe_pseudonym_version(self) -> int | None:
        try:
            return self._pseudonymiser.current_version
        except Exception:  # noqa: BLE001  the version is informative only
            return None


class _Refused(Exception):
    def __init__(self, code: str, reason: str, decision: Decision | None = None) -> None:
        super().__init__(reason)
        self.code, self.reason, self.decision = code, reason, decision
