"""The KubeRay manifests (infra/ray/kuberay-raycluster.yaml, infra/ray/kuberay-rayjob.yaml) against what
KubeRay 1.7 does with them and what the driver expects, with no cluster and no network:

- ray.io/v1 RayCluster / RayJob, rayVersion = the `ray==` pin of constraints.txt (>= 2.52.0, KubeRay's
  minimum for token auth);
- the head's dashboard listens on 0.0.0.0 (KubeRay's default, common/pod.go setMissingRayStartParams: the
  submitter and the operator reach the dashboard through the head Service) and takes no Ray task
  (`num-cpus: "0"`);
- a worker group whose minReplicas != maxReplicas has the in-tree autoscaler (`enableInTreeAutoscaling`:
  without it nothing changes `replicas`);
- auth through `spec.authOptions` (KubeRay >= 1.6 injects RAY_AUTH_MODE/RAY_AUTH_TOKEN into every Ray
  container, and keeps a pod's own RAY_AUTH_MODE if one is set: so none is);
- the containers that run the driver or Ray Train (head, GPU workers) get the S3 credentials and the MLflow
  URI from the same Secrets; the RayJob's submitter gets what its bash expands in the entrypoint from the
  same Secrets too; every Secret name/key the manifests use is created by a `kubectl create secret` line of
  infra/ray/README.md;
- the RayJob's entrypoint is one command that `onegen repro` accepts, joins the cluster with
  `distributed.ray_address=auto`, checkpoints to shared storage, and fits the GPU worker group.

The field names were also checked against the v1.7.0 CRD schemas (not stored here: about 1 MB each):
`KUBERAY_CRD_DIR=<dir with ray.io_rayclusters.yaml and ray.io_rayjobs.yaml> pytest tests/infra` runs that
check too; without the variable it is skipped.
"""
from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.conftest import ROOT

CLUSTER_REL = "infra/ray/kuberay-raycluster.yaml"
JOB_REL = "infra/ray/kuberay-rayjob.yaml"
CLUSTER_FILE = ROOT / CLUSTER_REL
JOB_FILE = ROOT / JOB_REL
README = ROOT / "infra" / "ray" / "README.md"
README_SECTION = "## Kubernetes (KubeRay)"

# what the driver and Ray Train's workers read from the environment (never from params)
STORAGE_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
MLFLOW_ENV = "MLFLOW_TRACKING_URI"
SHARED_ENV = (*STORAGE_ENV, MLFLOW_ENV)
# storage every pod reaches (pyarrow / fsspec URI schemes); a bare or file:// path is pod-local
SHARED_STORAGE_SCHEMES = {"s3", "gs", "gcs", "abfs", "abfss", "az", "hdfs"}
# KubeRay's names and numbers for the head's ports (ray-operator/controllers/ray/utils/constant.go)
KUBERAY_HEAD_PORTS = {"gcs-server": 6379, "dashboard": 8265, "client": 10001}
AUTH_TOKEN_KEY = "auth_token"  # utils.RAY_AUTH_TOKEN_SECRET_KEY


def _load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def cluster() -> dict[str, Any]:
    return _load(CLUSTER_FILE)


@pytest.fixture(scope="module")
def job() -> dict[str, Any]:
    return _load(JOB_FILE)


@pytest.fixture(scope="module", params=["RayCluster.spec", "RayJob.spec.rayClusterSpec"])
def spec(request, cluster, job) -> dict[str, Any]:
    """Each RayClusterSpec in the two manifests."""
    return cluster["spec"] if request.param == "RayCluster.spec" else job["spec"]["rayClusterSpec"]


def head_container(spec: dict[str, Any]) -> dict[str, Any]:
    # KubeRay runs Ray in the first container of each template (utils.RayContainerIndex = 0)
    return spec["headGroupSpec"]["template"]["spec"]["containers"][0]


def worker_containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [g["template"]["spec"]["containers"][0] for g in spec["workerGroupSpecs"]]


def submitter_container(job: dict[str, Any]) -> dict[str, Any]:
    return job["spec"]["submitterPodTemplate"]["spec"]["containers"][0]


