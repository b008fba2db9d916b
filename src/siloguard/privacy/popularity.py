"""A store's item popularity released under customer-level DP (the prior on new items under DP).

Without DP each store adds ``log1p(its customers per item)`` to the collaborative logits
(``SharedModel.set_store_popularity``). Computed from raw counts it would be in every customer's
DP loss and make one customer's clipped gradient depend on the others' purchases, which voids
the DP-SGD bound (docs/PRIVACY.md). Under DP the store uses this release instead:

* **Bounded contribution.** Each customer contributes a vector over the catalogue with
  ``1 / sqrt(k_u)`` on each of their ``k_u`` distinct items (before the split) and 0
  elsewhere: its L2 norm is exactly 1 whatever the customer bought, so adding or removing one
  customer moves the sum by at most 1 in L2 (sensitivity 1). This spends every customer's
  whole norm budget (a cap of ``c`` items at ``1 / sqrt(c)`` each wastes it on customers with
  fewer items and drops items of the others); the sum is a popularity in which a customer
  with few items counts more per item, which is what a prior on *new* items needs (their
  ranking order), not the exact number of buyers.
* **Gaussian noise** ``N(0, sigma^2)`` on every item, from the OS CSPRNG
  (:func:`siloguard.privacy.dp.os_gaussian`): the Gaussian mechanism with L2 sensitivity 1.
* **Accounting.** The release is one entry ``(sigma, 1.0, 1)`` in the store's accountant
  history: a Poisson-sampled Gaussian at rate 1 for one step *is* the Gaussian mechanism
  (RDP ``alpha / (2 sigma^2)``), so the ledger composes it with the DP-SGD rounds and the
  noise plan spends what is left. ``sigma`` gives the release ``privacy.popularity_share`` of
  the target's zCDP budget (:func:`release_noise`).
* **Post-processing** (free): the prior is ``log1p(max(0, released - 2 x noise std))``
  (:func:`popularity_prior`); the coordinator's sum of the stores' releases
  (:func:`sum_releases`) is post-processing too, so every store may use it.

A store releases once per run (its first training round); a new run releases and charges again.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

from siloguard.config import PrivacySettings
from siloguard.privacy.history import RELEASE_RATE, RELEASE_STEPS, is_release_step, release_step

__all__ = [
    "RELEASE_RATE",
    "RELEASE_STEPS",
    "bounded_contributions",
    "bounded_popularity",
    "is_release_step",
    "popularity_prior",
    "popularity_record",
    "read_popularity_record",
    "sum_releases",
    "release_noise",
    "release_popularity",
    "release_step",
]



def bounded_contributions(counts: sp.spmatrix) -> sp.csr_matrix:
    """Each customer's row: ``1 / sqrt(k_u)`` on their ``k_u`` distinct items (L2 norm 1, or 0)."""
    bought = sp.csr_matrix(counts, copy=True)
    bought.data = (bought.data > 0).astype(np.float64)
    bought.eliminate_zeros()
    k = np.diff(bought.indptr)
    bought.data = bought.data / np.sqrt(np.repeat(np.maximum(k, 1), k))
    return bought


def bounded_popularity(counts: sp.spmatrix) -> np.ndarray:
    """The un-noised sum of the customers' bounded contributions (never leaves this module's callers
    un-noised: :func:`release_popularity` is the only way to a prior under DP)."""
    return np.asarray(bounded_contributions(counts).sum(axis=0), np.float64).ravel()


def release_popularity(counts: sp.spmatrix, sigma: float) -> np.ndarray:
    """The store's bounded popularity plus ``N(0, sigma^2)`` per item (OS CSPRNG): the DP release.

    The caller charges ``release_step(sigma)`` to the store's accountant history.
    """
    from siloguard.privacy.dp import os_gaussian

    if not sigma > 0:
        raise ValueError("the release needs a positive noise")
    exact = bounded_popularity(counts)
    # Rounded to float32 like every other DP output of a store (docs/PRIVACY.md, floating point):
    # the low-order bits of exact + noise say something about exact (Mironov 2012); rounding is
    # post-processing, free.
    return (exact + os_gaussian((exact.size,), float(sigma)).numpy()).astype(np.float32).astype(np.float64)


