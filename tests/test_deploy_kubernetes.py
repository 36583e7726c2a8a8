"""deploy/kubernetes: the manifests parsed and validated, and checked against each other
and against the Dockerfile.

Not run here (no Kubernetes, no container runtime): kubectl apply, the operator, docker
build. The DaskCluster schema below is transcribed from the Dask Kubernetes operator's
CRD templates (dask_kubernetes/operator/customresources/templates.yaml: DaskCluster
requires spec.scheduler and spec.worker; scheduler requires spec (a PodSpec) and
service (a ServiceSpec); worker requires spec), with the parts of PodSpec and
ServiceSpec these manifests use.
"""

import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml
from dask.utils import parse_bytes

import dask_em

K8S = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes"

NAMED_PORT = {"type": "object", "required": ["containerPort"], "properties": {
    "name": {"type": "string", "pattern": "^[a-z0-9-]{1,15}$"},
    "containerPort": {"type": "integer", "minimum": 1, "maximum": 65535},
    "protocol": {"enum": ["TCP", "UDP", "SCTP"]},
}}
QUANTITY = {"type": "string", "pattern": r"^[0-9.]+(m|Ki|Mi|Gi|Ti)?$"}
RESOURCES = {"type": "object", "properties": {
    "requests": {"type": "object", "additionalProperties": QUANTITY},
    "limits": {"type": "object", "additionalProperties": QUANTITY},
}}
CONTAINER = {"type": "object", "required": ["name", "image"], "properties": {
    "name": {"type": "string"},
    "image": {"type": "string", "minLength": 1},
    "imagePullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
    "args": {"type": "array", "items": {"type": "string"}},
    "command": {"type": "array", "items": {"type": "string"}},
    "ports": {"type": "array", "items": NAMED_PORT},
    "resources": RESOURCES,
    "volumeMounts": {"type": "array", "items": {"type": "object", "required": ["name", "mountPath"]}},
}}
POD_SPEC = {"type": "object", "required": ["containers"], "properties": {
    "containers": {"type": "array", "minItems": 1, "items": CONTAINER},
    "volumes": {"type": "array", "items": {"type": "object", "required": ["name"]}},
    "restartPolicy": {"enum": ["Always", "OnFailure", "Never"]},
}}
SERVICE_SPEC = {"type": "object", "required": ["ports"], "properties": {
    "type": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
    "selector": {"type": "object", "additionalProperties": {"type": "string"}},
    "ports": {"type": "array", "minItems": 1, "items": {"type": "object", "required": ["port"], "properties": {
        "port": {"type": "integer"}, "targetPort": {"type": ["string", "integer"]}, "name": {"type": "string"},
    }}},
}}
DASKCLUSTER = {"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "properties": {
    "apiVersion": {"const": "kubernetes.dask.org/v1"},
    "kind": {"const": "DaskCluster"},
    "metadata": {"type": "object", "required": ["name"]},
    "spec": {"type": "object", "required": ["scheduler", "worker"], "properties": {
        "idleTimeout": {"type": "integer"},
        "worker": {"type": "object", "required": ["spec"], "properties": {
            "replicas": {"type": "integer", "minimum": 0}, "spec": POD_SPEC}},
        "scheduler": {"type": "object", "required": ["spec", "service"], "properties": {
            "spec": POD_SPEC, "service": SERVICE_SPEC}},
    }},
}}
JOB = {"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "properties": {
    "apiVersion": {"const": "batch/v1"},
    "kind": {"const": "Job"},
    "spec": {"type": "object", "required": ["template"], "properties": {
        "backoffLimit": {"type": "integer"},
        "template": {"type": "object", "required": ["spec"], "properties": {
            "spec": {**POD_SPEC, "required": ["containers", "restartPolicy"],
                     "properties": {**POD_SPEC["properties"], "restartPolicy": {"enum": ["OnFailure", "Never"]}}}}},
    }},
}}
PVC = {"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "properties": {
    "apiVersion": {"const": "v1"},
    "kind": {"const": "PersistentVolumeClaim"},
    "spec": {"type": "object", "required": ["accessModes", "resources"]},
}}


def _load(name):
    docs = list(yaml.safe_load_all((K8S / name).read_text()))
    assert len(docs) == 1
    return docs[0]


@pytest.fixture(scope="module")
def manifests():
    return {"cluster": _load("daskcluster.yaml"), "job": _load("fit-job.yaml"), "pvc": _load("pvc.yaml")}


def _k8s_bytes(q):
    m = re.fullmatch(r"([0-9.]+)(Ki|Mi|Gi|Ti)?", q)
    return float(m.group(1)) * {None: 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}[m.group(2)]


def _containers(manifests):
    c = manifests["cluster"]["spec"]
    return {
        "scheduler": c["scheduler"]["spec"]["containers"][0],
        "worker": c["worker"]["spec"]["containers"][0],
        "job": manifests["job"]["spec"]["template"]["spec"]["containers"][0],
    }


def test_resources_match_their_schemas(manifests):
    jsonschema.validate(manifests["cluster"], DASKCLUSTER)
    jsonschema.validate(manifests["job"], JOB)
    jsonschema.validate(manifests["pvc"], PVC)
    bad = yaml.safe_load((K8S / "daskcluster.yaml").read_text())
    del bad["spec"]["scheduler"]["service"]
    with pytest.raises(jsonschema.ValidationError, match="'service' is a required property"):
        jsonschema.validate(bad, DASKCLUSTER)


