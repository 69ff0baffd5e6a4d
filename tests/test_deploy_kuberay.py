"""deploy/kuberay, katapool on a Ray cluster run by KubeRay, stays valid and in step with the
images and the CLI.

Kubernetes' own kinds (the Service; and every pod template, as a core PodTemplate) are checked
strictly against Kubernetes' OpenAPI schemas as the PyPI package kubernetes-validate ships them.
No package on PyPI ships KubeRay's CRD, and the project does not copy it, so the RayCluster is
checked against RAYCLUSTER_SCHEMA below: a JSON Schema of our own for the RayCluster fields,
plus the rules KubeRay's controller applies on top of its CRD. With KUBERAY_CRD naming a copy of
KubeRay's ray.io_rayclusters.yaml, the RayCluster is also checked against that CRD (strictly,
as `kubectl apply` checks fields by default).
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shlex
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from packaging.requirements import Requirement
from test_deploy import (
    DEPLOY_DOC,
    dockerfile_stages,
    katapool_invocations,
    parse_cli_ray,
    shell_commands,
)

from katapool.cli import daemon_cmd
from katapool.cluster import CPU_RESOURCE
from katapool.config.poolfile import Listen, is_loopback, split_address

ROOT = Path(__file__).resolve().parents[1]
KUBERAY = ROOT / "deploy" / "kuberay"
KUSTOMIZATION = KUBERAY / "kustomization.yaml"
PYPROJECT = ROOT / "pyproject.toml"

# A Kubernetes release kubernetes-validate ships that clusters still run, and its newest one.
K8S_VERSIONS = sorted({"1.32", kubernetes_validate.latest_version()})
# KubeRay's name for the head's group (the ray.io/group label of the head pod), Ray's default
# GCS port, and the GPUs the NVIDIA device plugin offers.
HEAD_GROUP = "headgroup"
GCS_DEFAULT_PORT = 6379
GPU_RESOURCE = "nvidia.com/gpu"


# --- our schema for the RayCluster ---------------------------------------------------------------
# Written for this project after KubeRay's API (ray.io/v1); it is not KubeRay's CRD, and it
# describes only the fields below.
# Where the CRD describes an object field by field, the API server refuses unknown fields (kubectl
# asks for strict field validation), so the objects here have additionalProperties: false. Pod
# templates are only outlined: test_pod_templates_are_kubernetes_pod_templates checks them in full.

_INT32 = {"type": "integer", "minimum": -(2**31), "maximum": 2**31 - 1}
_COUNT = {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}  # the controller refuses < 0
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_OBJECT = {"type": "object"}
_BOOL = {"type": "boolean"}
# `ray start` flags without their dashes, to string values (KubeRay writes `--NAME=VALUE`; a YAML
# number here is refused). The controller refuses `labels` (groups have a field for them).
_RAY_START_PARAMS = {
    "type": "object",
    "propertyNames": {"pattern": "^[a-z][a-z0-9-]*$", "not": {"const": "labels"}},
    "additionalProperties": {"type": "string"},
}
_TEMPLATE = {
    "type": "object",
    "required": ["spec"],
    "properties": {
        "metadata": _OBJECT,
        "spec": {
            "type": "object",
            "required": ["containers"],
            # KubeRay makes the first container the Ray node; a group needs one.
            "properties": {"containers": {"type": "array", "minItems": 1}},
        },
    },
}
_HEAD_GROUP_SPEC = {
    "type": "object",
    "required": ["template"],
    "additionalProperties": False,
    "properties": {
        "rayStartParams": _RAY_START_PARAMS,
        "template": _TEMPLATE,
        "labels": _STRING_MAP,
        "resources": _STRING_MAP,
        "serviceType": {"type": "string"},
        "headService": _OBJECT,
        "enableIngress": _BOOL,
        "ingressOptions": _OBJECT,
    },
}
_WORKER_GROUP_SPEC = {
    "type": "object",
    "required": ["groupName", "minReplicas", "maxReplicas", "template"],
    "additionalProperties": False,
    "properties": {
        "groupName": {"type": "string", "minLength": 1},
        "replicas": _COUNT,
        "minReplicas": _COUNT,
        "maxReplicas": _COUNT,
        "numOfHosts": {"type": "integer", "minimum": 1, "maximum": 2**31 - 1},
        "priority": _INT32,
        "idleTimeoutSeconds": _INT32,
        "rayStartParams": _RAY_START_PARAMS,
        "template": _TEMPLATE,
        "labels": _STRING_MAP,
        "resources": _STRING_MAP,
        "scaleStrategy": _OBJECT,
        "suspend": _BOOL,
    },
}
RAYCLUSTER_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "RayCluster (ray.io/v1): katapool's own schema for the fields it uses",
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "ray.io/v1"},
        "kind": {"const": "RayCluster"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            # The controller's rule: a DNS-1035 label of at most 53 characters (names of pods
            # and services are made from it).
            "properties": {"name": {"type": "string", "maxLength": 53,
                                    "pattern": "^[a-z]([-a-z0-9]*[a-z0-9])?$"}},
        },
        "spec": {
            "type": "object",
            "required": ["headGroupSpec"],
            "additionalProperties": False,
            "properties": {
                "rayVersion": {"type": "string"},
                "enableInTreeAutoscaling": _BOOL,
                "suspend": _BOOL,
                "headGroupSpec": _HEAD_GROUP_SPEC,
                "workerGroupSpecs": {"type": "array", "items": _WORKER_GROUP_SPEC},
                # Fields this example does not use, taken with their type only.
                "authOptions": _OBJECT,
                "autoscalerOptions": _OBJECT,
                "gcsFaultToleranceOptions": _OBJECT,
                "headServiceAnnotations": _STRING_MAP,
                "historyServerOptions": _OBJECT,
                "managedBy": {"type": "string"},
                "networkPolicy": _OBJECT,
                "tlsOptions": _OBJECT,
                "upgradeStrategy": _OBJECT,
            },
        },
        "status": _OBJECT,
    },
}
_RESOURCE_PARAMS = ("num-cpus", "num-gpus", "memory", "resources")


def _groups(cluster: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(group name, group spec), the head first; KubeRay calls the head's group headgroup."""
    spec = cluster.get("spec") or {}
    yield HEAD_GROUP, spec.get("headGroupSpec") or {}
    for group in spec.get("workerGroupSpecs") or []:
        yield str(group.get("groupName")), group


