"""Customer-level DP-SGD for the shared model (Opacus).

What a store trains under DP by default is the collaborative ranker's small map from public
item features (``text_in``, ``text_out``): with the free item vectors fixed and the repeat
ranker the store's own (``privacy.local_repeat``), a step needs per customer only each
example's bag sums (computed once per round) and the per-customer gradients of ~4k numbers,
taken in one backward pass (``_PooledModel``). Otherwise (``train_collaborative`` or a shared
repeat ranker) the whole grouped model runs with Opacus ghost clipping (``_GroupedModel``).

The privacy unit is one customer. Each Opacus sample is *all* of a customer's
training examples in the store (next-window and co-purchase examples, padded to
a fixed number of slots), so clipping bounds what one customer's whole history
contributes to an update. Customers are Poisson-sampled at ``sample_rate``.

What is protected (details in docs/PRIVACY.md): the shared parameters a store
sends, and everything computed from them (the global model), are
(epsilon, delta)-DP with respect to adding or removing one customer of that store.
The customers' private embeddings are not trained in DP mode and never leave the
store, nor does the store's own repeat ranker; the store's own evaluation on its own data is
not noised.
"""

from __future__ import annotations

import math
import os
import types
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.grad_sample.utils import register_grad_sampler, register_norm_sampler
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed
from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping
from torch import nn

from siloguard.config import PrivacySettings
from siloguard.errors import ConfigError
from siloguard.recommender.features import Examples
from siloguard.recommender.model import REPEAT_PREFIX, SharedModel
from siloguard.recommender.train import split_losses

__all__ = [
    "CustomerData",
    "DPTrainResult",
    "PrivacyReport",
    "group_by_customer",
    "make_accountant",
    "os_gaussian",
    "plan_noise",
    "projected_epsilon",
    "rounds_left",
    "store_delta",
    "train_local_dp",
]


def store_delta(privacy: PrivacySettings, customers: int) -> float:
    """The store's delta: configured, or 1 / (10 x customers), never above 1e-5 by default."""
    if privacy.delta is not None:
        return privacy.delta
    return min(1e-5, 1.0 / (10.0 * max(customers, 1)))


def make_accountant(kind: str, history: list[tuple[float, float, int]] | None = None) -> Any:
    """An Opacus accountant holding ``history`` ((noise, sample rate, steps) entries)."""
    if kind == "rdp":
        accountant: Any = RDPAccountant()
    elif kind == "prv":
        accountant = PRVAccountant()
    else:
        raise ConfigError(f"unknown accountant {kind!r}: use 'rdp' or 'prv'")
    accountant.history = [tuple(h) for h in (history or [])]
    return accountant


def epsilon_of(kind: str, history: list[tuple[float, float, int]], delta: float) -> float:
    if not history:
        return 0.0
    if kind == "rdp":
        # What Opacus' RDPAccountant.get_epsilon computes (the sum of the entries' RDP curves,
        # converted at delta), with each entry's curve computed once per process: a curve at
        # the fractional orders takes ~0.35 s, and the ledger check, the budget query, the
        # noise plan and the round's report each compose the whole history again.
        from opacus.accountants.analysis import rdp as rdp_analysis

        rdp = sum([_rdp_curve(float(q), float(z), int(n)) for z, q, n in history])
        return float(rdp_analysis.get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta)[0])
    return float(make_accountant(kind, history).get_epsilon(delta=delta))


@lru_cache(maxsize=4096)
def _rdp_curve(rate: float, noise: float, steps: int) -> np.ndarray:
    from opacus.accountants.analysis import rdp as rdp_analysis

    curve = np.asarray(
        rdp_analysis.compute_rdp(q=rate, noise_multiplier=noise, steps=steps, orders=RDPAccountant.DEFAULT_ALPHAS),
        dtype=float,
    )
    curve.setflags(write=False)
    return curve


def expected_batch(privacy: PrivacySettings, customers: int) -> int:
    return max(1, round(privacy.sample_rate * customers))


def effective_sample_rate(privacy: PrivacySettings, customers: int) -> float:
    """The Poisson rate Opacus actually uses (and accounts for) with ``customers`` samples.

    Opacus derives it from the loader as 1 / number of batches, which is the
    configured rate rounded to a whole number of expected batches per pass.
    """
    return 1.0 / math.ceil(customers / expected_batch(privacy, customers))


def steps_per_round(privacy: PrivacySettings, local_epochs: int, customers: int) -> int:
    """Optimizer steps a store takes in one round: ``local_epochs`` expected passes."""
    return max(1, math.ceil(local_epochs / effective_sample_rate(privacy, customers)))


def projected_epsilon(
    privacy: PrivacySettings,
    history: list[tuple[float, float, int]],
    local_epochs: int,
    delta: float,
    customers: int,
    noise: float | None = None,
) -> float:
    """Epsilon the store would have after one more round of training at ``noise``.

    ``noise`` defaults to the fixed ``privacy.noise_multiplier``; a planned run passes the
    round's planned noise (:func:`plan_noise`), the same the round then trains with.
    """
    noise = privacy.noise_multiplier if noise is None else noise
    if noise is None:
        raise ConfigError("no noise multiplier: plan the round's noise first (plan_noise) or set privacy.noise_multiplier")
    step = (noise, effective_sample_rate(privacy, customers), steps_per_round(privacy, local_epochs, customers))
    return epsilon_of(privacy.accountant, [*history, step], delta)


