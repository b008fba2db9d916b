"""Consent for benchmark runs on the UCI file, which carries none.

Benchmarks measure the model, not consent coverage: every customer is given a simulated
in-store grant of ``personalize.profiling`` (``siloguard.data.consent.simulated_consent``
with a rate of 1), so the gate lets the same customers through as before it existed.
"""

from __future__ import annotations

from pathlib import Path

from siloguard.data.consent import simulated_consent
from siloguard.data.loader import load_clean


def everyone_consents(data: Path, work: Path) -> Path:
    """Write a consent file granting profiling to every customer of ``data``; returns its path."""
    frame, _ = load_clean(data)
    path = Path(work) / "consent-all.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    simulated_consent(frame, profiling_rate=1.0, marketing_rate=0.0, withdraw_rate=0.0).to_csv(path, index=False)
    return path
