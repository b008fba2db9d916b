"""FedAvg (or a robust aggregate) on the shared parameters, with per-store reports.

Flower's strategies do the aggregation: ``FedAvg`` weighted by ``num-examples`` by default,
or ``FedTrimmedAvg`` / ``FedMedian`` (``federation.aggregator``) for the shared parameters
when some stores may send outliers. This subclass adds what a federation of separate
companies needs around it:

- per-store replies kept for each round (metrics, privacy spend, budget answers);
- every training update screened before aggregation: NaN/Inf values, a shape that is not the
  global model's, or an update norm ``||reply - global||`` above ``federation.max_update_norm``
  or above ``federation.outlier_factor`` times the round's median norm (with at least three
  updates) is rejected, so it has no effect on the global model;
- stores that were sent a message but sent nothing back (a node that stopped or lost its
  connection; the SuperLink answers for it with "node unavailable") reported as dropped: the
  round goes on with the others, down to ``min_train_nodes``;
- the sha256 of each round's global model (after aggregation, and after central DP noise when
  that is on), so the audit log names the exact model every round produced;
- the federation's popularity prior under DP: each store's one DP release of its item popularity
  (its first training round's reply, ``popularity``) is kept, and the sum of what the stores
  have released so far goes to every store with each later message (train and evaluate): a
  sum of DP outputs, so the coordinator computes it without touching any customer's data
  (privacy/popularity.py);
- with ``keep_best``, the round whose global model scored best on the stores' validation window
  (the last horizon of the training period, never the test window), so a run that declines
  after its best round registers that round's model.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Literal

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, FedMedian, FedTrimmedAvg
from flwr.serverapp.strategy.strategy_utils import sample_nodes
from flwr.supercore import log

from siloguard.recommender.metrics import overall_metrics

__all__ = ["Aggregator", "RoundReport", "SiloFedAvg", "arrays_sha256", "screen_update"]

#: Bounds on a store's popularity release (privacy/popularity.py): a product's released count is
#: at most the store's customers (each adds at most 1) plus noise; no store has 10^8 customers,
#: and a release's noise std above 10^4 (the release alone at epsilon ~10^-4) carries nothing.
MAX_RELEASED = 1e8
MAX_RELEASE_SIGMA = 1e4

Aggregator = Literal["fedavg", "trimmed-mean", "median"]

#: Why an update was rejected (audit ``reason`` codes).
NON_FINITE = "update-non-finite"
SHAPE = "update-shape-mismatch"
OVER_NORM = "update-norm-above-bound"
OUTLIER = "update-norm-outlier"


@dataclass
class RoundReport:
    """What one round produced, per store and overall."""

    server_round: int
    train: dict[str, dict[str, float]] = field(default_factory=dict)
    evaluate: dict[str, dict[str, float]] = field(default_factory=dict)
    failures: int = 0
    budgets: dict[str, dict[str, float]] = field(default_factory=dict)  # answers to the budget query
    skipped: list[str] = field(default_factory=list)  # stores left out: next round would pass their cap
    rejected: dict[str, str] = field(default_factory=dict)  # store -> reason code; not aggregated
    update_norms: dict[str, float] = field(default_factory=dict)  # L2 norm of each store's update
    dropped: list[str] = field(default_factory=list)  # sent a message, nothing came back from the node
    model_sha256: str | None = None  # the global model after this round
    heads: dict[str, dict[str, object]] = field(default_factory=dict)  # store -> its signed audit head (train reply)
    released_popularity: dict[str, float] = field(default_factory=dict)  # store -> noise std of its DP popularity release
    rejected_popularity: list[str] = field(default_factory=list)  # ... and whose release did not parse

    @property
    def overall(self) -> dict[str, float]:
        return overall_metrics(self.evaluate) if self.evaluate else {}

    @property
    def participants(self) -> list[str]:
        """Stores whose training update went into this round's global model."""
        return sorted(s for s in self.train if s not in self.rejected)


