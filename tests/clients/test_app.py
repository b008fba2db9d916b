"""The ClientApp's replies carry shared parameters only; private state stays on the store's disk."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

import torch

from siloguard.clients.app import handle_evaluate, handle_train
from siloguard.clients.private import private_path
from siloguard.config import Settings
from siloguard.federation.runner import prepare_run
from siloguard.recommender.model import SharedModel


@pytest.fixture(autouse=True)
def _task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    yield


def _message(arrays: ArrayRecord, kind: str, server_round: int = 1) -> Message:
    content = RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": server_round})})
    return Message(content=content, dst_node_id=1, message_type=kind)


def _context(settings: Settings, store: str) -> Context:
    return Context(run_id=1, node_id=1, node_config={"store": store}, state=RecordDict(), run_config={})


def _shared(settings: Settings, n_items: int) -> SharedModel:
    return SharedModel(n_items, settings.model.dim, settings.model.hidden)


def _private_weight(settings: Settings, store: str) -> torch.Tensor:
    path = private_path(settings, store)
    assert path.stat().st_mode & 0o077 == 0, "private parameters must be readable by the store only"
    state = torch.load(path, weights_only=True)
    assert all(str(s).startswith("v1.") for s in state["subjects"]), "stored by pseudonym, never by customer id"
    return state["weight"]


def _all_arrays(content: RecordDict) -> list[np.ndarray]:
    out = []
    for record in content.array_records.values():
        out.extend(record.to_numpy_ndarrays())
    return out


def test_when_a_store_trains_then_its_reply_holds_only_shared_parameters(tiny_settings: Settings) -> None:
    prepared = prepare_run(tiny_settings)
    model = _shared(tiny_settings, prepared.items)
    context = _context(tiny_settings, "germany")

    reply = handle_train(_message(ArrayRecord(model.state_dict()), MessageType.TRAIN), context, tiny_settings)

    assert set(reply.content.array_records) == {"arrays"}
    assert set(reply.content["arrays"]) == set(model.state_dict())
    private = _private_weight(tiny_settings, "germany").numpy()
    assert private.shape == (prepared.customers["germany"], tiny_settings.model.dim)
    # No array in the reply is (or contains a row of) the customers' embeddings.
    for arr in _all_arrays(reply.content):
        assert arr.shape[0] != private.shape[0] or arr.shape[1:] != private.shape[1:]
        flat = arr.reshape(-1, arr.shape[-1]) if arr.ndim > 1 else arr.reshape(1, -1)
        if flat.shape[1] == private.shape[1]:
            for row in private:
                assert not np.any(np.all(np.isclose(flat, row), axis=1))
    assert reply.content["metrics"]["num-examples"] > 0


def test_when_a_store_evaluates_then_it_replies_with_aggregate_numbers_only(tiny_settings: Settings) -> None:
    prepared = prepare_run(tiny_settings)
    model = _shared(tiny_settings, prepared.items)
    context = _context(tiny_settings, "france")
    handle_train(_message(ArrayRecord(model.state_dict()), MessageType.TRAIN), context, tiny_settings)

    reply = handle_evaluate(_message(ArrayRecord(model.state_dict()), MessageType.EVALUATE), context, tiny_settings)

    assert not reply.content.array_records
    metrics = reply.content["metrics"]
    assert 0 < metrics["users"] <= prepared.customers["france"]
    assert 0.0 <= metrics["ndcg@10"] <= 1.0
    # the window the coordinator picks rounds by: the training period's last horizon
    assert metrics["val.users"] > 0 and 0.0 <= metrics["val.ndcg@10"] <= 1.0
    assert dict(reply.content["store"]) == {"name": "france"}


def test_when_the_coordinator_sends_the_catalogue_then_the_store_builds_the_same_item_features(
    tiny_settings: Settings,
) -> None:
    """The public item features are not in the model's arrays: each store computes them from the
    codes and descriptions in the message, and must get what the catalogue file gives."""
    from siloguard.clients.app import message_item_text
    from siloguard.federation.app import _shared_config
    from siloguard.runs import catalogue_item_text, load_descriptions, run_manifest

    prepare_run(tiny_settings)
    catalogue = run_manifest(tiny_settings.work_dir).require_catalogue()
    assert load_descriptions(catalogue), "the prepared catalogue carries the published descriptions"
    config = _shared_config(tiny_settings)
    assert len(config["descriptions"]) == len(config["catalogue"])
    msg = Message(content=RecordDict({"config": ConfigRecord(config)}), dst_node_id=1, message_type=MessageType.TRAIN)
    from_message = message_item_text(msg, tiny_settings)
    assert from_message.any()
    assert np.array_equal(from_message, catalogue_item_text(catalogue))
    short = dict(config, descriptions=list(config["descriptions"])[:-1])
    bad = Message(content=RecordDict({"config": ConfigRecord(short)}), dst_node_id=1, message_type=MessageType.TRAIN)
    from siloguard.errors import DataError

    with pytest.raises(DataError, match="descriptions for"):
        message_item_text(bad, tiny_settings)


def test_when_private_state_exists_then_training_continues_from_it(tiny_settings: Settings) -> None:
    prepared = prepare_run(tiny_settings)
    model = _shared(tiny_settings, prepared.items)
    context = _context(tiny_settings, "united-kingdom")
    handle_train(_message(ArrayRecord(model.state_dict()), MessageType.TRAIN, 1), context, tiny_settings)
    first = _private_weight(tiny_settings, "united-kingdom").clone()
    # A new context (a restarted node): the embeddings still move on from round 1.
    handle_train(
        _message(ArrayRecord(model.state_dict()), MessageType.TRAIN, 2), _context(tiny_settings, "united-kingdom"), tiny_settings
    )
    second = _private_weight(tiny_settings, "united-kingdom")
    assert not np.allclose(first.numpy(), second.numpy())
    # Re-initialisation would restart from the seeded init, far from round-1 values.
    init = __import__("siloguard.recommender.model", fromlist=["PrivateUsers"]).PrivateUsers(
        first.shape[0], first.shape[1], seed=tiny_settings.model.seed
    ).weight.detach()
    assert np.abs(second.numpy() - first.numpy()).mean() < np.abs(second.numpy() - init.numpy()).mean()


def test_when_a_round_sends_query_train_and_evaluate_then_the_gate_runs_once(tiny_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from siloguard.clients import app as client_app
    from siloguard.clients.app import handle_query

    prepared = prepare_run(tiny_settings)
    model = _shared(tiny_settings, prepared.items)
    context = _context(tiny_settings, "germany")
    passes: list[str] = []
    real = client_app.gated_training_frame

    def counted(settings, store, frame, **kwargs):  # noqa: ANN001, ANN202
        passes.append(store)
        return real(settings, store, frame, **kwargs)

    monkeypatch.setattr(client_app, "gated_training_frame", counted)
    arrays = ArrayRecord(model.state_dict())
    for server_round in (1, 2):
        handle_query(_message(arrays, MessageType.QUERY, server_round), context, tiny_settings)
        handle_train(_message(arrays, MessageType.TRAIN, server_round), context, tiny_settings)
        handle_evaluate(_message(arrays, MessageType.EVALUATE, server_round), context, tiny_settings)
        assert passes == ["germany"] * server_round  # once per round, not once per message
    other_run = Context(run_id=2, node_id=1, node_config={"store": "germany"}, state=RecordDict(), run_config={})
    handle_query(_message(arrays, MessageType.QUERY, 1), other_run, tiny_settings)
    assert len(passes) == 3  # another run's round 1 is a new round


def test_when_dp_rounds_are_planned_then_every_round_trains_and_the_run_ends_at_the_target(
    tiny_dp_settings: Settings,
) -> None:
    """Without Ray: the budget query and the training of each planned round, as a store plays them."""
    from siloguard.clients.app import handle_query
    from siloguard.privacy.budget import BudgetLedger

    settings = tiny_dp_settings.with_overrides(federation={"rounds": 4}, privacy={"epsilon": 3.0})
    prepared = prepare_run(settings)
    context = _context(settings, "germany")
    arrays = ArrayRecord(_shared(settings, prepared.items).state_dict())
    spent, noises = [], []
    for server_round in range(1, 5):
        budget = handle_query(_message(arrays, MessageType.QUERY, server_round), context, settings).content["budget"]
        assert budget["projected-epsilon"] <= budget["epsilon-cap"], f"round {server_round} would be skipped"
        metrics = handle_train(_message(arrays, MessageType.TRAIN, server_round), context, settings).content["metrics"]
        assert metrics["noise-multiplier"] == pytest.approx(budget["noise-multiplier"])  # the noise the query planned
        assert metrics["epsilon"] == pytest.approx(budget["projected-epsilon"], rel=1e-9)
        spent.append(metrics["epsilon"])
        noises.append(metrics["noise-multiplier"])
    assert all(b > a for a, b in zip(spent, spent[1:]))
    assert 0.98 * 3.0 <= spent[-1] <= 3.0
    entry = BudgetLedger(settings.database.url).load("germany")
    assert entry is not None and entry.rounds == 4 and entry.epsilon == pytest.approx(spent[-1])
    assert [h[0] for h in entry.history] == pytest.approx(noises)  # the ledger keeps each round's noise


def test_when_a_store_trains_under_dp_then_its_repeat_ranker_stays_home_and_the_reply_carries_the_global_one(
    tiny_dp_settings: Settings,
) -> None:
    from siloguard.clients.private import erase_subjects, load_private_repeat, repeat_path
    from siloguard.errors import DataError

    prepared = prepare_run(tiny_dp_settings)
    model = _shared(tiny_dp_settings, prepared.items)
    context = _context(tiny_dp_settings, "germany")
    reply = handle_train(_message(ArrayRecord(model.state_dict()), MessageType.TRAIN), context, tiny_dp_settings)

    sent = reply.content["arrays"].to_torch_state_dict()
    start = model.state_dict()
    repeat_keys = [k for k in start if k.startswith("repeat")]
    assert repeat_keys and all(torch.equal(sent[k], start[k]) for k in repeat_keys)  # not trained in the update
    assert not torch.equal(sent["text_in.weight"], start["text_in.weight"])  # the DP part is
    path = repeat_path(tiny_dp_settings, "germany")
    assert path.stat().st_mode & 0o077 == 0
    own = _shared(tiny_dp_settings, prepared.items)
    assert load_private_repeat(tiny_dp_settings, "germany", own)
    assert any(not torch.equal(own.state_dict()[k], start[k]) for k in repeat_keys)  # trained, kept in the store
    # Only the repeat ranker may come from that file: never a shared parameter.
    torch.save({"text_in.weight": torch.zeros_like(start["text_in.weight"])}, path)
    with pytest.raises(DataError, match="repeat ranker"):
        load_private_repeat(tiny_dp_settings, "germany", own)
    # It was trained without noise on every customer: an erasure removes it.
    erase_subjects(tiny_dp_settings, "germany", ["12345"])
    assert not path.exists()


@pytest.mark.parametrize(("fixture", "used"), [("tiny_settings", True), ("tiny_dp_settings", False)])
def test_the_store_popularity_prior_is_in_the_loss_without_dp_only(fixture: str, used: bool, request: pytest.FixtureRequest) -> None:
    # Under DP a prior from every customer's purchases in each customer's loss would make one
    # customer's clipped gradient depend on the others' data: the sensitivity bound would fail.
    from siloguard.clients.app import _shared_model, store_for

    settings = request.getfixturevalue(fixture)
    prepared = prepare_run(settings)
    msg = _message(ArrayRecord(_shared(settings, prepared.items).state_dict()), MessageType.TRAIN)
    store = store_for(_context(settings, "germany"), settings, msg=msg)
    assert bool(_shared_model(msg, store, settings).store_prior.abs().sum() > 0) is used


def test_when_the_stores_own_repeat_ranker_is_unreadable_then_no_budget_is_spent(tiny_dp_settings: Settings) -> None:
    from siloguard.clients.app import _ledger
    from siloguard.clients.private import repeat_path
    from siloguard.errors import DataError

    prepared = prepare_run(tiny_dp_settings)
    path = repeat_path(tiny_dp_settings, "germany")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not a torch file")
    model = _shared(tiny_dp_settings, prepared.items)
    with pytest.raises(DataError, match="repeat ranker"):
        handle_train(_message(ArrayRecord(model.state_dict()), MessageType.TRAIN), _context(tiny_dp_settings, "germany"), tiny_dp_settings)
    assert _ledger(tiny_dp_settings.database.url).load("germany") is None
