"""The Flower ClientApp a store runs next to its own data.

Once per round (the first message of the round, usually the budget query) the store's silo
passes the store's gate (:mod:`siloguard.clients.gating`): only customers with a live consent
for ``personalize.profiling`` at that moment, under the store's pseudonyms, and only the
columns training needs. The round's other messages (train, evaluate) use what the gate let
through then: a withdrawal takes effect from the next round. On ``train``: build examples from that, train the shared model
and the store's private user embeddings, keep the private part on the store's disk
(:mod:`siloguard.clients.private`) and reply with the shared arrays only. On
``evaluate``: full-ranking metrics on the store's test customers, replied as aggregate
numbers.

Which store a node is: ``node_config["store"]`` in a deployment; in the
simulation engine, ``node_config["partition-id"]`` indexes the prepared stores.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import threading
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from siloguard.clients.gating import gated_training_frame
from siloguard.clients.private import load_private_users, private_path, save_private_users
from siloguard.clients.store import StoreData, build_store, evaluate_store, run_manifest
from siloguard.config import Settings
from siloguard.data.loader import load_clean
from siloguard.errors import ConfigError, DataError
from siloguard.recommender.features import Catalogue
from siloguard.privacy.popularity import popularity_prior, popularity_record, read_popularity_record
from siloguard.recommender.model import PrivateUsers, SharedModel, item_customers
from siloguard.recommender.train import train_local

log = logging.getLogger(__name__)


__all__ = [
    "app",
    "budget_status",
    "dp_popularity",
    "handle_evaluate",
    "handle_query",
    "handle_train",
    "message_popularity",
    "node_store",
    "store_for",
]


def _round_of(msg: Message) -> int | None:
    """The server round a message belongs to (``config["server-round"]``), if it says."""
    try:
        value = msg.content["config"].get("server-round")
    except (KeyError, AttributeError, TypeError):
        return None
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


# store -> ((run id, server round, silo, database), the round's data): one gate pass per round and store.
_rounds: dict[str, tuple[tuple[int, int, str, str], StoreData]] = {}
_rounds_lock = threading.Lock()


def node_store(context: Context, settings: Settings | None = None) -> tuple[str, Settings]:
    """Which store this node is, and that store's settings.

    - A deployed SuperNode names its own site (``siloguard store start --site DIR``: node
      config ``site``): everything store-local comes from that site and the store's
      environment, nothing from the coordinator.
    - On one machine (the simulation engine, ``flwr run .``) ``partition-id`` indexes the run's
      stores, and a run of sites says where each store's site is (``run.json`` ``sites``).
    - A run prepared in one directory by an older siloguard: the run's settings, as before.
    """
    from siloguard.clients.site import StoreSite

    run_config = dict(context.run_config)
    node = context.node_config
    if "site" in node:
        base = settings if settings is not None else Settings.from_run_config(run_config, store=True, site=True)
        site = StoreSite.open(Path(str(node["site"])), base)
        if "store" in node and str(node["store"]) != site.name:
            raise ConfigError(f"node config names store {node['store']!r} but its site {site.directory} is {site.name!r}'s")
        return site.name, site.settings
    resolved = settings if settings is not None else Settings.from_run_config(run_config, store=True)
    run = run_manifest(resolved.work_dir)
    names = run.names
    if "store" in node:
        name = str(node["store"])
    else:
        pid = int(node.get("partition-id", -1))
        if not 0 <= pid < len(names):
            raise ConfigError(f"partition-id {pid} does not name a store: the run has {len(names)} stores")
        name = names[pid]
    if name not in names:
        raise ConfigError(f"store {name!r} is not part of this run: known stores are {', '.join(names)}")
    if run.of_sites:
        if name not in run.sites:
            raise ConfigError(f"store {name!r} has no site on this machine: start its node with 'siloguard store start --site DIR'")
        return name, StoreSite.open(run.sites[name], resolved).settings
    return name, resolved


def _message_config(msg: Message | None) -> dict[str, Any]:
    if msg is None:
        return {}
    try:
        return dict(msg.content["config"])
    except (KeyError, AttributeError, TypeError):
        return {}


def store_for(
    context: Context, settings: Settings, *, server_round: int | None = None, msg: Message | None = None,
    name: str | None = None,
) -> StoreData:
    """The store this node serves, with the data its gate lets through.

    The catalogue and split dates come with the coordinator's message (``catalogue``,
    ``split-date``, ``end-date``); a run prepared in one directory also has them in its
    ``run.json``. With ``server_round``, the gate runs on the round's first message only and
    the round's other messages reuse its result (keyed by run and round); without, it runs now.
    """
    from siloguard.clients.site import StoreSite

    config = _message_config(msg)
    catalogue: Catalogue | Path
    if "catalogue" in config and "split-date" in config and "end-date" in config:
        catalogue = Catalogue(tuple(str(c) for c in config["catalogue"]))
        split_date, end_date = str(config["split-date"]), str(config["end-date"])
    else:
        run = run_manifest(settings.work_dir)
        catalogue, split_date, end_date = run.require_catalogue(), str(run.split_date), str(run.end_date)
    if StoreSite.is_site(settings.work_dir):
        site = StoreSite.open(settings.work_dir, settings)
        name, silo = site.name, site.silo()
        store_preflight(site, int(context.run_id))
    else:
        if name is None:
            name = node_store(context, settings)[0]
        # A deployed SuperNode of an older run names its own silo (node config ``data``).
        silo = Path(str(context.node_config["data"])) if "data" in context.node_config else run_manifest(settings.work_dir).stores[name]
    from siloguard.clients.private import erasure_mark

    # An erasure since the round's first message gates the data again (without that customer).
    erasures = erasure_mark(settings, name)
    key = (int(context.run_id), server_round, str(silo), settings.database.url, erasures) if server_round is not None else None
    if key is not None:
        with _rounds_lock:
            held = _rounds.get(name)
        if held is not None and held[0] == key:
            return held[1]
    data = gated_store(settings, name, silo, catalogue, split_date, end_date)
    # Noted on the data itself, not on a copy (a copy would lose the cutoff histories it caches).
    # The object is kept per silo content: one gated under a newer mark holds the same data.
    object.__setattr__(data, "erasures", erasures)
    if key is not None:
        with _rounds_lock:
            _rounds[name] = (key, data)
    return data


# (run id, site directory) -> the store's pre-flight counts: once per run and store.
_preflights: dict[tuple[int, str], dict[str, int]] = {}
_preflights_lock = threading.Lock()


def store_preflight(site: Any, run_id: int) -> dict[str, int]:
    """The store's own GDPR/CCPA pre-flight, before its first message of a run is answered.

    The training rules run over the store's rows, database and keys on its site (its declared
    country, not the rows' country column), audited in the store's own log. An error-severity
    failure raises :class:`~siloguard.errors.ComplianceError`: the store does not train, and the
    coordinator sees a failed reply. The counts go back in every reply (``compliance``).
    """
    key = (run_id, str(site.directory))
    with _preflights_lock:
        if key in _preflights:
            return _preflights[key]
        from siloguard.audit import AuditLog
        from siloguard.compliance.context import StoreRows
        from siloguard.compliance.engine import failed_errors, store_preflight as run_rules

        rows = {site.name: StoreRows(site.name, _read_silo_now(site.silo()), site.silo(), site.country)}
        audit = AuditLog.open(site.settings)
        try:
            results = run_rules(site.settings, rows, audit, store=site.name)
        finally:
            audit.close()
        counts = {"rules": len(results), "failed": len(failed_errors(results)),
                  "warnings": sum(1 for r in results if r.status == "warning")}
        _preflights[key] = counts
        return counts


def _compliance_metrics(context: Context, settings: Settings) -> dict[str, int]:
    """The store's pre-flight counts for this run (a store on its own site), for its reply."""
    counts = _preflights.get((int(context.run_id), str(settings.work_dir.resolve())))
    return {f"compliance-{k}": v for k, v in counts.items()} if counts else {}


