"""A prepared run, as every side reads it: its directory, ``run.json`` and product catalogue.

``siloguard train`` / ``demo`` (:func:`siloguard.federation.prepare.prepare_run`) write a run
directory; the stores, the coordinator, the compliance checks and the privacy service all
read it. What they share lives here, outside any one of them, so that reading a run does not
mean importing a store's internals (``siloguard.clients``):

- :func:`run_settings`: the settings of a run directory (its database and keys inside it);
- :class:`RunManifest`: the run's ``run.json`` (stores' silos, catalogue, split dates, the
  stores' jurisdictions, the compliance clock), its one typed owner: every reader goes
  through :meth:`RunManifest.read`. Paths in it are relative to the run directory, so a
  copied run reads its own files (absolute paths of older runs are still read);
- :func:`save_catalogue` / :func:`load_catalogue`: the public product catalogue;
- what the federation's training reads of a store's data (purpose, data map, columns), so
  the compliance checks judge the same columns the store's gate hands to training.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from siloguard.config import Settings
from siloguard.errors import ConfigError, DataError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from siloguard.recommender.features import Catalogue

__all__ = [
    "PUBLISH_MIN_CUSTOMERS",
    "TRAINING_COLUMNS",
    "TRAINING_DATASET",
    "TRAINING_PURPOSE",
    "Publication",
    "RunManifest",
    "catalogue_item_text",
    "load_catalogue",
    "load_descriptions",
    "privacy_settings",
    "run_manifest",
    "run_settings",
    "save_catalogue",
    "shelf_descriptions",
    "site_info",
    "site_of",
    "site_settings",
]

#: What the federation client does with a store's transactions, as a fideslang data use.
TRAINING_PURPOSE = "personalize.profiling"
#: The data map the silo is declared in (policies/datamaps/transactions.yaml).
TRAINING_DATASET = "transactions"
#: The columns training reads (recommender.features.to_events and the temporal split); no
#: description, price, quantity or country ever reaches it.
TRAINING_COLUMNS = ("customer_id", "invoice", "stock_code", "invoice_date")


def run_settings(out: Path, base: Settings | None = None) -> Settings:
    """Settings for a run directory: its database and keys live inside it by default.

    ``out`` may be a run of sites as ``siloguard demo``/``train`` lay it out
    (:mod:`siloguard.sites`): the coordinator's site ``out/coordinator`` is meant.
    """
    out = Path(out)
    if (out / SITE_FILE).is_file():  # a store's site: its own database and keys
        return site_info(out, base)["settings"]
    if (out / "coordinator").is_dir() and not (out / RunManifest.FILE).is_file():
        out = out / "coordinator"
    settings = (base or Settings.build()).with_overrides(work_dir=out)  # type: ignore[arg-type]
    return _own_state(settings, out.resolve())  # its database, keys and audit keys (keys/audit-signing.*)


_JURISDICTIONS = ("gdpr", "ccpa")


def privacy_settings(run: Path, base: Settings | None = None) -> Settings:
    """The privacy service's settings for a run laid out on one machine (``siloguard.sites``).

    Its own database and keys in ``RUN/privacy/`` (unless the environment names them); the
    stores and their declared laws from the coordinator's ``RUN/coordinator/run.json`` (public:
    store names and laws). ``run`` may also be the coordinator's directory itself.
    """
    run = Path(run)
    coordinator = run / "coordinator" if (run / "coordinator" / RunManifest.FILE).is_file() else run
    if not (coordinator / RunManifest.FILE).is_file():
        raise ConfigError(f"--run {run}: no run there (no run.json); pass the run siloguard demo/train made, e.g. runs/demo")
    own = (run / "privacy") if coordinator != run else (run.parent / "privacy")
    own.mkdir(mode=0o700, parents=True, exist_ok=True)
    settings = (base or Settings.build()).with_overrides(work_dir=coordinator.resolve())  # type: ignore[arg-type]
    return _own_state(settings, own.resolve())


def _own_state(settings: Settings, directory: Path, *, database: str | None = None) -> Settings:
    """A site keeps its database, keys and audit keys in its own directory, unless the process's
    environment names them (``database``: the site's own URL, e.g. from ``site.json``)."""
    env = os.environ
    if "SILOGUARD_DATABASE__URL" not in env:
        settings = settings.with_overrides(database={"url": database or f"sqlite:///{directory / 'siloguard.db'}"})
    if "SILOGUARD_KEYS__ROOT" not in env:
        settings = settings.with_overrides(keys={"root": directory / "keys"})
    audit: dict[str, Path] = {}
    if "SILOGUARD_AUDIT__SIGNING_KEY" not in env:
        audit["signing_key"] = directory / "keys" / "audit-signing.key"
    if "SILOGUARD_AUDIT__PUBLIC_KEY" not in env:
        audit["public_key"] = directory / "keys" / "audit-signing.pub"
    return settings.with_overrides(audit=audit) if audit else settings


#: A store site's description (:mod:`siloguard.clients.site`).
SITE_FILE = "site.json"


def site_settings(directory: Path, base: Settings | None = None, *, database: str | None = None) -> Settings:
    """The settings of a store process on the site in ``directory``.

    Store-local values come from the environment when it sets them, else from the site
    (``database`` from ``site.json``, then the site's own SQLite file, keys directory and audit
    keys). ``base`` carries the federation-wide settings (model, privacy, federation).
    """
    directory = Path(directory).resolve()
    settings = (base or Settings.build()).with_overrides(work_dir=directory)  # type: ignore[arg-type]
    return _own_state(settings, directory, database=database)


def site_of(directory: Path, base: Settings | None = None) -> tuple[str, Settings]:
    """The store a site belongs to and its settings (what a store's tool needs to find its own state)."""
    info = site_info(directory, base)
    return info["store"], info["settings"]


def site_info(directory: Path, base: Settings | None = None) -> dict[str, Any]:
    """A site's ``store``, ``settings``, ``data`` (its transaction file), declared ``country`` and ``jurisdiction``."""
    try:
        manifest = json.loads((Path(directory) / SITE_FILE).read_text())
        data = Path(str(manifest["data"]))
        return {
            "store": str(manifest["store"]),
            "settings": site_settings(directory, base, database=manifest.get("database")),
            "data": data if data.is_absolute() else Path(directory).resolve() / data,
            "country": manifest.get("country") or None,
            "jurisdiction": str(manifest.get("jurisdiction", "gdpr")),
            "compliance_as_of": manifest.get("compliance_as_of") if isinstance(manifest.get("compliance_as_of"), str) else None,
        }
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(
            f"no store site at {directory} (its {SITE_FILE} is missing or damaged): "
            "create one with 'siloguard store init STORE --site DIR --data FILE'"
        ) from None


@dataclass(frozen=True)
class RunManifest:
    """A prepared run's ``run.json``, read and checked once; paths resolved against the run directory."""

    directory: Path
    stores: dict[str, Path]  # store -> its silo file (a run prepared in one directory); empty for a run of sites
    catalogue: Path | None = None
    split_date: str | None = None
    end_date: str | None = None
    source: str | None = None
    jurisdictions: dict[str, str] = field(default_factory=dict)  # store -> gdpr | ccpa, as declared
    compliance_as_of: str | None = None
    members: tuple[str, ...] = ()  # a run of store sites: the stores taking part (their data stays in their sites)
    sites: dict[str, Path] = field(default_factory=dict)  # one machine only: store -> its site directory

    FILE = "run.json"

    @property
    def names(self) -> list[str]:
        """The run's stores, sorted (whichever layout)."""
        return sorted(self.members or self.stores)

    @property
    def of_sites(self) -> bool:
        """Whether each store of this run is a site of its own (``siloguard store init``)."""
        return bool(self.members)

    @classmethod
    def read(cls, work_dir: Path) -> RunManifest:
        """The run in ``work_dir``; ConfigError naming the file and the fix if there is none or it is damaged."""
        directory = Path(work_dir)
        path = directory / cls.FILE
        try:
            run = json.loads(path.read_text())
            if not isinstance(run, dict) or "stores" not in run:
                raise ValueError("not a run manifest")
        except (OSError, ValueError):
            raise ConfigError(f"no prepared run at {path}: run 'siloguard train' (or demo) to prepare the stores") from None
        try:
            stores = run["stores"]
            if run.get("layout") == "sites":  # names only: each store's data stays in its own site
                members = tuple(sorted(str(n) for n in stores))
                sites = run.get("sites") or {}
                if not isinstance(sites, dict) or set(sites) - set(members):
                    raise ValueError("sites")
                declared = run.get("jurisdictions") or {}
                if not isinstance(declared, dict) or any(v not in _JURISDICTIONS for v in declared.values()):
                    raise ValueError("jurisdictions")
                return cls(
                    directory=directory, stores={}, members=members,
                    sites={str(k): directory / Path(str(v)) for k, v in sites.items()},
                    catalogue=directory / Path(str(run["catalogue"])) if run.get("catalogue") else None,
                    split_date=run.get("split_date"), end_date=run.get("end_date"), source=run.get("source"),
                    jurisdictions={str(k): str(v) for k, v in declared.items()},
                    compliance_as_of=run.get("compliance_as_of") if isinstance(run.get("compliance_as_of"), str) else None,
                )
            if isinstance(stores, list):  # names only: the silos are in the run's stores/ folder
                stores = {str(name): f"stores/{name}.csv" for name in stores}
            declared = run.get("jurisdictions") or {}
            if not isinstance(declared, dict) or any(v not in _JURISDICTIONS for v in declared.values()):
                raise ValueError("jurisdictions")
            return cls(
                directory=directory,
                stores={str(name): directory / Path(str(silo)) for name, silo in stores.items()},
                catalogue=directory / Path(str(run["catalogue"])) if run.get("catalogue") else None,
                split_date=run.get("split_date"),
                end_date=run.get("end_date"),
                source=run.get("source"),
                jurisdictions={str(k): str(v) for k, v in declared.items()},
                compliance_as_of=run.get("compliance_as_of") if isinstance(run.get("compliance_as_of"), str) else None,
            )
        except (AttributeError, TypeError, ValueError):
            raise ConfigError(
                f"{path} is damaged ('stores' maps store names to silo files; 'jurisdictions' maps stores to gdpr or ccpa): "
                "prepare the run again"
            ) from None

    def require_catalogue(self) -> Path:
        """The catalogue file; ConfigError if this run has none (prepared by an older siloguard, or a test stub)."""
        if self.catalogue is None or self.split_date is None or self.end_date is None:
            raise ConfigError(f"the run in {self.directory} has no catalogue or split dates: prepare it again")
        return self.catalogue

    def to_json(self) -> dict[str, object]:
        """What ``run.json`` holds; paths relative to the run directory (a copied run reads its own files)."""
        def rel(p: Path) -> str:
            try:
                return str(p.relative_to(self.directory))
            except ValueError:
                return str(p)

        out: dict[str, object] = {"source": self.source}
        if self.members:
            out.update({"layout": "sites", "stores": list(self.members)})
            if self.sites:
                out["sites"] = {k: os.path.relpath(v, self.directory) for k, v in sorted(self.sites.items())}
        else:
            out["stores"] = {k: rel(v) for k, v in sorted(self.stores.items())}
        if self.catalogue is not None:
            out["catalogue"] = rel(self.catalogue)
        out.update({"split_date": self.split_date, "end_date": self.end_date})
        if self.jurisdictions:
            out["jurisdictions"] = dict(sorted(self.jurisdictions.items()))
        if self.compliance_as_of is not None:
            out["compliance_as_of"] = self.compliance_as_of
        return {k: v for k, v in out.items() if v is not None}


@dataclass(frozen=True)
class Publication:
    """What a store tells the coordinator: products, dates and counts; never a customer."""

    store: str
    jurisdiction: str
    country: str | None
    first_day: str  # first and last invoice day (YYYY-MM-DD)
    last_day: str
    products: dict[str, str]  # stock code -> first day it was sold in this store
    descriptions: dict[str, str]  # stock code -> description (the product's, as on the shelf)
    counts: dict[str, int] = field(default_factory=dict)  # rows, customers, consented (training, now)

    def to_json(self) -> dict[str, Any]:
        return {
            "store": self.store, "jurisdiction": self.jurisdiction, "country": self.country,
            "first_day": self.first_day, "last_day": self.last_day, "counts": dict(self.counts),
            "products": dict(sorted(self.products.items())), "descriptions": dict(sorted(self.descriptions.items())),
        }

    @classmethod
    def read(cls, path: Path) -> Publication:
        try:
            data = json.loads(Path(path).read_text())
            return cls(
                store=_store_name(data["store"]),
                jurisdiction=str(data["jurisdiction"]),
                country=data.get("country"),
                first_day=_day(data["first_day"]),
                last_day=_day(data["last_day"]),
                products={str(k): _day(v) for k, v in data["products"].items()},
                descriptions={str(k): str(v) for k, v in (data.get("descriptions") or {}).items()},
                counts={str(k): int(v) for k, v in (data.get("counts") or {}).items()},
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise ConfigError(
                f"{path} is not a store publication (written by 'siloguard store init' / 'store publish'): ask the store for it again"
            ) from None


def _day(value: object) -> str:
    from datetime import date

    return date.fromisoformat(str(value)[:10]).isoformat()


def _store_name(value: object) -> str:
    import re

    if not isinstance(value, str) or not re.fullmatch(r"[a-z][a-z0-9-]{0,62}", value):
        raise ValueError("store")
    return value


def run_manifest(work_dir: Path) -> RunManifest:
    """:meth:`RunManifest.read` (the name the readers used before it was typed)."""
    return RunManifest.read(work_dir)


def save_catalogue(catalogue: Catalogue, path: Path, descriptions: dict[str, str] | None = None) -> None:
    """The catalogue's stock codes, and the descriptions stores published for them (if any)."""
    body: dict[str, object] = {"stock_codes": list(catalogue.codes)}
    if descriptions:
        body["descriptions"] = {c: descriptions[c] for c in catalogue.codes if c in descriptions}
    path.write_text(json.dumps(body))


#: A store publishes a product's description only if at least this many of its customers bought
#: it: a description is free text, and a line bought once may be a note about one customer.
PUBLISH_MIN_CUSTOMERS = 3


def shelf_descriptions(frame: pd.DataFrame) -> dict[str, str]:
    """The product descriptions a store may publish: code -> its most common description.

    A description is free text (the data map scans it): a product line may carry a note about
    one customer ("refund to J Smith, 12 High St"). Only descriptions of products that at least
    PUBLISH_MIN_CUSTOMERS customers bought are published.
    """
    if "description" not in frame.columns or frame.empty:
        return {}
    tagged = frame.assign(code=frame["stock_code"].astype(str))
    buyers = tagged.groupby("code")["customer_id"].nunique()
    common = buyers[buyers >= PUBLISH_MIN_CUSTOMERS].index
    shelf = tagged[tagged["code"].isin(common) & tagged["description"].notna()]
    # Each product's most frequent description, the alphabetically first of a tie (what
    # Series.mode().iloc[0] gives), counted in one grouping: a Python mode() per product
    # took most of the time of laying out 150 stores.
    counted = (shelf.assign(description=shelf["description"].astype(str))
               .groupby(["code", "description"], sort=False).size().rename("n").reset_index()
               .sort_values(["code", "n", "description"], ascending=[True, False, True], kind="stable"))
    described = counted.drop_duplicates("code").set_index("code")["description"]
    return {str(k): str(v) for k, v in described.items()}


def load_descriptions(path: Path) -> dict[str, str]:
    """The product descriptions a catalogue file carries (empty if it has none)."""
    try:
        found = json.loads(Path(path).read_text()).get("descriptions") or {}
    except (OSError, ValueError, AttributeError) as exc:
        raise DataError(f"cannot read the product catalogue {path}: {type(exc).__name__}; re-run the preparation step") from None
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}


def catalogue_item_text(path: Path) -> np.ndarray:
    """The public item features (:mod:`siloguard.recommender.item_text`) of a catalogue file."""
    from siloguard.recommender.item_text import item_text_features

    return item_text_features(load_catalogue(path).codes, load_descriptions(path))


@lru_cache(maxsize=4)
def load_catalogue(path: Path) -> Catalogue:
    from siloguard.recommender.features import Catalogue  # pandas and scipy only when a catalogue is read

    try:
        codes = json.loads(Path(path).read_text())["stock_codes"]
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"cannot read the product catalogue {path}: {type(exc).__name__}; re-run the preparation step") from None
    return Catalogue(tuple(codes))
