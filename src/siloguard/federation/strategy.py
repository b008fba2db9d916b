"""FedAvg on the shared parameters, keeping each store's reported metrics.

Flower's ``FedAvg`` (weighted by ``num-examples``) does the aggregation; this
subclass only remembers which store reported what, so rounds can be shown per
store and the overall evaluation can be weighted by test customers for each
metric variant separately.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import random
from logging import INFO

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import sample_nodes
from flwr.supercore import log

from siloguard.clients.store import overall_metrics

__all__ = ["RoundReport", "SiloFedAvg"]


@dataclass
class RoundReport:
    """What one round produced, per store and overall."""

    server_round: int
    train: dict[str, dict[str, float]] = field(default_factory=dict)
    evaluate: dict[str, dict[str, float]] = field(default_factory=dict)
    failures: int = 0
    budgets: dict[str, dict[str, float]] = field(default_factory=dict)  # answers to the budget query
    skipped: list[str] = field(default_factory=list)  # stores left out: next round would pass their cap

    @property
    def overall(self) -> dict[str, float]:
        return overall_metrics(self.evaluate) if self.evaluate else {}


def _store_name(msg: Message) -> str:
    try:
        return str(msg.content["store"]["name"])
    except KeyError:
        return f"node-{msg.metadata.src_node_id}"


class SiloFedAvg(FedAvg):
    """``FedAvg`` that records per-store replies and calls ``on_round`` after each round."""

    def __init__(
        self,
        *,
        on_round: Callable[[RoundReport], None] | None = None,
        budget_aware: bool = False,
        query_timeout: float = 120.0,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.on_round = on_round
        self.budget_aware = budget_aware
        self.query_timeout = query_timeout
        self.reports: dict[int, RoundReport] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        """Ask every store for its privacy budget, then sample only stores that can afford the round."""
        if not self.budget_aware:
            return list(super().configure_train(server_round, arrays, config, grid))
        report = self._report(server_round)
        _, all_nodes = sample_nodes(grid, self.min_available_nodes, self.min_available_nodes)
        queries = [
            Message(
                content=RecordDict({"config": ConfigRecord({"server-round": server_round})}),
                dst_node_id=node,
                message_type=MessageType.QUERY,
            )
            for node in all_nodes
        ]
        eligible: list[int] = []
        for reply in grid.send_and_receive(queries, timeout=self.query_timeout):
            if reply.has_error():
                report.failures += 1  # fail closed: a store that cannot state its budget does not train
                continue
            name, budget = _store_name(reply), dict(reply.content["budget"])
            report.budgets[name] = budget
            if budget.get("projected-epsilon", float("inf")) <= budget.get("epsilon-cap", 0.0):
                eligible.append(reply.metadata.src_node_id)
            else:
                report.skipped.append(name)
        if report.skipped:
            log(INFO, "configure_train: %d store(s) at their privacy budget skip this round", len(report.skipped))
        if not eligible:
            return []
        size = max(int(len(eligible) * self.fraction_train), min(self.min_train_nodes, len(eligible)), 1)
        chosen = random.sample(eligible, min(size, len(eligible)))
        config["server-round"] = server_round
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return list(self._construct_messages(record, chosen, MessageType.TRAIN))

    def _report(self, server_round: int) -> RoundReport:
        return self.reports.setdefault(server_round, RoundReport(server_round))

    def _collect(self, server_round: int, replies: list[Message], into: str) -> None:
        """Keep each store's reply metrics in the round's report (``train`` or ``evaluate``)."""
        report = self._report(server_round)
        for msg in replies:
            if msg.has_error():
                report.failures += 1
            else:
                getattr(report, into)[_store_name(msg)] = dict(msg.content["metrics"])

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        self._collect(server_round, replies, "train")
        return super().aggregate_train(server_round, replies)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        replies = list(replies)
        self._collect(server_round, replies, "evaluate")
        report = self._report(server_round)
        aggregated = super().aggregate_evaluate(server_round, replies)
        if self.on_round is not None:
            self.on_round(report)
        return aggregated