def _read_silo_now(path: Path) -> pd.DataFrame:
    stat = os.stat(path)
    return _read_silo(str(path), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=8)
def _read_silo(path: str, _mtime_ns: int, _size: int) -> pd.DataFrame:
    """The cleaned silo, read again only when the file changes (e.g. after an erasure)."""
    return load_clean(Path(path))[0]


# store -> (digest of the gated frame, what was built from it): the gate runs on every
# message, the features are rebuilt only when what it lets through changes.
_built: dict[str, tuple[str, StoreData]] = {}
_built_lock = threading.Lock()


def gated_store(
    settings: Settings, name: str, silo: Path, catalogue: Catalogue | Path, split_date: str, end_date: str
) -> StoreData:
    """Read the silo, pass it through the store's gate, build training data from the result."""
    try:
        stat = os.stat(silo)
    except OSError:
        raise ConfigError(f"store {name!r}: its silo {silo} is missing; prepare the run again") from None
    frame = _read_silo(str(silo), stat.st_mtime_ns, stat.st_size)
    gated = gated_training_frame(settings, name, frame).frame
    digest = hashlib.sha256(pd.util.hash_pandas_object(gated, index=False).to_numpy().tobytes()).hexdigest()
    with _built_lock:
        cached = _built.get(name)
        if cached is not None and cached[0] == digest:
            return cached[1]
        data = build_store(name, gated, catalogue, split_date, end_date)
        _built[name] = (digest, data)
        return data


