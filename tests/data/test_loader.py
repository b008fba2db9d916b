"""Tests of siloguard.data.loader: reading, validating and cleaning transactions."""

from __future__ import annotations

import gzip
from pathlib import Path

import pandas as pd
import pytest

from siloguard.data import CleaningReport, clean, load_clean, load_transactions, sample_path
from siloguard.errors import DataError

HEADER = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country"

ISO_ROWS = [
    "536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,2010-12-01 08:26:00,2.55,17850.0,United Kingdom",
    "536366,22633,HAND WARMER UNION JACK,6,2011-01-13 14:05:00,1.85,,United Kingdom",
    'C536379,D,"Discount, special",-1,2011-10-31 17:19:00,27.5,14527.0,Germany',
]
UCI_ROWS = [
    "536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,12/1/2010 8:26,2.55,17850.0,United Kingdom",
    "536366,22633,HAND WARMER UNION JACK,6,1/13/2011 14:05,1.85,,United Kingdom",
    'C536379,D,"Discount, special",-1,10/31/2011 17:19,27.5,14527.0,Germany',
]
EXPECTED_DATES = pd.to_datetime(
    ["2010-12-01 08:26:00", "2011-01-13 14:05:00", "2011-10-31 17:19:00"]
).astype("datetime64[ns]")


def _write(path: Path, lines: list[str], header: str = HEADER) -> Path:
    text = "\n".join([header, *lines]) + "\n"
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode("utf-8")))
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_when_iso_dates_then_parsed_with_normalized_columns(tmp_path: Path) -> None:
    df = load_transactions(_write(tmp_path / "t.csv", ISO_ROWS))

    assert list(df.columns) == [
        "invoice", "stock_code", "description", "quantity",
        "invoice_date", "unit_price", "customer_id", "country",
    ]  # fmt: skip
    assert df["invoice_date"].dtype == "datetime64[ns]"
    assert df["quantity"].dtype == "Int64"
    assert df["unit_price"].dtype == "float64"
    assert df["customer_id"].dtype == "Int64"
    assert list(df["invoice_date"]) == list(EXPECTED_DATES)
    assert df["description"].iloc[2] == "Discount, special"


def test_when_uci_dates_then_parsed_month_first(tmp_path: Path) -> None:
    df = load_transactions(_write(tmp_path / "t.csv", UCI_ROWS))

    assert list(df["invoice_date"]) == list(EXPECTED_DATES)


def test_when_customer_id_is_float_or_empty_then_nullable_int(tmp_path: Path) -> None:
    df = load_transactions(_write(tmp_path / "t.csv", ISO_ROWS))

    assert df["customer_id"].iloc[0] == 17850
    assert pd.isna(df["customer_id"].iloc[1])
    assert df["customer_id"].iloc[2] == 14527


def test_when_gzip_file_then_same_frame_as_plain_csv(tmp_path: Path) -> None:
    plain = load_transactions(_write(tmp_path / "t.csv", ISO_ROWS))
    packed = load_transactions(_write(tmp_path / "t.csv.gz", ISO_ROWS))

    pd.testing.assert_frame_equal(plain, packed)


def test_when_gzip_content_has_csv_extension_then_detected_by_content(tmp_path: Path) -> None:
    path = tmp_path / "really_gzip.csv"
    path.write_bytes(gzip.compress(("\n".join([HEADER, *ISO_ROWS]) + "\n").encode()))

    assert len(load_transactions(path)) == 3


def test_when_stock_code_lower_case_with_spaces_then_stripped_upper(tmp_path: Path) -> None:
    row = "536365, 15056bl ,RAIN HAT,1,2010-12-01 08:26:00,2.5,17850.0,United Kingdom"
    df = load_transactions(_write(tmp_path / "t.csv", [row]))

    assert df["stock_code"].iloc[0] == "15056BL"


def test_when_columns_missing_then_error_names_them_and_file(tmp_path: Path) -> None:
    header = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,CustomerID"
    path = _write(tmp_path / "short.csv", ["1,A,x,1,2010-12-01 08:26:00,1.0"], header=header)

    with pytest.raises(DataError) as err:
        load_transactions(path)

    message = str(err.value)
    assert "UnitPrice" in message and "Country" in message
    assert "short.csv" in message
    assert "\n" not in message


