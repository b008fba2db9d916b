from __future__ import annotations

from pathlib import Path

import pytest

from siloguard.errors import ConfigError
from siloguard.policies.taxonomy import ancestors, covers, load_taxonomy


@pytest.mark.parametrize(
    ("general", "specific", "expected"),
    [
        ("user.behavior", "user.behavior.purchase_history", True),
        ("user.behavior", "user.behavior", True),
        ("user.behavior", "user.behaviour", False),
        ("user.behavior", "user.behavior_extra", False),
        ("user.behavior.purchase_history", "user.behavior", False),
        ("", "user", False),
        ("user", "", False),
    ],
)
def test_when_keys_compared_then_only_ancestors_cover(general: str, specific: str, expected: bool) -> None:
    assert covers(general, specific) is expected


def test_when_key_has_parents_then_ancestors_are_most_specific_first() -> None:
    assert ancestors("a.b.c") == ["a.b.c", "a.b", "a"]


def test_when_shipped_taxonomy_loaded_then_keys_from_the_issue_are_known() -> None:
    tax = load_taxonomy()
    for key in ("user.contact.email", "user.behavior.purchase_history", "user.unique_id"):
        assert tax.is_category(key)
    for key in ("personalize.profiling", "marketing.advertising.first_party.targeted", "analytics.reporting", "essential.service"):
        assert tax.is_use(key)
    assert set(tax.lawful_bases) == {
        "consent", "contract", "legal_obligation", "vital_interests", "public_task", "legitimate_interests"
    }


def test_when_key_listed_without_parent_then_load_fails_naming_line(tmp_path: Path) -> None:
    path = tmp_path / "tax.yaml"
    path.write_text("data_categories:\n  - user\n  - user.contact.email\ndata_uses: [analytics]\nlawful_bases: [consent]\n")
    with pytest.raises(ConfigError, match=r"tax.yaml:3: data_categories: 'user.contact.email' is listed before"):
        load_taxonomy(path)
