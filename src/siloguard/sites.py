"""One machine, every site: the layout ``siloguard demo`` and ``train`` make for a whole federation.

A real federation has one site per organisation, each on its own machine: every store's
(``siloguard store init``), the coordinator's and the privacy service's. On one machine the
same sites sit side by side under one run directory, still separate::

    RUN/stores/<store>/   each store's site (its file, database, keys, embeddings)
    RUN/coordinator/      run.json, the public catalogue, models, the coordinator's database and audit log
    RUN/privacy/          the privacy service's database and keys (``siloguard serve --out RUN``)

:func:`lay_out` cuts one transaction file into the stores' files (the demo's convenience,
done here, outside the coordinator, and only when the sites do not exist yet), creates each
store's site, and hands the stores' publications to the coordinator's
:func:`~siloguard.federation.prepare.prepare_federation`. The coordinator never reads a site.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

from siloguard.config import Settings

__all__ = ["Layout", "LaidOut", "distribute_model", "lay_out", "layout"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def coordinator(self) -> Path:
        return self.root / "coordinator"

    @property
    def privacy(self) -> Path:
        return self.root / "privacy"

    def store(self, name: str) -> Path:
        return self.root / "stores" / name

    def stores(self) -> dict[str, Path]:
        """The store sites laid out under this run (store -> site directory)."""
        from siloguard.clients.site import sites_under

        return sites_under(self.root)


def layout(root: Path) -> Layout:
    return Layout(Path(root))


@dataclass(frozen=True)
class LaidOut:
    layout: Layout
    prepared: object  # PreparedFederation
    cleaning: object | None  # the CleaningReport of the cut file (None when the sites existed)
    source: Path | None
    customers: dict[str, int]
    consented: dict[str, int]


def _country(silo: object) -> str | None:
    from siloguard.data.silos import INTERNATIONAL

    if silo.name == INTERNATIONAL:  # type: ignore[attr-defined]
        return None  # customers of many countries: judged from its rows
    return str(silo.frame["country"].mode().iloc[0])  # type: ignore[attr-defined]


def lay_out(root: Path, settings: Settings, coordinator: Settings) -> LaidOut:
    """The stores' sites under ``root`` (cut from ``settings.data`` when missing), then the coordinator's run.

    ``coordinator`` are the coordinator's settings (work directory ``root/coordinator``).
    """
    from siloguard.clients.site import StoreSite
    from siloguard.federation.prepare import prepare_federation

    where = layout(root)
    existing = where.stores()
    cleaning = source = None
    if not existing:
        from siloguard.data.loader import load_clean, sample_consent_path, sample_path
        from siloguard.data.silos import assign_stores, partition
        from siloguard.federation.prepare import _to_raw

        source = Path(settings.data.path or sample_path())
        frame, cleaning = load_clean(source)
        silos = partition(frame, assign_stores(frame, uk_stores=settings.data.uk_stores,
                                                min_customers=settings.data.min_store_customers))
        consent_file = settings.data.consent or (sample_consent_path() if settings.data.path is None else None)
        consents = None
        if consent_file is not None:
            from siloguard.policies.consent_io import read_consent_file

            consents = read_consent_file(consent_file, [s.name for s in silos])
        with tempfile.TemporaryDirectory(prefix=".cut-", dir=Path(root).parent if Path(root).parent.is_dir() else None) as tmp:
            for silo in silos:
                path = Path(tmp) / "transactions.csv"
                _to_raw(silo.frame).to_csv(path, index=False)
                StoreSite.init(where.store(silo.name), silo.name, path, country=_country(silo), consents=consents,
                               compliance_as_of="data" if settings.data.path is None else None, base=settings)
        existing = where.stores()
    sites = {name: StoreSite.open(path, settings) for name, path in existing.items()}
    publications = [site.publication() for site in sites.values()]
    for site in sites.values():
        site.publish()
    prepared = prepare_federation(
        coordinator, publications, sites=existing, source=source.name if source else None,
        # The embedded sample is historical (2010-2011): `siloguard check` measures the age of its
        # rows on the data's own clock, not today's (docs/COMPLIANCE.md).
        compliance_as_of="data" if settings.data.path is None else None,
    )
    return LaidOut(
        layout=where, prepared=prepared, cleaning=cleaning, source=source,
        customers={p.store: p.counts.get("customers", 0) for p in publications},
        consented={p.store: p.counts.get("consented", 0) for p in publications},
    )



def distribute_model(root: Path, version_dir: Path) -> list[Path]:
    """Give every store site the new global model (``model.pt``, its manifest and catalogue).

    What a real coordinator sends its stores after a run; a store then scores its own customers
    with it (``siloguard store campaign create --item``, ``store recommend``) from its site alone. Returns the copies.
    """
    from siloguard._files import write_atomic

    out = []
    for site in layout(root).stores().values():
        target = site / "model"
        target.mkdir(mode=0o700, exist_ok=True)
        for entry in ("model.pt", "manifest.json", "catalogue.json"):
            source = Path(version_dir) / entry
            if source.is_file():
                write_atomic(target / entry, source.read_bytes(), mode=0o600 if entry == "model.pt" else 0o644)
                out.append(target / entry)
    return out
