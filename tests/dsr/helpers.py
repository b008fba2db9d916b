"""A prepared run with three stores, a migrated database and keys, for API and DSR tests."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from siloguard.config import Settings
from siloguard.storage import create_engine, upgrade_database

STORES = ("alpha", "beta", "gamma")
SUBJECT = "17850"
OTHER = "13047"
HEADER = ["InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID", "Country"]


def silo_rows(store_index: int) -> list[list[str]]:
    """Raw UCI rows: the subject and another customer buy in every store."""
    rows = []
    for n, customer in enumerate((SUBJECT, OTHER, "12583")):
        for k in range(2 + store_index):
            rows.append([f"5{store_index}{n}{k:03d}", f"8512{k}A", "WHITE HANGING HEART T-LIGHT HOLDER", "6",
                         f"2010-12-0{1 + k} 08:26:00", "2.55", f"{customer}.0", "United Kingdom"])
    return rows


@dataclass
class Env:
    settings: Settings
    url: str

    def silo(self, store: str) -> Path:
        return self.settings.work_dir / "stores" / f"{store}.csv"

    def rows_of(self, store: str, customer: str) -> int:
        frame = pd.read_csv(self.silo(store), dtype=str)
        return int((frame["CustomerID"].str.replace(".0", "", regex=False) == customer).sum())


def declare_jurisdictions(env: Env, jurisdictions: dict[str, str]) -> None:
    """Say in the run's manifest under which law each store operates (run.json ``jurisdictions``)."""
    path = env.settings.work_dir / "run.json"
    run = json.loads(path.read_text())
    run["jurisdictions"] = jurisdictions
    path.write_text(json.dumps(run))
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 1_000_000_000))  # a new mtime, even within the same tick


def make_env(tmp_path: Path, url: str, **api: object) -> Env:
    work = tmp_path / "run"
    (work / "stores").mkdir(parents=True)
    (work / "run.json").write_text(json.dumps({"stores": list(STORES)}))
    for i, store in enumerate(STORES):
        pd.DataFrame(silo_rows(i), columns=HEADER).to_csv(work / "stores" / f"{store}.csv", index=False)
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    settings = Settings.build().with_overrides(
        database={"url": url},
        keys={"root": keys},
        audit={"signing_key": tmp_path / "audit.key", "public_key": tmp_path / "audit.pub"},
        api={"rate_per_key": "100000/minute", "rate_per_ip": "100000/minute", **api},
        work_dir=work,  # type: ignore[arg-type]
    )
    engine = create_engine(url)
    upgrade_database(engine)
    engine.dispose()
    return Env(settings, url)