#: The planned noise is searched in [MIN_PLANNED_NOISE, MAX_PLANNED_NOISE]. A plan that would
#: need more than the maximum means the store has (nearly) spent its target already: it does
#: not train (the updates would be noise). Below the minimum the guarantee is meaningless for
#: any target a store would set; a target that loose trains at the minimum and ends under it.
MIN_PLANNED_NOISE = 0.05
MAX_PLANNED_NOISE = 1000.0


def rounds_left(total_rounds: int, server_round: int | None) -> int:
    """Rounds still planned from ``server_round`` on, this one included (unknown round: all)."""
    if server_round is None or server_round < 1:
        return max(1, total_rounds)
    return max(1, total_rounds - server_round + 1)


def plan_noise(
    privacy: PrivacySettings,
    history: list[tuple[float, float, int]],
    *,
    rounds: int,
    local_epochs: int,
    delta: float,
    customers: int,
    tolerance: float = 1e-3,
) -> float | None:
    """The noise multiplier for this round: fixed if configured, else planned.

    Planned: the smallest noise (to ``tolerance``) at which the store's ledger ``history`` plus
    ``rounds`` more rounds at that noise (with today's customers, sample rate and steps)
    reach ``privacy.target_epsilon`` without passing it, by bisection on the store's own
    accountant. Re-planned every round, so a store that joins late, was skipped, or whose
    customers changed spends what is left over the rounds that are left. ``None``: no noise
    up to :data:`MAX_PLANNED_NOISE` keeps the target (the store is at its budget).

    Opacus' ``get_noise_multiplier`` plans from nothing spent at one sample rate; a store's
    ledger holds earlier rounds at other noises and rates, so the search composes them here.
    """
    if privacy.noise_multiplier is not None:
        return privacy.noise_multiplier
    rate = effective_sample_rate(privacy, customers)
    steps = max(1, rounds) * steps_per_round(privacy, local_epochs, customers)
    return _planned_noise(
        privacy.accountant, tuple(tuple(h) for h in history), rate, steps, delta, privacy.target_epsilon, tolerance
    )


def _spend_function(accountant: str, history: tuple, rate: float, steps: int, delta: float):  # noqa: ANN202
    """epsilon(noise) of ``history`` plus ``steps`` steps at ``noise``, the store's accountant's answer.

    RDP composes by adding the entries' RDP curves (what Opacus' RDPAccountant sums): the
    history's curve is computed once, not again for every candidate noise.
    """
    if accountant != "rdp" or not history:
        return lambda noise: epsilon_of(accountant, [*history, (noise, rate, steps)], delta)
    from opacus.accountants.analysis import rdp as rdp_analysis

    orders = RDPAccountant.DEFAULT_ALPHAS
    spent = sum([_rdp_curve(float(q), float(z), int(n)) for z, q, n in history])

    def epsilon(noise: float) -> float:
        rdp = spent + rdp_analysis.compute_rdp(q=rate, noise_multiplier=noise, steps=steps, orders=orders)
        return float(rdp_analysis.get_privacy_spent(orders=orders, rdp=rdp, delta=delta)[0])

    return epsilon


@lru_cache(maxsize=256)  # the budget query and the round's training plan the same noise
def _planned_noise(
    accountant: str, history: tuple, rate: float, steps: int, delta: float, target: float, tolerance: float
) -> float | None:
    """Root of log epsilon(noise) = log target in log noise: bracket, then the Illinois method.

    Epsilon is close to a power of the noise, so this takes a handful of accountant calls
    (a plain bisection over the whole range took ~17, up to 0.35 s each under RDP).
    The answer is always a noise whose epsilon is at most ``target``.
    """
    spend = _spend_function(accountant, history, rate, steps, delta)

    def f(log_noise: float) -> float:
        return math.log(max(spend(math.exp(log_noise)), 1e-300) / target)

    low, high = math.log(MIN_PLANNED_NOISE), math.log(MAX_PLANNED_NOISE)
    # Bracket the root from a noise of 1, doubling or halving: f(a) > 0 >= f(b).
    x = 0.0
    fx = f(x)
    if fx > 0:
        a, fa = x, fx
        while True:
            b = min(a + math.log(2), high)
            fb = f(b)
            if fb <= 0:
                break
            if b >= high:
                return None  # even the largest noise passes the target: at budget
            a, fa = b, fb
    else:
        b, fb = x, fx
        while True:
            a = max(b - math.log(2), low)
            fa = f(a)
            if fa > 0:
                break
            if a <= low:
                return MIN_PLANNED_NOISE
            b, fb = a, fa
    floor = math.log(1 - tolerance)  # accept epsilon in [target x (1 - tolerance), target]
    side = 0
    for _ in range(100):
        if fb >= floor or b - a < 1e-9:
            break
        c = b - fb * (b - a) / (fb - fa)
        if not a < c < b:
            c = (a + b) / 2
        fc = f(c)
        if fc <= 0:
            b, fb = c, fc
            if side == -1:
                fa /= 2
            side = -1
        else:
            a, fa = c, fc
            if side == 1:
                fb /= 2
            side = 1
    return math.exp(b)


