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
    # The ledger keeps the popularity release (round 1, before that round's noise) and each round's noise.
    assert [h[0] for h in entry.history[1:]] == pytest.approx(noises)
    assert entry.history[0][1:] == (1.0, 1)


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
    assert "train-loss" not in reply.content["metrics"]  # the sampled customers' loss, not noised: not sent
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


def test_when_the_repeat_head_is_shared_under_dp_then_the_store_keeps_only_its_item_biases(
    tiny_dp_settings: Settings,
) -> None:
    """``local_repeat`` off: the head is trained under DP and sent, the per-item biases are the
    store's own (trained without noise, kept on its disk, never sent)."""
    from siloguard.clients.app import handle_evaluate
    from siloguard.clients.private import load_private_repeat, repeat_path

    settings = tiny_dp_settings.with_overrides(privacy={"local_repeat": False})
    assert settings.privacy.own_repeat == "items"
    prepared = prepare_run(settings)
    model = _shared(settings, prepared.items)
    context = _context(settings, "germany")
    start = model.state_dict()
    reply = handle_train(_message(ArrayRecord(start), MessageType.TRAIN), context, settings)
    sent = reply.content["arrays"].to_torch_state_dict()
    assert not torch.equal(sent["repeat_linear.weight"], start["repeat_linear.weight"])  # the head: DP, shared
    assert torch.equal(sent["repeat_items.weight"], start["repeat_items.weight"])  # the biases: never sent
    kept = torch.load(repeat_path(settings, "germany"), weights_only=True)
    assert set(kept) == {"repeat_items.weight", "average.repeat_items.weight", "average.rounds"}
    assert not torch.equal(kept["repeat_items.weight"], start["repeat_items.weight"])
    # Scoring in the store uses the head it was sent and its own biases.
    served = _shared(settings, prepared.items)
    served.load_state_dict(sent)
    assert load_private_repeat(settings, "germany", served)
    assert torch.equal(served.state_dict()["repeat_linear.weight"], sent["repeat_linear.weight"])
    assert torch.equal(served.state_dict()["repeat_items.weight"], kept["repeat_items.weight"])
    metrics = handle_evaluate(_message(ArrayRecord(sent), MessageType.EVALUATE), context, settings).content["metrics"]
    assert metrics["users"] > 0
    # A file left by a run that kept the whole ranker never puts a stale head over the shared one.
    stale = _shared(settings, prepared.items)
    with torch.no_grad():
        stale.repeat_linear.weight.add_(5.0)
    torch.save(stale.own_repeat_state("all"), repeat_path(settings, "germany"))
    served = _shared(settings, prepared.items)
    served.load_state_dict(sent)
    assert load_private_repeat(settings, "germany", served, "items")
    assert torch.equal(served.state_dict()["repeat_linear.weight"], sent["repeat_linear.weight"])
    assert torch.equal(served.state_dict()["repeat_items.weight"], stale.state_dict()["repeat_items.weight"])


