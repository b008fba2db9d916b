"""Load and clean Online Retail transactions.

The input is a CSV (optionally gzip-compressed) with the UCI Online Retail columns
``InvoiceNo, StockCode, Description, Quantity, InvoiceDate, UnitPrice, CustomerID, Country``.
Dates may be ISO (``2010-12-01 08:26:00``) or the original UCI style (``12/1/2010 8:26``).

An empty ``Quantity`` or ``UnitPrice`` cell is read as missing (some retailers' exports leave
the price of zero-quantity adjustment rows blank); :func:`clean` drops such rows and counts
them, as it does rows with a non-positive quantity or price, since their revenue is unknown.
A value that is present but not a number (``abc``) is still an error.

Error messages name the file, the column and the 1-based data row, never a cell value,
because cells can hold personal data.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import asdict, dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from siloguard.errors import DataError

__all__ = [
    "RAW_COLUMNS",
    "CleaningReport",
    "clean",
    "load_clean",
    "load_transactions",
    "sample_consent_path",
    "sample_path",
]

#: Source column -> normalized column, in file order.
RAW_COLUMNS: dict[str, str] = {
    "InvoiceNo": "invoice",
    "StockCode": "stock_code",
    "Description": "description",
    "Quantity": "quantity",
    "InvoiceDate": "invoice_date",
    "UnitPrice": "unit_price",
    "CustomerID": "customer_id",
    "Country": "country",
}

#: Accepted date formats (strptime -> as shown in messages), tried in order on the
#: first non-empty date of a file; the whole file must then use that format.
DATE_FORMATS: dict[str, str] = {
    "%Y-%m-%d %H:%M:%S": "YYYY-MM-DD HH:MM:SS",
    "%Y-%m-%d %H:%M": "YYYY-MM-DD HH:MM",
    "%m/%d/%Y %H:%M": "M/D/YYYY H:MM",
    "%m/%d/%Y %H:%M:%S": "M/D/YYYY H:MM:SS",
}

SAMPLE_FILE = "online_retail_sample.csv.gz"
SAMPLE_CONSENT_FILE = "consent_sample.csv.gz"
_GZIP_MAGIC = b"\x1f\x8b"
#: Largest magnitude of a whole-number cell: below 2**53, so float64 holds it exactly.
_MAX_WHOLE = 10**15


def sample_path() -> Path:
    """Path of the small attributed Online Retail sample shipped inside the package."""
    path = Path(str(resources.files("siloguard.data") / "sample" / SAMPLE_FILE))
    if not path.is_file():
        raise DataError(
            f"the packaged sample {SAMPLE_FILE} is missing from the siloguard installation; "
            "reinstall siloguard or pass your own transactions file"
        )
    return path


def sample_consent_path() -> Path:
    """Path of the simulated consent records for the embedded sample (see its README)."""
    path = Path(str(resources.files("siloguard.data") / "sample" / SAMPLE_CONSENT_FILE))
    if not path.is_file():
        raise DataError(f"the packaged {SAMPLE_CONSENT_FILE} is missing from the siloguard installation; reinstall siloguard")
    return path


def _is_gzip(path: Path) -> bool:
    with path.open("rb") as fh:
        return fh.read(2) == _GZIP_MAGIC


def _read_raw(path: Path) -> pd.DataFrame:
    """Read all 8 source columns as strings (empty cell -> '')."""
    try:
        return _read_raw_encoded(path, "utf-8-sig")
    except UnicodeDecodeError:
        # Older exports of the UCI workbook are Windows-1252.
        return _read_raw_encoded(path, "cp1252")


def _read_raw_encoded(path: Path, encoding: str) -> pd.DataFrame:
    compression = "gzip" if _is_gzip(path) else None
    header = pd.read_csv(path, compression=compression, nrows=0, encoding=encoding)
    present = {str(c).strip(): c for c in header.columns}
    missing = [c for c in RAW_COLUMNS if c not in present]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(missing)}; the file needs the columns "
            f"{', '.join(RAW_COLUMNS)}"
        )
    raw = pd.read_csv(
        path,
        compression=compression,
        encoding=encoding,
        usecols=[present[c] for c in RAW_COLUMNS],
        dtype=str,
        keep_default_na=False,
        na_filter=False,
        engine="c",
    )
    raw.columns = [str(c).strip() for c in raw.columns]
    return raw[list(RAW_COLUMNS)]


def _read_failure(exc: BaseException) -> str:
    """Why a file could not be read, without the exception text (it may quote cells)."""
    if isinstance(exc, EOFError):
        return "the compressed file is truncated"
    if isinstance(exc, (zlib.error, gzip.BadGzipFile)):
        return "the gzip data is corrupt"
    if isinstance(exc, UnicodeDecodeError):
        return "it is not text"
    if isinstance(exc, pd.errors.ParserError):
        return "the CSV is malformed"
    if isinstance(exc, OSError):
        return f"the file cannot be opened ({type(exc).__name__})"
    return f"it is not a CSV ({type(exc).__name__})"


def _bad_row_error(path: Path, column: str, mask: np.ndarray, expected: str) -> DataError:
    row = int(np.flatnonzero(mask)[0]) + 1
    count = int(mask.sum())
    more = f" ({count} such rows in total)" if count > 1 else ""
    return DataError(
        f"{path}: column {column}, data row {row}: value is not {expected}{more}; "
        f"fix or remove {'those rows' if count > 1 else 'that row'}"
    )


class _Column:
    """A string column held as codes into its unique values, so each value is parsed once."""

    def __init__(self, values: pd.Series) -> None:
        codes, uniques = pd.factorize(values)
        self.codes = codes
        self.uniques = pd.Series(uniques, dtype="str").str.strip()

    def expand(self, per_unique: pd.Series) -> pd.Series:
        """Map a result computed per unique value back to one value per row."""
        return per_unique.take(self.codes).reset_index(drop=True)

    def bad_rows(self, bad_unique: np.ndarray) -> np.ndarray:
        """Per-row mask from a per-unique mask."""
        return bad_unique[self.codes]


def _detect_date_format(uniques: pd.Series) -> str | None:
    non_empty = uniques[uniques != ""]
    if non_empty.empty:
        return None
    first = non_empty.iloc[0]  # factorize keeps first-appearance order
    for fmt in DATE_FORMATS:
        try:
            datetime.strptime(first, fmt)
        except ValueError:
            continue
        return fmt
    return None


def _parse_dates(path: Path, values: pd.Series) -> pd.Series:
    col = _Column(values)
    detected = _detect_date_format(col.uniques)
    fmt = detected or next(iter(DATE_FORMATS))
    parsed = pd.to_datetime(col.uniques, format=fmt, errors="coerce").astype("datetime64[ns]")
    bad = parsed.isna().to_numpy()
    if bad.any():
        expected = (
            f"a date in the format {DATE_FORMATS[fmt]} used by this file"
            if detected
            else "a date like 2010-12-01 08:26:00 or 12/1/2010 8:26"
        )
        raise _bad_row_error(path, "InvoiceDate", col.bad_rows(bad), expected)
    return col.expand(parsed)


def _parse_number(
    path: Path, values: pd.Series, column: str, *, allow_empty: bool, whole: bool
) -> pd.Series:
    col = _Column(values)
    empty = (col.uniques == "").to_numpy()
    numbers = pd.to_numeric(col.uniques, errors="coerce").astype("float64")
    arr = numbers.to_numpy()
    bad = ~np.isfinite(arr) & ~empty
    if not allow_empty:
        bad |= empty
    if bad.any():
        raise _bad_row_error(path, column, col.bad_rows(bad), "a number")
    if whole:
        fractional = ~empty & ((arr != np.round(arr)) | (np.abs(arr) >= _MAX_WHOLE))
        if fractional.any():
            raise _bad_row_error(
                path, column, col.bad_rows(fractional), "a whole number of at most 15 digits"
            )
    return col.expand(numbers)


def _text(values: pd.Series, *, upper: bool = False) -> pd.Series:
    col = _Column(values)
    uniques = col.uniques.str.upper() if upper else col.uniques
    return col.expand(uniques)


def load_transactions(path: str | Path) -> pd.DataFrame:
    """Read an Online Retail CSV or CSV.gz into a frame with normalized columns.

    Columns: invoice, stock_code, description, quantity (Int64, <NA> where the cell is
    empty), invoice_date (datetime64[ns]), unit_price (float64, NaN where the cell is empty),
    customer_id (Int64, <NA> for guests), country. Empty quantities and prices are left for
    :func:`clean` to drop and count.
    Raises DataError if the file is missing, unreadable, lacks a column or holds a bad value
    (a cell that is present but not a number, not a whole number where one is needed, or
    not a date).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found; check the path to the transactions file")
    if not path.is_file():
        raise DataError(f"{path}: not a regular file; pass the path of a CSV or CSV.gz file")
    try:
        raw = _read_raw(path)
    except DataError:
        raise
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty; pass a CSV with a header row") from None
    except (OSError, EOFError, ValueError, zlib.error, pd.errors.ParserError) as exc:
        raise DataError(
            f"{path}: cannot be read as CSV or gzip-compressed CSV: {_read_failure(exc)}; "
            "check that the file is complete and in the Online Retail column format"
        ) from None

    quantity = _parse_number(path, raw["Quantity"], "Quantity", allow_empty=True, whole=True)
    unit_price = _parse_number(path, raw["UnitPrice"], "UnitPrice", allow_empty=True, whole=False)
    customer = _parse_number(path, raw["CustomerID"], "CustomerID", allow_empty=True, whole=True)

    return pd.DataFrame(
        {
            "invoice": _text(raw["InvoiceNo"]),
            "stock_code": _text(raw["StockCode"], upper=True),
            "description": _text(raw["Description"]),
            "quantity": quantity.astype("Int64"),
            "invoice_date": _parse_dates(path, raw["InvoiceDate"]),
            "unit_price": unit_price,
            "customer_id": customer.astype("Int64"),
            "country": _text(raw["Country"]),
        }
    )


