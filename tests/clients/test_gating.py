"""Training only ever sees gated data: consent checked every round, pseudonyms, minimal columns."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

import siloguard.clients.app as client_app
from siloguard.audit import AuditLog
from siloguard.clients.gating import TRAINING_COLUMNS, gated_training_frame, store_consent, store_keys
from siloguard.clients.private import stored_subjects
from siloguard.config import Settings
from siloguard.errors import ConfigError
from siloguard.federation.runner import prepare_run, run_federation
from siloguard.privacy.pseudonyms import Pseudonymiser
from siloguard.recommender.model import SharedModel
from tests.conftest import tiny_customers, write_consent

PROFILING = "personalize.profiling"


@pytest.fixture(autouse=True)
def _task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    yield


def _train(settings: Settings, store: str, n_items: int, server_round: int) -> None:
    model = SharedModel(n_items, settings.model.dim, settings.model.hidden)
    content = RecordDict(
        {"arrays": ArrayRecord(model.state_dict()), "config": ConfigRecord({"server-round": server_round})}
    )
    msg = Message(content=content, dst_node_id=1, message_type=MessageType.TRAIN)
    context = Context(run_id=1, node_id=1, node_config={"store": store}, state=RecordDict(), run_config={})
    client_app.handle_train(msg, context, settings)


def _germany_customers(settings: Settings) -> list[int]:
    frame = pd.read_csv(settings.work_dir / "stores" / "germany.csv")
    return sorted({int(float(c)) for c in frame["CustomerID"]})


def _spy_training_sets(monkeypatch: pytest.MonkeyPatch) -> list[set[str]]:
    """The pseudonyms of the customers each call of train_local trained on."""
    seen: list[set[str]] = []
    real_train = client_app.train_local
    real_store_for = client_app.store_for
    current: dict[str, object] = {}

    def store_for(context, settings, **kwargs):  # noqa: ANN001, ANN202
        current["store"] = real_store_for(context, settings, **kwargs)
        return current["store"]

    def train_local(model, users, examples, **kwargs):  # noqa: ANN001, ANN202
        subjects = current["store"].subjects  # type: ignore[attr-defined]
        seen.append({str(subjects[u]) for u in np.unique(examples.bags.user)})
        return real_train(model, users, examples, **kwargs)

    monkeypatch.setattr(client_app, "store_for", store_for)
    monkeypatch.setattr(client_app, "train_local", train_local)
    return seen


def test_when_a_customer_withdraws_between_rounds_then_the_next_round_trains_without_them(
    tiny_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    prepared = prepare_run(tiny_settings)
    seen = _spy_training_sets(monkeypatch)
    customer = _germany_customers(tiny_settings)[0]
    pseudonym = Pseudonymiser(store_keys(tiny_settings, "germany")).pseudonym(customer)

    _train(tiny_settings, "germany", prepared.items, 1)
    assert pseudonym in seen[0]
    assert pseudonym in stored_subjects(tiny_settings, "germany")

    store_consent(tiny_settings, "germany").record([customer], PROFILING, "withdraw", source="api")
    _train(tiny_settings, "germany", prepared.items, 2)

    assert pseudonym not in seen[1]
    assert seen[1] == seen[0] - {pseudonym}
    # Their private embedding is dropped with them.
    assert pseudonym not in stored_subjects(tiny_settings, "germany")


def test_when_the_gate_lets_data_through_then_only_pseudonyms_and_training_columns_reach_training(
    tiny_settings: Settings,
) -> None:
    prepare_run(tiny_settings)
    from siloguard.data.loader import load_clean

    frame, _ = load_clean(tiny_settings.work_dir / "stores" / "france.csv")
    gated = gated_training_frame(tiny_settings, "france", frame)

    assert sorted(gated.frame.columns) == sorted(TRAINING_COLUMNS)
    raw_ids = {str(c) for c in frame["customer_id"]}
    assert not raw_ids & set(gated.frame["customer_id"])
    assert gated.frame["customer_id"].str.fullmatch(r"v1\.[0-9a-f]{32}").all()
    assert gated.rows_out == len(frame)  # everyone consented in the tiny fixture
    assert set(gated.columns_dropped) == {"description", "unit_price", "quantity", "country"}


def test_when_customers_never_consented_then_their_rows_never_pass_and_the_decision_is_audited(
    tmp_path, tiny_retail, tiny_settings: Settings
) -> None:
    customers = tiny_customers(tiny_retail)
    half = customers[::2]
    settings = tiny_settings.with_overrides(data={"consent": write_consent(tmp_path / "half.csv", half)})
    prepared = prepare_run(settings)
    from siloguard.data.loader import load_clean

    frame, _ = load_clean(settings.work_dir / "stores" / "united-kingdom.csv")
    gated = gated_training_frame(settings, "united-kingdom", frame)

    pseudonymiser = Pseudonymiser(store_keys(settings, "united-kingdom"))
    allowed = {pseudonymiser.pseudonym(c) for c in half}
    assert set(gated.frame["customer_id"]) <= allowed
    assert gated.rows_out == int(frame["customer_id"].isin(half).sum())
    assert prepared.consented["united-kingdom"] == len(set(frame["customer_id"]) & set(half))
    with AuditLog.open(settings, signer=False) as log:
        events = [e.event for e in log.iter_events() if e.event.action == "gate.train"]
    decision = next(e for e in events if e.event_id == gated.decision_id)
    assert decision.decision == "allow"
    assert decision.counts["rows_without_basis"] == len(frame) - gated.rows_out
    # The event names no customer.
    text = repr(decision)
    assert not any(str(c) in text for c in customers)


def test_when_no_customer_of_a_store_consented_then_the_run_is_refused_with_the_fix(
    tmp_path, tiny_retail, tiny_settings: Settings
) -> None:
    settings = tiny_settings.with_overrides(
        data={"consent": write_consent(tmp_path / "none.csv", [1], store="")}  # nobody of the tiny stores
    )
    prepared = prepare_run(settings)
    with pytest.raises(ConfigError, match="consent import"):
        run_federation(settings, prepared)


def test_when_a_customer_withdraws_during_a_federated_run_then_later_rounds_exclude_them(
    tiny_settings: Settings,
) -> None:
    """Flower's simulation engine, three stores, three rounds: the withdrawal lands after round 1."""
    settings = tiny_settings.with_overrides(federation={"rounds": 3})
    prepared = prepare_run(settings)
    customer = _germany_customers(settings)[0]
    pseudonym = Pseudonymiser(store_keys(settings, "germany")).pseudonym(customer)
    after_round: dict[int, list[str]] = {}

    def on_round(report) -> None:  # noqa: ANN001
        after_round[report.server_round] = stored_subjects(settings, "germany")
        if report.server_round == 1:
            store_consent(settings, "germany").record(
                [customer], PROFILING, "withdraw", source="web", at=datetime.now(UTC)
            )

    run_federation(settings, prepared, on_round)

    assert pseudonym in after_round[1]
    assert pseudonym not in after_round[2]
    assert pseudonym not in after_round[3]
    assert len(after_round[2]) == len(after_round[1]) - 1