def arrays_sha256(arrays: ArrayRecord) -> str:
    """sha256 over each array's name, dtype, shape and bytes, in the record's order."""
    digest = hashlib.sha256()
    for name, array in arrays.items():
        nd = np.ascontiguousarray(array.numpy())
        digest.update(f"{name}|{nd.dtype.str}|{nd.shape}|".encode())
        digest.update(nd.tobytes())
    return digest.hexdigest()


def screen_update(
    update: list[np.ndarray], current: list[np.ndarray], max_norm: float | None
) -> tuple[str | None, float]:
    """(reason to reject or None, L2 norm of ``update - current``) for one store's arrays."""
    if len(update) != len(current) or any(u.shape != c.shape for u, c in zip(update, current)):
        return SHAPE, math.inf
    if not all(np.isfinite(u).all() for u in update):
        return NON_FINITE, math.inf
    norm = math.sqrt(sum(float(np.sum((u.astype(np.float64) - c) ** 2)) for u, c in zip(update, current)))
    if not math.isfinite(norm):
        return NON_FINITE, math.inf
    if max_norm is not None and norm > max_norm:
        return OVER_NORM, norm
    return None, norm


def _store_name(msg: Message) -> str | None:
    try:
        return str(msg.content["store"]["name"])
    except KeyError:
        return None