def test_when_an_erasure_comes_during_a_rounds_repeat_training_then_the_round_does_not_write_it_back(
    tiny_dp_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The round reads, trains and writes the store's own repeat ranker under one lock; an
    erasure arriving meanwhile waits and deletes what the round wrote (trained on the erased)."""
    import threading

    import siloguard.recommender.train as train_module
    from siloguard.clients.private import erase_subjects, repeat_path

    prepared = prepare_run(tiny_dp_settings)
    model = _shared(tiny_dp_settings, prepared.items)
    context = _context(tiny_dp_settings, "germany")
    real = train_module.train_kept_repeat
    erasures: list[threading.Thread] = []

    def train_then_race(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        eraser = threading.Thread(target=erase_subjects, args=(tiny_dp_settings, "germany", ["12345"]))
        eraser.start()
        eraser.join(timeout=2.0)  # without the lock it finishes here, before the round writes
        erasures.append(eraser)
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_kept_repeat", train_then_race)
    handle_train(_message(ArrayRecord(model.state_dict()), MessageType.TRAIN), context, tiny_dp_settings)
    erasures[0].join()
    assert not repeat_path(tiny_dp_settings, "germany").exists()


def test_when_an_erasure_comes_after_the_rounds_data_was_gated_then_nothing_trained_on_it_is_kept(
    tiny_dp_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The erasure lands while the round's DP step runs (its data still holds the customer): the
    store's own repeat ranker trained next on that data is not written back."""
    import siloguard.privacy.dp as dp_module
    from siloguard.clients.private import erase_subjects, erasure_mark, repeat_path

    prepared = prepare_run(tiny_dp_settings)
    model = _shared(tiny_dp_settings, prepared.items)
    context = _context(tiny_dp_settings, "germany")
    real = dp_module.train_local_dp

    def erase_meanwhile(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        erase_subjects(tiny_dp_settings, "germany", ["12345"])
        return real(*args, **kwargs)

    monkeypatch.setattr(dp_module, "train_local_dp", erase_meanwhile)
    handle_train(_message(ArrayRecord(model.state_dict()), MessageType.TRAIN), context, tiny_dp_settings)
    assert erasure_mark(tiny_dp_settings, "germany") != ""
    assert not repeat_path(tiny_dp_settings, "germany").exists()
    monkeypatch.undo()
    # The next round gates its data again (without the erased) and keeps what it trains.
    handle_train(_message(ArrayRecord(model.state_dict()), MessageType.TRAIN, 2), context, tiny_dp_settings)
    assert repeat_path(tiny_dp_settings, "germany").exists()


def test_the_erasure_mark_keeps_the_stores_data_and_its_caches_and_a_damaged_mark_does_not_stop_an_erasure(
    tiny_settings: Settings,
) -> None:
    from siloguard.clients.app import store_for
    from siloguard.clients.private import erase_subjects, erasure_mark, erasures_path, save_private_users
    from siloguard.recommender.model import PrivateUsers

    prepared = prepare_run(tiny_settings)
    msg = _message(ArrayRecord(_shared(tiny_settings, prepared.items).state_dict()), MessageType.TRAIN)
    context = _context(tiny_settings, "germany")
    first = store_for(context, tiny_settings, server_round=1, msg=msg)
    assert store_for(context, tiny_settings, server_round=2, msg=msg) is first  # its cached histories with it
    assert first.erasures == erasure_mark(tiny_settings, "germany")
    users = PrivateUsers(first.n_users, tiny_settings.model.dim)
    erasures_path(tiny_settings, "germany").parent.mkdir(parents=True, exist_ok=True)
    erasures_path(tiny_settings, "germany").write_text("not what an erasure writes\n")
    erase_subjects(tiny_settings, "germany", ["12345"])  # a damaged mark is overwritten, not parsed
    assert erasure_mark(tiny_settings, "germany") not in ("", "not what an erasure writes")
    # A round that gated its data before the erasure does not write its customers' vectors back.
    assert not save_private_users(tiny_settings, "germany", first.subjects, users, erasures=first.erasures)
    again = store_for(context, tiny_settings, server_round=2, msg=msg)
    assert save_private_users(tiny_settings, "germany", again.subjects, users, erasures=again.erasures)


def test_without_dp_the_prior_is_the_stores_raw_popularity(tiny_settings: Settings) -> None:
    from siloguard.clients.app import _shared_model, store_for
    from siloguard.recommender.model import item_customers

    prepared = prepare_run(tiny_settings)
    msg = _message(ArrayRecord(_shared(tiny_settings, prepared.items).state_dict()), MessageType.TRAIN)
    store = store_for(_context(tiny_settings, "germany"), tiny_settings, msg=msg)
    prior = _shared_model(msg, store, tiny_settings).store_prior.numpy()
    assert np.allclose(prior, np.log1p(item_customers(store.history)))


def test_under_dp_the_prior_comes_from_the_noised_release_never_from_raw_counts(
    tiny_dp_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A prior from raw counts in every customer's DP loss would make one customer's clipped
    # gradient depend on the others' purchases: the sensitivity bound would fail. Under DP the
    # raw counts must not be reachable, and the prior must carry the release's noise.
    import siloguard.clients.app as client_app
    import siloguard.privacy.dp as dp
    from siloguard.clients.app import _shared_model, store_for
    from siloguard.clients.private import load_released_popularity
    from siloguard.privacy.popularity import bounded_popularity, popularity_prior, read_popularity_record, release_noise
    from siloguard.privacy.dp import store_delta

    def raw_counts(*_args, **_kwargs):
        raise AssertionError("the store's raw item counts were used under DP")

    monkeypatch.setattr(client_app, "item_customers", raw_counts)
    # Known "noise": +1000 on every item (the real draw comes from the OS CSPRNG).
    monkeypatch.setattr(dp, "os_gaussian", lambda shape, std: torch.full(tuple(shape), 1000.0, dtype=torch.float64))
    prepared = prepare_run(tiny_dp_settings)
    arrays = ArrayRecord(_shared(tiny_dp_settings, prepared.items).state_dict())
    context = _context(tiny_dp_settings, "germany")
    before = _message(arrays, MessageType.TRAIN)
    store = store_for(context, tiny_dp_settings, msg=before)
    assert float(_shared_model(before, store, tiny_dp_settings, context).store_prior.abs().sum()) == 0.0  # nothing released yet

    reply = handle_train(_message(arrays, MessageType.TRAIN), context, tiny_dp_settings)
    release = load_released_popularity(tiny_dp_settings, "germany", run_id=1)
    assert release is not None
    sigma = release_noise(tiny_dp_settings.privacy, store_delta(tiny_dp_settings.privacy, store.n_users))
    assert release.sigma == pytest.approx(sigma)
    assert np.allclose(release.released, bounded_popularity(store.history.counts) + 1000.0)
    assert read_popularity_record(reply.content["popularity"], prepared.items)[1] == pytest.approx(sigma)
    assert set(reply.content.array_records) == {"arrays"}  # Flower aggregates replies with exactly one
    for kind in (MessageType.TRAIN, MessageType.EVALUATE):
        prior = _shared_model(_message(arrays, kind, 2), store, tiny_dp_settings, context).store_prior.numpy()
        assert np.allclose(prior, np.log1p(popularity_prior(release.released, sigma)), atol=1e-5)
    handle_evaluate(_message(arrays, MessageType.EVALUATE), context, tiny_dp_settings)


def test_when_the_store_switches_database_then_a_kept_release_is_owed_again(tiny_dp_settings: Settings) -> None:
    """The release file says which ledger paid for it: a new database's ledger never saw it."""
    from siloguard.clients.app import _pending_release, store_for

    prepared = prepare_run(tiny_dp_settings)
    message = _message(ArrayRecord(_shared(tiny_dp_settings, prepared.items).state_dict()), MessageType.TRAIN, 1)
    context = _context(tiny_dp_settings, "germany")
    handle_train(message, context, tiny_dp_settings)
    store = store_for(context, tiny_dp_settings, msg=message)
    assert _pending_release(store, tiny_dp_settings, context, 1e-5) is None  # paid for in this ledger
    moved = tiny_dp_settings.with_overrides(database={"url": "sqlite:////nonexistent/other.db"})
    assert _pending_release(store, moved, context, 1e-5) is not None  # not in that one


def test_under_dp_a_store_releases_once_per_run_and_pays_for_each_release(tiny_dp_settings: Settings) -> None:
    from siloguard.clients.app import handle_query
    from siloguard.privacy.budget import BudgetLedger
    from siloguard.privacy.popularity import is_release_step, read_popularity_record

    settings = tiny_dp_settings.with_overrides(federation={"rounds": 3}, privacy={"epsilon": 3.0})
    prepared = prepare_run(settings)
    arrays = ArrayRecord(_shared(settings, prepared.items).state_dict())
    context = _context(settings, "germany")
    replies = []
    for server_round in (1, 2):
        budget = handle_query(_message(arrays, MessageType.QUERY, server_round), context, settings).content["budget"]
        assert ("popularity-noise" in budget) is (server_round == 1)  # the query plans with the release it owes
        budget_1 = budget if server_round == 1 else budget_1
        reply = handle_train(_message(arrays, MessageType.TRAIN, server_round), context, settings)
        assert reply.content["metrics"]["epsilon"] == pytest.approx(budget["projected-epsilon"], rel=1e-9)
        replies.append(reply)
    # The release is made once, in the first round, and sent again unchanged with later updates
    # (a coordinator that screened out round 1 still gets it); it is charged once (below).
    released, sigma = read_popularity_record(replies[0].content["popularity"], prepared.items)
    again, sigma_again = read_popularity_record(replies[1].content["popularity"], prepared.items)
    assert np.array_equal(again, released) and sigma_again == sigma
    assert sigma == pytest.approx(budget_1["popularity-noise"])
    assert set(replies[0].content["metrics"]) == set(replies[1].content["metrics"])  # Flower needs the same keys
    entry = BudgetLedger(settings.database.url).load("germany")
    assert entry is not None and sum(is_release_step(h) for h in entry.history) == 1
    assert is_release_step(entry.history[0])  # charged before the round's noise was planned
    # A store that joins in round 2 of 3 owes its release then, and still ends at the target.
    late = _context(settings, "france")
    for server_round in (2, 3):
        budget = handle_query(_message(arrays, MessageType.QUERY, server_round), late, settings).content["budget"]
        assert ("popularity-noise" in budget) is (server_round == 2)
        metrics = handle_train(_message(arrays, MessageType.TRAIN, server_round), late, settings).content["metrics"]
    assert 0.98 * 3.0 <= metrics["epsilon"] <= 3.0
    assert is_release_step(BudgetLedger(settings.database.url).load("france").history[0])
    # A new run of the same store releases again, and is charged again.
    again = Context(run_id=2**64 - 5, node_id=1, node_config={"store": "germany"}, state=RecordDict(), run_config={})
    reply = handle_train(_message(arrays, MessageType.TRAIN, 1), again, settings)
    assert "popularity" in reply.content
    entry = BudgetLedger(settings.database.url).load("germany")
    assert sum(is_release_step(h) for h in entry.history) == 2


def test_under_dp_a_store_uses_the_federations_prior_when_the_coordinator_sends_one(tiny_dp_settings: Settings) -> None:
    from siloguard.clients.app import _shared_model, store_for
    from siloguard.errors import DataError
    from siloguard.privacy.popularity import popularity_prior, popularity_record

    prepared = prepare_run(tiny_dp_settings)
    arrays = ArrayRecord(_shared(tiny_dp_settings, prepared.items).state_dict())
    context = _context(tiny_dp_settings, "germany")
    total = np.linspace(-3.0, 40.0, prepared.items)
    msg = _message(arrays, MessageType.EVALUATE, 2)
    msg.content["popularity"] = popularity_record(total, 5.0)
    store = store_for(context, tiny_dp_settings, msg=msg)
    prior = _shared_model(msg, store, tiny_dp_settings, context).store_prior.numpy()
    assert np.allclose(prior, np.log1p(popularity_prior(total, 5.0)), atol=1e-5)
    msg.content["popularity"] = popularity_record(total[:-1], 5.0)  # not over the run's catalogue
    with pytest.raises(DataError, match="popularity"):
        _shared_model(msg, store, tiny_dp_settings, context)


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
