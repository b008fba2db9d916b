"""Customer-level DP-SGD: accounting cross-checked, grouping, training, settings."""

from __future__ import annotations

import logging

import dp_accounting
import numpy as np
import pytest
import torch
from dp_accounting import pld, rdp

from siloguard.config import PrivacySettings, Settings
from siloguard.errors import ConfigError
from siloguard.privacy.dp import (
    effective_sample_rate,
    epsilon_of,
    group_by_customer,
    projected_epsilon,
    steps_per_round,
    store_delta,
    train_local_dp,
)
from siloguard.recommender.features import build_examples, build_history, build_holdout_examples, concat_examples
from siloguard.recommender.model import PrivateUsers, SharedModel

SETTINGS = [(1.0, 0.064, 48), (0.8, 0.01, 1000), (2.0, 0.25, 200), (1.3, 0.1, 140)]
DELTA = 1e-5


def _event(noise: float, rate: float, steps: int) -> dp_accounting.DpEvent:
    return dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(rate, dp_accounting.GaussianDpEvent(noise)), steps
    )


@pytest.mark.parametrize(("noise", "rate", "steps"), SETTINGS)
def test_when_opacus_rdp_is_recomputed_by_dp_accounting_then_they_agree_within_2_percent(noise, rate, steps) -> None:
    ours = epsilon_of("rdp", [(noise, rate, steps)], DELTA)
    theirs = rdp.RdpAccountant()
    theirs.compose(_event(noise, rate, steps))
    assert ours == pytest.approx(theirs.get_epsilon(DELTA), rel=0.02)


@pytest.mark.parametrize(("noise", "rate", "steps"), SETTINGS)
def test_when_opacus_prv_is_recomputed_by_dp_accounting_pld_then_they_agree_within_2_percent(noise, rate, steps) -> None:
    logging.getLogger().setLevel(logging.ERROR)
    ours = epsilon_of("prv", [(noise, rate, steps)], DELTA)
    theirs = pld.PLDAccountant()
    theirs.compose(_event(noise, rate, steps))
    assert ours == pytest.approx(theirs.get_epsilon(DELTA), rel=0.02)


def test_when_history_has_several_entries_then_epsilon_composes_them() -> None:
    split = epsilon_of("rdp", [(1.0, 0.1, 30), (1.0, 0.1, 20)], DELTA)
    whole = epsilon_of("rdp", [(1.0, 0.1, 50)], DELTA)
    assert split == pytest.approx(whole, rel=1e-9)
    assert epsilon_of("rdp", [(1.0, 0.1, 60)], DELTA) > whole


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"noise_multiplier": 0}, "noise_multiplier"),
        ({"noise_multiplier": -1.0}, "noise_multiplier"),
        ({"delta": 1.0}, "delta"),
        ({"delta": 2.0}, "delta"),
        ({"epsilon_cap": 0}, "epsilon_cap"),
        ({"max_grad_norm": 0}, "max_grad_norm"),
        ({"sample_rate": 0}, "sample_rate"),
    ],
)
def test_when_a_privacy_setting_is_invalid_then_settings_refuse_it(section, message) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.build(privacy=section)


def test_when_delta_is_not_set_then_it_is_one_over_ten_customers_capped_at_1e_5() -> None:
    p = PrivacySettings()
    assert store_delta(p, 50) == 1e-5  # 1/500 would be far weaker: capped
    assert store_delta(p, 1_000_000) == pytest.approx(1e-7)
    assert store_delta(PrivacySettings(delta=1e-6), 50) == 1e-6


def test_when_the_rate_does_not_divide_the_customers_then_accounting_uses_what_opacus_samples() -> None:
    p = PrivacySettings(sample_rate=0.1)
    assert effective_sample_rate(p, 265) == pytest.approx(1 / 11)  # batches of 26 -> 11 per pass
    assert steps_per_round(p, 2, 265) == 22
    assert effective_sample_rate(p, 100) == pytest.approx(0.1)


def _events() -> tuple:
    import pandas as pd

    rng = np.random.default_rng(3)
    rows = [
        (u, int(i), d, f"{u}-{d}")
        for u in range(30)
        for d in range(0, 80, 5)
        for i in rng.choice(10, 3, replace=False)
    ]
    return pd.DataFrame(rows, columns=["user", "item", "day", "invoice"]), 30, 12


