"""``partial_fit`` inside dask-ml's real ``Incremental`` wrapper (issue 12, item 5).

dask-ml is not in the test extra: its dependencies bring numba, sparse and pyarrow,
which scipy, scikit-learn and pandas import at start-up once installed, so importing
dask_em took 343 MB instead of 163 and the suite's LocalCluster workers (400 MiB
limit) paused. Here dask-ml is installed without its dependencies into a folder of
its own, with the two it needs to import beside this environment's packages
(multipledispatch, and pyarrow for ``dask.dataframe``), and the checks of
``_incremental_child.py`` run in a child Python that has that folder on its path.
The suite's own processes never see these packages.

pip needs the package index (as ``pip install -e ".[test]"`` did): without it the
test fails, with pip's message.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
# dask-ml pinned: the version checked by hand in 1521172; its two imports need no pin
PACKAGES = ["dask-ml==2025.1.0", "multipledispatch>=0.6", "pyarrow>=14"]


@pytest.fixture(scope="module")
def dask_ml_path(tmp_path_factory):
    target = tmp_path_factory.mktemp("dask-ml")
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--disable-pip-version-check",
           "--target", str(target), *PACKAGES]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"could not install {PACKAGES} with pip:\n{done.stdout}\n{done.stderr}"
    return target


@pytest.mark.slow
def test_partial_fit_inside_dask_ml_incremental(dask_ml_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(dask_ml_path), str(HERE.parent), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, str(HERE / "_incremental_child.py")], capture_output=True,
                          text=True, timeout=600, env=env, cwd=HERE.parent)
    assert done.returncode == 0, f"the checks in dask-ml's Incremental failed:\n{done.stdout}\n{done.stderr}"
    assert done.stdout.strip().splitlines()[-1] == "ok", done.stdout
