"""deploy/slurm: the batch script's #SBATCH directives, its launch.py call parsed by
the launcher's own parser, and the launcher run end to end against a real
distributed.LocalCluster standing in for dask-jobqueue's SLURMCluster.

Not run here (no SLURM): sbatch itself and SLURMCluster submitting worker jobs.
dask-jobqueue is not a test dependency; the launcher imports it lazily.
"""

import importlib.util
import json
import re
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from dask.utils import parse_bytes
from distributed import LocalCluster
from scipy.optimize import linear_sum_assignment
from sklearn.mixture import GaussianMixture as SkGaussianMixture

ROOT = Path(__file__).resolve().parents[1]
SBATCH = ROOT / "deploy" / "slurm" / "fit.sbatch"

spec = importlib.util.spec_from_file_location("dask_em_slurm_launch", ROOT / "deploy" / "slurm" / "launch.py")
launch = importlib.util.module_from_spec(spec)
spec.loader.exec_module(launch)

# Keyword arguments of dask_jobqueue.SLURMCluster (its JobQueueCluster/SLURMJob
# parameters, dask-jobqueue 0.8-0.9 documentation); the launcher must use only these.
SLURMCLUSTER_KWARGS = {
    "queue", "account", "walltime", "job_cpu", "job_mem", "cores", "memory", "processes",
    "interface", "nanny", "local_directory", "death_timeout", "worker_extra_args",
    "job_extra_directives", "job_directives_skip", "job_script_prologue", "log_directory",
    "shebang", "python", "job_name", "name", "n_workers", "silence_logs", "asynchronous",
    "security", "scheduler_options", "scheduler_cls", "shared_temp_directory", "env_extra",
}
# sbatch long options used by such scripts (sbatch --help)
SBATCH_OPTIONS = {
    "job-name", "nodes", "ntasks", "cpus-per-task", "mem", "mem-per-cpu", "time", "output",
    "error", "partition", "account", "qos", "constraint", "gres", "exclusive", "mail-type",
    "mail-user",
}


def _sbatch_directives(text):
    """#SBATCH lines as sbatch reads them: only those before the first command line."""
    directives = []
    for line in text.splitlines()[1:]:
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            break
        if stripped.startswith("#SBATCH"):
            directives.append(stripped[len("#SBATCH"):].strip())
    return directives


def _launch_call(text):
    """The arguments of the `python deploy/slurm/launch.py ...` command in the script."""
    joined = re.sub(r"\\\n\s*", " ", text)
    lines = [ln for ln in joined.splitlines() if ln.startswith("python deploy/slurm/launch.py")]
    assert len(lines) == 1, lines
    env = {"STORE": "/shared/cube.zarr", "OUT": "/shared/out", "VENV": "/shared/venv"}
    words = shlex.split(lines[0])
    # the shell expands these in the driver job; '$TMPDIR' is single-quoted and stays
    words = [re.sub(r"\$(\w+)", lambda m: env.get(m.group(1), m.group(0)), w) for w in words]
    return words[2:]


def test_sbatch_directives_are_read_by_sbatch_and_valid():
    text = SBATCH.read_text()
    assert text.startswith("#!/bin/bash\n")
    directives = _sbatch_directives(text)
    # all #SBATCH lines of the file come before the first command (sbatch ignores later ones)
    assert len(directives) == text.count("\n#SBATCH")
    opts = {}
    for d in directives:
        m = re.fullmatch(r"--([a-z-]+)=(\S+)", d)
        assert m, f"not a --name=value directive: {d!r}"
        assert m.group(1) in SBATCH_OPTIONS, m.group(1)
        opts[m.group(1)] = m.group(2)
    assert opts["nodes"] == "1" and opts["ntasks"] == "1"
    assert int(opts["cpus-per-task"]) >= 1
    assert re.fullmatch(r"\d+[KMGT]?", opts["mem"])
    assert re.fullmatch(r"(\d+-)?\d{1,2}:\d{2}:\d{2}", opts["time"])
    assert "%j" in opts["output"] and "%j" in opts["error"]


def test_sbatch_launch_call_parses_and_fits_in_the_driver_job():
    text = SBATCH.read_text()
    args = launch.build_parser().parse_args(_launch_call(text))
    launch.check_args(args)
    assert args.store == "/shared/cube.zarr" and args.array == "reflectance"
    assert (args.n_components, args.covariance_type) == (8, "full")
    options = launch.cluster_options(args)
    assert set(options) <= SLURMCLUSTER_KWARGS
    assert options["local_directory"] == "$TMPDIR"  # expands on each worker's node
    assert options["job_script_prologue"] == ["source /shared/venv/bin/activate"]
    # worker job walltime fits in the driver's: workers die before the driver does
    h, m, s = map(int, args.walltime.split(":"))
    dh, dm, ds = map(int, re.search(r"--time=(\d+):(\d+):(\d+)", text).groups())
    assert h * 3600 + m * 60 + s < dh * 3600 + dm * 60 + ds
    per_process = parse_bytes(args.memory) / args.processes
    assert per_process >= 4 * 2**30