@dataclass(frozen=True)
class PrivacyReport:
    """Every epsilon siloguard shows carries what it means."""

    epsilon: float
    delta: float
    unit: str
    accountant: str
    sampling: str
    noise_multiplier: float | None  # the last round's noise
    max_grad_norm: float
    steps: int

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def summary(self) -> str:
        return (
            f"epsilon {self.epsilon:.2f} per {self.unit} at delta {self.delta:.1e} "
            f"({self.accountant.upper()} accountant, {self.sampling}, {self.steps} steps, "
            f"noise {'-' if self.noise_multiplier is None else f'{self.noise_multiplier:.4g}'}, "
            f"clip {self.max_grad_norm})"
        )


def privacy_report(
    privacy: PrivacySettings, history: list[tuple[float, float, int]], delta: float, customers: int
) -> PrivacyReport:
    from siloguard.privacy.history import dp_sgd_steps

    return PrivacyReport(
        epsilon=epsilon_of(privacy.accountant, history, delta),
        delta=delta,
        unit="customer",
        accountant=privacy.accountant,
        sampling=f"Poisson sampling of customers, rate {effective_sample_rate(privacy, customers):.4g}",
        noise_multiplier=history[-1][0] if history else privacy.noise_multiplier,
        max_grad_norm=privacy.max_grad_norm,
        # DP-SGD steps only: the popularity release is one Gaussian entry of the history, not a step
        steps=dp_sgd_steps(history),
    )


# ---------------------------------------------------------------- data ----
@dataclass(frozen=True)
class CustomerData:
    """All examples of each customer in one row: the unit Opacus samples and clips."""

    user: np.ndarray  # (U,)
    items: np.ndarray  # (U, K, L)
    weights: np.ndarray  # (U, K, L)
    features: np.ndarray  # (U, K, L, F)
    mask: np.ndarray  # (U, K, L)
    targets: np.ndarray  # (U, K, T)
    target_mask: np.ndarray  # (U, K, T)
    copurchase: np.ndarray  # (U, K) bool
    slot_mask: np.ndarray  # (U, K)

    def __len__(self) -> int:
        return len(self.user)


