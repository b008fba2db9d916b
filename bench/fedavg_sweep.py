"""In-process FedAvg for tuning (same stores, same local training, no Flower, no Ray).

    .venv/bin/python bench/fedavg_sweep.py --data ../shared/data/online_retail/online_retail_2010-12_2011-10.csv.gz \
        [--rounds 7] [--local-epochs 2] [--lr 2e-2] [--repeat-lr 3e-3] [--wd 1e-5] [--epsilon E] [--no-text] \
        [--prior own|federation|none] [--prior-share S]

Prints overall NDCG@10, NDCG@10 on new items and the small stores' NDCG@10 after
every round (round 0 = the untrained, warm-started model). The averaging is the
one Flower's FedAvg does (weighted by training examples, or by customers with examples under
DP, as the store's reply says); bench/quality.py and bench/dp.py run the real thing through the
Flower simulation engine. ``--epsilon E``: customer-level DP-SGD in every store, the noise
planned per store and round for E over the run (privacy/dp.py plan_noise), each store's
accountant history kept here as its ledger would keep it. Under DP the prior on new items is
the store's DP release of its item popularity (privacy/popularity.py: charged to the store's
history before its rounds are planned), its own (``--prior own``) or the sum of all stores'
releases (``--prior federation``).
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import os
import time
from pathlib import Path

import numpy as np
import torch

from siloguard.runs import RunManifest
from siloguard.clients.store import evaluate_store, load_store, overall_metrics
from siloguard.config import Settings
from siloguard.federation.runner import prepare_run
from siloguard.recommender.model import PrivateUsers, SharedModel, item_customers
from siloguard.privacy.dp import group_by_customer, plan_noise, rounds_left, store_delta, train_local_dp
from siloguard.privacy.popularity import PRIOR_THRESHOLD, popularity_prior, release_noise, release_popularity, release_step
from siloguard.recommender.train import scoring_state, train_kept_repeat, train_local
from siloguard.runs import catalogue_item_text


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--local-epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=2e-2)
    p.add_argument("--repeat-lr", type=float, default=3e-3)
    p.add_argument("--wd", type=float, default=1e-5)
    p.add_argument("--epsilon", type=float, default=None, help="customer-level DP at this epsilon per store")
    p.add_argument("--sample-rate", type=float, default=None, help="DP Poisson rate (default: settings)")
    p.add_argument("--clip", type=float, default=None, help="DP clipping bound (default: settings)")
    p.add_argument("--repeat-clip", type=float, default=None, help="DP: the shared repeat head's clipping bound")
    p.add_argument("--no-text", action="store_true", help="no public item features (the text map adds nothing)")
    p.add_argument("--collab-weight", type=float, default=None, help="DP: weight of the new-items loss")
    p.add_argument("--shared-repeat", action="store_true", help="DP: the repeat ranker shared under DP too")
    p.add_argument("--train-biases", action="store_true", help="DP: also train the per-item biases")
    p.add_argument("--freeze", default="", help="DP: shared parameters kept fixed, comma-separated state-dict names")
    p.add_argument("--prior", choices=("own", "federation", "none"), default="own",
                   help="DP: the new-items prior: each store's own DP release, the sum of all stores' releases, or none")
    p.add_argument("--prior-share", type=float, default=None,
                   help="DP: share of the target's zCDP budget for the popularity release (default: settings)")
    p.add_argument("--prior-threshold", type=float, default=PRIOR_THRESHOLD,
                   help="DP: the prior keeps what the release shows above this many noise std")
    a = p.parse_args()
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="siloguard-sweep-"))
    settings = Settings.build(
        work_dir=work,
        data={"path": a.data},
        model={"local_epochs": a.local_epochs, "learning_rate": a.lr, "repeat_learning_rate": a.repeat_lr,
               "weight_decay": a.wd},
    )
    if a.epsilon is not None:
        settings = settings.with_overrides(privacy={
            "epsilon": a.epsilon, "epsilon_cap": a.epsilon,
            **({"sample_rate": a.sample_rate} if a.sample_rate else {}),
            **({"max_grad_norm": a.clip} if a.clip else {}),
            **({"repeat_max_grad_norm": a.repeat_clip} if a.repeat_clip else {}),
            **({"collaborative_loss_weight": a.collab_weight} if a.collab_weight else {}),
            **({"train_item_biases": True} if a.train_biases else {}),
            **({"local_repeat": False} if a.shared_repeat else {}),
            **({"popularity_share": a.prior_share} if a.prior_share is not None else {}),
            **({"popularity_share": 0.0} if a.prior == "none" else {}),
        })
    # a shared repeat head under DP reads the item-popularity feature from the release (docs/PRIVACY.md)
    shared_head = a.epsilon is not None and settings.privacy.own_repeat != "all" and not os.environ.get("RAWPOP")
    prepared = prepare_run(settings)
    run = RunManifest.read(work)
    text = None if a.no_text else catalogue_item_text(run.require_catalogue())
    stores = {
        n: load_store(n, prepared.stores[n], run.require_catalogue(), str(run.split_date), str(run.end_date))
        for n in sorted(prepared.stores)
    }
    small = [n for n in stores if prepared.customers[n] < 300]
    m = settings.model
    shared = SharedModel(prepared.items, m.dim, m.hidden, seed=m.seed, item_text=text)
    private = {n: PrivateUsers(st.n_users, m.dim, seed=m.seed) for n, st in stores.items()}
    ledgers: dict[str, list] = {n: [] for n in stores}
    repeats: dict[str, dict] = {}  # store -> its own repeat ranker (DP with local_repeat)
    priors: dict[str, np.ndarray] = {}  # store -> the prior it uses (without DP: its raw counts)
    first_round_priors: dict[str, np.ndarray] | None = None
    if a.epsilon is None:
        priors = {n: item_customers(st.history) for n, st in stores.items()}
    elif settings.privacy.popularity_share:
        # Each store releases its bounded popularity once, before its first round, charged to its
        # ledger as the Gaussian mechanism; the rounds are then planned on what is left.
        released = {}
        for n, st in stores.items():
            sigma = release_noise(settings.privacy, store_delta(settings.privacy, st.n_users))
            released[n] = release_popularity(st.history.counts, sigma)
            ledgers[n] = [release_step(sigma)]
        print("release sigma: " + ", ".join(f"{n} {ledgers[n][0][0]:.3f}" for n in stores))
        total = sum(released.values())  # post-processing of the stores' releases: any store may use it
        sigmas = {n: ledgers[n][0][0] for n in stores}
        total_sigma = float(np.sqrt(sum(v * v for v in sigmas.values())))
        own = {n: popularity_prior(released[n], sigmas[n], a.prior_threshold) for n in stores}
        priors = own if a.prior == "own" else {n: popularity_prior(total, total_sigma, a.prior_threshold) for n in stores}
        # As in the Flower path: a store's first round trains with its own release (the
        # coordinator has no sum yet); the round's evaluation and later rounds use the sum.
        first_round_priors = own
    started = time.perf_counter()
    print(f"settings: {vars(a)}")
    for r in range(a.rounds + 1):
        spent: dict[str, float] = {}
        if r > 0:
            states, weights = [], []
            for n, st in stores.items():
                local = copy.deepcopy(shared)
                use = first_round_priors if r == 1 and first_round_priors is not None else priors
                if n in use:  # raw counts without DP, a DP release under DP (docs/PRIVACY.md)
                    local.set_store_popularity(use[n], released=shared_head)
                ex = st.examples(m, np.random.default_rng([m.seed, r, st.n_users]))
                if a.epsilon is None:
                    res = train_local(local, private[n], ex, epochs=m.local_epochs, lr=m.learning_rate,
                                      repeat_lr=m.repeat_learning_rate, user_lr=m.user_learning_rate,
                                      batch_size=m.batch_size, weight_decay=m.weight_decay, seed=m.seed + r)
                    weights.append(res.examples)
                else:
                    pv = settings.privacy
                    delta = store_delta(pv, st.n_users)
                    if pv.own_repeat == "items":  # the store's own item biases, on the shared head it was sent
                        repeats[n] = train_kept_repeat(local, private[n], ex, m, seed=m.seed + r, part="items", kept=repeats.get(n, {}), average=pv.own_repeat_average)
                    noise = plan_noise(pv, ledgers[n], rounds=rounds_left(a.rounds, r), local_epochs=m.local_epochs,
                                       delta=delta, customers=st.n_users)
                    res = train_local_dp(local, private[n].weight.detach(), group_by_customer(ex, st.n_users),
                                         privacy=pv, local_epochs=m.local_epochs, lr=m.learning_rate,
                                         repeat_lr=m.repeat_learning_rate, history=ledgers[n], delta=delta,
                                         noise_multiplier=noise, frozen=tuple(f for f in a.freeze.split(",") if f))
                    ledgers[n] = res.history
                    if pv.own_repeat == "all":  # the store's own repeat ranker: trained without noise, kept here
                        repeats[n] = train_kept_repeat(local, private[n], ex, m, seed=m.seed + r, part="all", kept=repeats.get(n, {}), average=pv.own_repeat_average)
                    spent[n] = res.report.epsilon
                    weights.append(int(np.count_nonzero(np.bincount(ex.bags.user, minlength=st.n_users))))
                states.append(local.state_dict())
            w = np.asarray(weights, float) / sum(weights)
            shared.load_state_dict({k: sum(wi * sd[k] for wi, sd in zip(w, states)) for k in states[0]})
        per = {}
        for n, st in stores.items():
            mine = copy.deepcopy(shared)
            if n in priors:
                mine.set_store_popularity(priors[n], released=shared_head)
            mine.load_state_dict({**mine.state_dict(), **scoring_state(repeats.get(n, {}))})
            per[n] = evaluate_store(mine, private[n], st)
        o = overall_metrics(per)
        smalls = "  ".join(f"{n} {per[n]['ndcg@10']:.4f}" for n in small)
        smalls += "  new: " + " ".join(f"{n} {per[n].get('new.ndcg@10', float('nan')):.4f}" for n in small)
        eps = f"  max eps {max(spent.values()):.3f}" if spent else ""
        print(f"round {r}: NDCG@10 {o['ndcg@10']:.4f}  new {o['new.ndcg@10']:.4f}  {smalls}{eps}"
              f"  ({time.perf_counter() - started:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