def _private_users(store: StoreData, settings: Settings) -> PrivateUsers:
    return load_private_users(settings, store.name, store.subjects, settings.model.dim, seed=settings.model.seed)


def message_item_text(msg: Message, settings: Settings) -> np.ndarray:
    """The public item features of the run's catalogue: from the codes and descriptions in the
    coordinator's message, else (a run prepared in one directory) from its catalogue file."""
    from siloguard.recommender.item_text import item_text_features

    config = _message_config(msg)
    if "catalogue" in config:
        codes = [str(c) for c in config["catalogue"]]
        texts = [str(t) for t in config.get("descriptions", [])]
        if texts and len(texts) != len(codes):
            # Features built from other descriptions than everyone else's would not match the
            # shared text map: refuse the message rather than train on something else.
            raise DataError(f"the coordinator's message has {len(texts)} descriptions for {len(codes)} catalogue "
                            "products; the coordinator must send one per product")
        return item_text_features(codes, dict(zip(codes, texts)))
    from siloguard.runs import catalogue_item_text

    return catalogue_item_text(run_manifest(settings.work_dir).require_catalogue())


def _shared_model(msg: Message, store: StoreData, settings: Settings, context: Context | None = None) -> SharedModel:
    model = SharedModel(store.n_items, settings.model.dim, settings.model.hidden,
                        item_text=message_item_text(msg, settings))
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    if not settings.privacy.enabled:
        # The store's own popularity (never sent) as a prior on new items, without DP only.
        model.set_store_popularity(item_customers(store.history))
    else:
        # Under DP a prior from raw counts would be in every customer's loss, so each customer's
        # clipped gradient would depend on the other customers' purchases and the update's
        # sensitivity would no longer be the clipping bound (docs/PRIVACY.md). Only DP releases
        # of the counts are used: the federation's sum, else the store's own of this run.
        released = dp_popularity(msg, context, store, settings)
        if released is not None:
            model.set_store_popularity(popularity_prior(*released), released=settings.privacy.own_repeat != "all")
        elif settings.privacy.own_repeat != "all":
            model.repeat_popularity.zero_()  # a shared head without a release: no popularity feature (privacy/dp.py)
    return model


