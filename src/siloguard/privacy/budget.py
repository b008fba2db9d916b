"""The per-store privacy-budget ledger, persisted in the SQL database.

For each store: the accountant (RDP or PRV) and its state after every round (the
list of (noise multiplier, sample rate, steps) it composed), epsilon at the
store's delta, and the cap. A round's entry is written in one transaction, so a
crash leaves the previous state; a restarted federation resumes from it.

The state is validated on load (as Opacus accountants' ``load_state_dict`` do):
a ledger row that does not parse, or whose epsilon does not match its own
history, is refused rather than trusted.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from siloguard.errors import PrivacyBudgetError
from siloguard.privacy.history import dp_sgd_steps
from siloguard.storage.db import create_engine, current_revision, exclusive, head_revision, upgrade_database
from siloguard.storage.orm import privacy_ledger, privacy_ledger_rounds

__all__ = ["BudgetLedger", "LedgerEntry"]

# The tables (storage/orm.py) are created by the Alembic migration 0002_privacy_ledger.
ledger_table = privacy_ledger
rounds_table = privacy_ledger_rounds


@dataclass(frozen=True)
class LedgerEntry:
    store: str
    accountant: str
    history: list[tuple[float, float, int]]
    delta: float
    epsilon: float
    epsilon_cap: float
    rounds: int

    @property
    def steps(self) -> int:
        return int(sum(h[2] for h in self.history))

    @property
    def remaining(self) -> float:
        return max(0.0, self.epsilon_cap - self.epsilon)


def _parse_history(store: str, raw: str) -> list[tuple[float, float, int]]:
    try:
        items = json.loads(raw)
        history = [(float(n), float(q), int(s)) for n, q, s in items]
    except (ValueError, TypeError):
        raise PrivacyBudgetError(f"privacy ledger of store {store!r} is corrupt: its accountant history does not parse") from None
    for noise, rate, steps in history:
        if not (noise > 0 and 0 < rate <= 1 and steps > 0):
            raise PrivacyBudgetError(f"privacy ledger of store {store!r} holds an invalid accountant step")
    return history


class BudgetLedger:
    """Read and advance the per-store budget ledger in a SQL database."""

    def __init__(self, url_or_engine: str | Engine) -> None:
        self.engine = create_engine(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine
        # The tables come from the Alembic migrations (storage/migrations); migrating is
        # idempotent and serialised under the database's write lock, so several stores'
        # clients may open the ledger at once (a plain create_all raced into "database is
        # locked").
        if current_revision(self.engine) != head_revision():
            upgrade_database(self.engine)

    def load(self, store: str) -> LedgerEntry | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(ledger_table).where(ledger_table.c.store == store)).mappings().first()
        if row is None:
            return None
        return self._entry(row)

    def _entry(self, row: sa.RowMapping) -> LedgerEntry:
        from siloguard.privacy.dp import epsilon_of  # dp imports torch/opacus: only when needed

        history = _parse_history(row["store"], row["history"])
        entry = LedgerEntry(
            store=row["store"],
            accountant=row["accountant"],
            history=history,
            delta=float(row["delta"]),
            epsilon=float(row["epsilon"]),
            epsilon_cap=float(row["epsilon_cap"]),
            rounds=int(row["rounds"]),
        )
        recomputed = epsilon_of(entry.accountant, history, entry.delta)
        if not math.isclose(recomputed, entry.epsilon, rel_tol=1e-6, abs_tol=1e-9):
            raise PrivacyBudgetError(
                f"privacy ledger of store {entry.store!r} does not add up: stored epsilon {entry.epsilon:.4f}, "
                f"its history gives {recomputed:.4f}; investigate before training again"
            )
        return entry

    def entries(self) -> list[LedgerEntry]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(ledger_table).order_by(ledger_table.c.store)).mappings().all()
        return [self._entry(r) for r in rows]

    def round_history(self, store: str | None = None) -> list[dict]:
        query = sa.select(rounds_table).order_by(rounds_table.c.store, rounds_table.c.id)
        if store is not None:
            query = query.where(rounds_table.c.store == store)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings().all()]

    def record_round(
        self,
        *,
        store: str,
        accountant: str,
        history: list[tuple[float, float, int]],
        delta: float,
        epsilon: float,
        epsilon_cap: float,
        server_round: int,
        expected_rounds: int | None = None,
    ) -> LedgerEntry:
        """Persist the store's accountant state after a round (one transaction).

        ``expected_rounds``: how many rounds the ledger held when the round planned from it; if
        another round was recorded since, this one is refused (compare and swap). Without it the
        new history must extend the stored one."""
        if epsilon > epsilon_cap * (1 + 1e-9):
            raise PrivacyBudgetError(
                f"store {store!r} would reach epsilon {epsilon:.3f} over its cap {epsilon_cap}: the round must not be recorded"
            )
        now = datetime.now(timezone.utc)
        values = {
            "accountant": accountant,
            "history": json.dumps([list(h) for h in history]),
            "delta": delta,
            "epsilon": epsilon,
            "epsilon_cap": epsilon_cap,
            "updated_at": now,
        }
        with exclusive(self.engine, f"privacy-ledger:{store}") as conn:
            row = conn.execute(
                sa.select(ledger_table.c.rounds, ledger_table.c.history).where(ledger_table.c.store == store)
            ).one_or_none()
            current = None if row is None else row.rounds
            stored = [] if row is None else json.loads(row.history)
            if (current or 0) != expected_rounds if expected_rounds is not None else not _extends(stored, history):
                # Another round of this store was recorded since this one read the ledger (two
                # messages at once, a replay): its history no longer extends what is stored, and
                # writing it would erase that spend. Fail closed: not recorded, not sent.
                raise PrivacyBudgetError(
                    f"store {store!r}: its privacy ledger changed while this round trained (another round was "
                    "recorded meanwhile); the round is not recorded and its update is not sent"
                )
            if current is None:
                conn.execute(ledger_table.insert().values(store=store, rounds=1, **values))
            else:
                conn.execute(
                    ledger_table.update().where(ledger_table.c.store == store).values(rounds=current + 1, **values)
                )
            conn.execute(
                rounds_table.insert().values(
                    store=store,
                    server_round=server_round,
                    epsilon=epsilon,
                    delta=delta,
                    steps=dp_sgd_steps(history),  # DP-SGD steps, as dp-steps
                    recorded_at=now,
                )
            )
        entry = self.load(store)
        assert entry is not None
        return entry


def _extends(stored: list[list[float]], history: list[tuple[float, float, int]]) -> bool:
    """Whether ``history`` is ``stored`` plus more spend: the same entries, the last one possibly
    grown by steps at the same noise and rate (Opacus' accountant merges a round into the entry
    before it when both match), and something added."""
    new = [list(h) for h in history]
    if not stored:
        return bool(new)
    if len(new) < len(stored) or new[: len(stored) - 1] != stored[:-1]:
        return False
    last, now = stored[-1], new[len(stored) - 1]
    if now[:2] != last[:2] or now[2] < last[2]:
        return False
    return len(new) > len(stored) or now[2] > last[2]