def test_when_date_unparseable_then_error_names_row_and_column_not_value(tmp_path: Path) -> None:
    secret = "Smith-17850"
    rows = [*ISO_ROWS[:2], ISO_ROWS[2].replace("2011-10-31 17:19:00", secret)]
    path = _write(tmp_path / "dates.csv", rows)

    with pytest.raises(DataError) as err:
        load_transactions(path)

    message = str(err.value)
    assert "data row 3" in message
    assert "InvoiceDate" in message
    assert "dates.csv" in message
    assert secret not in message and "17850" not in message


def test_when_first_date_in_unknown_format_then_error_names_row_one(tmp_path: Path) -> None:
    rows = [ISO_ROWS[0].replace("2010-12-01 08:26:00", "01.12.2010 08:26"), *ISO_ROWS[1:]]

    with pytest.raises(DataError, match="data row 1"):
        load_transactions(_write(tmp_path / "t.csv", rows))


def test_when_quantity_not_a_number_then_error_names_row_not_value(tmp_path: Path) -> None:
    rows = [ISO_ROWS[0], ISO_ROWS[1].replace(",6,", ",six17850,")]

    with pytest.raises(DataError) as err:
        load_transactions(_write(tmp_path / "t.csv", rows))

    message = str(err.value)
    assert "Quantity" in message and "data row 2" in message
    assert "six17850" not in message


# Finding: a partner retailer's export in the documented format leaves the price of
# zero-quantity rows empty; the load aborted ("value is not a number") instead of dropping
# them like other non-positive rows.
PARTNER_ROWS = [
    "536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,2010-12-01 08:26:00,2.55,17850.0,United Kingdom",
    "536414,22139,,0,2010-12-01 11:52:00,,,United Kingdom",  # zero quantity, no price, guest
    "536415,22140,,0,2010-12-01 11:53:00,,17850.0,United Kingdom",  # zero quantity, no price
    "536416,22141,RED SPOT BAG,3,2010-12-01 11:54:00,,13047.0,United Kingdom",  # a purchase without price
    "536417,22142,BLUE SPOT BAG,,2010-12-01 11:55:00,1.65,13047.0,United Kingdom",  # no quantity
    "536418,22143,GREEN SPOT BAG,  ,2010-12-01 11:56:00, ,13047.0,United Kingdom",  # blanks only
    "536419,22144,PINK SPOT BAG,2,2010-12-01 11:57:00,1.65,13047.0,United Kingdom",
]


def test_when_partner_rows_have_empty_price_or_quantity_then_dropped_and_counted(tmp_path: Path) -> None:
    path = _write(tmp_path / "partner.csv", PARTNER_ROWS)

    raw = load_transactions(path)
    out, report = load_clean(path)

    assert raw["quantity"].isna().tolist() == [False] * 4 + [True, True, False]
    assert raw["unit_price"].isna().tolist() == [False, True, True, True, False, True, False]
    assert report == CleaningReport(
        rows_in=7,
        guest_rows=1,
        cancellation_rows=0,
        missing_quantity_rows=2,
        non_positive_quantity_rows=1,
        missing_price_rows=1,
        non_positive_price_rows=0,
        rows_out=2,
        customers=2,
        items=2,
    )
    assert list(out["invoice"]) == ["536365", "536419"]
    assert out["quantity"].dtype == "int64" and out["customer_id"].dtype == "int64"
    assert "1 missing price" in report.summary() and "2 missing quantity" in report.summary()


def test_when_hand_made_frame_has_missing_values_then_counted_under_first_reason() -> None:
    df = _frame([("1", "A", 1, 1.0, 10), ("2", "B", 0, 1.0, 11), ("3", "C", 2, 1.0, 12)])
    df["quantity"] = pd.array([1, None, 0], dtype="Int64")
    df["unit_price"] = [1.0, float("nan"), float("nan")]

    out, report = clean(df)

    assert (report.missing_quantity_rows, report.non_positive_quantity_rows) == (1, 1)
    assert (report.missing_price_rows, report.non_positive_price_rows) == (0, 0)
    assert list(out["invoice"]) == ["1"] and out["quantity"].dtype == "int64"