def test_scheduler_service_and_probes_point_at_named_ports(manifests):
    name = manifests["cluster"]["metadata"]["name"]
    sched = manifests["cluster"]["spec"]["scheduler"]
    ports = {p["name"]: p["containerPort"] for p in sched["spec"]["containers"][0]["ports"]}
    assert ports == {"tcp-comm": 8786, "http-dashboard": 8787}
    service = sched["service"]
    assert service["selector"] == {"dask.org/cluster-name": name, "dask.org/component": "scheduler"}
    for p in service["ports"]:
        assert p["targetPort"] in ports and p["port"] == ports[p["targetPort"]]
    for probe in ("readinessProbe", "livenessProbe"):
        get = sched["spec"]["containers"][0][probe]["httpGet"]
        assert get["port"] in ports and get["path"] == "/health"


def test_one_image_and_the_right_commands(manifests):
    cs = _containers(manifests)
    assert len({c["image"] for c in cs.values()}) == 1
    assert cs["scheduler"]["args"][:2] == ["dask", "scheduler"]
    assert cs["worker"]["args"][:2] == ["dask", "worker"]
    assert "$(DASK_WORKER_NAME)" in cs["worker"]["args"]
    # the image tag is the package version the Dockerfile installs
    assert cs["job"]["image"].rsplit(":", 1)[1] == dask_em.__version__


def test_worker_memory_limit_fits_its_container(manifests):
    w = _containers(manifests)["worker"]
    args = w["args"]
    limit = parse_bytes(args[args.index("--memory-limit") + 1])
    container = _k8s_bytes(w["resources"]["limits"]["memory"])
    assert limit < container  # headroom for the nanny and the interpreter
    assert limit >= 0.75 * container
    nthreads = int(args[args.index("--nthreads") + 1])
    assert nthreads == int(w["resources"]["limits"]["cpu"])


def test_fit_job_reaches_the_scheduler_and_the_data(manifests):
    cluster, job, pvc = manifests["cluster"], manifests["job"], manifests["pvc"]
    cmd = _containers(manifests)["job"]["command"]
    assert cmd[:2] == ["dask-em", "fit"]
    store, opts = cmd[2], dict(zip(cmd[3::2], cmd[4::2]))
    assert len(cmd[3:]) % 2 == 0 and all(k.startswith("--") for k in opts)
    # the documented synopsis: dask-em fit STORE [--array NAME] --n-components K
    #   --covariance-type T [--scheduler ADDRESS] --output MODEL
    assert set(opts) == {"--array", "--n-components", "--covariance-type", "--scheduler", "--output"}
    assert int(opts["--n-components"]) >= 1
    assert opts["--covariance-type"] in ("full", "tied", "diag", "spherical")
    sched_port = next(p["port"] for p in cluster["spec"]["scheduler"]["service"]["ports"] if p["name"] == "tcp-comm")
    assert opts["--scheduler"] == f"tcp://{cluster['metadata']['name']}-scheduler:{sched_port}"
    # the store and the output lie on the volume that the workers mount at the same path
    pods = {"worker": cluster["spec"]["worker"]["spec"], "job": job["spec"]["template"]["spec"]}
    mounts = {}
    for role, pod in pods.items():
        volumes = {v["name"]: v for v in pod["volumes"]}
        for m in pod["containers"][0]["volumeMounts"]:
            claim = volumes[m["name"]]["persistentVolumeClaim"]["claimName"]
            assert claim == pvc["metadata"]["name"]
            mounts[role] = m["mountPath"]
    assert mounts["worker"] == mounts["job"]
    assert store.startswith(mounts["job"] + "/") and opts["--output"].startswith(mounts["job"] + "/")
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]


def _dockerfile():
    """(instruction, argument) pairs, with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (K8S / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_builds_the_package_for_all_roles():
    steps = _dockerfile()
    assert steps[0][0] == "FROM" and re.fullmatch(r"python:3\.(1[0-9])-slim", steps[0][1])
    copies = [a for i, a in steps if i == "COPY"]
    assert "dask_em ./dask_em" in copies and any(a.startswith("pyproject.toml") for a in copies)
    runs = " && ".join(a for i, a in steps if i == "RUN")
    install = shlex.split(runs.split("pip install", 1)[1].split("&&")[0])
    assert install[0].startswith(".") and "dask[diagnostics]" in install
    extras = re.findall(r"\[(\w+)\]", install[0])
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    for extra in extras:
        assert re.search(rf"^{extra} = ", pyproject, re.M), extra
    users = [a for i, a in steps if i == "USER"]
    assert users and users[-1] not in ("root", "0")
    # commands the manifests run exist in the image: dask (from dask) and dask-em
    assert steps[-1][0] == "CMD" and "dask-em" in steps[-1][1]


# Needs issue 3: the `dask-em` console script ([project.scripts] in pyproject.toml), which
# the fit Job and the Dockerfile's CMD run. Not skipped on purpose.
def test_image_provides_the_dask_em_command():
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    scripts = pyproject.split("[project.scripts]", 1)
    assert len(scripts) == 2 and re.search(r'^dask-em = "dask_em\.', scripts[1], re.M)