def _examples():
    events, n_users, n_items = _events()
    rng = np.random.default_rng(0)
    window = build_examples(events, n_users, n_items, [50, 60, 70], horizon=10, max_history=16, rng=rng)
    hidden = build_holdout_examples(build_history(events, n_users, n_items, 80), holdout=0.3, max_history=16, rng=rng)
    return concat_examples(window, hidden), n_users, n_items


def test_when_examples_are_grouped_then_each_row_holds_exactly_that_customers_examples() -> None:
    examples, n_users, _ = _examples()
    data = group_by_customer(examples, n_users + 2)  # two customers with no example at all
    assert len(data) == n_users + 2
    per_user = np.bincount(examples.bags.user, minlength=n_users + 2)
    assert data.slot_mask.sum(1).tolist() == per_user.tolist()
    for user in (0, 7, n_users - 1):
        mine = np.flatnonzero(examples.bags.user == user)
        got = {tuple(row[m > 0]) for row, m in zip(data.items[user], data.mask[user]) if m.any()}
        want = {tuple(examples.bags.items[i][examples.bags.mask[i] > 0]) for i in mine}
        assert got == want
    assert data.slot_mask[n_users:].sum() == 0


def test_when_trained_with_dp_then_steps_are_accounted_and_private_vectors_are_untouched() -> None:
    examples, n_users, n_items = _examples()
    privacy = PrivacySettings(noise_multiplier=1.0, sample_rate=0.2, max_grad_norm=1.0)
    model = SharedModel(n_items, dim=4, hidden=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    users = PrivateUsers(n_users, 4)
    vectors = users.weight.detach().clone()
    result = train_local_dp(
        model, users.weight.detach(), group_by_customer(examples, n_users), privacy=privacy, local_epochs=1,
        lr=0.01, repeat_lr=0.01, history=[(1.0, 0.2, 5)], delta=DELTA,
    )
    assert result.steps == steps_per_round(privacy, 1, n_users) == 5
    assert result.history == [(1.0, 0.2, 10)]  # the earlier 5 steps plus this round's 5
    assert result.report.epsilon == pytest.approx(epsilon_of("rdp", [(1.0, 0.2, 10)], DELTA))
    assert result.report.unit == "customer"
    assert torch.equal(users.weight, vectors)
    after = model.state_dict()
    assert set(after) == set(before)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert projected_epsilon(privacy, result.history, 1, DELTA, n_users) > result.report.epsilon


def test_when_per_customer_norms_are_computed_then_they_equal_autograd_per_customer_norms() -> None:
    """The clipping bound rests on these norms (our dense embedding and small-linear norm
    samplers replace Opacus' own): each must equal the norm of that customer's gradient."""
    from opacus.grad_sample import GradSampleModuleFastGradientClipping

    from siloguard.privacy.dp import _customer_loss, _GroupedModel, _prepare_for_dp

    examples, n_users, n_items = _examples()
    data = group_by_customer(examples, n_users)
    rows = np.arange(6)
    batch = {
        k: torch.from_numpy(getattr(data, k)[rows])
        for k in ("items", "weights", "features", "mask", "targets", "target_mask", "copurchase", "slot_mask")
    }
    user_vec = torch.randn(len(rows), 4, generator=torch.Generator().manual_seed(0))

    def model_and_losses(module):
        collaborative, repeat = module(user_vec, batch["items"], batch["weights"], batch["features"], batch["mask"])
        return _customer_loss(collaborative, repeat, batch)

    text = np.random.default_rng(1).normal(size=(n_items, 64)).astype(np.float32)  # the text map's inputs
    reference = _GroupedModel(_prepare_for_dp(SharedModel(n_items, dim=4, hidden=3, seed=5, item_text=text)))
    with torch.no_grad():  # a text map away from its start (text_out starts at zero)
        reference.shared.text_out.weight.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(2))
    expected = []
    for i in range(len(rows)):
        reference.zero_grad()
        model_and_losses(reference)[i].backward()
        expected.append(torch.sqrt(sum((p.grad**2).sum() for p in reference.parameters() if p.grad is not None)))

    same = _prepare_for_dp(SharedModel(n_items, dim=4, hidden=3, seed=5, item_text=text))
    same.load_state_dict(reference.shared.state_dict())
    ghost = GradSampleModuleFastGradientClipping(
        _GroupedModel(same),
        batch_first=True, loss_reduction="sum", use_ghost_clipping=True, max_grad_norm=1.0,
    )
    model_and_losses(ghost).sum().backward()
    assert torch.allclose(ghost.get_norm_sample(), torch.stack(expected), rtol=1e-4, atol=1e-6)