def message_popularity(msg: Message | None, items: int) -> tuple[np.ndarray, float] | None:
    """The federation's popularity prior in a coordinator's message: the sum of the stores' DP
    releases and its noise std (``popularity``: ``released``, ``sigma``), if there is one."""
    if msg is None or "popularity" not in msg.content:
        return None
    try:
        return read_popularity_record(msg.content["popularity"], items)
    except ValueError as exc:
        raise DataError(f"the coordinator's popularity prior is refused: {exc}") from None


def dp_popularity(
    msg: Message | None, context: Context | None, store: StoreData, settings: Settings
) -> tuple[np.ndarray, float] | None:
    """Under DP: the released counts the prior comes from and their noise std, or None (no prior).

    The federation's sum of the stores' releases (post-processing of DP outputs) when the
    coordinator sends one, else the store's own release of this run. Never the raw counts.
    """
    if not settings.privacy.popularity_share:
        return None
    from siloguard.clients.private import ReleasedPopularity, load_released_popularity, save_released_popularity

    federation = message_popularity(msg, store.n_items)
    if federation is not None:
        # Kept for the store's recommender (served_popularity): a sum of DP outputs.
        held = load_released_popularity(settings, store.name, items=store.n_items, federation=True)
        if held is None or held.sigma != federation[1] or not np.array_equal(held.released, federation[0]):
            run_id = int(context.run_id) if context is not None else 0
            save_released_popularity(settings, store.name, ReleasedPopularity(run_id, federation[1], federation[0]),
                                     federation=True)
        return federation
    if context is None:
        return None

    own = load_released_popularity(settings, store.name, run_id=int(context.run_id), items=store.n_items)
    return None if own is None else (own.released, own.sigma)


def _pending_release(store: StoreData, settings: Settings, context: Context | None, delta: float) -> float | None:
    """The noise of the popularity release this store still owes this run (charged with its next
    training round), or None: released already in this run, or no release under these settings."""
    from siloguard.clients.private import load_released_popularity
    from siloguard.privacy.popularity import release_noise

    sigma = release_noise(settings.privacy, delta)
    if sigma is None or context is None:
        return None
    held = load_released_popularity(settings, store.name, run_id=int(context.run_id), items=store.n_items)
    return None if held is not None else sigma


@lru_cache(maxsize=4)
def _ledger(url: str):  # noqa: ANN202 - imported lazily (SQLAlchemy); one engine per database and process
    from siloguard.privacy.budget import BudgetLedger

    return BudgetLedger(url)


def _ledger_state(store: StoreData, settings: Settings) -> tuple[object, list, float]:
    """The store's ledger entry (or None), its accountant history and its delta."""
    from siloguard.privacy.dp import store_delta

    entry = _ledger(settings.database.url).load(store.name)
    history = entry.history if entry else []
    delta = entry.delta if entry else store_delta(settings.privacy, store.n_users)
    return entry, history, delta


def _planned_state(store: StoreData, settings: Settings, context: Context | None) -> tuple[object, list, float, float | None]:
    """The store's ledger entry, its accountant history with the popularity release this run
    still owes (charged before the round's noise is planned), its delta and that release's
    noise (None: nothing owed). What the budget query and the round both plan from."""
    from siloguard.privacy.popularity import release_step

    entry, history, delta = _ledger_state(store, settings)
    pending = _pending_release(store, settings, context, delta)
    if pending is not None:
        history = [*history, release_step(pending)]
    return entry, history, delta, pending


def _round_noise(store: StoreData, settings: Settings, history: list, delta: float, server_round: int | None) -> float | None:
    """The noise this round trains with: fixed, or planned so the rounds left spend the target."""
    from siloguard.privacy.dp import plan_noise, rounds_left

    return plan_noise(
        settings.privacy, history, rounds=rounds_left(settings.federation.rounds, server_round),
        local_epochs=settings.model.local_epochs, delta=delta, customers=store.n_users,
    )