@dataclass(frozen=True)
class CleaningReport:
    """Row counts of one cleaning pass; each dropped row counts under its first reason."""

    rows_in: int
    guest_rows: int
    cancellation_rows: int
    missing_quantity_rows: int
    non_positive_quantity_rows: int
    missing_price_rows: int
    non_positive_price_rows: int
    rows_out: int
    customers: int
    items: int

    def as_dict(self) -> dict[str, int]:
        """The counts as a plain dict."""
        return asdict(self)

    def summary(self) -> str:
        """One human-readable line."""
        return (
            f"{self.rows_in:,} rows in; dropped {self.guest_rows:,} guest, "
            f"{self.cancellation_rows:,} cancellation, "
            f"{self.missing_quantity_rows:,} missing quantity, "
            f"{self.non_positive_quantity_rows:,} non-positive quantity, "
            f"{self.missing_price_rows:,} missing price and "
            f"{self.non_positive_price_rows:,} non-positive price rows; kept {self.rows_out:,} "
            f"rows of {self.customers:,} customers and {self.items:,} items"
        )


_CLEAN_COLUMNS = ("invoice", "stock_code", "quantity", "unit_price", "customer_id")


def clean(
    df: pd.DataFrame, *, source: str | Path | None = None
) -> tuple[pd.DataFrame, CleaningReport]:
    """Drop guest, cancelled, missing or non-positive quantity and missing or non-positive
    price rows, counting each dropped row under its first reason in that order.

    A missing (empty) quantity or price leaves the row's revenue unknown, so the row is
    dropped like one with a non-positive value. ``source`` (a file name) is only used in
    error messages. The returned frame has a fresh index, and ``customer_id`` and
    ``quantity`` as int64.
    """
    where = f"{source}: " if source is not None else ""
    missing = [c for c in _CLEAN_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(
            f"{where}missing column(s) {', '.join(missing)}; pass a frame from load_transactions"
        )
    rows_in = len(df)
    keep = np.ones(rows_in, dtype=bool)
    counts: list[int] = []
    quantity = df["quantity"].to_numpy(dtype="float64", na_value=np.nan)
    unit_price = df["unit_price"].to_numpy(dtype="float64", na_value=np.nan)
    reasons = (
        df["customer_id"].isna().to_numpy(),
        df["invoice"].astype(str).str.startswith("C").to_numpy(dtype=bool),
        np.isnan(quantity),
        quantity <= 0,
        np.isnan(unit_price),
        unit_price <= 0,
    )
    for drop in reasons:
        hit = keep & drop
        counts.append(int(hit.sum()))
        keep &= ~hit
    out = df.loc[keep].reset_index(drop=True)
    if out.empty:
        raise DataError(
            f"{where}no customers left after cleaning {rows_in:,} rows (all were guest checkouts, "
            "cancellations or had a missing or non-positive quantity or price); check that "
            "CustomerID is filled in and Quantity and UnitPrice are filled in and positive"
        )
    out["customer_id"] = out["customer_id"].astype("int64")
    out["quantity"] = out["quantity"].astype("int64")
    report = CleaningReport(
        rows_in=rows_in,
        guest_rows=counts[0],
        cancellation_rows=counts[1],
        missing_quantity_rows=counts[2],
        non_positive_quantity_rows=counts[3],
        missing_price_rows=counts[4],
        non_positive_price_rows=counts[5],
        rows_out=len(out),
        customers=int(out["customer_id"].nunique()),
        items=int(out["stock_code"].nunique()),
    )
    return out, report


def load_clean(path: str | Path) -> tuple[pd.DataFrame, CleaningReport]:
    """``load_transactions`` followed by ``clean``."""
    return clean(load_transactions(path), source=path)