def test_when_poisson_sampling_draws_nobody_then_the_step_is_noise_only_and_training_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A small store at a low rate often samples no customer: that step must still be taken
    (and accounted), with zero clipped gradient plus noise, not crash the round."""
    examples, n_users, n_items = _examples()
    privacy = PrivacySettings(noise_multiplier=1.0, sample_rate=1 / n_users, max_grad_norm=1.0)
    model = SharedModel(n_items, dim=4, hidden=3)
    before = model.items.weight.detach().clone()
    batches: list[int] = []
    real_loader = torch.utils.data.DataLoader.__iter__

    def counting(self):  # noqa: ANN001, ANN202
        for batch in real_loader(self):
            batches.append(len(batch[0]))
            yield batch

    monkeypatch.setattr(torch.utils.data.DataLoader, "__iter__", counting)
    result = train_local_dp(
        model, PrivateUsers(n_users, 4).weight.detach(), group_by_customer(examples, n_users), privacy=privacy,
        local_epochs=1, lr=0.01, repeat_lr=0.01, history=[], delta=DELTA,
    )

    assert 0 in batches, "the test needs an empty Poisson batch"
    assert result.steps == steps_per_round(privacy, 1, n_users) == len(batches)
    assert result.history == [(1.0, privacy.sample_rate, result.steps)]
    assert np.isfinite(result.report.epsilon)
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())
    assert torch.equal(model.items.weight, before)  # items are frozen under DP (docs/PRIVACY.md)


def test_when_noise_is_drawn_from_the_os_csprng_then_it_is_gaussian_with_the_asked_deviation() -> None:
    from siloguard.privacy.dp import os_gaussian

    noise = os_gaussian((400, 1000), 2.5)
    assert noise.shape == (400, 1000) and noise.dtype == torch.float64
    values = noise.numpy().ravel() / 2.5
    assert abs(values.mean()) < 0.01
    assert values.std() == pytest.approx(1.0, abs=0.01)
    assert np.mean(np.abs(values) < 1.0) == pytest.approx(0.6827, abs=0.01)  # Gaussian, not uniform
    assert np.mean(np.abs(values) < 2.0) == pytest.approx(0.9545, abs=0.005)
    assert not torch.equal(os_gaussian((8,), 1.0), os_gaussian((8,), 1.0))


def test_when_the_sampler_draws_customers_then_each_is_in_at_the_accounted_rate() -> None:
    from siloguard.privacy.dp import _OsPoissonSampler

    batches = list(_OsPoissonSampler(200, 0.1, 500))
    assert len(batches) == 500
    sizes = np.array([len(b) for b in batches])
    assert sizes.mean() == pytest.approx(20.0, abs=0.6)  # 200 x 0.1; Poisson, so sizes vary
    assert sizes.std() > 2.0
    counts = np.bincount(np.concatenate([np.array(b, dtype=int) for b in batches]), minlength=200)
    assert counts.min() > 20 and counts.max() < 85  # every customer, about 50 times each


def test_when_a_round_is_trained_twice_with_the_same_inputs_then_the_noise_differs() -> None:
    """Regression: the noise came from a generator seeded with model.seed and the round, which
    the coordinator knows; it could regenerate the noise and subtract it from the update."""
    examples, n_users, n_items = _examples()
    privacy = PrivacySettings(noise_multiplier=1.0, sample_rate=0.2, max_grad_norm=1.0)
    data = group_by_customer(examples, n_users)
    users = PrivateUsers(n_users, 4).weight.detach()
    states = []
    for _ in range(2):
        model = SharedModel(n_items, dim=4, hidden=3, seed=1)
        train_local_dp(model, users, data, privacy=privacy, local_epochs=1, lr=0.01, repeat_lr=0.01,
                       history=[], delta=DELTA)
        states.append(model.state_dict())
    trained = [k for k in states[0] if not k.startswith(("items.", "decoder.weight"))]
    assert any(not torch.equal(states[0][k], states[1][k]) for k in trained)


def test_when_trained_with_dp_then_the_text_map_learns_and_the_free_item_vectors_stay() -> None:
    """Under DP the collaborative ranker trains through the small map from public item features
    (text_in, text_out) and the popularity bias; the ~220k free item and decoder coordinates
    stay at their (data-free) start."""
    examples, n_users, n_items = _examples()
    text = np.random.default_rng(1).normal(size=(n_items, 64)).astype(np.float32)
    model = SharedModel(n_items, dim=4, hidden=3, item_text=text)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_local_dp(
        model, PrivateUsers(n_users, 4).weight.detach(), group_by_customer(examples, n_users),
        privacy=PrivacySettings(noise_multiplier=1.0, sample_rate=0.2, max_grad_norm=1.0), local_epochs=1,
        lr=0.01, repeat_lr=0.01, history=[], delta=DELTA,
    )
    after = model.state_dict()
    # the repeat ranker is the store's own under DP (trained without noise, never sent)
    for key in ("items.weight", "decoder.weight", "decoder.bias", "repeat_items.weight", "repeat_linear.weight"):
        assert torch.equal(before[key], after[key]), key
    for key in ("text_in.weight", "text_out.weight", "text_out.bias"):
        assert not torch.equal(before[key], after[key]), key
    assert "item_text" not in after  # public features are never part of what is sent
    assert torch.equal(model.item_text, torch.from_numpy(text))
    # the per-item biases and a shared repeat ranker are trained under DP only when asked for
    model = SharedModel(n_items, dim=4, hidden=3, item_text=text)
    train_local_dp(
        model, PrivateUsers(n_users, 4).weight.detach(), group_by_customer(examples, n_users),
        privacy=PrivacySettings(noise_multiplier=1.0, sample_rate=0.2, max_grad_norm=1.0, train_item_biases=True,
                                local_repeat=False),
        local_epochs=1, lr=0.01, repeat_lr=0.01, history=[], delta=DELTA,
    )
    for key in ("decoder.bias", "repeat_items.weight", "repeat_linear.weight"):
        assert not torch.equal(before[key], model.state_dict()[key]), key


def test_when_the_bag_sums_are_precomputed_then_the_logits_are_those_of_the_grouped_model() -> None:
    """The fast DP path (_PooledModel on _bag_sums) must compute exactly the grouped model's logits."""
    from siloguard.privacy.dp import _bag_sums, _GroupedModel, _PooledModel

    examples, n_users, n_items = _examples()
    data = group_by_customer(examples, n_users + 2)  # two customers without examples: padding slots
    text = np.random.default_rng(1).normal(size=(n_items, 64)).astype(np.float32)
    shared = SharedModel(n_items, dim=4, hidden=3, seed=3, item_text=text)
    with torch.no_grad():
        shared.text_out.weight.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(2))
    shared.set_store_popularity(np.arange(n_items, dtype=float))
    user_vec = torch.randn(n_users + 2, 4, generator=torch.Generator().manual_seed(0))
    free, pooled = _bag_sums(shared, data, chunk=7)
    with torch.no_grad():
        grouped, _ = _GroupedModel(shared)(user_vec, *(torch.from_numpy(getattr(data, k)) for k in ("items", "weights", "features", "mask")))
        fast = _PooledModel(shared)(user_vec, torch.from_numpy(free), torch.from_numpy(pooled))
    assert torch.allclose(grouped, fast, atol=1e-5)
    # ...and on the real slots only (padding slots skipped), the same per-customer loss
    from siloguard.privacy.dp import _customer_loss, _packed_customer_loss

    batch = {k: torch.from_numpy(getattr(data, k)) for k in ("items", "mask", "targets", "target_mask", "copurchase", "slot_mask")}
    real = batch["slot_mask"] > 0
    assert not real.all(), "the test needs padding slots"
    with torch.no_grad():
        packed = _PooledModel(shared)(user_vec, torch.from_numpy(free), torch.from_numpy(pooled), real)
    assert packed.shape == (int(real.sum()), n_items)
    want = _customer_loss(grouped, torch.zeros(batch["items"].shape), batch, 0.5, 0.0)
    assert torch.allclose(_packed_customer_loss(packed, real, batch, 0.5), want, atol=1e-5)


