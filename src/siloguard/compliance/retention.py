"""``siloguard retention enforce``: delete the rows kept past their retention, through the gate.

For each store of the prepared run, rows of its silo older than the transactions data map's
retention at the compliance clock (``compliance.as_of``, as the storage-limitation rule
measures it) are found; the store's gate must allow the retention job (a ``store_operator``
principal of that store) to ``erase`` them for ``essential.legal_obligation`` (GDPR Art.
5(1)(e); CCPA 1798.100(a)(3)); then the silo is rewritten without them in one atomic
replace, and the deletion is audited. A gate refusal stops that store with nothing deleted.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import timezone

import pandas as pd

from siloguard._files import write_atomic
from siloguard.audit.events import AuditEvent
from siloguard.audit.vocabulary import RETENTION_ENFORCE
from siloguard.compliance.context import STORE_DATASET, Context
from siloguard.data.loader import RAW_COLUMNS
from siloguard.errors import AccessDenied, ConfigError

__all__ = ["ERASE_PURPOSE", "RetentionResult", "enforce_retention"]

ERASE_PURPOSE = "essential.legal_obligation"
#: What the gate is asked to release for the erasure: which rows, not what they hold.
_ERASE_COLUMNS = ("customer_id", "invoice", "invoice_date")


@dataclass(frozen=True)
class RetentionResult:
    store: str
    rows: int
    expired: int
    deleted: int


def _gate(ctx: Context, store: str):  # noqa: ANN202 - heavy imports (Presidio) only when deleting
    from siloguard.audit import AuditLog
    from siloguard.audit.adapters import DecisionRecorderAdapter
    from siloguard.policies.consent import StoreConsent
    from siloguard.policies.enforcer import PolicyEnforcer
    from siloguard.policies.gate import Gate, Principal
    from siloguard.privacy.keys import FileKeyStore, StoreKeys
    from siloguard.privacy.masking import Masker
    from siloguard.privacy.pseudonyms import Pseudonymiser

    # Retention is the store's own job (run on its site: `siloguard retention enforce --run SITE`).
    keys = StoreKeys(FileKeyStore(ctx.settings.keys.root), store)
    keys.init()
    principal = Principal(id=f"job:retention", role="store_operator")
    enforcer = PolicyEnforcer()
    enforcer.assign_role(principal.id, principal.role, store)
    log = AuditLog.open(ctx.settings)
    gate = Gate(
        store=store,
        enforcer=enforcer,
        consent=StoreConsent(ctx.consent, keys),
        recorder=DecisionRecorderAdapter(log),
        pseudonymiser=Pseudonymiser(keys),
        masker=Masker.for_store(keys),
        datamaps=ctx.datamaps,
        clock=lambda: ctx.now,
    )
    return gate, principal, log


def enforce_retention(ctx: Context, *, dry_run: bool = False) -> list[RetentionResult]:
    """Delete (or with ``dry_run`` only count) every store's rows past retention."""
    datamap = ctx.datamaps.get(STORE_DATASET)
    if datamap is None:
        raise ConfigError(f"no data map for {STORE_DATASET!r}: its retention is unknown, nothing can be enforced")
    stores = ctx.stores
    if not stores:
        raise ConfigError(
            f"no store rows in {ctx.settings.work_dir}: retention is enforced by each store on its own site; "
            "pass a store's site (e.g. --run runs/demo/stores/germany)"
        )
    if any(rows.path is None for rows in stores.values()):
        raise ConfigError(
            f"no prepared run in {ctx.settings.work_dir}: retention is enforced on the stores' silo files; "
            "pass the run's --out (e.g. runs/demo)"
        )
    clock = ctx.data_clock()
    cutoff = pd.Timestamp(clock.astimezone(timezone.utc).replace(tzinfo=None) - datamap.retention_period)
    results = []
    for store, rows in stores.items():
        assert rows.path is not None
        raw = pd.read_csv(rows.path, dtype=str, keep_default_na=False)
        dates = pd.to_datetime(raw["InvoiceDate"], format="mixed")
        expired = (dates < cutoff).to_numpy()
        n_expired = int(expired.sum())
        if dry_run or not n_expired:
            results.append(RetentionResult(store, len(raw), n_expired, 0))
            continue
        gate, principal, gate_log = _gate(ctx, store)
        target = raw.loc[expired].rename(columns=RAW_COLUMNS)
        target["invoice_date"] = dates[expired]
        try:
            admitted = gate.admit(principal, ERASE_PURPOSE, STORE_DATASET, target, action="erase", columns=_ERASE_COLUMNS)
        except AccessDenied as exc:
            raise AccessDenied(f"store {store}: the gate refused the retention erasure: {exc.reason}") from None
        finally:
            gate_log.close()
        if admitted.rows_out != n_expired:
            raise AccessDenied(
                f"store {store}: the gate released {admitted.rows_out} of {n_expired} expired rows for erasure; nothing was deleted"
            )
        # Audited before the file changes: a deletion that cannot be recorded does not happen.
        with _audit(ctx) as log:
            log.record(
                AuditEvent(
                    actor=f"job:retention", action=RETENTION_ENFORCE, resource=f"dataset:{STORE_DATASET}",
                    purpose=ERASE_PURPOSE, decision="allow", reason="past-retention",
                    counts={"rows_expired": n_expired, "rows_deleted": n_expired}, store=store,
                )
            )
        buffer = io.StringIO()
        raw.loc[~expired].to_csv(buffer, index=False)
        write_atomic(rows.path, buffer.getvalue().encode("utf-8"))
        results.append(RetentionResult(store, len(raw), n_expired, n_expired))
    return results


def _audit(ctx: Context):  # noqa: ANN202
    from siloguard.audit import AuditLog

    _ = ctx.engine  # migrated
    return AuditLog.open(ctx.settings)