class SiloFedAvg(FedAvg):
    """``FedAvg`` that screens updates, reports drops and per-store replies, and calls ``on_round``."""

    def __init__(
        self,
        *,
        on_round: Callable[[RoundReport], None] | None = None,
        budget_aware: bool = False,
        query_timeout: float = 120.0,
        aggregator: Aggregator = "fedavg",
        trim_fraction: float = 0.2,
        max_update_norm: float | None = None,
        outlier_factor: float | None = 100.0,
        keep_best: bool = False,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        #: keep the round whose global model scores best on the stores' validation window
        #: (``val.ndcg@10``, inside the training period), not just the last one
        self.keep_best = keep_best
        self.best_round: int | None = None
        self.best_arrays: ArrayRecord | None = None
        self._best_score = -math.inf
        self._evaluated: dict[int, ArrayRecord] = {}
        self.on_round = on_round
        self.budget_aware = budget_aware
        self.query_timeout = query_timeout
        self.aggregator = aggregator
        self.max_update_norm = max_update_norm
        self.outlier_factor = outlier_factor
        self.reports: dict[int, RoundReport] = {}
        self._names: dict[int, str] = {}  # node id -> store, from every reply that named its store
        self._sent: dict[tuple[int, str], set[int]] = {}  # (round, phase) -> node ids sent a message
        self._current: list[np.ndarray] | None = None  # the global model the round started from
        #: store -> its DP release of item popularity (released counts, noise std), this run
        self.popularity: dict[str, tuple[np.ndarray, float]] = {}
        self._release_nodes: dict[str, int] = {}  # store -> the node whose release it is
        self._items: int | None = None  # catalogue products (the model's decoder bias): a release's length
        shared = {"weighted_by_key": self.weighted_by_key, "arrayrecord_key": self.arrayrecord_key}
        # Flower's robust aggregates, used on the accepted updates (FedAvg's sampling is kept).
        self._robust: FedAvg | None = None
        if aggregator == "trimmed-mean":
            self._robust = FedTrimmedAvg(beta=trim_fraction, **shared)  # type: ignore[arg-type]
        elif aggregator == "median":
            self._robust = FedMedian(**shared)  # type: ignore[arg-type]

    # ---- configure: remember what was sent ---------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        """Sample stores (only those within their privacy budget when budget-aware) and send them the model."""
        self._current = arrays.to_numpy_ndarrays()
        if "decoder.bias" in arrays:  # one per catalogue product: the length a release must have
            self._items = int(arrays["decoder.bias"].numpy().shape[0])
        messages = self._budget_aware_train(server_round, arrays, config, grid) if self.budget_aware else list(
            super().configure_train(server_round, arrays, config, grid)
        )
        self._sent[(server_round, "train")] = {m.metadata.dst_node_id for m in messages}
        return self._with_popularity(messages)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        """The arrays here are the round's new global model: record its checksum."""
        self._report(server_round).model_sha256 = arrays_sha256(arrays)
        if self.keep_best:
            self._evaluated = {server_round: arrays}
        messages = list(super().configure_evaluate(server_round, arrays, config, grid))
        self._sent[(server_round, "evaluate")] = {m.metadata.dst_node_id for m in messages}
        return self._with_popularity(messages)

    def _with_popularity(self, messages: list[Message]) -> list[Message]:
        """Add the sum of the stores' popularity releases so far (none yet: nothing added)."""
        if not self.popularity or not messages:
            return messages
        from siloguard.privacy.popularity import popularity_record, sum_releases

        record = popularity_record(*sum_releases([self.popularity[s] for s in sorted(self.popularity)]))
        for msg in messages:
            msg.content["popularity"] = record
        return messages

    def _keep_popularity(self, server_round: int, replies: list[Message]) -> None:
        """Keep each accepted store's popularity release (a DP output; a store that released again in
        a new run of its node replaces its earlier one). Stores send their release with every update
        of the run, so one whose first update was screened out is summed from its next accepted one;
        the round's report names only releases new to the coordinator. One that does not parse is ignored."""
        from siloguard.privacy.popularity import read_popularity_record

        report = self._report(server_round)
        for msg in replies:
            if "popularity" not in msg.content:
                continue
            name = self._name(msg)
            try:
                released, sigma = read_popularity_record(msg.content["popularity"], self._items)
            except ValueError:
                report.rejected_popularity.append(name)
                continue
            sizes = {r.shape for r, _ in self.popularity.values()}
            # A store's release is a DP output, but a dishonest one could still break everyone's
            # prior: values beyond any store's customer count, or noise so large that the sum's
            # is meaningless (or not finite) are refused, not summed.
            if (sizes and sizes != {released.shape}) or np.abs(released).max(initial=0.0) > MAX_RELEASED or sigma > MAX_RELEASE_SIGMA:
                report.rejected_popularity.append(name)
                continue
            node = msg.metadata.src_node_id
            if self._release_nodes.setdefault(name, node) != node:
                # A store's release is replaced only by the node that sent it: another node
                # naming the same store does not overwrite it (nor is it summed twice).
                report.rejected_popularity.append(name)
                continue
            kept = self.popularity.get(name)
            if kept is not None and kept[1] == sigma and np.array_equal(kept[0], released):
                continue  # the same release sent again with a later update: nothing new
            self.popularity[name] = (released, sigma)
            report.released_popularity[name] = sigma

    def _budget_aware_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        """Ask every store for its privacy budget, then sample only stores that can afford the round."""
        report = self._report(server_round)
        _, all_nodes = sample_nodes(grid, self.min_available_nodes, self.min_available_nodes)
        queries = [
            Message(
                content=RecordDict({"config": ConfigRecord({**dict(config), "server-round": server_round})}),
                dst_node_id=node,
                message_type=MessageType.QUERY,
            )
            for node in all_nodes
        ]
        eligible: list[int] = []
        answered: set[int] = set()
        for reply in grid.send_and_receive(queries, timeout=self.query_timeout):
            if reply.has_error():
                report.failures += 1  # fail closed: a store that cannot state its budget does not train
                continue
            answered.add(reply.metadata.src_node_id)
            name = self._name(reply)
            report.budgets[name] = dict(reply.content["budget"])
            budget = report.budgets[name]
            if budget.get("projected-epsilon", float("inf")) <= budget.get("epsilon-cap", 0.0):
                eligible.append(reply.metadata.src_node_id)
            else:
                report.skipped.append(name)
        self._note_dropped(report, set(all_nodes) - answered)
        if report.skipped:
            log(INFO, "configure_train: %d store(s) at their privacy budget skip this round", len(report.skipped))
        if not eligible:
            return []
        size = max(int(len(eligible) * self.fraction_train), min(self.min_train_nodes, len(eligible)), 1)
        chosen = random.sample(eligible, min(size, len(eligible)))
        config["server-round"] = server_round
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return list(self._construct_messages(record, chosen, MessageType.TRAIN))

    # ---- bookkeeping -------------------------------------------------------------------
    def _report(self, server_round: int) -> RoundReport:
        return self.reports.setdefault(server_round, RoundReport(server_round))

    def _name(self, msg: Message) -> str:
        node = msg.metadata.src_node_id
        name = _store_name(msg)
        if name is not None:
            self._names[node] = name
        return self._names.get(node, f"node-{node}")

    def _note_dropped(self, report: RoundReport, nodes: set[int]) -> None:
        for node in sorted(nodes):
            name = self._names.get(node, f"node-{node}")
            if name not in report.dropped:
                report.dropped.append(name)
        if nodes:
            log(WARNING, "round %d: %d store(s) dropped out: %s", report.server_round, len(nodes), ", ".join(report.dropped))

    def _collect(self, server_round: int, replies: list[Message], into: str) -> list[Message]:
        """Keep each store's reply metrics in the round's report; return the replies with content."""
        report = self._report(server_round)
        valid: list[Message] = []
        heard: set[int] = set()
        for msg in replies:
            if msg.has_error():
                # The SuperLink itself answers for a node that went away ("node unavailable");
                # an error from the node is a failure of the store's ClientApp.
                if msg.metadata.src_node_id in self._sent.get((server_round, into), set()):
                    heard.add(msg.metadata.src_node_id)
                    report.failures += 1
                continue
            heard.add(msg.metadata.src_node_id)
            getattr(report, into)[self._name(msg)] = dict(msg.content["metrics"])
            if "audit-head" in msg.content:
                report.heads[self._name(msg)] = dict(msg.content["audit-head"])
            valid.append(msg)
        self._note_dropped(report, self._sent.get((server_round, into), set()) - heard)
        return valid

    def _screen(self, server_round: int, replies: list[Message]) -> list[Message]:
        """Drop updates that are not finite, not the model's shape, or far larger than the rest."""
        report = self._report(server_round)
        if self._current is None:
            return replies
        kept: list[tuple[Message, float]] = []
        for msg in replies:
            name = self._name(msg)
            reason, norm = screen_update(msg.content[self.arrayrecord_key].to_numpy_ndarrays(), self._current, self.max_update_norm)
            report.update_norms[name] = norm
            if reason is None:
                kept.append((msg, norm))
            else:
                report.rejected[name] = reason
        if self.outlier_factor is not None and len(kept) >= 3:
            median = float(np.median([n for _, n in kept]))
            if median > 0:
                for msg, norm in list(kept):
                    if norm > self.outlier_factor * median:
                        report.rejected[self._name(msg)] = OUTLIER
                        kept.remove((msg, norm))
        for name, reason in sorted(report.rejected.items()):
            log(WARNING, "round %d: update of store %s rejected (%s)", server_round, name, reason)
        return [msg for msg, _ in kept]

    # ---- aggregation -------------------------------------------------------------------
    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Screen the updates, then aggregate the accepted ones (None: the global model stays)."""
        kept = self._screen(server_round, self._collect(server_round, list(replies), "train"))
        # Only stores whose update was accepted: a store the screening rejects is not trusted
        # with a term in every store's ranking either.
        self._keep_popularity(server_round, kept)
        if not kept:
            return None, None
        if self._robust is not None:
            return self._robust.aggregate_train(server_round, kept)
        return super().aggregate_train(server_round, kept)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        valid = self._collect(server_round, list(replies), "evaluate")
        report = self._report(server_round)
        aggregated = super().aggregate_evaluate(server_round, valid)
        if self.keep_best and server_round in self._evaluated:
            score = report.overall.get("val.ndcg@10", math.nan)
            if math.isfinite(score) and score > self._best_score:
                self._best_score, self.best_round = score, server_round
                self.best_arrays = self._evaluated[server_round]
            self._evaluated.clear()
        if self.on_round is not None:
            self.on_round(report)
        return aggregated
