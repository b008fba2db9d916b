"""What the strategy tests share: a fake task identity and just enough of a Grid."""

from __future__ import annotations

import pytest
from flwr.supercore.task_identity import TaskIdentity


@pytest.fixture(autouse=True)
def fake_task_identity():  # noqa: ANN201
    """Messages are stamped with the running task's identity; here, a fake one (autouse in the
    modules that import it)."""
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    yield


class FakeGrid:
    """Just enough of a Grid for sampling: the connected node ids."""

    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)
