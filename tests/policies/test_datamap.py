from __future__ import annotations

from pathlib import Path

import pytest

from siloguard.data.loader import RAW_COLUMNS
from siloguard.data.profiles import PROFILE_COLUMNS
from siloguard.errors import ConfigError
from siloguard.policies.datamap import Treatment, load_datamap, load_datamaps

GOOD = """\
dataset: shop
region: EU
countries: [GB, DE]
retention: P2Y
subject_column: customer_id
purposes:
  analytics.reporting: legitimate_interests
  marketing: consent
columns:
  customer_id:
    category: user.unique_id
    uses:
      analytics.reporting: pseudonymise
  email:
    category: user.contact.email
    uses:
      marketing.advertising.first_party.targeted: clear
      analytics.reporting: mask
  notes:
    category: user.behavior.purchase_history
    free_text: true
    uses:
      analytics.reporting: scan
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "shop.yaml"
    path.write_text(text)
    return path


def test_when_shipped_maps_loaded_then_they_declare_every_source_column() -> None:
    maps = load_datamaps()
    assert set(maps["transactions"].columns) == set(RAW_COLUMNS.values())
    assert set(maps["customer_profiles"].columns) == set(PROFILE_COLUMNS)
    for datamap in maps.values():
        assert datamap.subject_column == "customer_id"
        assert all(t is Treatment.PSEUDONYMISE for t in datamap.columns["customer_id"].uses.values())


def test_when_purpose_is_more_specific_than_declared_then_declaration_covers_it(tmp_path: Path) -> None:
    datamap = load_datamap(write(tmp_path, GOOD))
    assert datamap.lawful_basis("marketing.advertising.first_party.targeted") == "consent"
    assert datamap.lawful_basis("analytics.reporting.campaign_insights") == "legitimate_interests"
    assert datamap.lawful_basis("analytics") is None
    assert datamap.columns_for("analytics.reporting.campaign_insights") == {
        "customer_id": Treatment.PSEUDONYMISE,
        "email": Treatment.MASK,
        "notes": Treatment.SCAN,
    }
    assert datamap.columns_for("marketing.advertising.first_party.targeted") == {"email": Treatment.CLEAR}
    assert datamap.retention_period.days == 730


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        # unknown taxonomy keys
        ("category: user.contact.email", "category: user.contact.e_mail", r"shop.yaml:15: columns.email.category: unknown data category 'user.contact.e_mail'"),
        ("  analytics.reporting: legitimate_interests", "  analytics.reports: legitimate_interests", r"shop.yaml:7: purposes.analytics.reports: unknown data use"),
        ("      marketing.advertising.first_party.targeted: clear", "      marketing.adverts: clear", r"shop.yaml:17: columns.email.uses.marketing.adverts: unknown data use"),
        # purposes without a lawful basis
        ("  marketing: consent", "  marketing:", r"shop.yaml:8: purposes.marketing: purpose without lawful basis"),
        ("  marketing: consent", "  marketing: because", r"shop.yaml:8: purposes.marketing: unknown lawful basis 'because'"),
        ("  marketing: consent\n", "", r"shop.yaml:16: columns.email.uses.marketing.advertising.first_party.targeted: purpose without lawful basis"),
        # malformed durations
        ("retention: P2Y", "retention: 2 years", r"shop.yaml:4: retention: '2 years' is not a positive ISO 8601 duration"),
        ("retention: P2Y", "retention: P", r"shop.yaml:4: retention: 'P' is not a positive ISO 8601 duration"),
        ("retention: P2Y", "retention: PT0S", r"shop.yaml:4: retention: 'PT0S' is not a positive"),
        ("retention: P2Y", "retention: -P1D", r"shop.yaml:4: retention: '-P1D' is not a positive"),
        ("retention: P2Y", "retention: P2X", r"shop.yaml:4: retention: 'P2X' is not a positive"),
        # other mistakes
        ("retention: P2Y", "retension: P2Y", r"shop.yaml:4: retension: unknown key"),
        ("countries: [GB, DE]", "countries: [UK1]", r"shop.yaml:3: countries: 'UK1' is not an ISO 3166-1 alpha-2 code"),
        ("      analytics.reporting: pseudonymise", "      analytics.reporting: clear", r"shop.yaml:13: columns.customer_id.uses.analytics.reporting: the subject column always leaves the gate pseudonymised"),
        ("      analytics.reporting: scan", "      analytics.reporting: clear", r"shop.yaml:23: columns.notes.uses.analytics.reporting: a free-text column is scanned or masked, never clear"),
        ("      analytics.reporting: mask", "      analytics.reporting: scan", r"shop.yaml:18: columns.email.uses.analytics.reporting: scan is for free-text columns"),
        ("      analytics.reporting: mask", "      analytics.reporting: hide", r"shop.yaml:18: columns.email.uses.analytics.reporting: unknown treatment 'hide'"),
        ("category: user.unique_id", "category: user.account.username", r"shop.yaml:5: subject_column: the subject column's category must be user.unique_id"),
        ("  notes:\n", "  email:\n", r"shop.yaml:19: columns.email: duplicate key"),
        ("columns:", "columns: [", r"shop.yaml:\d+: not valid YAML"),
    ],
)
def test_when_map_is_bad_then_load_fails_naming_file_line_and_key(tmp_path: Path, old: str, new: str, expected: str) -> None:
    assert old in GOOD
    with pytest.raises(ConfigError, match=expected):
        load_datamap(write(tmp_path, GOOD.replace(old, new, 1)))


def test_when_two_maps_declare_one_dataset_then_loading_the_directory_fails(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(GOOD)
    (tmp_path / "b.yaml").write_text(GOOD)
    with pytest.raises(ConfigError, match="dataset 'shop' is already declared in a.yaml"):
        load_datamaps(tmp_path)


def test_when_directory_has_no_maps_then_loading_fails(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no data maps"):
        load_datamaps(tmp_path)
