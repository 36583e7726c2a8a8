"""The documentation: numpydoc validation of every public object, and the Sphinx site
built with warnings as errors (``pip install -e ".[docs]"``; the test extra has the
same tools)."""

import html
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

import dask_em

ROOT = Path(__file__).resolve().parents[1]
#: numpydoc checks every public docstring passes (docs/conf.py enforces the same at build time):
#: no docstring, parameters undocumented / unknown / without a description, a Returns
#: section missing or without a description, summaries in the third person.
CHECKS = {"GL08", "PR01", "PR02", "PR03", "PR06", "PR07", "PR09", "RT01", "RT03", "SS05"}


def public_objects():
    """``dask_em.__all__`` and the public methods that dask-em defines on its classes."""
    for name in dask_em.__all__:
        if name.startswith("_"):
            continue
        obj = getattr(dask_em, name)
        yield f"dask_em.{name}"
        if inspect.isclass(obj) and not issubclass(obj, BaseException):
            instance = obj()
            for member, value in inspect.getmembers(obj):
                if member.startswith("_") or not callable(value) or not hasattr(instance, member):
                    continue  # (a method a model does not offer, e.g. partial_fit, is hidden)
                # inherited scikit-learn methods (get_params, set_output, ...) keep its docstrings
                if (getattr(value, "__module__", "") or "").startswith("dask_em"):
                    yield f"dask_em.{name}.{member}"


def test_public_docstrings_pass_numpydoc_validation():
    validate = pytest.importorskip("numpydoc.validate").validate
    names = list(public_objects())
    assert len(names) > 50  # the estimators' methods are included
    failures = {}
    for name in names:
        errors = [f"{code}: {message}" for code, message in validate(name)["errors"] if code in CHECKS]
        if errors:
            failures[name] = errors
    assert not failures, "\n".join(f"{name}: {errors}" for name, errors in failures.items())


def test_every_documented_parameter_exists():
    """The estimators document their constructor parameters, and only those (a numpydoc
    PR02 found BernoulliMixture's docstring promising an ``algorithm`` it did not take)."""
    for name in ("GaussianMixture", "KMeans", "BernoulliMixture", "PoissonMixture", "CategoricalMixture"):
        cls = getattr(dask_em, name)
        assert "algorithm" in cls().get_params(), name


def test_sphinx_site_builds_without_warnings(tmp_path):
    pytest.importorskip("sphinx")
    pytest.importorskip("numpydoc")
    pytest.importorskip("myst_parser")
    out = tmp_path / "html"
    res = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(ROOT / "docs"), str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    api = (out / "api.html").read_text()
    for name in ("GaussianMixture", "KMeans", "select_n_components", "plot_components", "check_family"):
        assert f'id="dask_em.{name}' in api or f'id="dask_em.plot.{name}' in api or f'id="dask_em.testing.{name}' in api, name
    assert 'id="dask_em.GaussianMixture.predict_proba"' in api
    assert "sample_weight" in api
    # getting started shows the README's two set-up commands, as written
    readme_commands = [line for line in (ROOT / "README.md").read_text().splitlines()
                       if line.startswith("python3 -m venv .venv")]
    assert len(readme_commands) == 2
    page = html.unescape(re.sub(r"<[^>]+>", "", (out / "getting-started.html").read_text()))
    for command in readme_commands:
        assert command in page, command
    assert "Out of core" in (out / "benchmarks.html").read_text()
    for page in ("inputs", "out-of-core", "clusters", "models", "choosing-k", "failure"):
        assert (out / "user-guide" / f"{page}.html").exists(), page