@pytest.mark.parametrize(("column", "good", "bad"), [("Quantity", ",2,", ",abc,"), ("UnitPrice", ",1.65,", ",abc,")])
def test_when_partner_file_has_a_malformed_number_then_error_names_column_and_row_not_value(
    tmp_path: Path, column: str, good: str, bad: str
) -> None:
    rows = [*PARTNER_ROWS[:-1], PARTNER_ROWS[-1].replace(good, bad)]

    with pytest.raises(DataError) as err:
        load_transactions(_write(tmp_path / "partner.csv", rows))

    message = str(err.value)
    assert f"column {column}, data row 7" in message and "not a number" in message
    assert "abc" not in message


def test_when_quantity_too_large_for_a_whole_number_then_error_names_row(tmp_path: Path) -> None:
    rows = [ISO_ROWS[0], ISO_ROWS[1].replace(",6,", ",1e20,")]

    with pytest.raises(DataError, match="column Quantity, data row 2: value is not a whole number"):
        load_transactions(_write(tmp_path / "t.csv", rows))


def test_when_only_rows_without_price_then_no_customers_error_says_so(tmp_path: Path) -> None:
    path = _write(tmp_path / "noprice.csv", [PARTNER_ROWS[3]])

    with pytest.raises(DataError, match="missing or non-positive quantity or price"):
        load_clean(path)


def test_when_file_missing_then_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_transactions(tmp_path / "nope.csv")


def test_when_gzip_is_corrupt_then_data_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.csv.gz"
    path.write_bytes(gzip.compress(("\n".join([HEADER, *ISO_ROWS])).encode())[:40])

    with pytest.raises(DataError, match="broken.csv.gz"):
        load_transactions(path)


def test_when_file_empty_then_data_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    path.write_bytes(b"")

    with pytest.raises(DataError, match="empty"):
        load_transactions(path)


def _frame(rows: list[tuple[str, str, int, float, int | None]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "invoice": [r[0] for r in rows],
            "stock_code": [r[1] for r in rows],
            "description": "item",
            "quantity": pd.Series([r[2] for r in rows], dtype="int64"),
            "invoice_date": pd.Timestamp("2011-01-01"),
            "unit_price": pd.Series([r[3] for r in rows], dtype="float64"),
            "customer_id": pd.array([r[4] for r in rows], dtype="Int64"),
            "country": "United Kingdom",
        }
    )


def test_when_hand_made_frame_cleaned_then_each_row_counted_under_first_reason() -> None:
    df = _frame(
        [
            ("1", "A", 1, 1.0, None),  # guest
            ("C2", "A", -1, 1.0, None),  # guest first, though also a cancellation
            ("C3", "A", -1, 1.0, 10),  # cancellation (also non-positive quantity)
            ("4", "A", 0, 0.0, 10),  # non-positive quantity (also price)
            ("5", "B", 2, -1.0, 11),  # non-positive price
            ("6", "A", 1, 2.0, 10),
            ("6", "B", 3, 2.0, 10),
            ("7", "C", 1, 0.5, 12),
        ]
    )

    out, report = clean(df)

    assert report == CleaningReport(
        rows_in=8,
        guest_rows=2,
        cancellation_rows=1,
        missing_quantity_rows=0,
        non_positive_quantity_rows=1,
        missing_price_rows=0,
        non_positive_price_rows=1,
        rows_out=3,
        customers=2,
        items=3,
    )
    assert out["customer_id"].dtype == "int64"
    assert list(out["invoice"]) == ["6", "6", "7"]
    assert report.as_dict()["rows_out"] == 3
    assert "\n" not in report.summary() and "3 rows" in report.summary()


def test_when_nothing_survives_cleaning_then_no_customers_error() -> None:
    df = _frame([("1", "A", 1, 1.0, None), ("C2", "A", -1, 1.0, 987654)])

    with pytest.raises(DataError, match="no customers left after cleaning") as err:
        clean(df)

    assert "CustomerID" in str(err.value)
    assert "987654" not in str(err.value)


def test_when_load_clean_on_file_with_only_guests_then_error_names_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "guests.csv", [ISO_ROWS[1]])

    with pytest.raises(DataError, match="guests.csv: no customers left"):
        load_clean(path)


def test_when_packaged_sample_loaded_then_it_has_over_1000_customers() -> None:
    path = sample_path()

    df, report = load_clean(path)

    assert path.is_file() and path.name == "online_retail_sample.csv.gz"
    assert report.customers >= 1000
    assert df["invoice_date"].min() < pd.Timestamp("2010-12-02")
    assert df["invoice_date"].max() >= pd.Timestamp("2011-10-31")
