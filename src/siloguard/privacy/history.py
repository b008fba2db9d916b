"""Entries of a store's accountant history: ``(noise multiplier, sample rate, steps)``.

DP-SGD rounds add Poisson-subsampled Gaussian steps; the popularity release
(:mod:`siloguard.privacy.popularity`) adds one Gaussian mechanism, written as the entry
``(sigma, 1.0, 1)`` (a Poisson sample at rate 1 for one step is the Gaussian mechanism). A light
module (no torch): the ledger, DP-SGD and the release all read it.
"""

from __future__ import annotations

__all__ = ["RELEASE_RATE", "RELEASE_STEPS", "dp_sgd_steps", "is_release_step", "release_step"]

#: The release's accountant entry is (sigma, RELEASE_RATE, RELEASE_STEPS): the Gaussian mechanism.
RELEASE_RATE = 1.0
RELEASE_STEPS = 1


def release_step(sigma: float) -> tuple[float, float, int]:
    """The release's entry in the accountant history: the Gaussian mechanism at ``sigma``."""
    return (float(sigma), RELEASE_RATE, RELEASE_STEPS)


def is_release_step(step: tuple[float, float, int]) -> bool:
    return float(step[1]) == RELEASE_RATE and int(step[2]) == RELEASE_STEPS


def dp_sgd_steps(history: list[tuple[float, float, int]]) -> int:
    """The DP-SGD steps of a history: the release is in epsilon, but it is not a step."""
    return int(sum(h[2] for h in history if not is_release_step(h)))