def budget_status(
    store: StoreData, settings: Settings, server_round: int | None = None, context: Context | None = None
) -> dict[str, float]:
    """The store's privacy spend so far and what this round, at its planned noise, would bring it to.

    The query and the round's training plan the same noise (same ledger, customers and round,
    and the popularity release the round would make first), so a store the coordinator finds
    within its cap also trains within it. A store whose plan finds no noise that keeps its
    target answers an infinite projection: it is skipped.
    """
    from siloguard.privacy.dp import projected_epsilon

    entry, history, delta, pending = _planned_state(store, settings, context)
    noise = _round_noise(store, settings, history, delta, server_round)
    projected = (
        math.inf if noise is None
        else projected_epsilon(settings.privacy, history, settings.model.local_epochs, delta, store.n_users, noise)
    )
    return {
        "epsilon": entry.epsilon if entry else 0.0,  # type: ignore[attr-defined]
        "projected-epsilon": projected,
        "epsilon-cap": settings.privacy.epsilon_cap,
        "epsilon-target": settings.privacy.target_epsilon,
        "delta": delta,
        **({"noise-multiplier": noise} if noise is not None else {}),
        **({"popularity-noise": pending} if pending is not None else {}),
    }


def handle_query(msg: Message, context: Context, settings: Settings) -> Message:
    """The coordinator asks for the store's remaining budget before sampling it."""
    store = store_for(context, settings, server_round=_round_of(msg), msg=msg)
    status = budget_status(store, settings, _round_of(msg), context) if settings.privacy.enabled else {}
    content = RecordDict(
        {"budget": MetricRecord({k: float(v) for k, v in status.items()}), "store": ConfigRecord({"name": store.name})}
    )
    return Message(content=content, reply_to=msg)


def handle_train(msg: Message, context: Context, settings: Settings) -> Message:
    store = store_for(context, settings, server_round=_round_of(msg), msg=msg)
    model = _shared_model(msg, store, settings, context)
    users = _private_users(store, settings)
    server_round = int(msg.content["config"].get("server-round", 0))
    rng = np.random.default_rng([settings.model.seed, server_round, store.n_users])
    started = time.perf_counter()
    examples = store.examples(settings.model, rng)
    privacy_metrics: dict[str, float] = {}
    released: dict[str, ConfigRecord] = {}
    if settings.privacy.enabled:
        own = settings.privacy.own_repeat
        if own == "items":
            # The store's own item biases, trained on the repeat head it was sent (an unreadable
            # file stops the round here, before any budget is spent).
            _train_own_repeat(model, users, examples, store, settings, server_round, own)
        elif own == "all":
            # The store's own repeat ranker is read before any budget is spent: an unreadable
            # file stops the round here, not after the ledger has recorded it.
            from siloguard.clients.private import load_private_repeat

            load_private_repeat(settings, store.name, model.fresh_copy(), own)
        privacy_metrics, released = _train_dp(model, users, examples, store, settings, server_round, msg, context)
        n_examples = int(privacy_metrics.pop("customers"))
        loss = privacy_metrics.pop("loss")
        if own == "all":
            _train_own_repeat(model, users, examples, store, settings, server_round, own)
    else:
        result = train_local(
            model,
            users,
            examples,
            epochs=settings.model.local_epochs,
            lr=settings.model.learning_rate,
            repeat_lr=settings.model.repeat_learning_rate,
            user_lr=settings.model.user_learning_rate,
            batch_size=settings.model.batch_size,
            weight_decay=settings.model.weight_decay,
            seed=settings.model.seed + server_round,
        )
        # not written back if an erasure came after the data was gated (it would restore the erased)
        if not save_private_users(settings, store.name, store.subjects, users, erasures=store.erasures):
            log.warning("store %s: an erasure came after this round's data was gated; its customers' vectors are "
                        "not written back", store.name)
        n_examples, loss = result.examples, result.loss
    content = RecordDict(
        {
            "arrays": ArrayRecord(model.state_dict()),
            "metrics": MetricRecord(
                {
                    "num-examples": max(n_examples, 1),
                    # Under DP the sampled customers' loss is not sent: it is computed without noise.
                    **({} if settings.privacy.enabled else {"train-loss": loss if n_examples else 0.0}),
                    "train-seconds": time.perf_counter() - started,
                    **privacy_metrics,
                    **_compliance_metrics(context, settings),
                }
            ),
            "store": ConfigRecord({"name": store.name}),
            **released,
            **_audit_head(settings),
        }
    )
    return Message(content=content, reply_to=msg)