def test_when_the_fast_path_takes_per_customer_gradients_then_they_equal_autograd_per_customer_gradients() -> None:
    """The fast path clips per-customer gradients Opacus collects with our SmallLinear grad
    sampler (one backward pass): each must be that customer's gradient of the text map."""
    from opacus.grad_sample import GradSampleModule

    from siloguard.privacy.dp import _bag_sums, _customer_loss, _PooledModel, _prepare_for_dp

    examples, n_users, n_items = _examples()
    data = group_by_customer(examples, n_users)
    text = np.random.default_rng(1).normal(size=(n_items, 64)).astype(np.float32)
    rows = np.arange(5)

    def build() -> SharedModel:
        shared = _prepare_for_dp(SharedModel(n_items, dim=4, hidden=3, seed=5, item_text=text))
        with torch.no_grad():
            shared.text_out.weight.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(2))
        for name, p in shared.named_parameters():
            p.requires_grad_(name.startswith("text_"))
        return shared

    free, pooled = _bag_sums(build(), data)
    inputs = (torch.zeros(len(rows), 4), torch.from_numpy(free[rows]), torch.from_numpy(pooled[rows]))
    batch = {k: torch.from_numpy(getattr(data, k)[rows]) for k in ("items", "mask", "targets", "target_mask", "copurchase", "slot_mask")}

    def losses(module):
        logits = module(*inputs)
        return _customer_loss(logits, torch.zeros(batch["items"].shape), batch, 1.0, 0.0)

    reference = _PooledModel(build())
    expected = []
    for i in range(len(rows)):
        reference.zero_grad()
        losses(reference)[i].backward()
        expected.append(torch.cat([p.grad.flatten() for p in reference.parameters() if p.requires_grad]))
    hooked = GradSampleModule(_PooledModel(build()), batch_first=True, loss_reduction="sum")
    losses(hooked).sum().backward()
    got = torch.cat([p.grad_sample.flatten(1) for p in hooked.parameters() if p.requires_grad], dim=1)
    assert torch.allclose(got, torch.stack(expected), rtol=1e-4, atol=1e-6)


