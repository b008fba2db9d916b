"""Consent records from a file: how a store brings the consents it collected into the registry.

The file is a CSV (or CSV.gz) with one event a line::

    customer_id,store,purpose,event,source,notice_version,at
    17850,uk-1,personalize.profiling,grant,store,2010-12,2010-12-01T08:26:00+00:00

``store`` may be empty: the event then holds in every store of the run (a customer of the
partner programme). ``event`` is grant, withdraw or opt_out; ``source`` web, store, api or
gpc; ``at`` an ISO 8601 time with its offset. The whole file is checked before anything is
written; an error names the line and the column, never a customer id.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from siloguard.errors import DataError
from siloguard.policies.consent import KINDS, SOURCES, ConsentRegistry, StoreConsent
from siloguard.policies.taxonomy import load_taxonomy
from siloguard.privacy.keys import StoreKeys
from siloguard.privacy.pseudonyms import normalise_ids

__all__ = ["CONSENT_COLUMNS", "ConsentImport", "import_consent", "read_consent_file"]

CONSENT_COLUMNS = ("customer_id", "store", "purpose", "event", "source", "notice_version", "at")


@dataclass(frozen=True)
class ConsentImport:
    """What an import wrote: events per store, and customers per store and purpose now consenting."""

    events: dict[str, int]
    subjects: int
    suppressed: int = 0  # events skipped: customers the store erased (its suppression list)


def read_consent_file(path: Path, stores: Iterable[str]) -> pd.DataFrame:
    """Read and check a consent file completely; raises :class:`DataError` naming line and column."""
    path = Path(path)
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise DataError(f"consent file {path}: no such file") from None
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"consent file {path}: unreadable as CSV ({type(exc).__name__})") from None
    missing = [c for c in CONSENT_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(
            f"consent file {path}: missing column(s) {', '.join(missing)}; expected {','.join(CONSENT_COLUMNS)}"
        )
    known = set(stores)
    taxonomy = load_taxonomy()

    def fail(index: int, column: str, problem: str) -> DataError:
        return DataError(f"consent file {path}, line {index + 2}, column {column}: {problem}")

    try:
        ids = normalise_ids(frame["customer_id"].replace("", None))
    except DataError:
        raise DataError(f"consent file {path}, column customer_id: ids must be whole numbers or codes") from None
    times = pd.to_datetime(frame["at"], errors="coerce", utc=False, format="ISO8601")
    for i, row in enumerate(frame.itertuples(index=False)):
        if ids.iat[i] is None:
            raise fail(i, "customer_id", "empty")
        if row.store and row.store not in known:
            raise fail(i, "store", f"{row.store!r} is not a store of this run ({', '.join(sorted(known))})")
        if not taxonomy.is_use(row.purpose):
            raise fail(i, "purpose", f"{row.purpose!r} is not a fideslang data use (policies/taxonomy.yaml)")
        if row.event not in KINDS:
            raise fail(i, "event", f"{row.event!r}: use one of {', '.join(KINDS)}")
        if row.source not in SOURCES:
            raise fail(i, "source", f"{row.source!r}: use one of {', '.join(SOURCES)}")
        when = times.iat[i]
        if pd.isna(when) or getattr(when, "tzinfo", None) is None:
            raise fail(i, "at", "not an ISO 8601 time with a UTC offset (e.g. 2011-03-01T10:00:00+00:00)")
    out = frame.assign(customer_id=ids, at=times.map(lambda t: t.to_pydatetime()))
    return out


def import_consent(
    registry: ConsentRegistry, frame: pd.DataFrame, keys: dict[str, StoreKeys]
) -> ConsentImport:
    """Record a checked consent frame (see :func:`read_consent_file`) in every store it names.

    Customers a store erased (its suppression list) are skipped: an old consent file does not
    bring them back.
    """
    from siloguard.privacy.suppression import SuppressionList

    counts: dict[str, int] = {}
    subjects: set[tuple[str, str]] = set()
    skipped = 0
    for store, store_keys in sorted(keys.items()):
        view = StoreConsent(registry, store_keys)
        rows = frame[(frame["store"] == "") | (frame["store"] == store)]
        rows, dropped = SuppressionList(registry.engine, store_keys).drop_suppressed(rows)
        skipped += dropped
        if rows.empty:
            continue
        registry.record_events(
            [
                (ref, p, k, src, notice or None, at)
                for ref, p, k, src, notice, at in zip(
                    view.subjects(rows["customer_id"].tolist()), rows["purpose"], rows["event"], rows["source"],
                    rows["notice_version"], rows["at"],
                )
            ]
        )
        counts[store] = len(rows)
        subjects.update((store, c) for c in rows["customer_id"])
    return ConsentImport(events=counts, subjects=len(subjects), suppressed=skipped)
