"""Local training of the recommender on one store's examples."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from siloguard.config import ModelSettings
from siloguard.recommender.features import Examples
from siloguard.recommender.model import PrivateUsers, SharedModel, bag_tensors

__all__ = ["TrainResult", "example_loss", "repeat_losses", "split_losses", "scoring_state", "train_kept_repeat", "train_local", "train_own_repeat", "training_state", "with_average"]


@dataclass(frozen=True)
class TrainResult:
    examples: int
    steps: int
    loss: float


def example_loss(logits: torch.Tensor, targets: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    """Per-example multinomial log-loss, shape (B,): each target is one draw from
    the softmax over ``logits`` (Mult-VAE style); padding never contributes."""
    log_p = torch.log_softmax(logits, dim=1).gather(1, targets)
    return -(log_p * target_mask).sum(1) / target_mask.sum(1).clamp_min(1.0)


def split_losses(
    collaborative: torch.Tensor,
    repeat: torch.Tensor,
    items: torch.Tensor,
    mask: torch.Tensor,
    targets: torch.Tensor,
    target_mask: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two rankers' losses, each on the items it is responsible for, shape (B,) each.

    * collaborative: targets the customer had not bought before, ranked among all
      items outside the history bag (how "new items" are ranked at test time);
    * repeat: which past items are bought again, ranked among the bag.
    Training them apart keeps exploration from crowding out repeat purchases; the
    store then sets the balance on held-out data (``clients.store.calibrate``).
    """
    in_bag = (targets.unsqueeze(2) == items.unsqueeze(1)) & (mask.unsqueeze(1) > 0)  # (B, T, L)
    target_in_bag = in_bag.any(2).float() * target_mask
    outside = collaborative.scatter_add(1, items, mask * -1e4)
    new_loss = example_loss(outside, targets, target_mask - target_in_bag)
    return new_loss, _repeat_loss(repeat, mask, in_bag, target_mask)


def repeat_losses(
    repeat: torch.Tensor, items: torch.Tensor, mask: torch.Tensor, targets: torch.Tensor, target_mask: torch.Tensor
) -> torch.Tensor:
    """The repeat ranker's loss of :func:`split_losses` alone, shape (B,)."""
    in_bag = (targets.unsqueeze(2) == items.unsqueeze(1)) & (mask.unsqueeze(1) > 0)
    return _repeat_loss(repeat, mask, in_bag, target_mask)


