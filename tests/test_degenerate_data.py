"""Degenerate data get a message that names the real cause (issue 13, items 10 and 11).

- Values too large to square in float64 (features near 1e300) are reported as such,
  with the feature and its magnitude and a suggestion to scale, not as "collapsed
  components": from the initialisation sample, and from the M-step when every
  starting parameter is given (no sample).
- ``n_components`` / ``n_clusters`` above the number of distinct rows, and data that
  are one repeated row, give a ConvergenceWarning (KMeans in scikit-learn's words),
  found in the initialisation sample: no extra pass.
- ``tol=nan`` and ``reg_covar=nan`` are refused by the constraints table
  (``tests/test_pipeline_edge.py``: ``test_tol_nan_refused``, ``test_reg_covar_nan_refused``).
"""

import warnings

import dask.array as da
import numpy as np
import pytest
from dask.callbacks import Callback
from sklearn.cluster import KMeans as SKKMeans

from dask_em import GaussianMixture, KMeans
from dask_em.exceptions import ConvergenceWarning
from dask_em.fitting import distinct_rows


class ComputeCounter(Callback):
    """Counts the graphs run by dask's local schedulers."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def _start(self, dsk):
        self.count += 1


def _huge(n=600, scale=1e300):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, 3))
    X[:, 1] *= scale
    return X


@pytest.mark.parametrize("make", [
    lambda ip: GaussianMixture(2, init_params=ip, random_state=0),
    lambda ip: GaussianMixture(2, covariance_type="diag", init_params=ip, random_state=0),
    lambda ip: KMeans(2, random_state=0),
])
@pytest.mark.parametrize("init_params", ["kmeans", "k-means++", "random", "random_from_data"])
def test_values_too_large_to_square_are_named(make, init_params):
    X = da.from_array(_huge(), chunks=(200, -1))
    with pytest.raises(ValueError) as info:
        make(init_params).fit(X)
    message = str(info.value)
    assert "Feature 1 of X holds values of magnitude up to" in message and "e+300" in message
    assert "too large to square in float64" in message and "Scale the features" in message
    assert "collapsed" not in message


@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag", "spherical"])
def test_values_too_large_to_square_without_a_sample(covariance_type):
    """Every starting parameter given: no sample, the M-step says what overflowed."""
    X = _huge(scale=1e200)
    precisions = {"full": np.stack([np.eye(3)] * 2), "tied": np.eye(3), "diag": np.ones((2, 3)),
                  "spherical": np.ones(2)}[covariance_type]
    gm = GaussianMixture(2, covariance_type=covariance_type, means_init=[[0, 0, 0], [1, 1e200, 1]],
                         weights_init=[0.5, 0.5], precisions_init=precisions)
    with pytest.raises(ValueError, match=r"covariance.* is not finite: .*too large to square in float64"
                                         r".*This is not a collapsed component: scale the features"):
        gm.fit(X)


def test_sklearn_kmeans_words_for_fewer_distinct_rows_than_clusters():
    X = np.repeat(np.random.default_rng(1).normal(size=(3, 2)), 100, axis=0)
    with warnings.catch_warnings(record=True) as theirs:
        warnings.simplefilter("always")
        SKKMeans(5, n_init=1, random_state=0).fit(X)
    with warnings.catch_warnings(record=True) as ours:
        warnings.simplefilter("always")
        KMeans(5, random_state=0).fit(X)
    want = [str(w.message) for w in theirs if issubclass(w.category, ConvergenceWarning.__mro__[1])]
    got = [str(w.message) for w in ours if issubclass(w.category, ConvergenceWarning)]
    assert want and got == want[:1]


def test_more_components_than_distinct_rows_warns_without_an_extra_pass():
    rows = np.random.default_rng(2).normal(size=(3, 2))
    X = da.from_array(np.repeat(rows, 200, axis=0), chunks=(150, -1))
    fine = da.from_array(np.random.default_rng(2).normal(size=(600, 2)), chunks=(150, -1))
    counts = {}
    for name, data, k in (("duplicates", X, 5), ("fine", fine, 5), ("enough", X, 3)):
        with ComputeCounter() as counter, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            GaussianMixture(k, random_state=0, max_iter=3, tol=0.0).fit(data)
        counts[name] = counter.count
        messages = [str(w.message) for w in caught if issubclass(w.category, ConvergenceWarning)]
        distinct = [m for m in messages if "distinct rows" in m]
        if name == "duplicates":
            assert distinct == [(
                "X holds only 3 distinct rows, fewer than n_components (5): several components will "
                "coincide or be empty. Use n_components <= 3, or remove the duplicate rows."
            )]
        else:
            assert not distinct, messages
    assert counts["duplicates"] == counts["fine"] == counts["enough"]


def test_distinct_rows_seen_in_a_partial_sample():
    rows = np.random.default_rng(3).normal(size=(3, 2))
    X = da.from_array(np.repeat(rows, 100_000, axis=0), chunks=(50_000, -1))
    with pytest.warns(ConvergenceWarning, match=r"The initialisation sample \(100000 of the 300000 rows of X\) "
                                                r"holds only 3 distinct rows, fewer than n_clusters \(4\)"):
        KMeans(4, random_state=0, max_iter=3).fit(X)


@pytest.mark.parametrize("make", [lambda: GaussianMixture(1), lambda: KMeans(1), lambda: GaussianMixture(2)])
def test_one_repeated_row_warns(make):
    X = np.tile([[1.5, -2.0]], (400, 1))
    with pytest.warns(ConvergenceWarning, match=r"Every row of X is the same \(\[ 1\.5 -2\. ?\]\): the data are "
                                                r"one repeated row"):
        make().fit(X)


def test_distinct_rows_is_exact_below_its_bound():
    rng = np.random.default_rng(4)
    rows = rng.integers(0, 3, size=(5000, 2)).astype(float)  # 9 distinct rows, many collisions
    assert distinct_rows(rows, 100) == 9
    assert distinct_rows(rows, 5) >= 5
    assert distinct_rows(rows[:0], 3) == 0


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_m_step_names_the_feature_whose_squares_overflowed(covariance_type):
    from dask_em.families.gaussian import m_step

    means = np.array([[0.0, 1e160, 0.0], [1.0, 2.0, 3.0]])
    s2 = np.zeros((2, 3, 3)) if covariance_type == "full" else np.zeros((2, 3))
    s2[(0, 1, 1) if covariance_type == "full" else (0, 1)] = np.inf
    stats = {"nk": np.array([10.0, 10.0]), "s1": np.zeros((2, 3)), "s2": s2}
    with pytest.raises(ValueError, match=r"the covariance of component 0 is not finite: the values of feature 1 "
                                         r"\(mean 1e\+160\) are too large to square in float64"):
        m_step(stats, {"means": means}, covariance_type)