def _head_batch(data, rows: np.ndarray) -> dict[str, torch.Tensor]:
    keys = ("items", "features", "mask", "targets", "target_mask", "copurchase", "slot_mask")
    return {k: torch.from_numpy(getattr(data, k)[rows]) for k in keys}


def test_when_the_shared_repeat_head_takes_per_customer_gradients_then_they_equal_autograd_and_are_clipped() -> None:
    """_RepeatGroup's vmap gradients are each customer's gradient of their repeat loss, and the
    clipped sum moves by at most the head's bound per customer."""
    from siloguard.privacy.dp import _customer_loss, _RepeatGroup

    examples, n_users, n_items = _examples()
    data = group_by_customer(examples, n_users)
    rows = np.arange(6)
    batch = _head_batch(data, rows)
    names = ["repeat.0.weight", "repeat.0.bias", "repeat.2.weight", "repeat.2.bias", "repeat_linear.weight", "repeat_linear.bias"]

    reference = SharedModel(n_items, dim=4, hidden=3, seed=5)
    expected, expected_losses = [], []
    for i in range(len(rows)):
        reference.zero_grad()
        repeat = reference.repeat_scores(batch["items"][i], batch["features"][i], batch["mask"][i])
        collaborative = torch.zeros(*batch["items"][i].shape[:1], n_items)
        one = {k: v[i : i + 1] for k, v in batch.items()}
        loss = _customer_loss(collaborative.unsqueeze(0), repeat.unsqueeze(0), one, 0.0, 1.0)[0]
        loss.backward()
        expected_losses.append(float(loss))
        expected.append(torch.cat([dict(reference.named_parameters())[n].grad.flatten() for n in names]))
    group = _RepeatGroup(SharedModel(n_items, dim=4, hidden=3, seed=5), names, clip=1e6, noise=1.0, lr=0.01)
    per, losses = group.per_customer(batch)
    got = torch.cat([per[n].flatten(1) for n in names], dim=1)
    assert torch.allclose(got, torch.stack(expected), rtol=1e-4, atol=1e-6)
    assert torch.allclose(losses, torch.tensor(expected_losses), rtol=1e-5)  # the losses from the same pass

    tight = _RepeatGroup(SharedModel(n_items, dim=4, hidden=3, seed=5), names, clip=0.01, noise=1.0, lr=0.01)
    summed, _ = tight.clipped_sum(batch)
    total = torch.sqrt(sum(v.pow(2).sum() for v in summed.values()))
    assert total <= 0.01 * len(rows) + 1e-6
    assert tight.std == pytest.approx(np.sqrt(2) * 1.0 * 0.01)  # its own bound, sqrt(2) for the two groups