def release_noise(privacy: PrivacySettings, delta: float) -> float | None:
    """Sigma of the release: ``popularity_share`` of the target's zCDP budget (None: no release).

    Gaussian mechanisms compose additively in zCDP's rho (Bun & Steinke 2016): the target
    ``(epsilon, delta)`` corresponds to ``rho = (sqrt(epsilon + ln(1/delta)) - sqrt(ln(1/delta)))^2``
    (from ``epsilon = rho + 2 sqrt(rho ln(1/delta))``), and a Gaussian mechanism of sensitivity 1
    at ``sigma`` costs ``rho = 1 / (2 sigma^2)``. The split only picks sigma; what is spent is
    what the store's accountant composes (the release entry plus the planned rounds, which are
    planned after it and end at the target). A share of the epsilon itself would not do: the
    RDP accountant's orders stop at 63, where the Gaussian mechanism alone cannot go below about
    0.19 at delta 1e-5, more than a tenth of epsilon 1.
    """
    share = privacy.popularity_share
    if not share:
        return None
    log_delta = math.log(1.0 / delta)
    rho = (math.sqrt(privacy.target_epsilon + log_delta) - math.sqrt(log_delta)) ** 2
    return 1.0 / math.sqrt(2.0 * share * rho)


#: The prior keeps what a release shows above this many noise standard deviations: an item no
#: customer bought passes 2 sigma with probability 2.3%, where max(0, .) alone gave half of
#: the catalogue's unbought items a random prior of about 0.8 sigma.
PRIOR_THRESHOLD = 2.0


def popularity_prior(released: np.ndarray, noise: float, threshold: float = PRIOR_THRESHOLD) -> np.ndarray:
    """Post-processing of a release (free): what stands above ``threshold`` x its noise std, for
    ``set_store_popularity``. ``noise`` is the release's std (a sum of m stores' releases at
    sigma_1..m: ``sqrt(sum sigma_i^2)``)."""
    return np.maximum(np.asarray(released, np.float64) - threshold * float(noise), 0.0)


# ---- in messages: a store's release in its reply, the federation's sum in the coordinator's ----
def popularity_record(released: np.ndarray, sigma: float):  # noqa: ANN201 - flwr ConfigRecord, imported lazily
    """Released counts (a DP output, or a sum of them) and their noise std, as a message record.

    A ConfigRecord, not an ArrayRecord: Flower's strategies expect exactly one ArrayRecord (the
    model) in a training reply and refuse to aggregate otherwise.
    """
    from flwr.app import ConfigRecord

    return ConfigRecord({"released": [float(v) for v in np.asarray(released, np.float64)], "sigma": float(sigma)})


def read_popularity_record(record: object, items: int | None = None) -> tuple[np.ndarray, float]:
    """(released counts, noise std) from a message record; ValueError if it is not one."""
    try:
        released = np.asarray(record["released"], np.float64)  # type: ignore[index]
        sigma = float(record["sigma"])  # type: ignore[index]
    except (KeyError, IndexError, TypeError, ValueError):
        raise ValueError("the popularity record does not parse") from None
    if released.ndim != 1 or (items is not None and released.shape != (items,)):
        raise ValueError(f"the popularity record is not a vector over the run's {items} products")
    if not np.isfinite(released).all() or not (math.isfinite(sigma) and sigma > 0):
        raise ValueError("the popularity record holds non-finite counts or no noise")
    return released, sigma


def sum_releases(releases: list[tuple[np.ndarray, float]]) -> tuple[np.ndarray, float]:
    """The federation's prior: the sum of the stores' releases (post-processing, free) and its noise
    std ``sqrt(sum sigma_i^2)`` (independent Gaussian noises add in variance)."""
    total = np.sum([r for r, _ in releases], axis=0)
    return total, math.sqrt(sum(s * s for _, s in releases))