def _repeat_loss(repeat: torch.Tensor, mask: torch.Tensor, in_bag: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    bag_positive = (in_bag & (target_mask.unsqueeze(2) > 0)).any(1).float()  # (B, L)
    bag_logits = repeat + (mask - 1.0) * 1e4
    log_p = torch.log_softmax(bag_logits, dim=1)
    return -(log_p * bag_positive).sum(1) / bag_positive.sum(1).clamp_min(1.0)


def train_local(
    model: SharedModel,
    users: PrivateUsers,
    examples: Examples,
    *,
    epochs: int,
    lr: float,
    repeat_lr: float,
    user_lr: float,
    batch_size: int,
    weight_decay: float,
    seed: int,
    repeat_only: bool = False,
    repeat_items_only: bool = False,
) -> TrainResult:
    """Train shared and private parameters on one store's examples (Adam).

    ``repeat_only``: train the repeat ranker alone (the store's own, under DP: see
    :func:`siloguard.privacy.dp.train_local_dp`); nothing else moves. ``repeat_items_only``
    (with ``repeat_only``): of it only the per-item repeat biases, on a fixed head.
    """
    n = len(examples)
    if n == 0:
        return TrainResult(examples=0, steps=0, loss=float("nan"))
    model.train()
    repeat = [*model.repeat_items.parameters()] if repeat_only and repeat_items_only else model.repeat_parameters()
    groups = [{"params": repeat, "lr": repeat_lr, "weight_decay": weight_decay}]
    if not repeat_only:
        groups += [
            {"params": model.collaborative_parameters(), "lr": lr, "weight_decay": weight_decay},
            {"params": users.parameters(), "lr": user_lr, "weight_decay": 0.0},
        ]
    opt = torch.optim.Adam(groups)
    rng = np.random.default_rng(seed)
    steps, total = 0, 0.0
    for _ in range(epochs):
        order = rng.permutation(n)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            user_idx, items, weights, features, mask = bag_tensors(examples.bags, idx)
            targets = torch.from_numpy(examples.targets[idx])
            target_mask = torch.from_numpy(examples.target_mask[idx])
            flag = torch.from_numpy(examples.copurchase[idx])
            if repeat_only:  # the repeat ranker's own forward and loss: the same gradients, no logits
                repeat_loss = repeat_losses(model.repeat_scores(items, features, mask), items, mask, targets, target_mask)
                value = torch.where(flag, torch.zeros_like(repeat_loss), repeat_loss).mean()
            else:
                collaborative, repeat = model(users(user_idx), items, weights, features, mask)
                new_loss, repeat_loss = split_losses(collaborative, repeat, items, mask, targets, target_mask)
                # Co-purchase examples (hidden history) train the collaborative part only.
                value = (new_loss + torch.where(flag, torch.zeros_like(repeat_loss), repeat_loss)).mean()
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            steps += 1
            total += float(value.detach())
    return TrainResult(examples=n, steps=steps, loss=total / max(steps, 1))


def train_own_repeat(
    model: SharedModel, users: PrivateUsers, examples: Examples, settings: ModelSettings, *, seed: int, part: str
) -> TrainResult:
    """Train the part of the repeat ranker a DP store keeps as its own, without noise
    (``PrivacySettings.own_repeat``): ``"all"`` of it, or its per-item biases (``"items"``) on the
    shared head; nothing else moves. What a store does each round, and the benchmarks with it."""
    return train_local(
        model, users, examples, epochs=settings.local_epochs, lr=settings.learning_rate,
        repeat_lr=settings.repeat_learning_rate, user_lr=settings.user_learning_rate, batch_size=settings.batch_size,
        weight_decay=settings.weight_decay, seed=seed, repeat_only=True, repeat_items_only=part == "items",
    )


#: In what a store keeps of its repeat ranker: the mean over its rounds (``average.<name>``) and
#: how many rounds it holds (``average.rounds``), beside the last round's parameters it trains on.
AVERAGE = "average."


def training_state(kept: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What a store trains its own repeat ranker on from: the last round's parameters."""
    return {k: v for k, v in kept.items() if not k.startswith(AVERAGE)}


def _mean(kept: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len(AVERAGE):]: v for k, v in kept.items() if k.startswith(AVERAGE) and k != AVERAGE + "rounds"}


def scoring_state(kept: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What a store scores with: the mean over its rounds if it keeps one, else the last round's."""
    return _mean(kept) or training_state(kept)


def with_average(kept: dict[str, torch.Tensor], now: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``now`` plus the running mean of every round's parameters so far, this one included.

    Weight averaging (Izmailov et al. 2018, SWA): a store's own repeat ranker moves from round to
    round with the examples each round draws (overall NDCG@10 0.3183-0.3207 over 7 rounds on
    Online Retail); the mean of its rounds rose steadily to 0.3209 (bench/repeat_only.py
    --average). A kept mean of other parameters (another ``part``) starts afresh."""
    rounds = int(kept.get(AVERAGE + "rounds", torch.tensor(0)).item())
    old = _mean(kept)
    if set(old) != set(now):
        rounds, old = 0, {}
    mean = {k: (old[k] * rounds + v) / (rounds + 1) if rounds else v.clone() for k, v in now.items()}
    return {**now, **{AVERAGE + k: v for k, v in mean.items()}, AVERAGE + "rounds": torch.tensor(rounds + 1)}


def train_kept_repeat(
    model: SharedModel, users: PrivateUsers, examples: Examples, settings: ModelSettings, *, seed: int, part: str,
    kept: dict[str, torch.Tensor], average: bool = True,
) -> dict[str, torch.Tensor]:
    """:func:`train_own_repeat` on a copy of ``model`` holding what the store ``kept`` of its
    repeat ranker so far (its last round's parameters); returns what it keeps now, with the
    mean over its rounds (``average``, :func:`with_average`)."""
    mine = model.fresh_copy()
    mine.load_own_repeat(training_state(kept), part)
    train_own_repeat(mine, users, examples, settings, seed=seed, part=part)
    now = mine.own_repeat_state(part)
    return with_average(kept, now) if average else now
