"""What a request changes in the stores today, and the access answer (:class:`StoreEffects`, a
part of :class:`~siloguard.dsr.service.DsrService`).

Consent grants and withdrawals, GPC opt-outs and the access answer are worked out here with
each store's consent view and gate. In the target design they become tasks each store runs
on its own site (like erasure); this class is the seam where that happens.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from siloguard.audit import AuditEvent
from siloguard.audit.vocabulary import CONSENT_CHANGED
from siloguard.dsr.common import ANSWER_DELETED, CONSENT_KINDS, LOCK, PURPOSE, SUBJECT_ACTOR, aware, consent_purposes
from siloguard.dsr.errors import DsrConflict, DsrInvalid
from siloguard.storage.db import exclusive
from siloguard.storage.orm import dsr_requests

__all__ = ["StoreEffects"]


class StoreEffects:
    """Consent, GPC and access answers across the stores; mixed into DsrService."""

    engine: Engine
    _ref_cache: dict[tuple[str, str], str]
    _consent_cache: dict[str, Any]

    def _subject_ref(self, store: str, consent: Any, customer_ref: str) -> str:
        """The store's registry key for a customer, remembered (a keyed hash: it never changes)."""
        key = (store, customer_ref)
        ref = self._ref_cache.get(key)
        if ref is None:
            ref = consent.subject(customer_ref)
            if len(self._ref_cache) >= 65536:
                self._ref_cache.pop(next(iter(self._ref_cache)))
            self._ref_cache[key] = ref
        return ref

    def _consents(self) -> list[tuple[str, Any]]:
        """Each store's consent view, built once per store (keys are derived once)."""
        out = []
        for store in self._stores():
            consent = self._consent_cache.get(store)
            if consent is None:
                consent = self._consent_cache[store] = self._store_consent(store)
            out.append((store, consent))
        return out

    def _apply_effects(self, request: dict[str, Any]) -> None:
        """Record the request's consent events in every store (idempotent).

        Runs only for a verified request, or an unverified CCPA opt-out (which records the
        opt-out of sale and sharing only: what the law allows without verification).
        """
        ref, kind = request["customer_ref"], request["kind"]
        if ref is None:
            return
        if kind != "erasure" and self.erasing(request["subject_digest"]):
            return  # stores are erasing them: nothing new is recorded about them (docs/API.md)
        from siloguard.policies.consent import SALE_AND_SHARING

        for _store, consent in self._consents():
            if kind in ("erasure", "opt_out"):
                if kind == "erasure" or request["jurisdiction"] == "gdpr":
                    for purpose in consent_purposes():
                        consent.record([ref], purpose, "withdraw", source="api")
            if kind == "opt_out":
                for purpose in SALE_AND_SHARING:
                    consent.record([ref], purpose, "opt_out", source="api")
            if kind == "consent":
                for change in json.loads(request["payload"])["consent"]:
                    consent.record([ref], change["purpose"], change["action"], source="api")
            if request["gpc"] and kind != "erasure":  # sent with the request: applied once the subject is known
                consent.record_gpc(ref)

    def _effects_summary(self, request: dict[str, Any]) -> dict[str, Any]:
        stores = self._stores()
        if request["kind"] == "consent":
            return {"consent": json.loads(request["payload"])["consent"], "stores": stores}
        from siloguard.policies.consent import SALE_AND_SHARING

        withdrawn = list(consent_purposes()) if request["jurisdiction"] == "gdpr" else []
        return {"opted_out": list(SALE_AND_SHARING), "consent_withdrawn": withdrawn, "stores": stores}

    def record_gpc(self, customer_ref: str) -> None:
        """``Sec-GPC: 1``: an opt-out of sale and sharing in every store."""
        for _store, consent in self._consents():
            consent.record_gpc(customer_ref)

    def consent_state(self, customer_ref: str) -> list[tuple[str, list[tuple[str, bool]]]]:
        """Per store, whether the subject consents now to each consent-based purpose and to sale/sharing.

        One query for the subject's events in every store (a handful of rows), evaluated with
        the registry's rules by the gate's in-memory source, instead of one registry query per
        store and purpose: this is the API's hottest read.
        """
        from siloguard.policies.consent import SALE_AND_SHARING
        from siloguard.policies.gate import InMemoryConsentSource
        from siloguard.storage.orm import consent_events

        now = self.clock()
        purposes = (*consent_purposes(), *SALE_AND_SHARING)
        refs = {store: self._subject_ref(store, consent, customer_ref) for store, consent in self._consents()}
        t = consent_events
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(t.c.subject, t.c.purpose, t.c.kind, t.c.at).where(t.c.subject.in_(list(refs.values())), t.c.at <= now)
            ).all()
        events = InMemoryConsentSource()
        for subject, purpose, kind, at in rows:
            (events.grant if kind == "grant" else events.withdraw)(subject, purpose, aware(at))
        return [
            (store, [(p, bool(events.subjects_with_basis(p, [ref], now))) for p in purposes])
            for store, ref in refs.items()
        ]

    def change_consent(self, customer_ref: str, purpose: str, action: str) -> None:
        """Grant or withdraw consent for ``purpose`` in every store, and audit it."""
        from siloguard.policies.taxonomy import load_taxonomy

        if action not in CONSENT_KINDS:
            raise DsrInvalid(f"consent action must be one of {', '.join(CONSENT_KINDS)}")
        if not load_taxonomy().is_use(purpose):
            raise DsrInvalid("unknown purpose: use a fideslang data use (policies/taxonomy.yaml)")
        stores = self._consents()
        for _store, consent in stores:
            consent.record([customer_ref], purpose, action, source="api")
        self.audit.append([
            AuditEvent(actor=SUBJECT_ACTOR, action=CONSENT_CHANGED, resource="consent", purpose=purpose,
                       decision="info", reason=action, counts={"stores": len(stores)})
        ])

    def build_access(self, customer_ref: str | None) -> dict[str, Any]:
        if customer_ref is None:
            raise DsrConflict("this subject's reference was erased; nothing is held")
        if self._access_report is not None:
            return self._access_report(customer_ref, self._stores())
        from siloguard.dsr.access import access_report

        return access_report(self.settings, customer_ref, self._stores())

    def answer_read(self, request_id: str, *, actor: str) -> None:
        """Audit a read of an access answer by staff (the DPO): the subject's data was seen."""
        from siloguard.audit.vocabulary import DSR_ANSWER_READ

        self.audit.append([AuditEvent(actor=actor, action=DSR_ANSWER_READ, resource="dsr:access", purpose=PURPOSE,
                                      decision="info", reason="answer-read", request=request_id)])

    def take_answer(self, request_id: str) -> dict[str, Any] | None:
        """The subject's download: the stored answer, deleted in the same transaction (download
        once; of two concurrent downloads one gets it, the other None)."""
        with exclusive(self.engine, LOCK) as conn:
            row = conn.execute(
                sa.select(dsr_requests.c.result).where(dsr_requests.c.id == request_id, dsr_requests.c.kind == "access")
            ).first()
            if row is None or not row.result:
                return None
            answer = json.loads(row.result)
            if answer.get("answer_deleted") or answer.get("erased"):
                return None
            conn.execute(
                dsr_requests.update().where(dsr_requests.c.id == request_id)
                .values(result=ANSWER_DELETED, payload=json.dumps({"consent": []}))
            )
        return answer

    def purge_answers(self) -> int:
        """Delete access answers older than ``api.answer_ttl_days``; returns how many."""
        cutoff = self.clock() - timedelta(days=self.settings.api.answer_ttl_days)
        with exclusive(self.engine, LOCK) as conn:
            return int(conn.execute(
                dsr_requests.update()
                .where(dsr_requests.c.kind == "access", dsr_requests.c.status == "completed",
                       dsr_requests.c.updated_at < cutoff, dsr_requests.c.result.is_not(None),
                       dsr_requests.c.result != ANSWER_DELETED)
                .values(result=ANSWER_DELETED)
            ).rowcount or 0)
