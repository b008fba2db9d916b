"""In-process FedAvg for tuning (same stores, same local training, no Flower, no Ray).

    .venv/bin/python bench/fedavg_sweep.py --data ../shared/data/online_retail/online_retail_2010-12_2011-10.csv.gz \
        [--rounds 7] [--local-epochs 2] [--lr 2e-2] [--repeat-lr 3e-3] [--wd 1e-5]

Prints overall NDCG@10, NDCG@10 on new items and the small stores' NDCG@10 after
every round (round 0 = the untrained, warm-started model). The averaging is the
one Flower's FedAvg does (weighted by training examples); bench/quality.py runs
the real thing through the Flower simulation engine.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

import numpy as np
import torch

from siloguard.runs import RunManifest
from siloguard.clients.store import evaluate_store, load_store, overall_metrics
from siloguard.config import Settings
from siloguard.federation.runner import prepare_run
from siloguard.recommender.model import PrivateUsers, SharedModel
from siloguard.recommender.train import train_local


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--local-epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=2e-2)
    p.add_argument("--repeat-lr", type=float, default=3e-3)
    p.add_argument("--wd", type=float, default=1e-5)
    a = p.parse_args()
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="siloguard-sweep-"))
    settings = Settings.build(
        work_dir=work,
        data={"path": a.data},
        model={"local_epochs": a.local_epochs, "learning_rate": a.lr, "repeat_learning_rate": a.repeat_lr,
               "weight_decay": a.wd},
    )
    prepared = prepare_run(settings)
    run = RunManifest.read(work)
    stores = {
        n: load_store(n, prepared.stores[n], run.require_catalogue(), str(run.split_date), str(run.end_date))
        for n in sorted(prepared.stores)
    }
    small = [n for n in stores if prepared.customers[n] < 300]
    m = settings.model
    shared = SharedModel(prepared.items, m.dim, m.hidden, seed=m.seed)
    private = {n: PrivateUsers(st.n_users, m.dim, seed=m.seed) for n, st in stores.items()}
    print(f"settings: {vars(a)}")
    for r in range(a.rounds + 1):
        if r > 0:
            states, weights = [], []
            for n, st in stores.items():
                local = copy.deepcopy(shared)
                ex = st.examples(m, np.random.default_rng([m.seed, r, st.n_users]))
                res = train_local(local, private[n], ex, epochs=m.local_epochs, lr=m.learning_rate,
                                  repeat_lr=m.repeat_learning_rate, user_lr=m.user_learning_rate,
                                  batch_size=m.batch_size, weight_decay=m.weight_decay, seed=m.seed + r)
                states.append(local.state_dict())
                weights.append(res.examples)
            w = np.asarray(weights, float) / sum(weights)
            shared.load_state_dict({k: sum(wi * sd[k] for wi, sd in zip(w, states)) for k in states[0]})
        per = {n: evaluate_store(shared, private[n], st) for n, st in stores.items()}
        o = overall_metrics(per)
        smalls = "  ".join(f"{n} {per[n]['ndcg@10']:.4f}" for n in small)
        print(f"round {r}: NDCG@10 {o['ndcg@10']:.4f}  new {o['new.ndcg@10']:.4f}  {smalls}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
