"""What a store keeps of its own repeat ranker: the last round's parameters and their mean."""

from __future__ import annotations

import pytest
import torch

from siloguard.recommender.train import scoring_state, training_state, with_average


def _state(value: float) -> dict[str, torch.Tensor]:
    return {"repeat_linear.weight": torch.full((1, 7), value), "repeat_items.weight": torch.full((4, 1), -value)}


def test_when_rounds_are_kept_then_the_store_scores_with_their_mean_and_trains_on_from_the_last() -> None:
    kept: dict[str, torch.Tensor] = {}
    for value in (1.0, 2.0, 6.0):
        kept = with_average(kept, _state(value))
    assert int(kept["average.rounds"]) == 3
    assert torch.equal(training_state(kept)["repeat_linear.weight"], torch.full((1, 7), 6.0))
    scored = scoring_state(kept)
    assert set(scored) == set(_state(0.0))
    assert torch.allclose(scored["repeat_linear.weight"], torch.full((1, 7), 3.0))
    assert torch.allclose(scored["repeat_items.weight"], torch.full((4, 1), -3.0))


def test_when_nothing_was_averaged_then_the_last_round_is_scored() -> None:
    assert torch.equal(scoring_state(_state(2.0))["repeat_linear.weight"], torch.full((1, 7), 2.0))
    assert scoring_state({}) == {}


def test_when_the_kept_part_changes_then_the_mean_starts_afresh() -> None:
    """A store that kept the whole ranker and now keeps its item biases: no stale mean of the head."""
    kept = with_average(with_average({}, _state(1.0)), _state(3.0))
    items_only = {"repeat_items.weight": torch.full((4, 1), 10.0)}
    now = with_average(kept, items_only)
    assert int(now["average.rounds"]) == 1
    assert set(scoring_state(now)) == {"repeat_items.weight"}
    assert torch.equal(scoring_state(now)["repeat_items.weight"], torch.full((4, 1), 10.0))


@pytest.mark.parametrize("bad", [{"text_in.weight": torch.zeros(2)}, {"average.text_in.weight": torch.zeros(2)}])
def test_when_a_kept_state_holds_a_shared_parameter_then_the_store_refuses_to_write_it(tmp_path, bad) -> None:
    from siloguard.clients.private import save_private_repeat
    from siloguard.config import Settings

    settings = Settings.build(work_dir=tmp_path)
    with pytest.raises(ValueError, match="not the repeat ranker"):
        save_private_repeat(settings, "germany", {**_state(1.0), **bad})
