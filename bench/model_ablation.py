"""Model ablations behind docs/MODEL.md (centralised, full data, full ranking).

Usage: .venv/bin/python bench/model_ablation.py LOSS CUTOFFS EPOCHS DIM NEGATIVES POP_EXPONENT LR STRIDE WEIGHT_DECAY
e.g.   .venv/bin/python bench/model_ablation.py softmax 8 6 32 256 0.75 3e-3 28 0
Prints, per epoch: training loss, NDCG@10 (all items) and NDCG@10 (new items only),
then personal frequency on the same split. Reads ../shared/data/online_retail.
"""
import sys, time
import numpy as np, pandas as pd, torch
from siloguard.recommender.features import Catalogue, to_events, build_examples, build_history
from siloguard.recommender.model import SharedModel, PrivateUsers, score_users
from siloguard.recommender.train import train_local
torch.set_num_threads(1)
t0=time.time()
df = pd.read_csv(str(__import__("pathlib").Path(__file__).resolve().parents[2] / "shared/data/online_retail/online_retail_2010-12_2011-10.csv.gz"), dtype={"InvoiceNo":str,"StockCode":str,"CustomerID":float})
df = df[df.CustomerID.notna() & ~df.InvoiceNo.str.startswith("C") & (df.Quantity>0) & (df.UnitPrice>0)]
df = pd.DataFrame({"invoice":df.InvoiceNo,"stock_code":df.StockCode.str.strip().str.upper(),"invoice_date":pd.to_datetime(df.InvoiceDate),"customer_id":df.CustomerID.astype("int64")})
split = pd.Timestamp("2011-10-03"); end = pd.Timestamp("2011-11-01")
train = df[df.invoice_date < split]; test = df[df.invoice_date >= split]
cat = Catalogue.from_frame(train)
users = pd.Index(np.sort(train.customer_id.unique()))
ev = to_events(train, cat, users); tev = to_events(test, cat, users)
split_day = int((split - pd.Timestamp("1970-01-01")).days)
horizon = 28
N=cat.size; U=len(users)
print("load", time.time()-t0, N, U)
loss = sys.argv[1] if len(sys.argv)>1 else "softmax"
ncut = int(sys.argv[2]) if len(sys.argv)>2 else 3
epochs = int(sys.argv[3]) if len(sys.argv)>3 else 10
dim = int(sys.argv[4]) if len(sys.argv)>4 else 32
pop_items = np.bincount(ev.item, minlength=N).astype(float)
PROP = (pop_items+1)**float(sys.argv[6] if len(sys.argv)>6 else 0.75)
LR = float(sys.argv[7]) if len(sys.argv)>7 else 3e-3
WD = float(sys.argv[9]) if len(sys.argv)>9 else 0.0
RN = int(sys.argv[5]) if len(sys.argv)>5 else 64
rng = np.random.default_rng(0)
STRIDE = int(sys.argv[8]) if len(sys.argv)>8 else horizon
cutoffs = [split_day - horizon - STRIDE*k for k in range(ncut)]
t=time.time(); ex = build_examples(ev, U, N, cutoffs, horizon, rng=rng); print("examples", len(ex), time.time()-t)
hist = build_history(ev, U, N, split_day)
truth_u = tev.user.to_numpy(); truth_i = tev.item.to_numpy()
import scipy.sparse as sp
truth = sp.csr_matrix((np.ones(len(truth_u)), (truth_u, truth_i)), shape=(U,N)); truth.data[:]=1
rows = np.where(np.diff(truth.indptr)>0)[0]
def ndcg(scores, truth_rows, hist_rows=None, new=False):
    res=[]
    for k in range(scores.shape[0]):
        rel = set(truth_rows[k].indices)
        s = scores[k].copy()
        if new:
            h = set(hist_rows[k].indices); rel = rel - h
            s[list(h)] = -np.inf
        if not rel: continue
        top = np.argsort(-s, kind="stable")[:10]
        dcg = sum(1/np.log2(r+2) for r,i in enumerate(top) if i in rel)
        idcg = sum(1/np.log2(r+2) for r in range(min(len(rel),10)))
        res.append(dcg/idcg)
    return np.mean(res), len(res)
model = SharedModel(N, dim=dim); pu = PrivateUsers(U, dim)
for ep in range(epochs):
    t=time.time()
    ex = build_examples(ev, U, N, cutoffs, horizon, rng=np.random.default_rng(ep), random_negatives=RN, proposal=PROP)
    r = train_local(model, pu, ex, epochs=1, lr=LR, user_lr=LR, batch_size=256, weight_decay=WD, loss=loss, seed=ep)
    if True:
        sc = score_users(model, pu, hist, rows)
        print(ep, round(r.loss,4), "ndcg", ndcg(sc, truth[rows]), "new", ndcg(sc, truth[rows], hist.counts[rows], True), round(time.time()-t,1))
# PF
pop = np.asarray((hist.counts>0).sum(0)).ravel()
pf = hist.counts[rows].toarray()*1000 + pop/(pop.max()+1)
print("PF", ndcg(pf, truth[rows]))