def _train_own_repeat(
    shared: SharedModel, users: PrivateUsers, examples, store: StoreData, settings: Settings, server_round: int,
    part: str,
) -> None:
    """Under DP the repeat ranker (``part="all"``) or its per-item biases (``"items"``) are the
    store's own: trained here without noise, from where the store left them, on a copy of the
    model (the reply carries the shared parameters only), and kept on the store's disk with
    their mean over the rounds, which the store scores with (``privacy.own_repeat_average``)."""
    from siloguard.clients.private import erasure_mark, read_private_repeat, repeat_lock, save_private_repeat
    from siloguard.recommender.train import train_kept_repeat

    with repeat_lock(settings, store.name):  # an erasure meanwhile waits, then deletes what this writes
        if store.erasures is not None and erasure_mark(settings, store.name) != store.erasures:
            log.warning("store %s: an erasure came after this round's data was gated; its repeat ranker is "
                        "not written back (the next round trains it afresh)", store.name)
            return
        kept = read_private_repeat(settings, store.name)
        state = train_kept_repeat(shared, users, examples, settings.model, seed=settings.model.seed + server_round,
                                  part=part, kept=kept, average=settings.privacy.own_repeat_average)
        save_private_repeat(settings, store.name, state)


def _audit_head(settings: Settings) -> dict[str, ConfigRecord]:
    """A store on its site signs a head of its own audit log for the reply; the coordinator witnesses it."""
    from siloguard.clients.site import StoreSite

    if not StoreSite.is_site(settings.work_dir):
        return {}
    from siloguard.audit import AuditLog
    from siloguard.audit.witness import public_key_text

    StoreSite.open(settings.work_dir, settings).audit_signing_key  # made on first use  # noqa: B018
    log = AuditLog.open(settings)
    try:
        head = log.sign_head()
        public = public_key_text(log.signer.public_key)  # type: ignore[union-attr]
    finally:
        log.close()
    return {"audit-head": ConfigRecord({**head.to_json(), "public-key": public})}