def all_containers(doc: Any) -> Iterator[dict[str, Any]]:
    """Every container and init container anywhere in a manifest."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                yield from value
            else:
                yield from all_containers(value)
    elif isinstance(doc, list):
        for item in doc:
            yield from all_containers(item)


def secret_env(container: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """{env name: (Secret name, key)} of the container's env entries that come from a Secret."""
    out = {}
    for e in container.get("env") or []:
        ref = (e.get("valueFrom") or {}).get("secretKeyRef")
        if ref:
            out[e["name"]] = (ref["name"], ref["key"])
    return out


def secret_refs(doc: Any) -> set[tuple[str, str]]:
    """Every (Secret name, key) a manifest references: secretKeyRef anywhere, and authOptions.secretName
    (KubeRay reads its key `auth_token`)."""
    refs: set[tuple[str, str]] = set()
    if isinstance(doc, dict):
        if isinstance(doc.get("secretKeyRef"), dict):
            refs.add((doc["secretKeyRef"]["name"], doc["secretKeyRef"]["key"]))
        if isinstance(doc.get("authOptions"), dict) and doc["authOptions"].get("secretName"):
            refs.add((doc["authOptions"]["secretName"], AUTH_TOKEN_KEY))
        for value in doc.values():
            refs |= secret_refs(value)
    elif isinstance(doc, list):
        for item in doc:
            refs |= secret_refs(item)
    return refs


def readme_section() -> str:
    text = README.read_text()
    assert README_SECTION in text, f"{README} has no '{README_SECTION}' section"
    section = text.split(README_SECTION, 1)[1]
    nxt = re.search(r"^## ", section, flags=re.MULTILINE)  # up to the next section of the same level
    return section[: nxt.start()] if nxt else section


