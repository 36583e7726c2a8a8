"""Seconds per EM iteration: dask-em against Spark MLlib (and scikit-learn), one run.

Optional: needs ``pyspark`` and Java, which are not dependencies of dask-em. Install
them in a separate environment, with dask-em itself, e.g.

    python -m venv /tmp/spark-venv
    /tmp/spark-venv/bin/pip install pyspark numpy scikit-learn && /tmp/spark-venv/bin/pip install -e .
    /tmp/spark-venv/bin/python benchmarks/bench_spark.py            # N=1e6, D=16, K=8
    /tmp/spark-venv/bin/python benchmarks/bench_spark.py --quick    # N=1e5, a smoke run

Full covariance only (Spark's only kind), float64. dask-em runs on the threaded scheduler
over a persisted dask array; Spark MLlib's ``pyspark.ml.clustering.GaussianMixture`` runs
on ``local[2]`` over a cached, materialised DataFrame. Spark's initialisation (a sample of
the data), the data load and its end-of-fit summary pass are left out of the time per
iteration: every library fits with ``tol=0`` for m1 and for m2 iterations from the same
start, and the time per iteration is (t(m2) - t(m1)) / (m2 - m1), each time the best of
``--repeat`` fits.

Spark's ``ml`` API takes no starting parameters, so its timed fits start from its own
random init. The sanity check prints the log-likelihood of a converged Spark ``ml`` fit
next to a converged dask-em fit; then it runs one iteration of the RDD API
(``pyspark.mllib``), which does take a start, from dask-em's converged fit, and compares it
with dask-em's iteration and with a NumPy EM step that follows Spark's rule.
"""

import argparse
import os
import shutil
import sys
import time
import types
import warnings

import dask
import numpy as np
from scipy.special import logsumexp
from sklearn.mixture import GaussianMixture as SkGaussianMixture

from bench_vs_sklearn import make_data, start_params
from dask_em import GaussianMixture
from dask_em.data import as_row_chunked

INSTALL = (
    "To run it, install pyspark in an environment of its own, with dask-em: "
    "`python -m venv /tmp/spark-venv && /tmp/spark-venv/bin/pip install pyspark numpy scikit-learn "
    "&& /tmp/spark-venv/bin/pip install -e .`; and a Java runtime (17 or later for pyspark 4) "
    "on PATH or in JAVA_HOME."
)


def missing_requirement():
    """A line saying what is missing to run Spark, or None when pyspark and Java are there."""
    try:
        import pyspark  # noqa: F401
    except ImportError:
        return "pyspark is not installed"
    home = os.environ.get("JAVA_HOME")
    java = os.path.join(home, "bin", "java") if home else shutil.which("java")
    if not java or not os.path.exists(java):
        return "no Java runtime found (no $JAVA_HOME/bin/java, or no `java` on PATH when JAVA_HOME is unset)"
    return None


def timed(fit):
    start = time.perf_counter()
    fit()
    return time.perf_counter() - start


def per_iteration(fit, m1, m2, repeat):
    """(t(m2) - t(m1)) / (m2 - m1): what one more EM iteration costs.

    ``fit(m)`` runs a fit of exactly ``m`` iterations; each time is the best of
    ``repeat`` fits. What a fit costs once (initialisation, data handling, final
    passes) cancels out.
    """
    t1 = min(timed(lambda: fit(m1)) for _ in range(repeat))
    t2 = min(timed(lambda: fit(m2)) for _ in range(repeat))
    return (t2 - t1) / (m2 - m1), t1, t2


def weighted_log_densities(X, weights, means, covariances):
    """log(weight_k) + log N(x | mean_k, cov_k) for every row and component, shape (n, K)."""
    K, D = means.shape
    logp = np.empty((len(X), K))
    for k in range(K):
        L = np.linalg.cholesky(covariances[k])
        z = np.linalg.solve(L, (X - means[k]).T)
        logp[:, k] = (
            np.log(weights[k]) - 0.5 * D * np.log(2 * np.pi) - np.log(np.diag(L)).sum() - 0.5 * (z * z).sum(0)
        )
    return logp


def mean_loglik(X, weights, means, covariances):
    """Mean log-likelihood per row of a full-covariance mixture (NumPy, in log space)."""
    return logsumexp(weighted_log_densities(X, weights, means, covariances), axis=1).mean()


def spark_em_step(X, weights, means, covariances):
    """One EM iteration as Spark MLlib computes it: in probability space, with
    2.2e-16 added to every weighted density before normalising (its ``EPSILON``)."""
    p = np.exp(weighted_log_densities(X, weights, means, covariances)) + np.finfo(np.float64).eps
    resp = p / p.sum(axis=1, keepdims=True)
    nk = resp.sum(axis=0)
    mu = resp.T @ X / nk[:, None]
    cov = np.array([((X - m).T * r) @ (X - m) / n for m, r, n in zip(mu, resp.T, nk)])
    return nk / len(X), mu, cov