def test_when_the_repeat_head_is_shared_under_dp_then_it_learns_its_item_biases_stay_and_the_accounting_is_unchanged() -> None:
    examples, n_users, n_items = _examples()
    text = np.random.default_rng(1).normal(size=(n_items, 64)).astype(np.float32)
    results, states = [], []
    for local in (True, False):
        model = SharedModel(n_items, dim=4, hidden=3, item_text=text)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        result = train_local_dp(
            model, PrivateUsers(n_users, 4).weight.detach(), group_by_customer(examples, n_users),
            privacy=PrivacySettings(noise_multiplier=1.0, sample_rate=0.2, local_repeat=local), local_epochs=1,
            lr=0.01, repeat_lr=0.01, history=[], delta=DELTA,
        )
        results.append(result)
        states.append((before, model.state_dict(), model))
    # The same Gaussian mechanism per step: one (noise, rate, steps) entry either way.
    assert results[0].history == results[1].history
    assert results[0].report.epsilon == pytest.approx(results[1].report.epsilon)
    before, after, model = states[1]
    for key in ("repeat_linear.weight", "repeat.0.weight", "text_in.weight"):
        assert not torch.equal(before[key], after[key]), key
    for key in ("repeat_items.weight", "items.weight", "decoder.weight", "decoder.bias"):
        assert torch.equal(before[key], after[key]), key
    # Without a released popularity the shared head never reads the raw count over the store.
    assert torch.equal(model.repeat_popularity, torch.zeros(n_items))


def test_when_a_released_popularity_is_set_then_the_repeat_feature_comes_from_it_not_from_the_history() -> None:
    from siloguard.recommender.features import POPULARITY_FEATURE

    examples, n_users, n_items = _examples()
    model = SharedModel(n_items, dim=4, hidden=3)
    items = torch.from_numpy(examples.bags.items[:4])
    features = torch.from_numpy(examples.bags.features[:4])
    assert torch.equal(model.repeat_features(items, features), features)  # without DP: the history's own
    counts = np.arange(n_items, dtype=float)
    model.set_store_popularity(counts, released=True)
    got = model.repeat_features(items, features)
    expected = torch.from_numpy(np.log1p(counts) / np.log1p(counts.max())).float()[items]
    assert torch.allclose(got[..., POPULARITY_FEATURE], expected)
    others = [i for i in range(features.shape[-1]) if i != POPULARITY_FEATURE]
    assert torch.equal(got[..., others], features[..., others])
    assert torch.equal(model.fresh_copy().repeat_popularity, model.repeat_popularity)
    model.set_store_popularity(counts)  # raw counts (without DP): the history's feature again
    assert torch.equal(model.repeat_features(items, features), features)


def test_when_the_repeat_ranker_is_the_stores_own_then_a_dp_round_leaves_its_popularity_feature_alone() -> None:
    """Only a repeat head trained under DP loses the raw popularity feature: the store's own
    ranker (the default), trained after the DP step, must see the feature it is scored with."""
    examples, n_users, n_items = _examples()
    model = SharedModel(n_items, dim=4, hidden=3)
    train_local_dp(
        model, PrivateUsers(n_users, 4).weight.detach(), group_by_customer(examples, n_users),
        privacy=PrivacySettings(noise_multiplier=1.0, sample_rate=0.2), local_epochs=1,
        lr=0.01, repeat_lr=0.01, history=[], delta=DELTA,
    )
    assert torch.isnan(model.repeat_popularity).all()
    assert torch.isnan(model.fresh_copy().repeat_popularity).all()


def test_when_the_history_holds_a_popularity_release_then_the_report_counts_only_dp_sgd_steps() -> None:
    from siloguard.privacy.dp import privacy_report
    from siloguard.privacy.popularity import release_step

    privacy = PrivacySettings(noise_multiplier=1.0)
    history = [release_step(1.5), (1.0, 0.1, 20), (1.1, 0.1, 20)]
    report = privacy_report(privacy, history, DELTA, 500)
    assert report.steps == 40
    assert report.epsilon == pytest.approx(epsilon_of("rdp", history, DELTA))  # the release still counts in epsilon