def _where(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(top)"


def _crd_strict(schema: Any) -> Any:
    """A CRD's openAPIV3Schema as a JSON Schema that refuses unknown fields, as the API server
    does under strict field validation."""
    if isinstance(schema, list):
        return [_crd_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _crd_strict(v) for k, v in schema.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@functools.cache
def _kuberay_crd(path: str) -> jsonschema.Draft202012Validator:
    crd = yaml.load(Path(path).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return jsonschema.Draft202012Validator(_crd_strict(version["schema"]["openAPIV3Schema"]))


def raycluster_problems(cluster: dict[str, Any]) -> list[str]:
    """Why the API server or KubeRay's controller would refuse this RayCluster (empty if not)."""
    problems = [f"{_where(e)}: {e.message}"
                for e in jsonschema.Draft202012Validator(RAYCLUSTER_SCHEMA).iter_errors(cluster)]
    if os.environ.get("KUBERAY_CRD"):
        problems += [f"KubeRay CRD: {_where(e)}: {e.message}"
                     for e in _kuberay_crd(os.environ["KUBERAY_CRD"]).iter_errors(cluster)]
    if problems:
        return problems
    for version in K8S_VERSIONS:  # ObjectMeta, through a kind that holds nothing else
        problems += [f"metadata: {p}" for p in core_problems(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": cluster["metadata"]}, version)]
    names = [name for name, _ in _groups(cluster)][1:]
    if len(set(names)) != len(names):
        problems.append(f"worker group names repeat: {names}")
    for name, group in _groups(cluster):
        params = group.get("rayStartParams") or {}
        if group.get("resources") and any(params.get(k) for k in _RESOURCE_PARAMS):
            problems.append(f"group {name}: resources in both rayStartParams and resources")
        if "resources" in params:
            try:
                ray_start_resources(params["resources"])
            except (AssertionError, ValueError) as exc:
                problems.append(f"group {name}: rayStartParams.resources: {exc}")
        if name != HEAD_GROUP:
            low, high = group["minReplicas"], group["maxReplicas"]
            if not low <= group.get("replicas", low) <= high:
                problems.append(f"group {name}: replicas outside minReplicas..maxReplicas")
        for version in K8S_VERSIONS:  # the pod template, as a core PodTemplate holds it
            problems += [f"group {name} template: {p}" for p in core_problems(
                {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": name},
                 "template": group["template"]}, version)]
    return problems


def core_problems(document: dict[str, Any], version: str) -> list[str]:
    """Kubernetes' own schema for the document's kind, strictly (unknown fields refused)."""
    try:
        kubernetes_validate.validate(document, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"Kubernetes {version}: {_where(e)}: {e.message}"]
    except kubernetes_validate.SchemaNotFoundError as e:
        return [e.message]
    return []


def ray_start_resources(value: str) -> dict[str, Any]:
    """The custom resources of a `resources` rayStartParam, as each of its three readers takes
    them; they must agree."""
    # bash, in the command line KubeRay writes: `ray start ... --resources=VALUE ...`
    words = shlex.split(f"--resources={value}")
    assert len(words) == 1, f"{value!r} is more than one word to the shell"
    by_shell = json.loads(words[0].removeprefix("--resources="))
    # KubeRay, looking for accelerators: quotes, backquotes and blanks trimmed, then JSON.
    by_operator = json.loads(value.strip("'\"` "))
    # Ray's autoscaler: first and last character dropped, backslashes removed, then JSON of
    # whole numbers.
    by_autoscaler = json.loads(value[1:-1].replace("\\", ""))
    assert by_shell == by_operator == by_autoscaler, (by_shell, by_operator, by_autoscaler)
    assert isinstance(by_shell, dict) and all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
        for k, v in by_shell.items()), f"not a map of names to whole numbers: {by_shell}"
    return by_shell


# --- the files ----------------------------------------------------------------------------------

def manifests() -> list[tuple[str, dict[str, Any]]]:
    """(file name, document) for every object the kustomization applies."""
    kustomization = yaml.safe_load(KUSTOMIZATION.read_text())
    out = []
    for name in kustomization["resources"]:
        for document in yaml.safe_load_all((KUBERAY / name).read_text()):
            if document is not None:
                out.append((name, document))
    return out


@pytest.fixture(scope="module")
def cluster() -> dict[str, Any]:
    found = [d for _, d in manifests() if d.get("kind") == "RayCluster"]
    assert len(found) == 1, "deploy/kuberay applies one RayCluster"
    return found[0]


@pytest.fixture(scope="module")
def service() -> dict[str, Any]:
    found = [d for _, d in manifests() if d.get("kind") == "Service"]
    assert len(found) == 1, "deploy/kuberay applies one Service"
    return found[0]


def pod_labels(cluster: dict[str, Any], group: str) -> dict[str, str]:
    """A group's pods' labels as KubeRay sets them: the template's, and its own on top."""
    template = dict(_groups(cluster))[group]["template"]
    labels = dict((template.get("metadata") or {}).get("labels") or {})
    labels.update({"ray.io/cluster": cluster["metadata"]["name"],
                   "ray.io/node-type": "head" if group == HEAD_GROUP else "worker",
                   "ray.io/group": group})
    return labels


def containers(group: dict[str, Any]) -> list[dict[str, Any]]:
    spec = group["template"]["spec"]
    return list(spec.get("initContainers") or []) + list(spec["containers"])


def gpu_limit(container: dict[str, Any]) -> int:
    return int(str(((container.get("resources") or {}).get("limits") or {}).get(GPU_RESOURCE, 0)))


def daemon(cluster: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The head pod's katapool container and its `katapool ...` arguments."""
    found = []
    for container in cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"]:
        command = list(container.get("command") or []) + list(container.get("args") or [])
        found += [(container, argv) for argv in katapool_invocations(command)]
    assert len(found) == 1, "the head pod runs one katapool command"
    return found[0]


def container_port(container: dict[str, Any], port: int | str) -> int:
    """A container's port by number or name (as probes and Services name them)."""
    for entry in container.get("ports") or []:
        if port in (entry["containerPort"], entry.get("name")):
            return int(entry["containerPort"])
    raise AssertionError(f"container {container['name']} declares no port {port!r}")


# --- schema checks ------------------------------------------------------------------------------

def test_our_raycluster_schema_is_a_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(RAYCLUSTER_SCHEMA)


def test_raycluster_is_valid(cluster: dict[str, Any]) -> None:
    problems = raycluster_problems(cluster)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_core_kinds_are_valid(version: str) -> None:
    checked = 0
    for name, document in manifests():
        if document.get("kind") == "RayCluster":
            continue
        problems = core_problems(document, version)
        assert not problems, f"{name}: " + "\n".join(problems)
        checked += 1
    assert checked, "no Kubernetes object besides the RayCluster"


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A change to a document: the value at a dotted path (list indices as numbers) set."""
    def change(document: dict[str, Any]) -> None:
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        node: Any = document
        for key in parents:
            node = node[key]
        node[last] = value
    return change


def _drop(path: str) -> Callable[[dict[str, Any]], None]:
    def change(document: dict[str, Any]) -> None:
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        node: Any = document
        for key in parents:
            node = node[key]
        del node[last]
    return change


HEAD = "spec.headGroupSpec"
WORKER = "spec.workerGroupSpecs.0"
# A change that breaks a copy, and what the complaint about it says.
BROKEN_CLUSTERS = {
    "misspelt spec field": (_set("spec.workerGroupSpec", []), "'workerGroupSpec' was unexpected"),
    "a number in rayStartParams": (_set(f"{WORKER}.rayStartParams.num-gpus", 1),
                                   "is not of type 'string'"),
    "labels in rayStartParams": (_set(f"{HEAD}.rayStartParams.labels", "a=b"), "'labels'"),
    "no maxReplicas": (_drop(f"{WORKER}.maxReplicas"), "'maxReplicas' is a required property"),
    "minReplicas above maxReplicas": (_set(f"{WORKER}.minReplicas", 100), "replicas outside"),
    "no head containers": (_set(f"{HEAD}.template.spec.containers", []), "should be non-empty"),
    "misspelt container field": (_set(f"{HEAD}.template.spec.containers.1.readinessprobe", {}),
                                 "'readinessprobe' was unexpected"),
    "a port as a string": (_set(f"{HEAD}.template.spec.containers.1.ports.0.containerPort", "6364"),
                           "containerPort: '6364' is not of type 'integer'"),
    "misspelt pod field": (_set(f"{HEAD}.template.spec.shareProcessNamespaces", True),
                           "'shareProcessNamespaces' was unexpected"),
    "a cluster name Kubernetes refuses": (_set("metadata.name", "Katapool_Ray"), "metadata.name"),
    "an unquoted resources param": (_set(f"{WORKER}.rayStartParams.resources", '{"a": 1}'),
                                    "more than one word to the shell"),
    "resources twice": (_set(f"{WORKER}.resources", {"katapool_cpu": "1"}),
                        "resources in both rayStartParams and resources"),
}
BROKEN_SERVICES = {
    "misspelt spec field": (_set("spec.selectors", {"a": "b"}), "'selectors' was unexpected"),
    "a port as a string": (_set("spec.ports.0.port", "6364"), "is not of type 'integer'"),
    "a port without its number": (_drop("spec.ports.0.port"), "'port' is a required property"),
}
Change = Callable[[dict[str, Any]], None]


@pytest.mark.parametrize(("change", "complaint"), BROKEN_CLUSTERS.values(), ids=BROKEN_CLUSTERS.keys())
def test_a_broken_raycluster_is_refused(cluster: dict[str, Any], change: Change,
                                        complaint: str) -> None:
    broken = copy.deepcopy(cluster)
    change(broken)
    problems = raycluster_problems(broken)
    assert any(complaint in p for p in problems), problems


@pytest.mark.parametrize(("change", "complaint"), BROKEN_SERVICES.values(), ids=BROKEN_SERVICES.keys())
def test_a_broken_service_is_refused(service: dict[str, Any], change: Change,
                                     complaint: str) -> None:
    broken = copy.deepcopy(service)
    change(broken)
    problems = core_problems(broken, K8S_VERSIONS[0])
    assert any(complaint in p for p in problems), problems


def test_kustomization_applies_the_directory() -> None:
    kustomization = yaml.safe_load(KUSTOMIZATION.read_text())
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    assert set(kustomization) <= {"apiVersion", "kind", "resources", "images"}, \
        "a prefix, suffix or label transformer would part service.yaml from the head pod"
    files = {p.name for p in KUBERAY.glob("*.yaml")} - {KUSTOMIZATION.name}
    assert sorted(kustomization["resources"]) == sorted(files)


# --- images -------------------------------------------------------------------------------------

def test_every_container_runs_the_projects_image(cluster: dict[str, Any]) -> None:
    """katapool:<Dockerfile target>-ray, GPU groups the gpu image, the rest the cpu image; the
    kustomization renames the repository for all of them."""
    stages = dockerfile_stages()
    renamed = {entry["name"] for entry in yaml.safe_load(KUSTOMIZATION.read_text())["images"]}
    for name, group in _groups(cluster):
        gpus = any(gpu_limit(c) for c in containers(group))
        for container in containers(group):
            match = re.fullmatch(r"(?P<repo>[^:@]+):(?P<target>[a-z]+)-ray", container["image"])
            assert match, f"group {name}, {container['name']}: {container['image']} is not ours"
            assert match["target"] in stages
            assert match["target"] == ("gpu" if gpus else "cpu"), f"group {name}, {container['name']}"
            assert match["repo"] in renamed, "the kustomization's images entry misses it"


def _pip_installs(stage: dict[str, Any]) -> list[list[str]]:
    out = []
    for command in stage["shell"]:
        for words in shell_commands(command):
            if len(words) > 2 and Path(words[0]).name == "pip" and words[1] == "install":
                out.append(words[2:])
    return out


def _extras_installed(stage: dict[str, Any]) -> set[str]:
    (project,) = [x for words in _pip_installs(stage) for x in words
                  if re.fullmatch(r"/src(\[.*\])?", x)]
    return set(filter(None, re.sub(r"^/src\[?|\]$", "", project).split(",")))


def test_images_with_the_ray_extra(cluster: dict[str, Any]) -> None:
    """`--build-arg EXTRAS=kuberay` installs katapool[kuberay] (Ray with the dashboard agent
    KubeRay's probes ask, and wget for older KubeRay's probes) at the one Ray version the
    RayCluster names; without it, the images are what they were."""
    extras = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    kuberay = [Requirement(r) for r in extras["kuberay"]]
    assert any(r.name == "katapool" and "ray" in r.extras for r in kuberay)
    assert any(r.name == "ray" and "default" in r.extras for r in kuberay)
    ray_wanted = [Requirement(r) for r in extras["ray"] + extras["kuberay"]
                  if Requirement(r).name == "ray"]

    plain = dockerfile_stages()
    built = dockerfile_stages({"EXTRAS": "kuberay"})
    for target in ("cpu", "gpu"):
        assert "kuberay" not in _extras_installed(plain[target])
        assert _extras_installed(built[target]) == _extras_installed(plain[target]) | {"kuberay"}
        assert not any("wget" in c.split() for c in plain[target]["shell"])
        assert any("apt-get" in c and "wget" in c.split() for c in built[target]["shell"])
        # Ray is pinned through a constraints file, to the version the RayCluster names.
        (words,) = [w for w in _pip_installs(built[target]) if "-c" in w]
        constraints = words[words.index("-c") + 1]
        pins = [m for c in built[target]["shell"]
                for m in re.findall(r'echo "?ray==([\w.]+)"? > (\S+)', c)]
        assert pins == [(cluster["spec"]["rayVersion"], constraints)], pins
        assert all(r.specifier.contains(cluster["spec"]["rayVersion"]) for r in ray_wanted)
        # The cpu and gpu images differ in Python's patch release; Ray must accept that.
        assert built[target]["env"]["RAY_DEFAULT_PYTHON_VERSION_MATCH_LEVEL"] == "minor"


def test_pods_run_as_the_images_user(cluster: dict[str, Any]) -> None:
    uids = {int(u) for u in re.findall(r"useradd [^&]*--uid (\d+)", "\n".join(
        c for s in dockerfile_stages().values() for c in s["shell"]))}
    assert len(uids) == 1
    for name, group in _groups(cluster):
        context = group["template"]["spec"].get("securityContext") or {}
        assert context.get("runAsUser") in uids, f"group {name}"
        assert context.get("runAsNonRoot") is True, f"group {name}"


# --- Ray's resources ----------------------------------------------------------------------------

def test_ray_resources_match_what_members_ask(cluster: dict[str, Any]) -> None:
    """Members land on the worker groups meant for them and never on the head."""
    kinds = []
    for name, group in _groups(cluster):
        params = group.get("rayStartParams") or {}
        custom = ray_start_resources(params["resources"]) if "resources" in params else {}
        gpus = {gpu_limit(c) for c in containers(group)}
        ray_gpus = float(params["num-gpus"])  # explicit: Ray would look for GPUs itself
        if name == HEAD_GROUP:
            assert ray_gpus == 0 and gpus == {0} and CPU_RESOURCE not in custom
            assert float(params["num-cpus"]) == 0, "tasks and actors could land on the head"
            assert not group.get("resources")
        elif ray_gpus:
            # One GPU for Ray per GPU the pod gets; the first container is the Ray node.
            assert ray_gpus == gpu_limit(group["template"]["spec"]["containers"][0]) >= 1
            assert CPU_RESOURCE not in custom
            kinds.append("gpu")
        else:
            assert gpus == {0}, f"group {name} gets a GPU that Ray does not offer"
            assert custom == {CPU_RESOURCE: 1}, f"group {name}: {custom}"
            kinds.append("cpu")
    assert sorted(kinds) == ["cpu", "gpu"]


# --- the head pod and the daemon ----------------------------------------------------------------

def test_head_pod_runs_the_daemon_as_a_ray_driver(cluster: dict[str, Any]) -> None:
    head = cluster["spec"]["headGroupSpec"]
    spec = head["template"]["spec"]
    ray_container, *others = spec["containers"]
    # KubeRay writes the first container's command (`ray start --head ...`).
    assert not ray_container.get("command") and not ray_container.get("args")
    container, argv = daemon(cluster)
    assert container in others

    args, address = parse_cli_ray(argv, f"{container['name']} container")
    assert args.func is daemon_cmd.cmd_start
    assert not args.detach and args.no_dashboard
    # The driver reaches the GCS of its own pod, on the port Ray and KubeRay use.
    assert address is not None
    host, port = split_address(address)
    gcs_port = int(head.get("rayStartParams", {}).get("port", GCS_DEFAULT_PORT))
    assert is_loopback(host) and port == gcs_port == container_port(ray_container, "gcs-server")
    # ... and finds the head's raylet among the pod's processes and in its /tmp/ray.
    assert spec.get("shareProcessNamespace") is True
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    shared = [{m["name"] for m in c.get("volumeMounts") or [] if m["mountPath"] == "/tmp/ray"}
              for c in (ray_container, container)]
    assert shared[0] and shared[0] == shared[1], "no /tmp/ray volume shared with the daemon"
    assert all("emptyDir" in volumes[name] for name in shared[0])

    websockets = [a.removeprefix("ws://").rstrip("/") for a in args.listen if a.startswith("ws://")]
    assert len(websockets) == 1, args.listen
    Listen(websocket=websockets[0])
    ws_host, ws_port = split_address(websockets[0])
    assert not is_loopback(ws_host), "the Service reaches the pod's address, not its loopback"
    assert container_port(container, ws_port) == ws_port
    probe = container["readinessProbe"]["httpGet"]
    assert probe["path"] == "/healthz" and container_port(container, probe["port"]) == ws_port
    # Clients get up to 60 s for their answers before the daemon stops.
    assert spec["terminationGracePeriodSeconds"] > 60


def test_token_comes_from_the_documented_secret(cluster: dict[str, Any]) -> None:
    container, _ = daemon(cluster)
    env = {e["name"]: e for e in container.get("env") or []}
    ref = env["KATAPOOL_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert not ref.get("optional"), "without its token the daemon would make one nobody knows"
    made = re.findall(r"kubectl create secret generic (\S+)[^\n`]*?--from-literal=(\w+)=",
                      DEPLOY_DOC.read_text())
    assert (ref["name"], ref["key"]) in made, f"docs/deploy.md creates no Secret {ref}"


def test_service_selects_the_head_pod(cluster: dict[str, Any], service: dict[str, Any]) -> None:
    selector = service["spec"]["selector"]
    assert selector.items() <= pod_labels(cluster, HEAD_GROUP).items()
    for name, _ in list(_groups(cluster))[1:]:
        assert not selector.items() <= pod_labels(cluster, name).items(), f"it also selects {name}"
    container, argv = daemon(cluster)
    (port,) = service["spec"]["ports"]
    ws_port = container_port(container, port["targetPort"])
    assert port["port"] == ws_port
    assert f":{ws_port}" in " ".join(argv)