def report(name, seconds):
    print(f"{name:<52}{seconds:>9.3f} s/iteration")


# -- Spark ---------------------------------------------------------------------------
def start_spark(cores, driver_memory):
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    spark = (
        SparkSession.builder.master(f"local[{cores}]")
        .appName("dask-em-bench")
        .config("spark.driver.memory", driver_memory)
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def jvm_property(spark, fn):
    try:
        return fn(spark.sparkContext._jvm)
    except Exception:  # py4j details differ across versions; the figure is informative only
        return "unknown"


def spark_frame(spark, X, partitions):
    """A cached DataFrame with one vector column ``features``, one partition per row block."""
    from pyspark.ml.linalg import Vectors, VectorUDT
    from pyspark.sql.types import StructField, StructType

    blocks = np.array_split(X, partitions)
    rows = spark.sparkContext.parallelize(blocks, partitions).flatMap(
        lambda a: [(Vectors.dense(r),) for r in a]
    )
    schema = StructType([StructField("features", VectorUDT(), False)])
    df = spark.createDataFrame(rows, schema).cache()
    assert df.count() == len(X)
    return df


def spark_params(model):
    rows = model.gaussiansDF.collect()
    means = np.array([r["mean"].toArray() for r in rows])
    covs = np.array([r["cov"].toArray() for r in rows])
    return np.asarray(model.weights), means, covs


def spark_same_start(spark, X, partitions, init, iters):
    """The RDD API (pyspark.mllib) from dask-em's starting parameters, ``iters`` iterations."""
    from pyspark.mllib.clustering import GaussianMixture as MLlibGaussianMixture
    from pyspark.mllib.linalg import DenseMatrix, Vectors
    from pyspark.mllib.stat.distribution import MultivariateGaussian

    K, D = init["means_init"].shape
    covs = np.linalg.inv(init["precisions_init"])
    start = types.SimpleNamespace(  # what mllib's train reads from an initial model
        k=K,
        weights=list(init["weights_init"]),
        gaussians=[
            MultivariateGaussian(Vectors.dense(m), DenseMatrix(D, D, c.ravel(order="F")))
            for m, c in zip(init["means_init"], covs)
        ],
    )
    rdd = spark.sparkContext.parallelize(np.array_split(X, partitions), partitions).flatMap(
        lambda a: [Vectors.dense(r) for r in a]
    )
    model = MLlibGaussianMixture.train(rdd, K, convergenceTol=0.0, maxIterations=iters, seed=0, initialModel=start)
    weights = np.asarray(model.weights)
    means = np.array([g.mu.toArray() for g in model.gaussians])
    covs = np.array([g.sigma.toArray() for g in model.gaussians])
    return weights, means, covs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="N=100,000, to check the script runs")
    ap.add_argument("--n", type=int, default=None, help="rows (default 1,000,000; 100,000 with --quick)")
    ap.add_argument("--d", type=int, default=16)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--iters", type=int, nargs=2, default=[2, 12], metavar=("M1", "M2"),
                    help="the two iteration counts whose times are differenced")
    ap.add_argument("--repeat", type=int, default=3, help="best of this many fits per time")
    ap.add_argument("--cores", type=int, default=2, help="Spark local[CORES]")
    ap.add_argument("--partitions", type=int, default=None, help="Spark partitions (default: dask-em's blocks)")
    ap.add_argument("--driver-memory", default="8g")
    ap.add_argument("--no-sklearn", action="store_true", help="leave out scikit-learn")
    ap.add_argument("--no-check", action="store_true", help="leave out the sanity check of Spark's result")
    args = ap.parse_args()
    missing = missing_requirement()
    if missing:
        print(f"bench_spark.py: skipped, {missing}. {INSTALL}")
        return 0
    warnings.simplefilter("ignore")
    n = args.n or (100_000 if args.quick else 1_000_000)
    K, D = args.k, args.d
    m1, m2 = args.iters

    X = make_data(n, D, K)
    Xd = as_row_chunked(X)[0].persist()
    partitions = args.partitions or Xd.numblocks[0]
    init = start_params(X[: 10 * K], K, "full")
    kw = dict(n_components=K, covariance_type="full", tol=0, **init)
    print(f"N={n:,d} D={D} K={K} float64 full covariance; s/iteration = (t({m2}) - t({m1})) / {m2 - m1}, "
          f"each time the best of {args.repeat} fits")

    with dask.config.set(scheduler="threads"):
        ours, t1, t2 = per_iteration(lambda m: GaussianMixture(max_iter=m, **kw).fit(Xd), m1, m2, args.repeat)
    print(f"  dask-em: {Xd.numblocks[0]} persisted blocks, threaded scheduler; fits {t1:.2f} s and {t2:.2f} s")
    sk = None
    if not args.no_sklearn:
        sk, t1, t2 = per_iteration(lambda m: SkGaussianMixture(max_iter=m, **kw).fit(X), m1, m2, args.repeat)
        print(f"  scikit-learn: fits {t1:.2f} s and {t2:.2f} s")

    from pyspark.ml.clustering import GaussianMixture as SparkGaussianMixture

    t0 = time.perf_counter()
    spark = start_spark(args.cores, args.driver_memory)
    java = jvm_property(spark, lambda jvm: jvm.java.lang.System.getProperty("java.version"))
    blas = jvm_property(spark, lambda jvm: jvm.dev.ludovic.netlib.blas.BLAS.getInstance().getClass().getName())
    started = time.perf_counter() - t0
    t0 = time.perf_counter()
    df = spark_frame(spark, X, partitions)
    loaded = time.perf_counter() - t0
    print(f"  Spark {spark.version} on Java {java}, local[{args.cores}], driver memory {args.driver_memory}, "
          f"BLAS {blas}: started in {started:.1f} s, {partitions} partitions cached in {loaded:.1f} s")

    def spark_fit(m, tol=0.0):
        model = SparkGaussianMixture(k=K, maxIter=m, tol=tol, seed=0).fit(df)
        assert tol > 0 or model.summary.numIter == m, model.summary.numIter
        return model

    spark_fit(m1)  # JIT warm-up, not timed
    theirs, t1, t2 = per_iteration(spark_fit, m1, m2, args.repeat)
    print(f"  Spark MLlib: fits {t1:.2f} s and {t2:.2f} s (its init and end-of-fit summary pass included)")
    print()
    report("dask-em GaussianMixture full", ours)
    report(f"Spark MLlib {spark.version} GaussianMixture local[{args.cores}]", theirs)
    if sk is not None:
        report("scikit-learn GaussianMixture full", sk)
    print(f"{'dask-em / Spark MLlib':<52}{ours / theirs:>9.2f}")
    if sk is not None:
        print(f"{'dask-em / scikit-learn':<52}{ours / sk:>9.2f}")

    if args.no_check:
        spark.stop()
        return 0
    print("\nsanity check (printed, not asserted):")
    with dask.config.set(scheduler="threads"):
        conv = GaussianMixture(n_components=K, covariance_type="full", random_state=0).fit(Xd)
    own = spark_fit(100, tol=1e-3 * n)  # Spark's tol is on the total log-likelihood
    w, mu, cov = spark_params(own)
    print("  own starts, run to convergence (change of the mean log-likelihood per row < 1e-3):")
    print(f"    dask-em (k-means|| init, seed 0): {conv.n_iter_} iterations, mean log-likelihood per row "
          f"{mean_loglik(X, conv.weights_, conv.means_, conv.covariances_):.6f}, sorted weights "
          f"{np.array2string(np.sort(conv.weights_), precision=3)}")
    print(f"    Spark ml (its random init, seed 0): {own.summary.numIter} iterations, mean log-likelihood per row "
          f"{mean_loglik(X, w, mu, cov):.6f}, sorted weights {np.array2string(np.sort(w), precision=3)}")

    start = dict(weights_init=conv.weights_, means_init=conv.means_, precisions_init=conv.precisions_)
    spark_one = spark_same_start(spark, X, partitions, start, 1)
    with dask.config.set(scheduler="threads"):
        gm = GaussianMixture(max_iter=1, **{**kw, **start, "reg_covar": 0.0}).fit(Xd)
    ours_one = (gm.weights_, gm.means_, gm.covariances_)
    rule = spark_em_step(X, conv.weights_, conv.means_, conv.covariances_)
    tiny = np.mean(logsumexp(weighted_log_densities(X, conv.weights_, conv.means_, conv.covariances_), axis=1)
                   < np.log(1e-14))

    def gap(a, b):
        names = ("weights", "means", "covariances")
        return ", ".join(f"{name} {np.max(np.abs(x - y)):.1e}" for name, x, y in zip(names, a, b))

    print("  same start (dask-em's converged fit), 1 iteration, reg_covar=0; Spark's RDD API, which takes a start:")
    print("    Spark against a NumPy EM step with Spark's rule (+2.2e-16 on every density): "
          f"max |difference| {gap(spark_one, rule)}")
    print(f"    Spark against dask-em: max |difference| {gap(spark_one, ours_one)}")
    print(f"    mean log-likelihood per row after the step: dask-em {mean_loglik(X, *ours_one):.6f}, "
          f"Spark {mean_loglik(X, *spark_one):.6f}; {100 * tiny:.1f}% of rows have a density below 1e-14")
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
