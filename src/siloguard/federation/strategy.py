"""FedAvg on the shared parameters, keeping each store's reported metrics.

Flower's ``FedAvg`` (weighted by ``num-examples``) does the aggregation; this
subclass only remembers which store reported what, so rounds can be shown per
store and the overall evaluation can be weighted by test customers for each
metric variant separately.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg

from siloguard.clients.store import overall_metrics

__all__ = ["RoundReport", "SiloFedAvg"]


@dataclass
class RoundReport:
    """What one round produced, per store and overall."""

    server_round: int
    train: dict[str, dict[str, float]] = field(default_factory=dict)
    evaluate: dict[str, dict[str, float]] = field(default_factory=dict)
    failures: int = 0

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

    def __init__(self, *, on_round: Callable[[RoundReport], None] | None = None, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.on_round = on_round
        self.reports: dict[int, RoundReport] = {}

    def _report(self, server_round: int) -> RoundReport:
        return self.reports.setdefault(server_round, RoundReport(server_round))

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        report = self._report(server_round)
        for msg in replies:
            if msg.has_error():
                report.failures += 1
            else:
                report.train[_store_name(msg)] = dict(msg.content["metrics"])
        return super().aggregate_train(server_round, replies)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        replies = list(replies)
        report = self._report(server_round)
        for msg in replies:
            if msg.has_error():
                report.failures += 1
            else:
                report.evaluate[_store_name(msg)] = dict(msg.content["metrics"])
        aggregated = super().aggregate_evaluate(server_round, replies)
        if self.on_round is not None:
            self.on_round(report)
        return aggregated
