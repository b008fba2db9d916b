"""A prepared run, as every side reads it: its directory, ``run.json`` and product catalogue.

``siloguard train`` / ``demo`` (:func:`siloguard.federation.prepare.prepare_run`) write a run
directory; the stores, the coordinator, the compliance checks and the privacy service all
read it. What they share lives here, outside any one of them, so that reading a run does not
mean importing a store's internals (``siloguard.clients``):

- :func:`run_settings`: the settings of a run directory (its database and keys inside it);
- :func:`run_manifest`: the run's ``run.json`` (stores' silos, catalogue, split dates);
- :func:`save_catalogue` / :func:`load_catalogue`: the public product catalogue;
- what the federation's training reads of a store's data (purpose, data map, columns), so
  the compliance checks judge the same columns the store's gate hands to training.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from siloguard.config import Settings
from siloguard.errors import ConfigError, DataError

if TYPE_CHECKING:
    from siloguard.recommender.features import Catalogue

__all__ = [
    "TRAINING_COLUMNS",
    "TRAINING_DATASET",
    "TRAINING_PURPOSE",
    "load_catalogue",
    "run_manifest",
    "run_settings",
    "save_catalogue",
]

#: What the federation client does with a store's transactions, as a fideslang data use.
TRAINING_PURPOSE = "personalize.profiling"
#: The data map the silo is declared in (policies/datamaps/transactions.yaml).
TRAINING_DATASET = "transactions"
#: The columns training reads (recommender.features.to_events and the temporal split); no
#: description, price, quantity or country ever reaches it.
TRAINING_COLUMNS = ("customer_id", "invoice", "stock_code", "invoice_date")


def run_settings(out: Path, base: Settings | None = None) -> Settings:
    """Settings for a run directory: its database and the stores' keys live inside it by default."""
    settings = (base or Settings.build()).with_overrides(work_dir=out)  # type: ignore[arg-type]
    if "SILOGUARD_DATABASE__URL" not in os.environ:
        settings = settings.with_overrides(database={"url": f"sqlite:///{(out / 'siloguard.db').resolve()}"})
    if "SILOGUARD_KEYS__ROOT" not in os.environ:
        settings = settings.with_overrides(keys={"root": (out / "keys").resolve()})
    return settings


def run_manifest(work_dir: Path) -> dict:
    """The prepared run's ``run.json`` (stores' silos, catalogue, split): what every reader uses."""
    path = Path(work_dir) / "run.json"
    try:
        run = json.loads(path.read_text())
        if not isinstance(run, dict) or "stores" not in run:
            raise ValueError("not a run manifest")
        return run
    except (OSError, ValueError):
        raise ConfigError(f"no prepared run at {path}: run 'siloguard train' (or demo) to prepare the stores") from None


def save_catalogue(catalogue: Catalogue, path: Path) -> None:
    path.write_text(json.dumps({"stock_codes": list(catalogue.codes)}))


@lru_cache(maxsize=4)
def load_catalogue(path: Path) -> Catalogue:
    from siloguard.recommender.features import Catalogue  # pandas and scipy only when a catalogue is read

    try:
        codes = json.loads(Path(path).read_text())["stock_codes"]
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"cannot read the product catalogue {path}: {type(exc).__name__}; re-run the preparation step") from None
    return Catalogue(tuple(codes))