def group_by_customer(examples: Examples, customers: int) -> CustomerData:
    """One padded row per store customer (0..customers-1) holding all their examples.

    Every customer of the store is a sample, also those with no example this
    round (their row is empty and contributes nothing): the sampled population,
    and so the sampling rate the accountant uses, is the store's customers.
    """
    users = np.arange(customers, dtype=np.int64)
    inverse = examples.bags.user.astype(np.int64)
    order = np.argsort(inverse, kind="stable")
    counts = np.bincount(inverse, minlength=customers)
    k = max(1, int(counts.max()) if len(counts) else 1)
    slot = np.empty(len(order), np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    slot[order] = np.arange(len(order)) - np.repeat(starts, counts)

    def place(values: np.ndarray, fill: float = 0) -> np.ndarray:
        out = np.full((len(users), k) + values.shape[1:], fill, dtype=values.dtype)
        out[inverse, slot] = values
        return out

    b = examples.bags
    slot_mask = np.zeros((len(users), k), np.float32)
    slot_mask[inverse, slot] = 1.0
    return CustomerData(
        user=users.astype(np.int64),
        items=place(b.items),
        weights=place(b.weights),
        features=place(b.features),
        mask=place(b.mask),
        targets=place(examples.targets),
        target_mask=place(examples.target_mask),
        copurchase=place(examples.copurchase),
        slot_mask=slot_mask,
    )


# ---------------------------------------------------------- the model ----
class _GroupedModel(nn.Module):
    """The shared model seen per customer: inputs are (customers, slots, ...)."""

    def __init__(self, shared: SharedModel) -> None:
        super().__init__()
        self.shared = shared

    def forward(
        self,
        user_vec: torch.Tensor,  # (B, d)
        items: torch.Tensor,  # (B, K, L)
        weights: torch.Tensor,  # (B, K, L)
        features: torch.Tensor,  # (B, K, L, F)
        mask: torch.Tensor,  # (B, K, L)
    ) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.shared
        b, k, length = items.shape
        flat = items.reshape(b, k * length)  # one call per embedding layer, batch dim = customer
        context = s.items(flat).reshape(b, k, length, s.dim)
        repeat_bias = s.repeat_items(flat).reshape(b, k, length)
        profile = (weights.unsqueeze(-1) * context).sum(2) + s.text_profile(items, weights) + user_vec.unsqueeze(1)
        collaborative = s.item_logits(profile)  # (B, K, N)
        feats = s.repeat_features(flat, features.reshape(b, k * length, -1))
        head = (s.repeat(feats) + s.repeat_linear(feats)).reshape(b, k, length)
        return collaborative, (repeat_bias + head) * mask


class _PooledModel(nn.Module):
    """The collaborative ranker per customer from each example's bag sums (the fast path).

    With the free item vectors fixed (not trained under DP) and the repeat ranker the store's
    own (``privacy.local_repeat``), a DP step needs of each example only two constants of the
    round: ``sum_j w_j e_j`` (free vectors) and ``sum_j w_j x_j`` (public features). They are
    computed once per round (:func:`_bag_sums`) instead of gathered from the (slots x bag
    length) history at every step and in both of ghost clipping's backward passes; the logits
    are the same as :class:`_GroupedModel`'s (tested).
    """

    def __init__(self, shared: SharedModel) -> None:
        super().__init__()
        self.shared = shared

    def forward(
        self,
        user_vec: torch.Tensor,  # (B, d)
        free_profile: torch.Tensor,  # (B, K, d)
        pooled_text: torch.Tensor,  # (B, K, T)
        real: torch.Tensor | None = None,  # (B, K) bool: the slots holding an example
    ) -> torch.Tensor:
        """Logits over the catalogue, (B, K, N); with ``real``, of the real slots only, (R, N):
        the (slots x catalogue) products of padding slots are never computed. The per-customer
        layers (text_in, text_out) still see every customer's slots, so their per-customer
        gradients are unchanged."""
        s = self.shared
        profile = free_profile + s.text_in(pooled_text) + user_vec.unsqueeze(1)
        text = s.text_out(profile)  # (B, K, T)
        if real is not None:
            profile, text = profile[real], text[real]
        return s.decoder(profile) + text @ s.item_text.T + s.store_prior


def _bag_sums(shared: SharedModel, data: CustomerData, chunk: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Every example's ``sum_j w_j e_j`` (U, K, d) and ``sum_j w_j x_j`` (U, K, T), in chunks."""
    u, k, _ = data.items.shape
    free = np.zeros((u, k, shared.dim), np.float32)
    text = np.zeros((u, k, shared.text_dim), np.float32)
    with torch.no_grad():
        for start in range(0, u, chunk):
            items = torch.from_numpy(data.items[start : start + chunk])
            weights = torch.from_numpy(data.weights[start : start + chunk]).unsqueeze(-1)
            free[start : start + chunk] = (weights * shared.items.weight[items]).sum(2).numpy()
            text[start : start + chunk] = (weights * shared.item_text[items]).sum(2).numpy()
    return free, text


# Opacus' ghost norm of nn.Linear builds a (T x T) matrix per sample; for the
# repeat head T is slots x bag length (thousands), while the layer has ~100
# weights: computing those per-sample gradients explicitly is far cheaper. The
# repeat head's layers use this subclass, whose norm sampler does exactly that.
class SmallLinear(nn.Linear):
    """An ``nn.Linear`` whose per-sample gradient norms are computed explicitly."""


@register_norm_sampler(SmallLinear)
def _small_linear_norms(layer: SmallLinear, activations: list[torch.Tensor], backprops: torch.Tensor) -> dict:
    a = activations[0].to(backprops.dtype)
    if backprops.dim() == 2:
        a, backprops = a.unsqueeze(1), backprops.unsqueeze(1)
    a = a.reshape(a.shape[0], -1, a.shape[-1])
    g = backprops.reshape(backprops.shape[0], -1, backprops.shape[-1])
    out = {}
    if layer.weight.requires_grad:
        out[layer.weight] = torch.einsum("nto,nti->noi", g, a).flatten(1).norm(dim=1)
    if layer.bias is not None and layer.bias.requires_grad:
        out[layer.bias] = g.sum(1).norm(dim=1)
    return out


@register_grad_sampler(SmallLinear)
def _small_linear_grads(layer: SmallLinear, activations: list[torch.Tensor], backprops: torch.Tensor) -> dict:
    a = activations[0].to(backprops.dtype)
    a = a.reshape(a.shape[0], -1, a.shape[-1])
    g = backprops.reshape(backprops.shape[0], -1, backprops.shape[-1])
    out = {}
    if layer.weight.requires_grad:
        out[layer.weight] = torch.einsum("nto,nti->noi", g, a)
    if layer.bias is not None and layer.bias.requires_grad:
        out[layer.bias] = g.sum(1)
    return out


# Opacus' embedding norm sampler groups equal indices per sample with
# torch.unique over (sample, index) pairs, which dominated a DP step here (73% of
# the time with 9 example slots x 256 bag entries per customer). Scattering each
# sample's gradient into a dense (items x dim) block and taking its norm is exact
# and much faster for catalogues of a few thousand products; chunks bound memory.
class DenseNormEmbedding(nn.Embedding):
    """An ``nn.Embedding`` whose per-sample gradient norms are computed densely."""


_DENSE_CHUNK = 64


def _dense_per_sample(layer: DenseNormEmbedding, idx: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Each sample's gradient of the embedding table, dense: (samples, items, dim)."""
    dense = torch.zeros(idx.shape[0], layer.num_embeddings, g.shape[-1], dtype=g.dtype)
    return dense.scatter_add_(1, idx.unsqueeze(-1).expand(-1, -1, g.shape[-1]), g)


def _flat(activations: list[torch.Tensor], backprops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    idx = activations[0].reshape(activations[0].shape[0], -1)
    return idx, backprops.reshape(idx.shape[0], idx.shape[1], -1)


@register_norm_sampler(DenseNormEmbedding)
def _dense_embedding_norms(
    layer: DenseNormEmbedding, activations: list[torch.Tensor], backprops: torch.Tensor
) -> dict:
    idx, g = _flat(activations, backprops)
    norms = [
        _dense_per_sample(layer, idx[s : s + _DENSE_CHUNK], g[s : s + _DENSE_CHUNK]).pow(2).sum((1, 2)).sqrt()
        for s in range(0, idx.shape[0], _DENSE_CHUNK)
    ]
    return {layer.weight: torch.cat(norms)}


@register_grad_sampler(DenseNormEmbedding)
def _dense_embedding_grads(
    layer: DenseNormEmbedding, activations: list[torch.Tensor], backprops: torch.Tensor
) -> dict:
    idx, g = _flat(activations, backprops)
    return {layer.weight: _dense_per_sample(layer, idx, g)}


def _as_dense_norm(embedding: nn.Embedding) -> DenseNormEmbedding:
    out = DenseNormEmbedding(embedding.num_embeddings, embedding.embedding_dim)
    out.load_state_dict(embedding.state_dict())
    return out


def _as_small(linear: nn.Linear) -> SmallLinear:
    small = SmallLinear(linear.in_features, linear.out_features, bias=linear.bias is not None)
    small.load_state_dict(linear.state_dict())
    return small


def _prepare_for_dp(shared: SharedModel) -> SharedModel:
    """Swap layers for the DP-friendly subclasses above (same weights, same state_dict keys)."""
    shared.repeat = nn.Sequential(*[_as_small(m) if isinstance(m, nn.Linear) else m for m in shared.repeat])
    shared.repeat_linear = _as_small(shared.repeat_linear)
    shared.text_in = _as_small(shared.text_in)
    shared.text_out = _as_small(shared.text_out)
    shared.items = _as_dense_norm(shared.items)
    shared.repeat_items = _as_dense_norm(shared.repeat_items)
    return shared


# -------------------------------------------------------- noise source ----
# Opacus' secure mode needs torchcsprng, whose last release (0.2.1, 2021) was built for torch
# 1.8 and does not install next to torch 2.x; without it Opacus draws the noise and the Poisson
# sample from torch's Mersenne Twister, whose seed torch truncates to 32 bits. A seed derived
# from the run config (as before) would let anyone who knows the config, the coordinator
# included, regenerate the noise and subtract it. So both come from the operating system's
# CSPRNG (os.urandom) here; docs/PRIVACY.md ("Noise source") has the attack surface.

_UNIT = 2.0**-53


def _os_uniform(n: int) -> np.ndarray:
    """``n`` uniform doubles in [0, 1) from the OS CSPRNG (53 random bits each)."""
    words = np.frombuffer(os.urandom(8 * n), dtype=np.uint64) >> np.uint64(11)
    return words.astype(np.float64) * _UNIT


def os_gaussian(shape: tuple[int, ...] | torch.Size, std: float) -> torch.Tensor:
    """Gaussian noise N(0, std^2) in float64 from the OS CSPRNG.

    Box-Muller on CSPRNG uniforms; each value is the sum of four draws halved (same
    variance), Holohan & Braghin's (2021) defence against floating-point attacks on the
    sampler, the one Opacus' secure mode uses.
    """
    n = int(np.prod(shape)) if len(shape) else 1
    u = _os_uniform(4 * n).reshape(2, 2 * n)
    radius = np.sqrt(-2.0 * np.log1p(-u[0]))  # 1 - u is in (0, 1]: the log is finite
    angle = 2.0 * math.pi * u[1]
    draws = np.concatenate([radius * np.cos(angle), radius * np.sin(angle)]).reshape(4, n)
    return torch.from_numpy(draws.sum(0) / 2.0 * std).reshape(tuple(shape))


def _add_os_noise(optimizer: Any) -> None:
    """Opacus' ``add_noise`` with the noise from :func:`os_gaussian`, added in float64.

    Same steps as ``DPOptimizerFastGradientClipping.add_noise`` (Opacus 1.6): the clipped sum
    plus N(0, (noise x clip)^2) becomes the gradient. Summing in float64 and rounding the
    result to the parameter's float32 hides the noise's low-order bits.
    """
    std = getattr(optimizer, "_adjusted_noise_multiplier", optimizer.noise_multiplier) * optimizer.max_grad_norm
    std *= getattr(optimizer, "group_noise_scale", 1.0)  # clipped apart from the repeat head: _RepeatGroup
    for p in optimizer.params:
        _check_processed_flag(p.summed_grad)
        noise = os_gaussian(p.summed_grad.shape, std)
        p.grad = (p.summed_grad.double() + noise).to(p.summed_grad.dtype).view_as(p)
        _mark_as_processed(p.summed_grad)


class _OsPoissonSampler:
    """Poisson sampling of customers (each in with probability ``rate``) from the OS CSPRNG.

    The batch sampler of Opacus' DP loader, with the coin flips from :func:`_os_uniform`; the
    accountant uses the same ``rate`` (one over the loader's length).
    """

    def __init__(self, num_samples: int, rate: float, steps: int) -> None:
        self.num_samples, self.rate, self.steps = num_samples, rate, steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):  # noqa: ANN204
        for _ in range(self.steps):
            yield np.flatnonzero(_os_uniform(self.num_samples) < self.rate).tolist()


# ---------------------------------------------------------- training ----
class _RepeatGroup:
    """The shared repeat head trained under DP beside the text map, clipped apart (the fast path).

    The repeat head has ~150 numbers, the text map ~4k; clipped together, the text map's
    gradient takes most of each customer's norm and the head learns under noise sized for both.
    Here each customer's gradient of each group is clipped to the group's own bound ``C_g``
    (``max_grad_norm`` for the text map, ``repeat_max_grad_norm`` for the head) and each group
    gets Gaussian noise of std ``sqrt(2) x z x C_g``. Divide each group's coordinates by its
    ``sqrt(2) x C_g``: one customer then moves the whole update by at most
    ``sqrt(1/2 + 1/2) = 1 / z`` noise stds, which is one Gaussian mechanism with noise
    multiplier ``z`` on the same Poisson sample, so the accountant's entry ``(z, q, steps)`` is
    unchanged (tested against the joint clip). Per-customer gradients of the head come from
    ``torch.func`` (vmap of grad over the sampled customers), not Opacus' hooks: the head runs
    on every slot of every example, which the pooled model never computes.
    """

    GROUPS = 2

    def __init__(self, shared: SharedModel, names: list[str], clip: float, noise: float, lr: float) -> None:
        self.shared, self.clip = shared, clip
        self.expected = 1  # the DP optimizer's expected batch, set once Opacus has made it (train_local_dp)
        self.params = {n: p for n, p in shared.named_parameters() if n in names}
        self.std = math.sqrt(self.GROUPS) * noise * clip
        self.optimizer = torch.optim.Adam(list(self.params.values()), lr=lr)
        for p in self.params.values():
            p.requires_grad_(False)  # Opacus' optimizer must not see them

    def _customer_loss(self, params, items, features, mask, targets, target_mask, copurchase, slot_mask):  # noqa: ANN001, ANN202
        from torch.func import functional_call

        from siloguard.recommender.train import repeat_losses

        repeat = functional_call(_RepeatScores(self.shared), {f"shared.{k}": v for k, v in params.items()},
                                 (items, features, mask))
        per_slot = repeat_losses(repeat, items, mask, targets, target_mask)
        per_slot = torch.where(copurchase, torch.zeros_like(per_slot), per_slot) * slot_mask
        return per_slot.sum() / slot_mask.sum().clamp_min(1.0)

    def _args(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        return tuple(batch[k] for k in ("items", "features", "mask", "targets", "target_mask", "copurchase", "slot_mask"))

    def per_customer(self, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Each sampled customer's gradient of their loss, by parameter name, (B, *shape), and the
        losses, (B,): one pass."""
        from torch.func import grad_and_value, vmap

        params = {n: p.detach() for n, p in self.params.items()}
        with torch.no_grad():  # torch.func still differentiates: no graph to other parameters
            return vmap(grad_and_value(self._customer_loss), in_dims=(None, *([0] * 7)))(params, *self._args(batch))

    def clipped_sum(self, batch: dict[str, torch.Tensor] | None) -> tuple[dict[str, torch.Tensor], float]:
        """The sum of the customers' gradients, each clipped to ``clip`` (zeros: nobody sampled), and
        their mean loss."""
        if batch is None:
            return {n: torch.zeros_like(p) for n, p in self.params.items()}, 0.0
        per, losses = self.per_customer(batch)
        norms = torch.sqrt(sum(g.reshape(g.shape[0], -1).pow(2).sum(1) for g in per.values()))
        factor = (self.clip / (norms + 1e-6)).clamp(max=1.0)
        return {n: torch.einsum("b,b...->...", factor, g) for n, g in per.items()}, float(losses.mean())

    def step(self, batch: dict[str, torch.Tensor] | None) -> float:
        """One DP step of the head on the sampled customers' batch (None: nobody was sampled);
        returns their mean loss."""
        summed, loss = self.clipped_sum(batch)
        for n, p in self.params.items():
            noisy = summed[n].double() + os_gaussian(p.shape, self.std)
            p.grad = (noisy / self.expected).to(p.dtype)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss


class _RepeatScores(nn.Module):
    """``SharedModel.repeat_scores`` as a module's forward (for ``torch.func.functional_call``)."""

    def __init__(self, shared: SharedModel) -> None:
        super().__init__()
        self.shared = shared

    def forward(self, items: torch.Tensor, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.shared.repeat_scores(items, features, mask)


@dataclass(frozen=True)
class DPTrainResult:
    customers: int
    steps: int
    loss: float
    history: list[tuple[float, float, int]]
    report: PrivacyReport


def _customer_loss(
    collaborative, repeat, batch, collaborative_weight: float = 1.0, repeat_weight: float = 1.0
) -> torch.Tensor:
    b, k, n = collaborative.shape
    length = repeat.shape[-1]
    t = batch["targets"].shape[-1]
    new_loss, repeat_loss = split_losses(
        collaborative.reshape(b * k, n),
        repeat.reshape(b * k, length),
        batch["items"].reshape(b * k, length),
        batch["mask"].reshape(b * k, length),
        batch["targets"].reshape(b * k, t),
        batch["target_mask"].reshape(b * k, t),
    )
    per_slot = collaborative_weight * new_loss + repeat_weight * torch.where(
        batch["copurchase"].reshape(-1), torch.zeros_like(repeat_loss), repeat_loss
    )
    per_slot = per_slot.reshape(b, k) * batch["slot_mask"]
    return per_slot.sum(1) / batch["slot_mask"].sum(1).clamp_min(1.0)


def _packed_customer_loss(logits: torch.Tensor, real: torch.Tensor, batch, collaborative_weight: float) -> torch.Tensor:
    """:func:`_customer_loss` without the repeat term, from the real slots' logits (R, N):
    each customer's mean over their examples of the new-items loss, shape (B,)."""
    new_loss = split_losses(
        logits, torch.zeros(batch["items"][real].shape), batch["items"][real], batch["mask"][real],
        batch["targets"][real], batch["target_mask"][real],
    )[0]
    owner = torch.nonzero(real)[:, 0]
    total = torch.zeros(real.shape[0], dtype=new_loss.dtype).index_add(0, owner, collaborative_weight * new_loss)
    return total / real.sum(1).clamp_min(1).to(new_loss.dtype)


def train_local_dp(
    shared: SharedModel,
    user_vectors: torch.Tensor,
    data: CustomerData,
    *,
    privacy: PrivacySettings,
    local_epochs: int,
    lr: float,
    repeat_lr: float,
    history: list[tuple[float, float, int]],
    delta: float,
    noise_multiplier: float | None = None,
    frozen: tuple[str, ...] = (),
) -> DPTrainResult:
    """DP-SGD (Adam) of the shared parameters on one store's customers.

    ``user_vectors`` (private embeddings, one row per store-local user) are used
    as fixed inputs: they are not trained here and never leave the store.
    ``history`` is the store's accountant history so far; the result's history
    includes this round. ``noise_multiplier`` is the round's noise (planned with
    :func:`plan_noise`); it defaults to the fixed ``privacy.noise_multiplier``. The noise and
    the Poisson sample come from the OS CSPRNG: no seed reproduces them.
    """
    noise = privacy.noise_multiplier if noise_multiplier is None else noise_multiplier
    if noise is None:
        raise ConfigError("no noise multiplier: plan the round's noise first (plan_noise) or set privacy.noise_multiplier")
    privacy = privacy.model_copy(update={"noise_multiplier": noise})
    n = len(data)
    if n == 0:
        return DPTrainResult(0, 0, float("nan"), list(history), privacy_report(privacy, history, delta, n))
    _prepare_for_dp(shared)
    if not privacy.train_collaborative:
        # Noise is added to every trained coordinate: the free item and decoder vectors
        # are ~225k of them, where the clipped signal of a batch of ~90 customers
        # drowns (NDCG@10 0.311 when trained, 0.315 when frozen at eps 7.5; docs/PRIVACY.md).
        # Under DP the collaborative ranker learns through the small map from public item
        # features (text_in, text_out: ~4k numbers) and the item popularity bias; the repeat
        # ranker is trained as without DP.
        shared.items.weight.requires_grad_(False)
        shared.decoder.weight.requires_grad_(False)
    if privacy.local_repeat:
        # The repeat ranker is the store's own under DP: trained without noise in the store and
        # never sent (clients/app.py); the DP update carries the collaborative part only.
        frozen = (*frozen, *(n for n, _ in shared.named_parameters() if n.startswith(("repeat", "repeat_linear"))))
    if not privacy.train_item_biases:
        # One noisy coordinate per product each (3,514 here): the store's popularity prior
        # (SharedModel.set_store_popularity) ranks new items without them, and NDCG@10 at
        # epsilon 8 was higher with them fixed (docs/BENCHMARKS.md).
        frozen = (*frozen, "decoder.bias", "repeat_items.weight")
    named = dict(shared.named_parameters())
    for name in dict.fromkeys(frozen):  # further parameters kept as they are (by state-dict name)
        if name not in named:
            raise ConfigError(f"no shared parameter {name!r} to freeze: known are {', '.join(sorted(named))}")
        named[name].requires_grad_(False)
    if any(p.requires_grad for p in shared.repeat_parameters()) and torch.isnan(shared.repeat_popularity).any():
        # A repeat head trained here under DP never sees the raw item-popularity feature (a count
        # over the other customers, which would break the clipping bound): without a release it
        # sees none (and the store scores a shared head the same way: clients/app.py).
        shared.repeat_popularity.zero_()
    # Fast path (the default): the text map (and at most the popularity bias) through Opacus,
    # and the shared repeat head (unless it is the store's own) clipped apart: _RepeatGroup.
    # The pooled model takes no per-customer gradient of the item biases (train_item_biases):
    # those go through the grouped model and ghost clipping, the repeat head with them.
    pooled = not privacy.train_collaborative and not privacy.train_item_biases
    grouped = _PooledModel(shared) if pooled else _GroupedModel(shared)
    if pooled:
        free_sums, text_sums = _bag_sums(shared, data)
    repeat_names = [n for n, p in shared.named_parameters() if n.startswith(REPEAT_PREFIX) and p.requires_grad]
    head = (
        _RepeatGroup(shared, repeat_names, privacy.repeat_max_grad_norm, noise, repeat_lr)
        if pooled and repeat_names else None
    )
    groups = [
        {"params": [p for p in shared.collaborative_parameters() if p.requires_grad], "lr": lr},
        {"params": [p for p in shared.repeat_parameters() if p.requires_grad], "lr": repeat_lr},
    ]
    optimizer = torch.optim.Adam([g for g in groups if g["params"]])
    index = torch.utils.data.TensorDataset(torch.arange(n))
    loader = torch.utils.data.DataLoader(index, batch_size=expected_batch(privacy, n))
    with warnings.catch_warnings():
        # Opacus' secure mode is off (no torchcsprng for torch 2.x); the noise and the sample
        # are drawn from the OS CSPRNG below instead, so its warning does not apply.
        warnings.filterwarnings("ignore", message=".*[Ss]ecure.*RNG.*")
        warnings.filterwarnings("ignore", message=".*Optimal order.*")
        engine = PrivacyEngine(accountant=privacy.accountant)
        engine.accountant.history = [tuple(h) for h in history]
        private = engine.make_private(
            module=grouped,
            optimizer=optimizer,
            data_loader=loader,
            criterion=nn.CrossEntropyLoss(),
            noise_multiplier=privacy.noise_multiplier,
            max_grad_norm=privacy.max_grad_norm,
            # Fast path: per-customer gradients of the text map (~4k numbers per customer) in one
            # backward pass ("hooks"), instead of ghost clipping's two (norms, then the clipped sum).
            grad_sample_mode="hooks" if pooled else "ghost",
            poisson_sampling=True,
        )
    # ghost clipping also returns its criterion: (module, optimizer, criterion, loader)
    model, dp_optimizer, dp_loader = private[0], private[1], private[-1]
    # The noise and the sample from the OS CSPRNG (see "noise source" above), at the rate
    # Opacus accounts for (1 / len(dp_loader)).
    dp_optimizer.add_noise = types.MethodType(_add_os_noise, dp_optimizer)
    if head is not None:
        head.expected = dp_optimizer.expected_batch_size  # scaled as Opacus scales the text map's noisy sum
        dp_optimizer.group_noise_scale = math.sqrt(_RepeatGroup.GROUPS)
    dp_loader = torch.utils.data.DataLoader(
        index,
        batch_sampler=_OsPoissonSampler(n, 1.0 / len(dp_loader), len(dp_loader)),
        collate_fn=dp_loader.collate_fn,  # Opacus' collate: an empty sample is an empty batch
    )
    total_steps = steps_per_round(privacy, local_epochs, n)
    arrays = {
        "items": data.items, "weights": data.weights, "features": data.features, "mask": data.mask,
        "targets": data.targets, "target_mask": data.target_mask, "copurchase": data.copurchase,
        "slot_mask": data.slot_mask,
    }
    steps, loss_sum = 0, 0.0
    model.train()
    while steps < total_steps:
        for (idx,) in dp_loader:
            if steps >= total_steps:
                break
            steps += 1
            dp_optimizer.zero_grad(set_to_none=True)
            if len(idx) == 0:  # Poisson sampling drew nobody: still a (noise-only) step
                # The ghost-clipping optimizer sums p.grad, which no backward pass set: the
                # clipped sum of zero customers is zero, and step() adds the noise to it.
                for param in dp_optimizer.params:
                    param.grad = torch.zeros_like(param)
                    if pooled:  # no per-customer gradient: an empty batch of them
                        param.grad_sample = torch.zeros((0, *param.shape), dtype=param.dtype)
                dp_optimizer.step()
                if head is not None:
                    head.step(None)
                continue
            rows = idx.numpy()
            # Trim padding the sampled customers do not use (slots and bag length).
            k_used = max(1, int(data.slot_mask[rows].sum(1).max()))
            l_used = max(1, int(data.mask[rows].sum(2).max()))
            t_used = max(1, int(data.target_mask[rows].sum(2).max()))
            batch = {}
            for key, v in arrays.items():
                if pooled and (key == "weights" or (key == "features" and head is None)):
                    continue  # in the bag sums already
                part = v[rows][:, :k_used]
                if key in ("items", "weights", "features", "mask"):
                    part = part[:, :, :l_used]
                elif key in ("targets", "target_mask"):
                    part = part[:, :, :t_used]
                batch[key] = torch.from_numpy(np.ascontiguousarray(part))
            user_vec = user_vectors[torch.from_numpy(data.user[rows])].detach()
            if pooled:
                real = batch["slot_mask"] > 0
                logits = model(
                    user_vec,
                    torch.from_numpy(np.ascontiguousarray(free_sums[rows][:, :k_used])),
                    torch.from_numpy(np.ascontiguousarray(text_sums[rows][:, :k_used])),
                    real,
                )
                per_customer = _packed_customer_loss(logits, real, batch, privacy.collaborative_loss_weight)
            else:
                collaborative, repeat = model(
                    user_vec, batch["items"], batch["weights"], batch["features"], batch["mask"],
                )
                per_customer = _customer_loss(
                    collaborative, repeat, batch, privacy.collaborative_loss_weight, 0.0 if privacy.local_repeat else 1.0
                )
            if pooled:
                per_customer.mean().backward()
            else:
                DPTensorFastGradientClipping(model, dp_optimizer, per_customer, "mean").backward()
            dp_optimizer.step()
            loss_sum += float(per_customer.detach().mean())
            if head is not None:
                loss_sum += head.step(batch)
    for param in shared.parameters():
        param.requires_grad_(True)
    new_history = [tuple(h) for h in engine.accountant.history]
    return DPTrainResult(
        customers=n,
        steps=steps,
        loss=loss_sum / max(steps, 1),
        history=new_history,
        report=privacy_report(privacy, new_history, delta, n),
    )