def _write_store(path):
    rng = np.random.default_rng(7)
    centres = np.array([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0]])
    X = np.concatenate([c + rng.standard_normal((3000, 2)) for c in centres])
    X = X[rng.permutation(len(X))]
    g = zarr.open_group(str(path), mode="w")
    g.create_array("reflectance", shape=X.shape, chunks=(1500, 2), dtype="float64")[:] = X
    return X


@pytest.mark.small_workers  # 800 MiB for two worker processes
def test_launcher_against_localcluster_stand_in(tmp_path):
    X = _write_store(tmp_path / "cube.zarr")
    seen = {}

    def local_stand_in(**options):
        """A real LocalCluster sized as SLURMCluster would size one job's workers."""
        assert set(options) <= SLURMCLUSTER_KWARGS
        seen["options"] = options
        cluster = LocalCluster(
            n_workers=0,
            processes=True,
            threads_per_worker=options["cores"] // options["processes"],
            memory_limit=parse_bytes(options["memory"]) // options["processes"],
            dashboard_address=options["scheduler_options"]["dashboard_address"],
            host="127.0.0.1",
        )
        seen["cluster"] = cluster
        return cluster

    argv = [
        str(tmp_path / "cube.zarr"), "--array", "reflectance", "--n-components", "3",
        "--covariance-type", "diag", "--tol", "1e-8", "--max-iter", "300",
        "--cores", "2", "--processes", "2", "--memory", "800MiB", "--walltime", "00:30:00",
        "--queue", "debug", "--job-extra=--qos=short", "--min-workers", "1", "--max-workers", "2",
        "--dashboard-address", "127.0.0.1:0",
        "--labels", str(tmp_path / "labels.zarr"), "--summary", str(tmp_path / "summary.json"),
        "--output", str(tmp_path / "model.npz"),
    ]
    summary = launch.run(argv, cluster_factory=local_stand_in)

    assert seen["options"]["queue"] == "debug"
    assert seen["options"]["job_extra_directives"] == ["--qos=short"]
    adaptive = seen["cluster"]._adaptive
    assert (adaptive.minimum, adaptive.maximum) == (1, 2)
    assert 1 <= summary["workers_at_end"] <= 2
    assert seen["cluster"].status.name == "closed"

    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["n_iter"] == summary["n_iter"] and on_disk["converged"]
    import dask_em

    saved = dask_em.load(tmp_path / "model.npz")
    np.testing.assert_array_equal(saved.means_, np.array(summary["means"]))
    assert on_disk["shape"] == [9000, 2] and on_disk["chunks_rows"] == [1500]
    assert len(on_disk["history"]) == on_disk["n_iter"]

    sk = SkGaussianMixture(3, covariance_type="diag", tol=1e-8, max_iter=300, random_state=0).fit(X)
    means = np.array(on_disk["means"])
    rows, cols = linear_sum_assignment(((means[:, None] - sk.means_[None]) ** 2).sum(-1))
    np.testing.assert_allclose(means[rows], sk.means_[cols], atol=1e-5)
    labels = zarr.open_array(str(tmp_path / "labels.zarr"), mode="r")[:]
    np.testing.assert_array_equal(cols[labels], sk.predict(X))


def test_launcher_errors(monkeypatch, tmp_path):
    parser = launch.build_parser()
    with pytest.raises(SystemExit, match="--cores"):
        launch.check_args(parser.parse_args(["s", "--n-components", "2", "--cores", "1", "--processes", "2"]))
    with pytest.raises(SystemExit, match="--min-workers"):
        launch.check_args(parser.parse_args(["s", "--n-components", "2", "--min-workers", "3", "--max-workers", "2"]))
    monkeypatch.setitem(sys.modules, "dask_jobqueue", None)  # as if not installed
    with pytest.raises(SystemExit, match="pip install dask-jobqueue"):
        launch.slurm_cluster(cores=1, memory="1GiB")
    _write_store(tmp_path / "cube.zarr")
    with pytest.raises(SystemExit, match="--array"):
        launch.open_store(str(tmp_path / "cube.zarr"))
