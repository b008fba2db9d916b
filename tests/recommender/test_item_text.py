"""Public item features from the catalogue, and the model's map from them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from siloguard.recommender.item_text import TEXT_DIM, item_documents, item_text_features
from siloguard.recommender.model import SharedModel

CODES = ["22726", "22727", "22728", "22729", "85123A", "85123B", "71053", "21212", "21213", "90001"]
SHELF = {
    "22726": "ALARM CLOCK BAKELIKE GREEN",
    "22727": "ALARM CLOCK BAKELIKE RED",
    "22728": "ALARM CLOCK BAKELIKE PINK",
    "22729": "ALARM CLOCK BAKELIKE ORANGE",
    "85123A": "WHITE HANGING HEART T-LIGHT HOLDER",
    "85123B": "RED HANGING HEART T-LIGHT HOLDER",
    "71053": "WHITE METAL LANTERN",
    "21212": "PACK OF 72 RETROSPOT CAKE CASES",
    "21213": "PACK OF 72 SKULL CAKE CASES",
    # 90001: no published description (fewer than 3 buyers): its code alone describes it
}


def _cos(x: np.ndarray, i: int, j: int) -> float:
    return float(x[i] @ x[j])


def test_when_features_are_built_then_products_of_one_line_are_closer_than_unrelated_ones() -> None:
    x = item_text_features(CODES, SHELF, dim=6)
    assert x.shape == (len(CODES), 6) and x.dtype == np.float32
    norms = np.linalg.norm(x, axis=1)
    assert np.allclose(norms[norms > 0], 1.0, atol=1e-5)
    clock_green, clock_red, heart_white, lantern, cases = 0, 1, 4, 6, 7
    assert _cos(x, clock_green, clock_red) > 0.9
    assert _cos(x, clock_green, clock_red) > _cos(x, clock_green, heart_white) + 0.5
    assert _cos(x, clock_green, cases) < 0.3
    assert _cos(x, heart_white, 5) > _cos(x, heart_white, lantern)


def test_when_the_same_catalogue_is_given_twice_then_the_features_are_identical() -> None:
    """Every party computes the features itself: the same catalogue must give the same matrix."""
    first = item_text_features(CODES, SHELF, dim=6)
    from siloguard.recommender import item_text

    item_text._features.cache_clear()
    second = item_text_features(list(CODES), dict(SHELF), dim=6)
    assert np.array_equal(first, second)
    first[0, 0] = 42.0  # a caller's copy: the cached matrix is not changed through it
    assert item_text_features(CODES, SHELF, dim=6)[0, 0] != 42.0


def test_when_a_product_has_no_description_then_its_code_describes_it() -> None:
    docs = item_documents(CODES, SHELF)
    assert docs[-1] == "c3_900 c4_9000"
    assert docs[0].split()[:2] == ["c3_227", "c4_2272"] and "ALARM" in docs[0]


def test_when_nothing_is_shared_between_products_then_the_features_are_zero() -> None:
    x = item_text_features(["1", "2"], {"1": "APPLE", "2": "PEAR"}, dim=4)
    assert x.shape == (2, 4) and not x.any()


def test_when_the_model_gets_item_features_then_they_shape_logits_but_are_never_sent() -> None:
    x = item_text_features(CODES, SHELF)
    model = SharedModel(len(CODES), dim=4, hidden=3, item_text=x)
    assert "item_text" not in model.state_dict()
    assert {"text_in.weight", "text_out.weight", "text_out.bias"} <= set(model.state_dict())
    assert sum(p.numel() for p in model.text_parameters()) == 2 * 4 * TEXT_DIM + TEXT_DIM
    profile = torch.randn(2, 4, generator=torch.Generator().manual_seed(0))
    start = model.item_logits(profile)
    with torch.no_grad():
        model.text_out.weight.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(1))
    moved = model.item_logits(profile) - start
    # the map moves products of one line together: two clocks' logits move alike, a clock's
    # and the cake cases' do not
    assert (moved[:, 0] - moved[:, 1]).norm() < 0.5 * (moved[:, 0] - moved[:, 7]).norm()
    with pytest.raises(ValueError, match="do not fit"):
        model.set_item_text(np.zeros((3, TEXT_DIM), np.float32))


def test_when_a_store_sets_its_popularity_then_new_items_start_in_that_order_and_it_is_never_sent() -> None:
    model = SharedModel(len(CODES), dim=4, hidden=3, item_text=item_text_features(CODES, SHELF))
    with torch.no_grad():  # no learned part: only the store's prior is left in the logits
        for p in model.collaborative_parameters():
            p.zero_()
    customers = np.array([5, 0, 40, 1, 0, 12, 3, 0, 7, 2], float)
    model.set_store_popularity(customers)
    logits = model.item_logits(torch.zeros(1, 4))[0].detach().numpy()
    assert np.allclose(logits, np.log1p(customers))
    assert list(np.argsort(-logits)[:3]) == [2, 5, 8]
    assert "store_prior" not in model.state_dict() and "item_text" not in model.state_dict()
    with pytest.raises(ValueError, match="non-negative"):
        model.set_store_popularity(-customers)
