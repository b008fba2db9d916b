"""A store's private parameters on its own disk: one embedding per customer, by pseudonym.

The federation client trains a user embedding per customer next to the shared model; it
never leaves the store. Between rounds (and across restarts of the store's node) it is kept
in ``<work_dir>/private/<store>.pt`` (mode 0600) as the gate's pseudonyms of the customers
and their vectors, never a raw customer id.

Only customers in the round's gated data are written back: a customer whose consent was
withdrawn loses their embedding at the next round, and :func:`erase_subjects` removes one
at once (a data-subject erasure).
"""

from __future__ import annotations

import fcntl
import io
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from siloguard._files import write_atomic
from siloguard.config import Settings
from siloguard.errors import DataError
from siloguard.recommender.model import REPEAT_PREFIX, PrivateUsers, SharedModel

__all__ = [
    "ReleasedPopularity",
    "erase_subjects",
    "erasure_mark",
    "load_released_popularity",
    "load_private_repeat",
    "load_private_users",
    "read_private_repeat",
    "repeat_lock",
    "private_path",
    "repeat_path",
    "save_private_repeat",
    "save_private_users",
    "save_released_popularity",
    "served_popularity",
    "stored_subjects",
]



@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One writer at a time across processes (the store's node and ``store sync``)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def private_path(settings: Settings, store: str) -> Path:
    return settings.work_dir / "private" / f"{store}.pt"


def _read(path: Path) -> tuple[list[str], torch.Tensor] | None:
    if not path.is_file():
        return None
    try:
        state = torch.load(path, weights_only=True)
        subjects, weight = list(state["subjects"]), state["weight"]
    except Exception as exc:  # noqa: BLE001  any unreadable file is the same problem for the user
        raise DataError(
            f"the store's private parameters at {path} are unreadable ({type(exc).__name__}); "
            "delete the file to start them afresh"
        ) from None
    if weight.ndim != 2 or weight.shape[0] != len(subjects):
        raise DataError(f"the store's private parameters at {path} are inconsistent; delete the file to start afresh")
    return subjects, weight


def _write(path: Path, subjects: list[str], weight: torch.Tensor) -> None:
    buffer = io.BytesIO()
    torch.save({"subjects": subjects, "weight": weight.detach().clone()}, buffer)
    write_atomic(path, buffer.getvalue(), mode=0o600)


def load_private_users(settings: Settings, store: str, subjects: pd.Index, dim: int, *, seed: int) -> PrivateUsers:
    """Embeddings for these user rows: the stored vector of a known subject, a fresh one otherwise."""
    users = PrivateUsers(len(subjects), dim, seed=seed)
    stored = _read(private_path(settings, store))
    if stored is None:
        return users
    names, weight = stored
    if weight.shape[1] != dim:
        return users  # a run with another --dim: the old vectors do not fit; start afresh
    rows = subjects.get_indexer(pd.Index(names))
    keep = rows >= 0
    if keep.any():
        with torch.no_grad():
            users.weight[torch.as_tensor(rows[keep])] = weight[torch.as_tensor(np.flatnonzero(keep))]
    return users


def erasures_path(settings: Settings, store: str) -> Path:
    return settings.work_dir / "private" / f"{store}.erasures"


def erasure_mark(settings: Settings, store: str) -> str:
    """The store's erasure mark: a random token each erasure of its private parameters writes
    anew ("" before the first). A round notes it when it gates its data and writes what it
    trained on that data back only if it has not changed (else it would restore a customer the
    erasure removed). A token, not a count: nothing to parse, so a damaged file cannot stop an
    erasure (the erasure overwrites it)."""
    try:
        return erasures_path(settings, store).read_text().strip()
    except FileNotFoundError:
        return ""


def save_private_users(
    settings: Settings, store: str, subjects: pd.Index, users: PrivateUsers, *, erasures: str | None = None
) -> bool:
    """Keep exactly these subjects' vectors (anyone else's is dropped); with ``erasures`` (the
    mark when the data was gated), only if no erasure came since. Whether it wrote them."""
    path = private_path(settings, store)
    with _locked(path):
        if erasures is not None and erasure_mark(settings, store) != erasures:
            return False
        _write(path, [str(s) for s in subjects], users.weight)
    return True


def repeat_path(settings: Settings, store: str) -> Path:
    return settings.work_dir / "private" / f"{store}.repeat.pt"


@contextmanager
def repeat_lock(settings: Settings, store: str) -> Iterator[None]:
    """Hold the store's repeat-ranker file: a round from reading it to writing it back, an erasure."""
    with _locked(repeat_path(settings, store)):
        yield


def save_private_repeat(settings: Settings, store: str, state: dict[str, torch.Tensor]) -> None:
    """Keep what the store keeps of its own repeat ranker (``recommender.train.train_kept_repeat``:
    the last round's parameters and their mean over the rounds; under DP trained here without
    noise and never sent). The caller holds :func:`repeat_lock` from reading it."""
    path = repeat_path(settings, store)
    foreign = [k for k in state if not _is_repeat_key(k)]
    if foreign:
        raise ValueError(f"not the repeat ranker's: {', '.join(foreign)}")
    buffer = io.BytesIO()
    torch.save({k: v.detach().clone() for k, v in state.items()}, buffer)
    write_atomic(path, buffer.getvalue(), mode=0o600)


def _is_repeat_key(key: object) -> bool:
    from siloguard.recommender.train import AVERAGE

    name = str(key)
    return name.removeprefix(AVERAGE).startswith(REPEAT_PREFIX) or name == AVERAGE + "rounds"


def read_private_repeat(settings: Settings, store: str) -> dict[str, torch.Tensor]:
    """What the store keeps of its own repeat ranker ({} if nothing yet)."""
    path = repeat_path(settings, store)
    if not path.is_file():
        return {}
    try:
        state = torch.load(path, weights_only=True)
        foreign = [k for k in state if not _is_repeat_key(k)]
        if foreign:  # the file may only hold the repeat ranker, never shared parameters
            raise ValueError(f"{len(foreign)} entries that are not the repeat ranker's")
    except Exception as exc:  # noqa: BLE001  any unreadable file is the same problem for the user
        raise DataError(
            f"the store's repeat ranker at {path} is unreadable ({type(exc).__name__}); delete the file to start it afresh"
        ) from None
    return dict(state)


def load_private_repeat(settings: Settings, store: str, model: SharedModel, part: str = "all") -> bool:
    """Put the store's own repeat ranker as it scores (its mean over the rounds, if kept), or of it
    what ``part`` names (``own_repeat``), into ``model`` if the store has one; False if not. A
    file from a run that kept more (the whole ranker, then the head shared) gives only ``part``:
    never a stale head over the shared one."""
    from siloguard.recommender.train import scoring_state, training_state

    state = read_private_repeat(settings, store)
    if not state:
        return False
    try:
        # The state a round trains on must fit as well: checked here, before any budget is spent.
        model.fresh_copy().load_own_repeat(training_state(state), part)
        model.load_own_repeat(scoring_state(state), part)
    except Exception as exc:  # noqa: BLE001
        raise DataError(
            f"the store's repeat ranker at {repeat_path(settings, store)} does not fit the model ({type(exc).__name__}); "
            "delete the file to start it afresh"
        ) from None
    return True


def popularity_path(settings: Settings, store: str, *, federation: bool = False) -> Path:
    """The store's own release (``federation=False``) or the last federation sum it was sent."""
    return settings.work_dir / "private" / f"{store}.popularity{'-federation' if federation else ''}.npz"


@dataclass(frozen=True)
class ReleasedPopularity:
    """The store's DP release of its item popularity in one run (privacy/popularity.py)."""

    run_id: int
    sigma: float
    released: np.ndarray  # bounded popularity + N(0, sigma^2) per item: a DP output
    ledger: str = ""  # which ledger (database) was charged for it: ledger_id()


def ledger_id(settings: Settings) -> str:
    """Names the database whose ledger a release was charged to (a hash: the URL may hold a password)."""
    import hashlib

    return hashlib.sha256(str(settings.database.url).encode()).hexdigest()[:16]


def save_released_popularity(
    settings: Settings, store: str, release: ReleasedPopularity, *, federation: bool = False
) -> None:
    """Keep the run's release, written only after the ledger has recorded its charge: within the
    run the store reuses it without a second charge; a new run releases (and is charged) again.
    ``federation``: the sum of the stores' releases the coordinator sent (what the store serves with)."""
    path = popularity_path(settings, store, federation=federation)
    buffer = io.BytesIO()
    # Flower's run ids are unsigned 64-bit (past int64): kept as text.
    np.savez(buffer, run_id=np.str_(str(int(release.run_id))), sigma=np.float64(release.sigma),
             released=np.asarray(release.released, np.float64), ledger=np.str_(ledger_id(settings)))
    with _locked(path):
        write_atomic(path, buffer.getvalue(), mode=0o600)


def load_released_popularity(
    settings: Settings, store: str, *, run_id: int | None = None, items: int | None = None, federation: bool = False
) -> ReleasedPopularity | None:
    """The store's last release (of run ``run_id`` only, when given, and charged to this
    settings' ledger; over ``items`` products)."""
    path = popularity_path(settings, store, federation=federation)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as held:
            release = ReleasedPopularity(int(str(held["run_id"])), float(held["sigma"]), np.asarray(held["released"], np.float64),
                                         str(held["ledger"]) if "ledger" in held.files else "")
    except Exception as exc:  # noqa: BLE001
        raise DataError(
            f"the store's released popularity at {path} is unreadable ({type(exc).__name__}); delete the file: "
            "the next round releases it again (and charges the ledger again)"
        ) from None
    if run_id is not None and (release.run_id != run_id or release.ledger != ledger_id(settings)):
        return None  # another run's, or charged to another database's ledger: not paid for here
    if items is not None and release.released.shape != (items,):
        return None
    if not (release.sigma > 0 and np.isfinite(release.released).all()):
        raise DataError(f"the store's released popularity at {path} is not a release; delete the file")
    return release


def served_popularity(settings: Settings, store: str, items: int) -> tuple[np.ndarray, float] | None:
    """The released counts a DP store ranks new items with outside training (``store recommend``):
    the last federation sum it was sent, else its own last release; never its raw counts."""
    for federation in (True, False):
        held = load_released_popularity(settings, store, items=items, federation=federation)
        if held is not None:
            return held.released, held.sigma
    return None


def stored_subjects(settings: Settings, store: str) -> list[str]:
    """The pseudonyms that have a stored embedding."""
    stored = _read(private_path(settings, store))
    return [] if stored is None else stored[0]


def erase_subjects(settings: Settings, store: str, customer_ids: list[object]) -> int:
    """Remove these customers' embeddings (under every live pseudonym version); returns how many."""
    from siloguard.clients.gating import store_keys
    from siloguard.privacy.pseudonyms import Pseudonymiser

    # The store's own repeat ranker was trained without noise on every customer, the erased
    # ones too: it goes, and the next DP round trains it afresh from the global one.
    # Under the lock a round holds from reading it to writing it back: an erasure during a round's
    # training waits for it and then deletes what that round wrote.
    # The erasure mark changes first: a round whose data was gated before it writes nothing back
    # (save_private_repeat / save_private_users compare it under their locks).
    with repeat_lock(settings, store):
        repeat_path(settings, store).unlink(missing_ok=True)
        write_atomic(erasures_path(settings, store), uuid.uuid4().hex.encode(), mode=0o600)
    path = private_path(settings, store)
    with _locked(path):
        stored = _read(path)
        if stored is None:
            return 0
        names, weight = stored
        keys = store_keys(settings, store)
        pseudonymiser = Pseudonymiser(keys)
        ids = pd.Series([str(c) for c in customer_ids], dtype=object)
        gone: set[str] = set()
        for version in keys.pseudonym_versions():
            gone.update(pseudonymiser.pseudonymise(ids, version=version).dropna())
        keep = [i for i, name in enumerate(names) if name not in gone]
        removed = len(names) - len(keep)
        if removed:
            _write(path, [names[i] for i in keep], weight[keep])
        return removed
