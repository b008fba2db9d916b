"""Features, model and losses on hand-made stores."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from siloguard.recommender.features import build_examples, build_history, build_holdout_examples, history_bags
from siloguard.recommender.model import PAST_PURCHASE_OFFSET, PrivateUsers, SharedModel, score_users
from siloguard.recommender.train import example_loss, split_losses, train_local

N_ITEMS = 6


def _events(rows: list[tuple[int, int, int, str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["user", "item", "day", "invoice"])


def _store() -> pd.DataFrame:
    # user 0 bought item 1 three times, item 2 once; user 1 bought item 3 twice.
    return _events(
        [
            (0, 1, 10, "a"), (0, 1, 20, "b"), (0, 1, 30, "c"), (0, 2, 30, "c"),
            (1, 3, 12, "d"), (1, 3, 25, "e"),
            (0, 4, 45, "f"), (1, 3, 46, "g"), (1, 5, 47, "g"),  # after the cutoff at day 40
        ]
    )


def test_when_history_is_built_then_only_purchases_before_the_cutoff_count() -> None:
    history = build_history(_store(), 2, N_ITEMS, cutoff=40)
    dense = history.counts.toarray()
    assert dense[0].tolist() == [0, 3, 1, 0, 0, 0]
    assert dense[1].tolist() == [0, 0, 0, 2, 0, 0]
    # Features are aligned with CSR entries: log1p(baskets) first.
    assert np.allclose(history.features[:, 0], np.log1p(history.counts.data))


def test_when_examples_are_built_then_targets_come_from_the_window_after_the_cutoff() -> None:
    ex = build_examples(_store(), 2, N_ITEMS, cutoffs=[40], horizon=10, rng=np.random.default_rng(0))
    targets = {int(u): set(t[m > 0].tolist()) for u, t, m in zip(ex.bags.user, ex.targets, ex.target_mask)}
    assert targets == {0: {4}, 1: {3, 5}}
    bag_user0 = ex.bags.items[0][ex.bags.mask[0] > 0].tolist()
    assert bag_user0 == [1, 2]  # most-bought first
    assert not ex.copurchase.any()


def test_when_history_is_hidden_then_hidden_items_are_targets_and_not_in_the_bag() -> None:
    history = build_history(_store(), 2, N_ITEMS, cutoff=40)
    ex = build_holdout_examples(history, holdout=0.5, rng=np.random.default_rng(1))
    assert ex.copurchase.all()
    for items, mask, targets, tmask in zip(ex.bags.items, ex.bags.mask, ex.targets, ex.target_mask):
        shown = set(items[mask > 0].tolist())
        hidden = set(targets[tmask > 0].tolist())
        assert hidden and shown and not (shown & hidden)
        assert shown | hidden <= {1, 2, 3}


def test_when_untrained_then_past_purchases_rank_first_in_order_of_baskets() -> None:
    history = build_history(_store(), 2, N_ITEMS, cutoff=40)
    model = SharedModel(N_ITEMS, dim=4, hidden=3)
    scores = score_users(model, None, history, np.array([0, 1]))
    order0 = np.argsort(-scores[0], kind="stable")
    assert order0[:2].tolist() == [1, 2]  # bought 3 times, then once
    assert scores[0, 1] > PAST_PURCHASE_OFFSET / 2 > scores[0, [0, 3, 4, 5]].max()
    assert np.argsort(-scores[1], kind="stable")[0] == 3


def test_when_losses_split_then_each_part_sees_only_its_targets() -> None:
    collaborative = torch.zeros(1, N_ITEMS, requires_grad=True)
    repeat = torch.zeros(1, 2, requires_grad=True)
    items = torch.tensor([[1, 2]])
    mask = torch.ones(1, 2)
    targets = torch.tensor([[1, 4]])  # item 1 is a repeat, item 4 is new
    target_mask = torch.ones(1, 2)
    new_loss, repeat_loss = split_losses(collaborative, repeat, items, mask, targets, target_mask)
    # New item 4 among the 4 items outside the bag, uniform logits: -log(1/4).
    assert torch.allclose(new_loss, torch.tensor([np.log(4.0)], dtype=torch.float32), atol=1e-5)
    # Repeat item 1 among the 2 bag items: -log(1/2).
    assert torch.allclose(repeat_loss, torch.tensor([np.log(2.0)], dtype=torch.float32), atol=1e-5)
    (new_loss + repeat_loss).sum().backward()
    assert collaborative.grad[0, 1] == 0 and collaborative.grad[0, 2] == 0  # bag items masked out
    assert repeat.grad[0, 0] < 0 < repeat.grad[0, 1]


def test_when_padding_is_present_then_the_loss_ignores_it() -> None:
    logits = torch.tensor([[0.0, 1.0, 2.0]])
    full = example_loss(logits, torch.tensor([[2, 0]]), torch.tensor([[1.0, 0.0]]))
    alone = example_loss(logits, torch.tensor([[2]]), torch.tensor([[1.0]]))
    assert torch.allclose(full, alone)


def test_when_trained_then_the_loss_goes_down_and_private_users_move() -> None:
    rng = np.random.default_rng(0)
    rows = [(u, int(i), d, f"{u}-{d}") for u in range(20) for d in range(0, 60, 6) for i in rng.choice(4, 2, replace=False) + (u % 2) * 2]
    events = _events(rows)
    ex = build_examples(events, 20, N_ITEMS, cutoffs=[30, 40], horizon=10, rng=rng)
    model, users = SharedModel(N_ITEMS, dim=4, hidden=3), PrivateUsers(20, 4)
    before = users.weight.detach().clone()
    first = train_local(model, users, ex, epochs=1, lr=0.05, repeat_lr=0.01, user_lr=0.05, batch_size=8, weight_decay=0, seed=0)
    later = train_local(model, users, ex, epochs=20, lr=0.05, repeat_lr=0.01, user_lr=0.05, batch_size=8, weight_decay=0, seed=1)
    assert later.loss < first.loss
    assert not torch.allclose(before, users.weight)


def test_when_a_bag_is_built_then_it_is_capped_and_weights_have_unit_norm() -> None:
    history = build_history(_store(), 2, N_ITEMS, cutoff=40)
    bags = history_bags(history, np.array([0, 1]), width=1)
    assert bags.items[:, 0].tolist() == [1, 3]
    assert np.allclose(np.sqrt((bags.weights**2).sum(1)), 1.0)


def test_when_only_the_repeat_ranker_is_trained_then_it_moves_as_in_full_training_and_nothing_else_does() -> None:
    """A store's own repeat ranker under DP (clients/app.py) is trained with repeat_only: its own
    forward and loss, which must give the repeat parameters the same steps as full training."""
    events = _store()
    hist = build_history(events, 2, N_ITEMS, cutoff=40)
    ex = build_examples(events, 2, N_ITEMS, cutoffs=[40, 30], horizon=10, rng=np.random.default_rng(0))
    ex = __import__("siloguard.recommender.features", fromlist=["concat_examples"]).concat_examples(
        ex, build_holdout_examples(hist, holdout=0.5, rng=np.random.default_rng(1))
    )
    full, only = SharedModel(N_ITEMS, dim=4, hidden=3, seed=2), SharedModel(N_ITEMS, dim=4, hidden=3, seed=2)
    start = {k: v.clone() for k, v in only.state_dict().items()}
    kwargs = dict(epochs=3, lr=0.05, repeat_lr=0.05, user_lr=0.05, batch_size=2, weight_decay=1e-5, seed=0)
    train_local(full, PrivateUsers(2, 4), ex, **kwargs)
    train_local(only, PrivateUsers(2, 4), ex, repeat_only=True, **kwargs)
    for key, value in only.state_dict().items():
        if key.startswith("repeat"):
            assert torch.allclose(value, full.state_dict()[key], atol=1e-6), key
        else:
            assert torch.equal(value, start[key]), key
    assert not torch.equal(only.repeat_linear.weight, start["repeat_linear.weight"])
