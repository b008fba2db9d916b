"""The repeat ranker alone, without DP: each store's own against one trained across the stores.

    .venv/bin/python bench/repeat_only.py --data ../shared/data/online_retail/online_retail_2010-12_2011-10.csv.gz \
        --mode own|shared|shared-head|shared-items|hybrid [--rounds 7] [--repeat-lr 3e-3]

Only the repeat ranker trains (the collaborative ranker stays at its seeded start with the store's
raw popularity prior), so the overall NDCG@10 after each round shows what sharing the repeat
ranker can bring before any noise (docs/PRIVACY.md "The shared repeat head under DP"):

* ``own``: every store trains its whole repeat ranker alone (what ``privacy.local_repeat`` keeps);
* ``shared``: FedAvg of the whole repeat ranker (head and per-item biases), no noise;
* ``shared-head`` / ``shared-items``: FedAvg of the head with the item biases fixed, or the reverse;
* ``hybrid``: FedAvg of the head, each store's own item biases trained on it (``own_item_biases``).

Also prints personal frequency per store (``pf``), and the validation window's NDCG@10 (inside the
training period; it measures fit, not a holdout).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from siloguard.clients.store import evaluate_rows, evaluate_store, load_store, overall_metrics
from siloguard.config import Settings
from siloguard.federation.runner import prepare_run
from siloguard.recommender.baselines import personal_frequency_scores
from siloguard.recommender.model import PrivateUsers, SharedModel, item_customers
from siloguard.recommender.train import train_local
from siloguard.runs import RunManifest, catalogue_item_text

HEAD = ("repeat.", "repeat_linear.")
ITEMS = ("repeat_items.",)


def _train(model: SharedModel, users, examples, m, lr: float, seed: int, trained: tuple[str, ...]) -> int:
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(trained))
    result = train_local(model, users, examples, epochs=m.local_epochs, lr=m.learning_rate, repeat_lr=lr,
                         user_lr=m.user_learning_rate, batch_size=m.batch_size, weight_decay=m.weight_decay,
                         seed=seed, repeat_only=True)
    for p in model.parameters():
        p.requires_grad_(True)
    return result.examples


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--mode", choices=("own", "shared", "shared-head", "shared-items", "hybrid"), default="own")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--repeat-lr", type=float, default=3e-3)
    p.add_argument("--average", action="store_true",
                   help="score the mean of each store's repeat ranker over the rounds so far (not the last)")
    a = p.parse_args()
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="siloguard-repeat-"))
    settings = Settings.build(work_dir=work, data={"path": a.data})
    prepared = prepare_run(settings)
    run = RunManifest.read(work)
    catalogue = run.require_catalogue()
    stores = {n: load_store(n, prepared.stores[n], catalogue, str(run.split_date), str(run.end_date))
              for n in sorted(prepared.stores)}
    m = settings.model
    start = SharedModel(prepared.items, m.dim, m.hidden, seed=m.seed, item_text=catalogue_item_text(catalogue))
    pf = {n: evaluate_rows(st, np.flatnonzero(np.diff(st.truth.indptr) > 0), personal_frequency_scores(st.history.counts))
          for n, st in stores.items()}
    print(f"personal frequency (per store's own counts): {overall_metrics(pf)['ndcg@10']:.4f}")
    models = {n: start.fresh_copy() for n in stores}
    users = {n: PrivateUsers(st.n_users, m.dim, seed=m.seed) for n, st in stores.items()}
    for n, st in stores.items():
        models[n].set_store_popularity(item_customers(st.history))
    shared = {"shared": HEAD + ITEMS, "shared-head": HEAD, "shared-items": ITEMS, "hybrid": HEAD}.get(a.mode, ())
    sums: dict[str, dict] = {}
    started = time.perf_counter()
    for r in range(a.rounds + 1):
        if r > 0:
            examples = {n: st.examples(m, np.random.default_rng([m.seed, r, st.n_users])) for n, st in stores.items()}
            if a.mode == "own":
                for n in stores:
                    _train(models[n], users[n], examples[n], m, a.repeat_lr, m.seed + r, HEAD + ITEMS)
            else:
                states, weights = [], []
                for n in stores:
                    weights.append(_train(models[n], users[n], examples[n], m, a.repeat_lr, m.seed + r, shared))
                    states.append(models[n].state_dict())
                w = np.asarray(weights, float) / sum(weights)
                averaged = {k: sum(wi * sd[k] for wi, sd in zip(w, states)) for k in states[0] if k.startswith(shared)}
                for n in stores:
                    models[n].load_state_dict({**models[n].state_dict(), **averaged})
                    if a.mode == "hybrid":  # each store's own item biases on the averaged head
                        _train(models[n], users[n], examples[n], m, a.repeat_lr, m.seed + r, ITEMS)
        scored = models
        if a.average and r > 0:
            for n in stores:
                now = {k: v.clone() for k, v in models[n].state_dict().items() if k.startswith(HEAD + ITEMS)}
                sums[n] = {k: sums.get(n, {}).get(k, 0) + v for k, v in now.items()}
            scored = {n: models[n].fresh_copy() for n in stores}
            for n in stores:
                scored[n].load_state_dict({**scored[n].state_dict(), **{k: v / r for k, v in sums[n].items()}})
        per = {n: evaluate_store(scored[n], users[n], st, validation=True) for n, st in stores.items()}
        o = overall_metrics(per)
        val = sum(v["val.ndcg@10"] * v["val.users"] for v in per.values()) / sum(v["val.users"] for v in per.values())
        print(f"round {r}: NDCG@10 {o['ndcg@10']:.4f}  validation {val:.4f}  ({time.perf_counter() - started:.0f} s)",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
