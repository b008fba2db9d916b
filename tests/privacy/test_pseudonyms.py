from __future__ import annotations

import re

import pandas as pd
import pytest

from siloguard.errors import DataError
from siloguard.privacy.keys import FileKeyStore, StoreKeys
from siloguard.privacy.pseudonyms import Pseudonymiser, normalise_ids


def test_when_ids_pseudonymised_then_stable_keyed_versioned_and_na_kept(store_keys: StoreKeys) -> None:
    p = Pseudonymiser(store_keys)
    out = p.pseudonymise(pd.Series([17850, 17850, 12345]))
    assert out[0] == out[1] != out[2]
    assert all(re.fullmatch(r"v1\.[0-9a-f]{32}", x) for x in out)
    assert "17850" not in "".join(out)
    assert out[0] == p.pseudonym("17850") == p.pseudonym(17850.0)
    same = p.pseudonymise(pd.Series(["17850", None, " 17850 "]))
    assert same[0] == same[2] == out[0] and same[1] is None


def test_when_two_stores_pseudonymise_one_customer_then_pseudonyms_are_unlinkable(keystore: FileKeyStore) -> None:
    a, b = StoreKeys(keystore, "store-a"), StoreKeys(keystore, "store-b")
    a.init()
    b.init()
    assert Pseudonymiser(a).pseudonym(17850) != Pseudonymiser(b).pseudonym(17850)


def test_when_secret_rotated_then_new_pseudonyms_carry_new_version_and_old_still_match(store_keys: StoreKeys) -> None:
    p = Pseudonymiser(store_keys)
    old = p.pseudonym(17850)
    store_keys.rotate_pseudonym_secret()
    new = p.pseudonym(17850)
    assert new.startswith("v2.") and new != old
    assert p.version_of(old) == 1
    assert p.matches(old, 17850) and p.matches(new, 17850)
    assert not p.matches(new, 12345)
    store_keys.retire_pseudonym_secret(1)
    assert not p.matches(old, 17850)  # retired: no longer linkable


@pytest.mark.parametrize("bad", ["17850", "v0.00", "v1." + "g" * 32, None])
def test_when_not_a_pseudonym_then_version_of_refuses(bad: object) -> None:
    with pytest.raises(DataError, match="not a siloguard pseudonym"):
        Pseudonymiser.version_of(bad)  # type: ignore[arg-type]


def test_when_float_ids_are_not_integers_then_refused() -> None:
    with pytest.raises(DataError, match="non-integer"):
        normalise_ids(pd.Series([1.5, 2.0]))
