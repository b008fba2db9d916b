"""Model ablations behind docs/MODEL.md: one central silo, full ranking, per epoch.

    .venv/bin/python bench/model_ablation.py --data ../shared/data/online_retail/online_retail_2010-12_2011-10.csv.gz \
        [--epochs 8] [--cutoffs 8] [--stride DAYS] [--dim 32] [--lr 3e-3] [--user-lr 3e-3] [--wd 0] [--store NAME]

Trains the siloguard model on the whole file as one store (or on one prepared
store with --store) and prints NDCG@10 (all items and new items only) after
every epoch, with personal frequency on the same split for reference.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from siloguard.runs import RunManifest
from siloguard.clients.store import evaluate_store, load_store
from siloguard.config import Settings
from siloguard.federation.runner import prepare_run
from siloguard.recommender.baselines import personal_frequency_scores, popularity_scores
from siloguard.recommender.metrics import ranking_metrics
from siloguard.recommender.model import PrivateUsers, SharedModel
from siloguard.recommender.train import train_local


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--cutoffs", type=int, default=8)
    p.add_argument("--stride", type=int, default=None)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-2)
    p.add_argument("--repeat-lr", type=float, default=3e-3)
    p.add_argument("--user-lr", type=float, default=3e-3)
    p.add_argument("--wd", type=float, default=1e-5)
    p.add_argument("--holdout", type=float, default=0.2)
    p.add_argument("--store", default=None, help="train on one prepared store instead of the whole file")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(1)

    work = Path(tempfile.mkdtemp(prefix="siloguard-ablation-"))
    settings = Settings.build(
        work_dir=work,
        data={"path": a.data},
        model={"cutoffs": a.cutoffs, "cutoff_stride_days": a.stride, "dim": a.dim, "learning_rate": a.lr, "repeat_learning_rate": a.repeat_lr,
               "user_learning_rate": a.user_lr, "weight_decay": a.wd, "seed": a.seed,
               "holdout": a.holdout},
    )
    prepared = prepare_run(settings)
    run = RunManifest.read(work)
    path = prepared.stores[a.store] if a.store else a.data.resolve()
    store = load_store(a.store or "central", path, run.require_catalogue(), str(run.split_date), str(run.end_date))
    rows = np.flatnonzero(np.diff(store.truth.indptr) > 0)
    counts = store.history.counts
    pf = personal_frequency_scores(counts, popularity_scores(counts))
    pf_ndcg = ranking_metrics(lambda c: pf(rows[c]), store.truth[rows])["ndcg@10"]

    m = settings.model
    model = SharedModel(store.n_items, m.dim, m.hidden, seed=m.seed)
    users = PrivateUsers(store.n_users, m.dim, seed=m.seed)
    before = evaluate_store(model, users, store)
    print(f"settings: {vars(a)}")
    print(f"epoch 0: NDCG@10 {before['ndcg@10']:.4f}  new {before['new.ndcg@10']:.4f}  (personal frequency {pf_ndcg:.4f})")
    for epoch in range(1, a.epochs + 1):
        t = time.perf_counter()
        ex = store.examples(m, np.random.default_rng([m.seed, epoch]))
        res = train_local(model, users, ex, epochs=1, lr=m.learning_rate, repeat_lr=m.repeat_learning_rate, user_lr=m.user_learning_rate,
                          batch_size=m.batch_size, weight_decay=m.weight_decay, seed=m.seed + epoch)
        train_s = time.perf_counter() - t
        ev = evaluate_store(model, users, store)
        print(f"epoch {epoch}: loss {res.loss:.4f}  NDCG@10 {ev['ndcg@10']:.4f}  new {ev['new.ndcg@10']:.4f}  "
              f"HR@10 {ev['hr@10']:.4f}  examples {res.examples}  train {train_s:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
