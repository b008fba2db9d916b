"""Fixed item features from the public catalogue: product descriptions and stock codes.

The collaborative ranker's shared part is a small map applied to these features
(``SharedModel.text_in`` / ``text_out``), not a free vector per product: a few thousand
shared numbers instead of hundreds of thousands, which is what lets it learn under
customer-level DP-SGD (docs/PRIVACY.md, "What is shared under DP").

The features are computed from public catalogue data only (the product descriptions the
stores published and the stock codes), never from purchases, so they cost no privacy
budget. Every party computes them itself from the same catalogue (the coordinator sends the
codes and descriptions with every message; a store scoring with a model version reads them
from the version's ``catalogue.json``): they are not part of the model's state dict, so
neither FedAvg nor central DP noise ever touches them.

Method: TF-IDF (sublinear term frequency) over the description's words and word pairs and
over the stock code's leading digits (neighbouring codes are often one product line:
22726-22729 are alarm clocks in four colours), reduced to :data:`TEXT_DIM` dimensions by a
truncated SVD with a fixed seed (latent semantic analysis), rows L2-normalised. The same
input gives the same matrix (tested).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from functools import lru_cache

import numpy as np

__all__ = ["TEXT_DIM", "item_text_features", "item_documents"]

#: Dimensions of an item's text features.
TEXT_DIM = 64

_WORD = re.compile(r"[A-Z][A-Z]+")


def item_documents(codes: Sequence[str], descriptions: Mapping[str, str]) -> list[str]:
    """One short document per product: its description's words and its code's prefixes.

    Code tokens (``c3_227``, ``c4_2272``) group neighbouring stock codes; a product without a
    published description is described by its code alone.
    """
    docs = []
    for code in codes:
        words = _WORD.findall(str(descriptions.get(code, "")).upper())
        digits = re.match(r"\d+", str(code))
        prefix = digits.group(0) if digits else str(code).upper()
        tokens = [f"c3_{prefix[:3]}", f"c4_{prefix[:4]}", *words]
        docs.append(" ".join(tokens))
    return docs


def item_text_features(
    codes: Sequence[str], descriptions: Mapping[str, str], dim: int = TEXT_DIM
) -> np.ndarray:
    """``(len(codes), dim)`` float32 features, rows of unit length (or zero), deterministic."""
    key = tuple(str(c) for c in codes)
    return _features(key, tuple(str(descriptions.get(c, "")) for c in key), int(dim)).copy()


@lru_cache(maxsize=8)
def _features(codes: tuple[str, ...], texts: tuple[str, ...], dim: int) -> np.ndarray:
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    n = len(codes)
    out = np.zeros((n, dim), np.float32)
    if n == 0:
        return out
    docs = item_documents(codes, dict(zip(codes, texts)))
    # words (a token pattern that keeps the c3_/c4_ code tokens whole) and word pairs;
    # terms in a single product carry no similarity and are dropped.
    vectorizer = TfidfVectorizer(
        token_pattern=r"\S+", lowercase=False, ngram_range=(1, 2), min_df=2, sublinear_tf=True, dtype=np.float64
    )
    try:
        tfidf = vectorizer.fit_transform(docs)
    except ValueError:  # no term in two products (a tiny catalogue): no text signal
        return out
    k = min(dim, tfidf.shape[1] - 1, n - 1)
    if k < 1:
        return out
    # ARPACK from a fixed start vector: the same catalogue gives the same basis (signs fixed
    # by sklearn's svd_flip), on every party's machine up to floating-point rounding.
    reduced = TruncatedSVD(n_components=k, algorithm="arpack", random_state=0).fit_transform(tfidf)
    norms = np.linalg.norm(reduced, axis=1, keepdims=True)
    out[:, :k] = np.where(norms > 0, reduced / np.maximum(norms, 1e-12), 0.0)
    out.setflags(write=False)
    return out
