"""Sphinx configuration of the dask-em documentation (``pip install -e ".[docs]"``).

Build: ``sphinx-build -W -b html docs docs/_build/html`` (warnings are errors).
"""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))  # document this checkout, not an installed copy

import dask_em  # noqa: E402

project = "dask-em"
author = "the dask-em developers"
copyright = "2026, the dask-em developers"
release = version = dask_em.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "numpydoc",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
myst_heading_anchors = 3
# The included READMEs link to files of the repository (scripts, recipes): links
# that are not documentation pages are kept as written.
suppress_warnings = ["myst.xref_missing"]

autodoc_default_options = {"member-order": "bysource"}
numpydoc_show_class_members = False  # methods are listed explicitly in api.rst
numpydoc_xref_param_type = False
numpydoc_attributes_as_param_list = False
# The checks tests/test_docs.py enforces on the public objects, also at build time.
numpydoc_validation_checks = {"GL08", "PR01", "PR02", "PR03", "PR06", "PR07", "PR09", "RT01", "RT03", "SS05"}
# Inherited scikit-learn methods keep scikit-learn's docstrings: not ours to validate.
numpydoc_validation_exclude = {r"\.get_params$", r"\.set_params$", r"\.set_output$"}

html_theme = "alabaster"
html_title = f"dask-em {release}"
