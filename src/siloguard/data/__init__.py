"""siloguard.data: load, clean, partition and split retail transactions; fake profiles."""

from siloguard.data.loader import CleaningReport, clean, load_clean, load_transactions, sample_path
from siloguard.data.profiles import generate_profiles
from siloguard.data.silos import Silo, assign_stores, customer_countries, partition
from siloguard.data.split import TemporalSplit, temporal_split

__all__ = [
    "CleaningReport",
    "Silo",
    "TemporalSplit",
    "assign_stores",
    "clean",
    "customer_countries",
    "generate_profiles",
    "load_clean",
    "load_transactions",
    "partition",
    "sample_path",
    "temporal_split",
]
