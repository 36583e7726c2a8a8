"""Passes to a converged fit: stepwise EM (then batch EM) against batch EM, same start.

600,000 x 16 float32 rows of K=8 overlapping Gaussian clusters, full covariances.
Counts passes and iterations, not seconds (see bench_speed.py for speed).

    python benchmarks/stepwise_passes.py [centre_spread=1.6] [chunk_rows=10000] [short]

``short`` runs only the default stepwise settings.
"""
import copy, logging, sys, time
import dask.array as da
import numpy as np
from dask_em.engine import MixtureState, estep_block, run_em, run_pass, run_stepwise
from dask_em.families import get_family

N, D, K = 600_000, 16, 8
rng = np.random.default_rng(42)
centres = rng.normal(scale=float(sys.argv[1]) if len(sys.argv) > 1 else 1.6, size=(K, D))  # overlapping: spread ~ unit-scale covariances
parts = []
sizes = rng.multinomial(N, rng.dirichlet(np.full(K, 5.0)))
for c, m in zip(centres, sizes):
    A = rng.normal(size=(D, D)) * 0.35 + np.eye(D) * 0.5
    parts.append(rng.normal(size=(m, D)) @ A + c)
Xn = np.concatenate(parts)[rng.permutation(N)].astype(np.float32)
X = da.from_array(Xn, chunks=(int(sys.argv[2]) if len(sys.argv) > 2 else 10_000, -1)).persist()
fam = get_family("gaussian-full")
opts = {"reg_covar": 1e-6}
init_rng = np.random.default_rng(0)
cov = np.cov(Xn[:50_000].T.astype(np.float64))
P = np.linalg.inv(np.linalg.cholesky(cov)).T
init = MixtureState(np.full(K, 1 / K), {"means": Xn[init_rng.choice(N, K, replace=False)].astype(np.float64),
                                        "precisions_cholesky": np.repeat(P[None], K, 0)})

def exact(state):
    s = run_pass(X, estep_block, (fam, [state]), name="score", row_wise=True)[0]
    return s["loglik"] / s["weight"]

t = time.perf_counter()
(batch,) = run_em(X, fam, [init], tol=1e-7, max_iter=2000, options=opts, log_level=logging.DEBUG)
tb = time.perf_counter() - t
best = batch.lower_bound
lls = [h["mean_loglik"] for h in batch.history]
within = next((i + 1 for i, v in enumerate(lls) if best - v < 1e-3), None)
print(f"chunks {X.chunks[0][0]} rows, {X.numblocks[0]} blocks; batch EM: converged={batch.converged} n_iter={batch.n_iter} final={best:.6f} "
      f"({tb / batch.n_iter:.2f} s/pass); iterations until within 1e-3: {within} "
      f"(mean loglik at the start of that iteration)", flush=True)

for alpha, bc in ([(0.6, None), (0.6, 4), (0.7, None)] if len(sys.argv) < 4 else [(0.6, None)]):
    snaps = []
    def cb(step, results):
        snaps.append((step, copy.deepcopy(results[0].state)))
    t = time.perf_counter()
    res = run_stepwise(X, fam, [init], options=opts, passes=5, alpha=alpha, batch_chunks=bc, seed=0,
                       callback=cb, log_level=logging.DEBUG)
    ts = time.perf_counter() - t
    n_steps = res[0].n_iter
    per_pass = n_steps // 5
    gaps = []
    for p in range(1, 6):
        step, state = snaps[p * per_pass - 1]
        gaps.append(exact(state) - best)
    first = next((p + 1 for p, g in enumerate(gaps) if abs(g) < 1e-3 or g > 0), None)
    print(f"stepwise alpha={alpha} batch_chunks={bc or 'default'}: {per_pass} steps/pass, {ts / 5:.2f} s/pass; "
          f"exact mean loglik minus batch EM's after passes 1..5: {['%.2e' % g for g in gaps]}; "
          f"first pass within 1e-3: {first}", flush=True)
    for p in (2, 3):
        state = snaps[p * per_pass - 1][1]
        (fin,) = run_em(X, fam, [state], tol=1e-7, max_iter=2000, options=opts, log_level=logging.DEBUG)
        lls_f = [h["mean_loglik"] for h in fin.history]
        w = next((i + 1 for i, v in enumerate(lls_f) if best - v < 1e-3), None)
        print(f"   finish after {p} passes: batch iterations to converge (tol 1e-7) {fin.n_iter}, "
              f"to be within 1e-3: {w}; final minus batch EM's {fin.lower_bound - best:.2e}", flush=True)