def _train_dp(
    model: SharedModel, users: PrivateUsers, examples, store: StoreData, settings: Settings, server_round: int,
    msg: Message | None = None, context: Context | None = None,
) -> tuple[dict[str, float], dict[str, ConfigRecord]]:
    """One round of customer-level DP-SGD, refused (fail closed) if it would pass the cap.

    In the store's first training round of a run it first releases its item popularity
    (privacy/popularity.py), charged to its ledger as one Gaussian step before the round's
    noise is planned, recorded with the round in one transaction and kept on the store's disk
    only after that; the release goes back to the coordinator in the reply (``popularity``),
    which sends the sum of the stores' releases with later messages. Returns the round's
    metrics and the reply's extra records.
    """
    from siloguard.clients.private import ReleasedPopularity, save_released_popularity
    from siloguard.errors import PrivacyBudgetError
    from siloguard.privacy.dp import group_by_customer, projected_epsilon, train_local_dp
    from siloguard.privacy.popularity import release_popularity

    privacy = settings.privacy
    entry, history, delta, sigma = _planned_state(store, settings, context)
    noise = _round_noise(store, settings, history, delta, server_round)
    if noise is None or projected_epsilon(
        privacy, history, settings.model.local_epochs, delta, store.n_users, noise
    ) > privacy.epsilon_cap:
        raise PrivacyBudgetError(
            f"store {store.name!r} is at its privacy budget (target {privacy.target_epsilon}, "
            f"cap {privacy.epsilon_cap}): it does not train"
        )
    extra: dict[str, ConfigRecord] = {}
    release = None
    if sigma is not None and context is not None:
        release = ReleasedPopularity(int(context.run_id), sigma, release_popularity(store.history.counts, sigma))
        if message_popularity(msg, store.n_items) is None:  # no federation prior yet: the store's own
            model.set_store_popularity(popularity_prior(release.released, sigma), released=privacy.own_repeat != "all")
        extra["popularity"] = popularity_record(release.released, sigma)
    elif context is not None and privacy.popularity_share:
        # Released (and paid for) earlier in this run: sent again with every update, free (a DP
        # output), so a coordinator that screened out the round that carried it still gets it.
        from siloguard.clients.private import load_released_popularity

        held = load_released_popularity(settings, store.name, run_id=int(context.run_id), items=store.n_items)
        if held is not None:
            extra["popularity"] = popularity_record(held.released, held.sigma)
    result = train_local_dp(
        model,
        users.weight.detach(),
        group_by_customer(examples, store.n_users),
        privacy=privacy,
        local_epochs=settings.model.local_epochs,
        lr=settings.model.learning_rate,
        repeat_lr=settings.model.repeat_learning_rate,
        history=history,
        delta=delta,
        noise_multiplier=noise,
    )
    _ledger(settings.database.url).record_round(
        store=store.name,
        accountant=privacy.accountant,
        history=result.history,
        delta=delta,
        epsilon=result.report.epsilon,
        epsilon_cap=privacy.epsilon_cap,
        server_round=server_round,
        expected_rounds=entry.rounds if entry is not None else 0,  # type: ignore[attr-defined]
    )
    if release is not None:  # charged: kept for the run's later rounds (no second charge)
        save_released_popularity(settings, store.name, release)
    return {
        "customers": int(np.count_nonzero(np.bincount(examples.bags.user, minlength=store.n_users))),
        "loss": result.loss,
        "epsilon": result.report.epsilon,
        "delta": delta,
        "epsilon-cap": privacy.epsilon_cap,
        "epsilon-target": privacy.target_epsilon,
        "noise-multiplier": noise,
        "dp-steps": result.report.steps,
    }, extra


def handle_evaluate(msg: Message, context: Context, settings: Settings) -> Message:
    store = store_for(context, settings, server_round=_round_of(msg), msg=msg)
    model = _shared_model(msg, store, settings, context)
    users = _private_users(store, settings) if private_path(settings, store.name).is_file() else None
    if settings.privacy.enabled and settings.privacy.own_repeat:
        from siloguard.clients.private import load_private_repeat

        load_private_repeat(settings, store.name, model, settings.privacy.own_repeat)  # the store's own part, if trained
    metrics = evaluate_store(model, users, store, validation=True)
    metrics["num-examples"] = max(int(metrics["users"]), 1)
    clean = {k: (0.0 if np.isnan(v) else float(v)) for k, v in metrics.items()}
    content = RecordDict({"metrics": MetricRecord(clean), "store": ConfigRecord({"name": store.name})})
    return Message(content=content, reply_to=msg)


def store_settings(context: Context) -> Settings:
    """A store's settings in its ClientApp (:func:`node_store`): its site and its own environment
    first, the run config as fallback only for a store of an older one-directory run."""
    return node_store(context)[1]


def build_client_app(settings: Settings | None = None) -> ClientApp:
    """A ClientApp; ``settings`` are the run's (in-process simulation), each store's own otherwise."""
    client = ClientApp()

    def resolve(context: Context) -> Settings:
        return node_store(context, settings)[1]

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        torch.set_num_threads(1)
        return handle_train(msg, context, resolve(context))

    @client.query()
    def query(msg: Message, context: Context) -> Message:
        return handle_query(msg, context, resolve(context))

    @client.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        torch.set_num_threads(1)
        return handle_evaluate(msg, context, resolve(context))

    return client


#: Entry point for ``flwr run`` (``[tool.flwr.app.components] clientapp``).
app = build_client_app()