def readme_commands() -> list[str]:
    """The section's shell lines, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", readme_section())
    lines = [line.split(" # ")[0].strip() for line in joined.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def readme_secrets() -> set[tuple[str, str]]:
    """(Secret name, key) for every key of every `kubectl … create secret generic NAME --from-literal=KEY=…`."""
    created: set[tuple[str, str]] = set()
    for line in readme_commands():
        m = re.match(r"kubectl\s.*?\bcreate\s+secret\s+generic\s+([a-z0-9][-a-z0-9.]*)(.*)$", line)
        if m:
            for key in re.findall(r"--from-(?:literal|file)=([^=\s]+)=", m.group(2)):
                created.add((m.group(1), key))
    return created


def ray_pin() -> str:
    pins = re.findall(r"^ray(?:\[[^\]]*\])?==([^\s;#]+)", (ROOT / "constraints.txt").read_text(), flags=re.MULTILINE)
    assert len(pins) == 1, f"constraints.txt pins ray {len(pins)} times: {pins}"
    return pins[0]


def version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v)[:3])


def cpu_quantity(q: str | int) -> float:
    q = str(q)
    return float(q[:-1]) / 1000 if q.endswith("m") else float(q)


# --- kind, versions -------------------------------------------------------------------------------------

def test_api_version_and_kind(cluster, job):
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")


def test_ray_version_is_the_constraints_pin(spec):
    assert spec["rayVersion"] == ray_pin()
    # KubeRay refuses authOptions.mode token below Ray 2.52.0 (utils/validation.go ValidateRayClusterSpec)
    assert version_tuple(spec["rayVersion"]) >= (2, 52, 0)


def test_rayjob_runs_on_the_same_cluster_spec(cluster, job):
    """The RayJob creates its own cluster from a copy of the RayCluster's spec: same auth, Secrets, env,
    ports and autoscaling in both (a change to one file must be made to the other)."""
    assert "clusterSelector" not in job["spec"]
    assert job["spec"]["rayClusterSpec"] == cluster["spec"]


# --- head -----------------------------------------------------------------------------------------------

def test_head_dashboard_listens_on_all_interfaces(spec):
    assert spec["headGroupSpec"]["rayStartParams"].get("dashboard-host", "0.0.0.0") == "0.0.0.0"


def test_head_takes_no_ray_tasks(spec):
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    # a group-level `resources` would rewrite num-cpus (common/pod.go updateRayStartParamsResources)
    assert "resources" not in head


def test_head_ports_are_kuberays(spec):
    ports = {p["name"]: p["containerPort"] for p in head_container(spec).get("ports", [])}
    assert {name: ports.get(name) for name in KUBERAY_HEAD_PORTS} == KUBERAY_HEAD_PORTS


# --- workers, autoscaling -------------------------------------------------------------------------------

def test_autoscaler_on_when_a_group_can_scale(spec):
    for group in spec["workerGroupSpecs"]:
        lo, hi = group.get("minReplicas", 0), group.get("maxReplicas", 2**31 - 1)
        assert lo <= group.get("replicas", lo) <= hi, group["groupName"]
        if lo != hi:
            assert spec.get("enableInTreeAutoscaling") is True, (
                f"worker group {group['groupName']}: minReplicas {lo} != maxReplicas {hi} without "
                "enableInTreeAutoscaling: true never scales")


def test_gpu_workers_are_schedulable_on_gpu_nodes(spec):
    image = head_container(spec)["image"]
    for group in spec["workerGroupSpecs"]:
        c = group["template"]["spec"]["containers"][0]
        limits, requests = c["resources"]["limits"], c["resources"].get("requests", {})
        assert int(limits["nvidia.com/gpu"]) >= 1
        assert requests.get("nvidia.com/gpu", limits["nvidia.com/gpu"]) == limits["nvidia.com/gpu"]
        tolerations = group["template"]["spec"].get("tolerations", [])
        assert any(t.get("key") == "nvidia.com/gpu" for t in tolerations), group["groupName"]
        assert c["image"] == image  # one image: the same Ray, the same project code


# --- auth, Secrets, env ---------------------------------------------------------------------------------

def test_auth_through_auth_options(spec, cluster, job):
    assert spec["authOptions"] == {"mode": "token", "secretName": "onegen-ray-auth"}
    for doc in (cluster, job):
        for c in all_containers(doc):
            names = {e["name"] for e in c.get("env") or []}
            # KubeRay keeps a container's own RAY_AUTH_MODE/RAY_AUTH_TOKEN (common/pod.go
            # SetContainerTokenAuthEnvVars): one set here would override authOptions for that pod
            assert not names & {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"}, c["name"]


def test_driver_and_train_containers_share_the_secrets(spec, cluster):
    """The head runs the driver and the Train controller, the workers run Ray Train: each of them takes the
    storage credentials and the MLflow URI from a Secret, the same Secret and key in every one."""
    expected = {k: v for k, v in secret_env(head_container(cluster["spec"])).items() if k in SHARED_ENV}
    assert sorted(expected) == sorted(SHARED_ENV)
    for c in [head_container(spec), *worker_containers(spec)]:
        got = {k: v for k, v in secret_env(c).items() if k in SHARED_ENV}
        assert got == expected, c["name"]


def test_no_credential_or_tracking_uri_is_written_inline(cluster, job):
    for doc in (cluster, job):
        for c in all_containers(doc):
            inline = [e["name"] for e in c.get("env") or [] if e["name"] in SHARED_ENV and "value" in e]
            assert inline == [], c["name"]


def test_submitter_expands_only_secret_env_and_the_driver_stays_on_the_head(cluster, job):
    """KubeRay pastes the entrypoint into the submitter's `bash -ce` (common/job.go BuildJobSubmitCommand):
    every $VAR in it is expanded there, so the submitter must have it, from the same Secret as the head.
    The driver itself runs on the head (no entrypoint resources: Ray pins the JobSupervisor there)."""
    head = secret_env(head_container(cluster["spec"]))
    submitter = secret_env(submitter_container(job))
    used = set(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", job["spec"]["entrypoint"]))
    assert used == {MLFLOW_ENV}
    for name in used:
        assert submitter.get(name) == head[name]
    for name in set(submitter) & set(SHARED_ENV):
        assert submitter[name] == head[name]
    assert not {"entrypointNumCpus", "entrypointNumGpus", "entrypointResources"} & set(job["spec"])
    assert submitter_container(job)["image"] == head_container(job["spec"]["rayClusterSpec"])["image"]


def test_every_secret_used_is_created_in_the_readme(cluster, job):
    created = readme_secrets()
    used = secret_refs(cluster) | secret_refs(job)
    assert used == {("onegen-s3", "access_key_id"), ("onegen-s3", "secret_access_key"), ("onegen-s3", "region"),
                    ("onegen-mlflow", "tracking_uri"), ("onegen-ray-auth", AUTH_TOKEN_KEY)}
    assert used - created == set(), f"referenced but never created in {README.name}: {sorted(used - created)}"


# --- the RayJob -----------------------------------------------------------------------------------------

def test_rayjob_lifecycle(job):
    s = job["spec"]
    # a submitter Job that `kubectl logs -f` follows, and that checks `ray job status` before submitting
    assert s["submissionMode"] == "K8sJobMode"
    assert s["submitterPodTemplate"]["spec"]["restartPolicy"] == "Never"
    # the cluster (GPUs included) goes after the job, 10 minutes later; one retry, on a new cluster
    assert s["shutdownAfterJobFinishes"] is True
    assert s["ttlSecondsAfterFinished"] == 600
    assert s["backoffLimit"] == 1
    assert s["preRunningDeadlineSeconds"] > 0 and s["activeDeadlineSeconds"] > 0


def entrypoint_argv(entrypoint: str) -> list[str]:
    """The entrypoint as argv, each ${VAR…} replaced by `<VAR>` (the submitter's bash expands it)."""
    lexer = shlex.shlex(entrypoint, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    operators = [t for t in lexer if t and set(t) <= set("();<>|&")]
    # `cd x && …` or `a; b` would run the rest in the submitter pod, not on the cluster
    assert operators == [], f"the entrypoint must be one command; shell operators: {operators}"
    assert "`" not in entrypoint and "$(" not in entrypoint
    expanded = re.sub(r"\$\{([A-Za-z_]\w*)[^}]*\}|\$([A-Za-z_]\w*)", lambda m: f"<{m.group(1) or m.group(2)}>",
                      entrypoint)
    return shlex.split(expanded)


@pytest.fixture(scope="module")
def repro_args(job):
    from flows.cli import _parser
    from onegen_core.config import parse_overrides

    argv = entrypoint_argv(job["spec"]["entrypoint"])
    assert argv[0] == "onegen"
    args = _parser().parse_args(argv[1:])
    return args, parse_overrides(args.set)


def test_rayjob_entrypoint_is_onegen_repro_up_to_evaluate(repro_args):
    args, overrides = repro_args
    assert args.command == "repro"
    assert args.until in (None, "evaluate")
    assert len(overrides) == len(args.set), f"a key given twice (the last wins): {args.set}"
    assert Path(args.project_dir).is_absolute()  # the image's checkout; Ray's working directory is not it


def test_rayjob_entrypoint_joins_the_cluster_and_uses_shared_storage(repro_args):
    _, overrides = repro_args
    # the driver runs on the head, inside the cluster: `auto` finds it (tasks/adapters/ray_train.py start_ray)
    assert overrides["distributed.ray_address"] == "auto"
    assert overrides["distributed.use_gpu"] is True
    storage = urlsplit(overrides["distributed.storage_path"])
    assert storage.scheme in SHARED_STORAGE_SCHEMES and storage.netloc, overrides["distributed.storage_path"]
    assert overrides["mlflow.tracking_uri"] == f"<{MLFLOW_ENV}>"  # from Secret onegen-mlflow
    assert overrides["mlflow.artifact_location"] == ""  # the server's store, not a pod-local mlartifacts/


@pytest.fixture(scope="module")
def stage_params(repro_args, tmp_path_factory):
    """The params a stage reads after `onegen repro` wrote the entrypoint's overrides into params.yaml
    (flows.params_file.write_overrides, on a copy): params.yaml, then its profile over it."""
    from flows.params_file import merged_overrides, write_overrides
    from onegen_core.config import load_params

    args, overrides = repro_args
    root = tmp_path_factory.mktemp("project")
    shutil.copy(ROOT / "params.yaml", root / "params.yaml")
    shutil.copytree(ROOT / "profiles", root / "profiles")
    write_overrides(root, merged_overrides(overrides, profile=args.profile), logging.getLogger(__name__),
                    backup=False)
    return load_params(root / "params.yaml")


def test_rayjob_overrides_reach_the_stages(repro_args, stage_params):
    """A profile is laid over params.yaml when a stage reads it, so an override of a key the profile also
    sets would be written and then silently replaced: each override must be what the stages see."""
    from onegen_core.config import flatten

    _, overrides = repro_args
    seen = flatten(stage_params)
    assert {k: seen[k] for k in overrides} == overrides


def test_rayjob_training_fits_the_gpu_workers(spec, stage_params):
    d = stage_params.distributed
    gpus = sum(int(g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
               * g["maxReplicas"] for g in spec["workerGroupSpecs"])
    cpus = sum(cpu_quantity(g["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"])
               * g["maxReplicas"] for g in spec["workerGroupSpecs"])
    assert d.use_gpu is True
    assert d.num_workers * d.gpus_per_worker <= gpus
    assert d.num_workers * d.cpus_per_worker <= cpus


# --- the README's kubectl sequence ----------------------------------------------------------------------

def test_readme_has_the_kubectl_sequence(cluster, job):
    cmds = readme_commands()
    assert any(re.match(r"helm install \S+ kuberay/kuberay-operator --version 1\.7\.\d+\b", c) for c in cmds)
    for name in ("onegen-s3", "onegen-mlflow", "onegen-ray-auth"):
        assert any(re.search(rf"create secret generic {name}\b", c) for c in cmds), name
    for rel in (CLUSTER_REL, JOB_REL):
        assert any(re.search(rf"kubectl .*apply -f {re.escape(rel)}$", c) for c in cmds), rel
    # the commands name the objects: the submitter Job is named after the RayJob (rayjob_controller.go)
    assert (cluster["metadata"]["name"], job["metadata"]["name"]) == ("onegen", "onegen-repro")
    assert any(re.search(r"kubectl .*get rayjob onegen-repro\b", c) for c in cmds)
    assert any(re.search(r"kubectl .*logs -f job/onegen-repro\b", c) for c in cmds)
    assert any(re.search(r"kubectl .*delete rayjob onegen-repro\b", c) for c in cmds)
    assert any(re.search(r"helm uninstall kuberay-operator\b", c) for c in cmds)


# --- optional: field names against KubeRay's CRD schemas ------------------------------------------------

def _schema_errors(node: Any, schema: dict[str, Any], path: str) -> list[str]:
    """Unknown fields, wrong types and values outside an enum, by an OpenAPI v3 structural schema."""
    if schema.get("x-kubernetes-int-or-string"):
        return [] if isinstance(node, (int, str)) and not isinstance(node, bool) else [f"{path}: int or string"]
    if schema.get("x-kubernetes-preserve-unknown-fields") and "properties" not in schema:
        return []
    errors = [f"{path}: {node!r} not in {schema['enum']}"] if "enum" in schema and node not in schema["enum"] else []
    kind = schema.get("type")
    python = {"object": dict, "array": list, "string": str, "boolean": bool, "integer": int, "number": (int, float)}
    if kind in python and (not isinstance(node, python[kind]) or (kind in ("integer", "number")
                                                                    and isinstance(node, bool))):
        return errors + [f"{path}: expected {kind}, got {node!r}"]
    if kind == "object":
        props, extra = schema.get("properties", {}), schema.get("additionalProperties")
        for key, value in node.items():
            if key in props:
                errors += _schema_errors(value, props[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                errors += _schema_errors(value, extra, f"{path}.{key}")
            elif extra is not True:
                errors.append(f"{path}: unknown field {key!r}")
    elif kind == "array":
        for i, item in enumerate(node):
            errors += _schema_errors(item, schema.get("items", {}), f"{path}[{i}]")
    return errors


@pytest.mark.parametrize("manifest,crd", [(CLUSTER_FILE, "ray.io_rayclusters.yaml"), (JOB_FILE, "ray.io_rayjobs.yaml")])
def test_fields_match_the_crd_schema(manifest, crd):
    crd_dir = os.environ.get("KUBERAY_CRD_DIR")
    if not crd_dir:
        pytest.skip("KUBERAY_CRD_DIR not set (KubeRay v1.7.x ray-operator/config/crd/bases)")
    versions = yaml.safe_load((Path(crd_dir) / crd).read_text())["spec"]["versions"]
    schema = next(v for v in versions if v["name"] == "v1")["schema"]["openAPIV3Schema"]
    doc = _load(manifest)
    doc.pop("metadata")  # ObjectMeta: the CRD leaves it to the API server
    assert _schema_errors(doc, schema, doc["kind"]) == []
