"""Hierarchical dotted keys, as fideslang writes data categories and data uses.

A key covers itself and every key below it: ``user.behavior`` covers
``user.behavior.purchase_history``, and does not cover ``user.behaviour`` or
``user.behavior_extra``. Plain string functions with no vocabulary behind them, so both
``policies`` (which owns the accepted keys, :mod:`siloguard.policies.taxonomy`) and
``privacy`` (whose masking operators are keyed by data category) can use them.
"""

from __future__ import annotations

__all__ = ["ancestors", "covers"]


def covers(general: str, specific: str) -> bool:
    """True if the key ``general`` is ``specific`` or one of its ancestors.

    Empty keys never cover and are never covered: a missing attribute must not match.
    """
    if not general or not specific:
        return False
    return specific == general or specific.startswith(general + ".")


def ancestors(key: str) -> list[str]:
    """``key`` and its ancestors, most specific first: a.b.c -> [a.b.c, a.b, a]."""
    parts = key.split(".")
    return [".".join(parts[:n]) for n in range(len(parts), 0, -1)]
