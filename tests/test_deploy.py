"""Deployment: deploy/Dockerfile and the Kubernetes manifests in deploy/k8s/, checked offline.

Every kustomization (the base, each overlay, each component) is rendered here in Python
(resources, components, namespace, images, configMapGenerator) and, where kubectl is on
the PATH, by `kubectl kustomize` too. Every rendered object is validated against the
Kubernetes JSON schemas shipped with `kubernetes-validate` (strict: unknown fields fail),
for the oldest and newest Kubernetes versions we support; a PodMonitor (a Prometheus
Operator CRD, no built-in schema) is checked structurally. Then the cross-references a
schema cannot see: selectors and labels, Service ports, the StatefulSet's headless
Service, ConfigMap and Secret references, the Bytewax process id / hostfile / recovery
wiring, the security posture of every container, and the settings in the ConfigMaps
against the code that reads them. The checks return lists of problems; the tests named
`test_the_checks_catch_...` break a copy of a manifest to show each check can fail.

The init script of the dataflow pods runs here for real (hostfile, recovery partitions),
and with a Kafka broker (ENSEMBLE_TEST_KAFKA) the topic Job's and the StatefulSet's own
commands run against it, with the manifest's environment, until /metrics answers on the
probe's path; a second start resumes from the recovery partitions.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
BASE = K8S / "base"
DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
INIT_SCRIPT = BASE / "init-dataflow.sh"

KUSTOMIZATIONS = sorted(p.parent for p in K8S.rglob("kustomization.yaml"))
DEPLOYABLE = [BASE, *sorted((K8S / "overlays").iterdir())]  # components are not applied alone
K8S_VERSIONS = ("1.29", kubernetes_validate.latest_version())
APP_UID = 10001
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume"}
# Long-running containers without probes, and why. Every other one must have liveness and
# readiness probes on a port it declares.
NO_PROBE = {
    "alerts": "consumers.alerts has no health endpoint yet; a crash restarts the container",
    "copilot": "the pod only waits for `kubectl exec`; its process is `sleep infinity`",
}


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT)) if ROOT in path.parents else str(path)


# -- a small kustomize ---------------------------------------------------------------------------
class KustomizeError(ValueError):
    pass


KUSTOMIZATION_FIELDS = {
    "apiVersion",
    "kind",
    "resources",
    "components",
    "namespace",
    "images",
    "configMapGenerator",
}


def load_kustomization(directory: Path) -> dict[str, Any]:
    path = directory / "kustomization.yaml"
    if not path.is_file():
        raise KustomizeError(f"{rel(directory)} has no kustomization.yaml")
    kust = yaml.safe_load(path.read_text()) or {}
    unknown = set(kust) - KUSTOMIZATION_FIELDS
    if unknown:  # never silently ignore what the real kustomize would apply
        raise KustomizeError(f"{rel(path)}: this renderer does not know {sorted(unknown)}")
    return kust


def read_env_file(path: Path) -> dict[str, str]:
    """A kustomize env file: KEY=VALUE lines; blank lines and # comments are skipped."""
    data: dict[str, str] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", key):
            raise KustomizeError(f"{rel(path)}:{n}: not KEY=VALUE: {line!r}")
        if key in data:
            raise KustomizeError(f"{rel(path)}:{n}: {key} given twice")
        data[key] = value
    return data


def generated_configmap(directory: Path, gen: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, str] = {}
    for env in gen.get("envs", []):
        data.update(read_env_file(directory / env))
    for lit in gen.get("literals", []):
        key, _, value = lit.partition("=")
        data[key] = value
    for f in gen.get("files", []):
        key, sep, src = f.partition("=")
        path = directory / (src if sep else key)
        data[key if sep else path.name] = path.read_text()
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": gen["name"]},
        "data": data,
    }


def pod_specs(res: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(pod template metadata, pod spec) of a workload; [] for anything else."""
    kind, spec = res.get("kind"), res.get("spec", {})
    if kind in ("Deployment", "StatefulSet", "Job"):
        tpl = spec.get("template", {})
        return [(tpl.get("metadata", {}), tpl.get("spec", {}))]
    if kind == "CronJob":
        tpl = spec.get("jobTemplate", {}).get("spec", {}).get("template", {})
        return [(tpl.get("metadata", {}), tpl.get("spec", {}))]
    return []


def containers(res: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(pod spec, container) for every container and init container of a workload."""
    for _, spec in pod_specs(res):
        for c in spec.get("initContainers", []) + spec.get("containers", []):
            yield spec, c


def set_image(image: str, rule: dict[str, Any]) -> str:
    name = re.split(r"[@]", image)[0]
    if ":" in name.rsplit("/", 1)[-1]:
        name = name.rsplit(":", 1)[0]
    if name != rule["name"]:
        return image
    new = rule.get("newName", name)
    if "digest" in rule:
        return f"{new}@{rule['digest']}"
    tag = rule.get("newTag")
    if tag is None and image != name:
        return new + image[len(name) :]
    return f"{new}:{tag}" if tag is not None else new


def render(directory: Path) -> list[dict[str, Any]]:
    """The objects `kubectl kustomize directory` makes, minus generated-name hash suffixes."""
    kust = load_kustomization(directory)
    out: list[dict[str, Any]] = []
    for entry in kust.get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            out.extend(render(path))
        elif path.is_file():
            out.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
        else:
            raise KustomizeError(f"{rel(directory)}/kustomization.yaml: {entry} does not exist")
    for entry in kust.get("components", []):
        comp = (directory / entry).resolve()
        if load_kustomization(comp).get("kind") != "Component":
            raise KustomizeError(f"{rel(comp)} is listed as a component but is not a Component")
        out.extend(render(comp))
    for gen in kust.get("configMapGenerator", []):
        cm = generated_configmap(directory, gen)
        behavior = gen.get("behavior", "create")
        same = [r for r in out if r["kind"] == "ConfigMap" and r["metadata"]["name"] == gen["name"]]
        if behavior == "create":
            if same:
                raise KustomizeError(f"ConfigMap {gen['name']} generated twice")
            out.append(cm)
        elif behavior in ("merge", "replace") and len(same) == 1:
            old = same[0]
            old["data"] = (
                {**old.get("data", {}), **cm["data"]} if behavior == "merge" else cm["data"]
            )
        else:
            raise KustomizeError(f"{rel(directory)}: cannot {behavior} ConfigMap {gen['name']}")
    if "namespace" in kust:
        for r in out:
            if r["kind"] not in CLUSTER_SCOPED:
                r.setdefault("metadata", {})["namespace"] = kust["namespace"]
    for rule in kust.get("images", []):
        for r in out:
            for _, c in containers(r):
                c["image"] = set_image(c["image"], rule)
    return out


def listed_files(directory: Path) -> set[Path]:
    """Every file a kustomization uses from its own directory (and its sub-directories)."""
    kust = load_kustomization(directory)
    files = {directory / "kustomization.yaml"}
    for entry in kust.get("resources", []) + kust.get("components", []):
        path = (directory / entry).resolve()
        if path.is_file():
            files.add(path)
        elif path.is_dir() and directory in path.parents:
            files |= listed_files(path)
    for gen in kust.get("configMapGenerator", []):
        for f in gen.get("envs", []) + [f.partition("=")[2] or f for f in gen.get("files", [])]:
            files.add((directory / f).resolve())
    return files


def kubectl_render(directory: Path) -> list[dict[str, Any]]:
    done = subprocess.run(
        ["kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"kubectl kustomize {rel(directory)}:\n{done.stderr}"
    return [d for d in yaml.safe_load_all(done.stdout) if d]


HAVE_KUBECTL = shutil.which("kubectl") is not None
RENDERERS = ["python"] + (["kubectl"] if HAVE_KUBECTL else [])


@pytest.fixture(
    scope="module",
    params=[(r, d) for r in RENDERERS for d in DEPLOYABLE],
    ids=lambda p: f"{p[0]}:{p[1].relative_to(K8S)}",
)
def rendered(request) -> list[dict[str, Any]]:
    renderer, directory = request.param
    return render(directory) if renderer == "python" else kubectl_render(directory)


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def find(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any] | None:
    return next((o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name), None)


def named(objs: list[dict[str, Any]], kind: str, base_name: str) -> dict[str, Any]:
    """An object by the name in the manifests (kubectl adds a hash to generated names)."""
    hits = [
        o
        for o in by_kind(objs, kind)
        if re.fullmatch(re.escape(base_name) + r"(-[a-z0-9]{10})?", o["metadata"]["name"])
    ]
    assert len(hits) == 1, f"{kind} {base_name}: {len(hits)} found"
    return hits[0]


# -- checks (each returns a list of problems) ----------------------------------------------------
def schema_problems(objs: list[dict[str, Any]]) -> list[str]:
    problems = []
    for o in objs:
        if o["kind"] == "PodMonitor":
            problems += podmonitor_problems(o, objs)
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(o, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                where = "/".join(str(p) for p in e.path)
                problems.append(
                    f"{o['kind']} {o['metadata'].get('name')} ({version}): {where}: {e.message}"
                )
            except kubernetes_validate.SchemaNotFoundError as e:
                problems.append(f"{o['kind']} {o['metadata'].get('name')}: {e.message}")
    return problems


PODMONITOR_ENDPOINT_FIELDS = {"port", "path", "interval", "scrapeTimeout", "scheme", "honorLabels"}


def podmonitor_problems(pm: dict[str, Any], objs: list[dict[str, Any]]) -> list[str]:
    name = f"PodMonitor {pm.get('metadata', {}).get('name')}"
    problems = []
    if pm.get("apiVersion") != "monitoring.coreos.com/v1":
        problems.append(f"{name}: apiVersion {pm.get('apiVersion')!r}")
    extra = sorted(set(pm) - {"apiVersion", "kind", "metadata", "spec"})
    if extra:
        problems.append(f"{name}: unknown top-level fields {extra}")
    spec = pm.get("spec", {})
    match = spec.get("selector", {}).get("matchLabels")
    if not isinstance(match, dict) or not match:
        return [*problems, f"{name}: spec.selector.matchLabels must be a non-empty map"]
    pods = [(meta, ps) for o in objs for meta, ps in pod_specs(o) if labels_match(match, meta)]
    if not pods:
        problems.append(f"{name}: selects no pod")
    endpoints = spec.get("podMetricsEndpoints")
    if not isinstance(endpoints, list) or not endpoints:
        return [*problems, f"{name}: spec.podMetricsEndpoints must be a non-empty list"]
    for ep in endpoints:
        if set(ep) - PODMONITOR_ENDPOINT_FIELDS:
            problems.append(
                f"{name}: unknown endpoint fields {sorted(set(ep) - PODMONITOR_ENDPOINT_FIELDS)}"
            )
        if not str(ep.get("path", "/metrics")).startswith("/"):
            problems.append(f"{name}: path {ep.get('path')!r} must start with /")
        for _, ps in pods:
            ports = {p.get("name") for c in ps.get("containers", []) for p in c.get("ports", [])}
            if ep.get("port") not in ports:
                problems.append(
                    f"{name}: port {ep.get('port')!r} is not a container port {sorted(ports)}"
                )
    return problems


def labels_match(selector: dict[str, str], meta: dict[str, Any]) -> bool:
    labels = meta.get("labels", {})
    return all(labels.get(k) == v for k, v in selector.items())


def wiring_problems(objs: list[dict[str, Any]]) -> list[str]:
    """Selectors, Services, the StatefulSet's Service, and references between objects."""
    problems = []
    for o in objs:
        kind, name = o["kind"], o["metadata"]["name"]
        if kind in ("Deployment", "StatefulSet"):
            sel = o["spec"]["selector"].get("matchLabels", {})
            meta = o["spec"]["template"]["metadata"]
            if not sel or not labels_match(sel, meta):
                problems.append(f"{kind} {name}: selector {sel} does not match its pod labels")
            others = [
                x
                for x in objs
                if x is not o
                and x["kind"] in ("Deployment", "StatefulSet")
                and labels_match(sel, x["spec"]["template"]["metadata"])
            ]
            if others:
                problems.append(
                    f"{kind} {name}: selector also matches {others[0]['metadata']['name']}"
                )
        if kind == "StatefulSet":
            svc = find(objs, "Service", o["spec"].get("serviceName", ""))
            if svc is None:
                problems.append(f"StatefulSet {name}: no Service {o['spec'].get('serviceName')!r}")
            elif svc["spec"].get("clusterIP") != "None" or not svc["spec"].get(
                "publishNotReadyAddresses"
            ):
                problems.append(
                    f"Service {svc['metadata']['name']}: "
                    "must be headless and publish not-ready addresses"
                )
        if kind == "Service":
            sel = o["spec"].get("selector", {})
            pods = [
                ps for x in objs for meta, ps in pod_specs(x) if sel and labels_match(sel, meta)
            ]
            if not pods:
                problems.append(f"Service {name}: selector {sel} selects no pod")
            for port in o["spec"].get("ports", []):
                target = port.get("targetPort", port["port"])
                for ps in pods:
                    declared = [
                        (p.get("name"), p["containerPort"])
                        for c in ps.get("containers", [])
                        for p in c.get("ports", [])
                    ]
                    if not any(target in pair for pair in declared):
                        problems.append(
                            f"Service {name}: targetPort {target!r} is no container port {declared}"
                        )
        for spec, c in containers(o):
            problems += reference_problems(objs, f"{kind} {name}/{c['name']}", spec, c, o)
    if by_kind(objs, "Secret"):
        problems.append(
            "a Secret is in the manifests: secrets are referenced by name, never shipped"
        )
    return problems


def reference_problems(objs, where, spec, c, workload) -> list[str]:
    problems = []
    for src in c.get("envFrom", []):
        ref = src.get("configMapRef") or src.get("secretRef")
        kind = "ConfigMap" if "configMapRef" in src else "Secret"
        if find(objs, kind, ref["name"]) is None and not ref.get("optional"):
            problems.append(f"{where}: envFrom {kind} {ref['name']} does not exist")
    for e in c.get("env", []):
        vf = e.get("valueFrom", {})
        if "configMapKeyRef" in vf:
            ref = vf["configMapKeyRef"]
            cm = find(objs, "ConfigMap", ref["name"])
            if (cm is None or ref["key"] not in cm.get("data", {})) and not ref.get("optional"):
                problems.append(
                    f"{where}: env {e['name']}: ConfigMap {ref['name']} key {ref['key']} missing"
                )
        if "secretKeyRef" in vf and not vf["secretKeyRef"].get("optional"):
            problems.append(
                f"{where}: env {e['name']}: Secret {vf['secretKeyRef']['name']} is required, "
                "but no Secret ships with the manifests: mark it optional or document it"
            )
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    claims = {
        t["metadata"]["name"] for t in workload.get("spec", {}).get("volumeClaimTemplates", [])
    }
    for m in c.get("volumeMounts", []):
        if m["name"] not in volumes and m["name"] not in claims:
            problems.append(f"{where}: volumeMount {m['name']} has no volume")
    for v in volumes.values():
        if "configMap" in v and find(objs, "ConfigMap", v["configMap"]["name"]) is None:
            problems.append(
                f"{where}: volume {v['name']}: ConfigMap {v['configMap']['name']} does not exist"
            )
        if (
            "persistentVolumeClaim" in v
            and find(objs, "PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"]) is None
        ):
            problems.append(f"{where}: volume {v['name']}: no such PersistentVolumeClaim")
    return problems


def _effective(c: dict[str, Any], spec: dict[str, Any], key: str) -> Any:
    """A security setting of the container, else of the pod (Kubernetes' own precedence)."""
    csc, psc = c.get("securityContext", {}), spec.get("securityContext", {})
    return csc[key] if key in csc else psc.get(key)


def _quantity(q: str | int) -> float:
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9}
    m = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(q))
    assert m and m.group(2) in ("", *units), f"quantity {q!r}"
    return float(m.group(1)) * units.get(m.group(2), 1)


def _mounted_file_modes(volume: dict[str, Any]) -> list[int]:
    """The permission bits of the files a Secret, ConfigMap or projected volume holds."""
    if "projected" in volume:
        proj = volume["projected"]
        default = proj.get("defaultMode", 0o644)
        return [
            item.get("mode", default)
            for src in proj.get("sources", [])
            for kind in ("secret", "configMap")
            if kind in src
            for item in src[kind].get("items", [{}])
        ]
    for kind in ("secret", "configMap"):
        if kind in volume:
            v = volume[kind]
            return [item.get("mode", v.get("defaultMode", 0o644)) for item in v.get("items", [{}])]
    return []


def unreadable_mount_problems(c: dict[str, Any], spec: dict[str, Any], where: str) -> list[str]:
    """Files of a mounted Secret or ConfigMap the container's user cannot read.

    Kubernetes writes them owned by root, with group fsGroup when the pod sets one (else
    root) and the volume's mode bits; the process has runAsGroup, supplementalGroups and
    fsGroup. A 0440 Secret without fsGroup is unreadable by a non-root user."""
    psc = spec.get("securityContext", {})
    uid = _effective(c, spec, "runAsUser")
    fs_group = psc.get("fsGroup")
    gids = {_effective(c, spec, "runAsGroup"), *psc.get("supplementalGroups", []), fs_group}
    file_gid = 0 if fs_group is None else fs_group
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    problems = []
    for m in c.get("volumeMounts", []):
        for mode in _mounted_file_modes(volumes.get(m["name"], {})):
            readable = uid == 0 or mode & 0o004 or (file_gid in gids and mode & 0o040)
            if not readable:
                problems.append(
                    f"{where}: volume {m['name']} (mode {mode:04o}, group {file_gid}) "
                    f"is not readable by user {uid}: set the pod's fsGroup or a wider mode"
                )
    return problems


def posture_problems(objs: list[dict[str, Any]]) -> list[str]:
    problems = []
    for o in objs:
        for _, spec in pod_specs(o):
            where = f"{o['kind']} {o['metadata']['name']}"
            for flag in ("hostNetwork", "hostPID", "hostIPC"):
                if spec.get(flag):
                    problems.append(f"{where}: {flag}")
            if spec.get("automountServiceAccountToken") is not False:
                problems.append(f"{where}: automountServiceAccountToken must be false")
            for v in spec.get("volumes", []):
                if "hostPath" in v:
                    problems.append(f"{where}: hostPath volume {v['name']}")
        for spec, c in containers(o):
            where = f"{o['kind']} {o['metadata']['name']}/{c['name']}"
            csc = c.get("securityContext", {})
            if _effective(c, spec, "runAsNonRoot") is not True:
                problems.append(f"{where}: runAsNonRoot is not true")
            if _effective(c, spec, "runAsUser") in (0, None):
                problems.append(f"{where}: runAsUser must be a non-zero UID")
            if csc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: readOnlyRootFilesystem is not true")
            if csc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: allowPrivilegeEscalation is not false")
            if csc.get("privileged"):
                problems.append(f"{where}: privileged")
            caps = csc.get("capabilities", {})
            if "ALL" not in caps.get("drop", []) or caps.get("add"):
                problems.append(f"{where}: capabilities must drop ALL and add none")
            if (_effective(c, spec, "seccompProfile") or {}).get("type") != "RuntimeDefault":
                problems.append(f"{where}: seccompProfile is not RuntimeDefault")
            res = c.get("resources", {})
            for r in ("cpu", "memory"):
                req, lim = res.get("requests", {}).get(r), res.get("limits", {}).get(r)
                if req is None or lim is None:
                    problems.append(f"{where}: {r} request and limit are required")
                elif _quantity(req) > _quantity(lim):
                    problems.append(f"{where}: {r} request {req} is above its limit {lim}")
            volumes = {v["name"]: v for v in spec.get("volumes", [])}
            if not any(
                m["mountPath"] == "/tmp"
                and m["name"] in volumes
                and "emptyDir" in volumes[m["name"]]
                for m in c.get("volumeMounts", [])
            ):
                problems.append(f"{where}: needs a writable /tmp (emptyDir) with a read-only root")
            problems += unreadable_mount_problems(c, spec, where)
    return problems


def probe_problems(objs: list[dict[str, Any]]) -> list[str]:
    problems = []
    for o in objs:
        if o["kind"] not in ("Deployment", "StatefulSet"):
            continue
        for _, spec in pod_specs(o):
            for c in spec.get("containers", []):
                where = f"{o['kind']} {o['metadata']['name']}/{c['name']}"
                if c["name"] in NO_PROBE:
                    if any(p in c for p in ("livenessProbe", "readinessProbe")):
                        problems.append(f"{where}: has probes now; take it out of NO_PROBE")
                    continue
                ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
                for kind in ("livenessProbe", "readinessProbe"):
                    probe = c.get(kind)
                    if probe is None:
                        problems.append(f"{where}: no {kind}")
                        continue
                    http = probe.get("httpGet")
                    if http and http["port"] not in ports and http["port"] not in ports.values():
                        problems.append(
                            f"{where}: {kind} port {http['port']!r} is not declared {ports}"
                        )
    return problems


# -- the container as Kubernetes would start it -------------------------------------------------
def container_env(
    objs: list[dict[str, Any]], c: dict[str, Any], pod_name: str, namespace: str
) -> dict[str, str]:
    """The environment a container gets: envFrom, then env (fieldRef, ConfigMap keys).

    Optional Secret keys are absent, as in a cluster where the Secret was not created.
    """
    env: dict[str, str] = {}
    for src in c.get("envFrom", []):
        if "configMapRef" in src:
            cm = find(objs, "ConfigMap", src["configMapRef"]["name"])
            assert cm is not None, src
            env.update(cm.get("data", {}))
    fields = {"metadata.name": pod_name, "metadata.namespace": namespace}
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = expand(e["value"], env)
        vf = e.get("valueFrom", {})
        if "fieldRef" in vf:
            env[e["name"]] = fields[vf["fieldRef"]["fieldPath"]]
        if "configMapKeyRef" in vf:
            ref = vf["configMapKeyRef"]
            env[e["name"]] = find(objs, "ConfigMap", ref["name"])["data"][ref["key"]]
    return env


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in command, args and env values ($$ escapes)."""
    return re.sub(
        r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
        lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)),
        text,
    )


def container_argv(c: dict[str, Any], env: dict[str, str]) -> list[str]:
    argv = [expand(a, env) for a in c.get("command", []) + c.get("args", [])]
    unresolved = [a for a in argv if re.search(r"\$\([A-Za-z_][A-Za-z0-9_]*\)", a)]
    assert not unresolved, f"{c['name']}: undefined variables in {unresolved}"
    return argv


def python_modules(argv: list[str]) -> list[str]:
    """The modules a container runs with `python -m` (also inside an `sh -c` string)."""
    words = shlex.split(argv[-1]) if argv[:2] == ["sh", "-c"] else argv
    return [
        words[i + 1] for i, w in enumerate(words[:-1]) if w == "-m" and "python" in words[i - 1]
    ]


def workload(objs, kind: str, name: str) -> dict[str, Any]:
    o = find(objs, kind, name)
    assert o is not None, f"{kind} {name} missing"
    return o


def container(o: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for _, c in containers(o) if c["name"] == name)


def test_what_docs_deploy_md_says_of_the_dataflow_probes_is_what_the_statefulset_probes():
    """An operator reads the runbook, not the manifest: every sentence of docs/deploy.md
    about the dataflow's readiness or liveness probe names the path that probe uses."""
    main = container(workload(render(BASE), "StatefulSet", "ensemble-dataflow"), "dataflow")
    paths = {
        "readiness": main["readinessProbe"]["httpGet"]["path"],
        "liveness": main["livenessProbe"]["httpGet"]["path"],
    }
    text = " ".join((ROOT / "docs" / "deploy.md").read_text().split())
    sentences = [s for s in re.split(r"(?<=[.;:])\s", text) if "probe" in s]
    for kind, path in paths.items():
        about = [s for s in sentences if f"{kind} probe" in s]
        assert about, f"docs/deploy.md says nothing of the {kind} probe"
        for s in about:
            named = set(re.findall(r"`(?:GET )?(/[a-z]+)`", s))
            assert named == {path}, f"docs/deploy.md, on the {kind} probe ({path}): {s!r}"


# -- the Dockerfile ------------------------------------------------------------------------------
def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    joined = re.sub(
        r"\\\n",
        " ",
        "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")),
    )
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def dockerfile_stages(text: str) -> list[dict[str, Any]]:
    """Stages with their base image (ARG defaults substituted) and instructions."""
    args: dict[str, str] = {}
    stages: list[dict[str, Any]] = []
    for word, rest in dockerfile_instructions(text):
        if word == "ARG" and not stages:
            k, _, v = rest.partition("=")
            args[k] = v
        elif word == "FROM":
            parts = rest.split()
            image = re.sub(
                r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], parts[0]
            )
            name = parts[2] if len(parts) > 2 and parts[1].upper() == "AS" else None
            stages.append({"image": image, "name": name, "steps": []})
        else:
            stages[-1]["steps"].append((word, rest))
    return stages


def dockerfile_env(stage: dict[str, Any]) -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in stage["steps"]:
        if word == "ENV":
            for token in shlex.split(rest):
                k, _, v = token.partition("=")
                env[k] = v
    return env


def dockerignore_patterns() -> list[tuple[bool, re.Pattern]]:
    patterns = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pat = line.lstrip("!").strip("/")
        rx = re.escape(pat).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*")
        rx = rx.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        patterns.append((not negate, re.compile(rx + "$")))
    return patterns


def in_docker_context(path: str, patterns=None) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    patterns = dockerignore_patterns() if patterns is None else patterns
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for exclude, rx in patterns:
        if any(rx.fullmatch(p) for p in prefixes):
            excluded = exclude
    return not excluded


def runtime_stage() -> dict[str, Any]:
    return dockerfile_stages(DOCKERFILE.read_text())[-1]


def context_copies(stage: dict[str, Any]) -> list[tuple[list[str], str]]:
    """COPY instructions that read the build context: (sources, destination)."""
    out = []
    for word, rest in stage["steps"]:
        if word == "COPY" and "--from" not in rest:
            words = [w for w in rest.split() if not w.startswith("--")]
            out.append((words[:-1], words[-1]))
    return out


# ================================================================================================
# tests: the kustomizations
@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda d: str(d.relative_to(K8S)))
def test_every_file_of_a_kustomization_is_listed_and_every_listed_file_exists(directory):
    listed = listed_files(directory)
    missing = sorted(rel(p) for p in listed if not p.is_file())
    assert not missing, f"listed but absent: {missing}"
    present = {p.resolve() for p in directory.iterdir() if p.is_file()}
    sub_kustomizations = {p.parent for p in directory.rglob("kustomization.yaml")} - {directory}
    nested = {
        p.resolve()
        for d in sub_kustomizations
        if d.parent == directory
        for p in d.rglob("*")
        if p.is_file()
    }
    unlisted = sorted(rel(p) for p in present - listed - nested)
    assert not unlisted, (
        f"files in {rel(directory)} that its kustomization.yaml does not use: {unlisted}"
    )


def test_the_python_renderer_agrees_with_kubectl_kustomize():
    if not HAVE_KUBECTL:
        pytest.skip("kubectl is not on the PATH")
    for directory in DEPLOYABLE:
        mine = render(directory)
        theirs = kubectl_render(directory)

        def key(o):
            name = o["metadata"]["name"]
            if o["kind"] == "ConfigMap":
                name = re.sub(r"-[a-z0-9]{10}$", "", name)
            return o["kind"], name, o["metadata"].get("namespace")

        assert sorted(map(key, mine)) == sorted(map(key, theirs)), rel(directory)
        for o in theirs:
            m = next(x for x in mine if key(x) == key(o))
            assert [c["image"] for _, c in containers(m)] == [c["image"] for _, c in containers(o)]
            if o["kind"] == "ConfigMap":
                assert m["data"] == o["data"], key(o)


def test_every_object_validates_against_the_kubernetes_schemas(rendered):
    assert schema_problems(rendered) == []


def test_selectors_services_and_references_agree(rendered):
    assert wiring_problems(rendered) == []


def test_every_container_runs_as_non_root_on_a_read_only_root_with_limits(rendered):
    assert posture_problems(rendered) == []


def test_long_running_containers_have_liveness_and_readiness_probes(rendered):
    assert probe_problems(rendered) == []


def test_every_container_runs_a_module_of_this_project(rendered):
    for o in rendered:
        for _, c in containers(o):
            env = container_env(rendered, c, f"{o['metadata']['name']}-0", "test")
            argv = container_argv(c, env)
            if argv[:1] == ["sleep"]:
                continue
            if c["name"] == "init-dataflow":
                assert argv == ["sh", "/opt/ensemble/init/init-dataflow.sh"]
                continue
            if argv[:2] == ["sh", "-c"]:
                syntax = subprocess.run(["sh", "-n", "-c", argv[2]], capture_output=True, text=True)
                assert syntax.returncode == 0, f"{c['name']}: {argv[2]!r}: {syntax.stderr}"
            for mod in python_modules(argv) or [None]:
                assert mod is not None, f"{c['name']}: {argv} runs no python -m module"
                assert importlib.util.find_spec(mod) is not None, f"{c['name']}: no module {mod}"


def test_the_paper_overlay_pins_the_image_and_enforces_the_restricted_pod_standard():
    objs = render(K8S / "overlays" / "paper")
    images = {c["image"] for o in objs for _, c in containers(o)}
    assert len(images) == 1 and re.fullmatch(r"[\w./-]+/ensemble:\d+\.\d+\.\d+", images.pop())
    ns = by_kind(objs, "Namespace")[0]
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert {o["metadata"].get("namespace") for o in objs if o["kind"] != "Namespace"} == {
        ns["metadata"]["name"]
    }


# -- tests: the dataflow's Bytewax wiring and the settings ---------------------------------------
def test_the_dataflow_statefulset_wires_process_id_hostfile_recovery_and_api_for_bytewax(
    monkeypatch, tmp_path
):
    objs = render(BASE)
    sts = workload(objs, "StatefulSet", "ensemble-dataflow")
    init, main = container(sts, "init-dataflow"), container(sts, "dataflow")
    pod = f"{sts['metadata']['name']}-0"
    init_env, env = container_env(objs, init, pod, "ns"), container_env(objs, main, pod, "ns")

    assert (
        env["BYTEWAX_STATEFULSET_NAME"]
        == init_env["BYTEWAX_STATEFULSET_NAME"]
        == sts["metadata"]["name"]
    )
    assert init_env["BYTEWAX_SERVICE_NAME"] == sts["spec"]["serviceName"]
    assert int(init_env["BYTEWAX_REPLICAS"]) == sts["spec"]["replicas"], "dataflow.env vs replicas"
    assert int(init_env["RECOVERY_PARTITIONS"]) >= sts["spec"]["replicas"]
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    assert int(init_env["BYTEWAX_PROCESS_PORT"]) == ports["process"]
    assert env["BYTEWAX_DATAFLOW_API_ENABLED"] == "true"
    assert int(env["BYTEWAX_DATAFLOW_API_PORT"]) == ports["http-metrics"]
    for probe in ("startupProbe", "livenessProbe"):
        assert main[probe]["httpGet"] == {"path": "/metrics", "port": "http-metrics"}
    # ready only while the broker answers and the input progresses (dataflows/readiness.py)
    assert main["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http-ready"}
    assert int(env["ENSEMBLE_READY_PORT"]) == ports["http-ready"]

    def mount(c, path_var, env_):
        path = env_[path_var]
        hits = [
            m
            for m in c["volumeMounts"]
            if path == m["mountPath"] or path.startswith(m["mountPath"] + "/")
        ]
        assert len(hits) == 1, f"{c['name']}: {path_var}={path} is on no single volume"
        return hits[0]

    claim = sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
    assert mount(init, "BYTEWAX_RECOVERY_DIRECTORY", init_env)["name"] == claim
    assert mount(main, "BYTEWAX_RECOVERY_DIRECTORY", env)["name"] == claim
    assert init_env["BYTEWAX_RECOVERY_DIRECTORY"] == env["BYTEWAX_RECOVERY_DIRECTORY"]
    assert init_env["BYTEWAX_HOSTFILE_PATH"] == env["BYTEWAX_HOSTFILE_PATH"]
    assert (
        mount(init, "BYTEWAX_HOSTFILE_PATH", init_env)["name"]
        == mount(main, "BYTEWAX_HOSTFILE_PATH", env)["name"]
    )
    assert env["BYTEWAX_DATAFLOW_API_CACHE_PATH"].startswith("/tmp")
    script = next(
        v for v in sts["spec"]["template"]["spec"]["volumes"] if v["name"] == "init-script"
    )
    cm = find(objs, "ConfigMap", script["configMap"]["name"])
    assert cm["data"]["init-dataflow.sh"] == INIT_SCRIPT.read_text()

    # Bytewax's own argument parsing of the container's command, as run in pod -0.
    argv = container_argv(main, env)
    assert argv[:4] == ["python", "-m", "bytewax.run", "dataflows.ensemble"]
    hostfile = tmp_path / "hostfile.txt"
    hostfile.write_text(f"{pod}.svc:9999\n")
    from bytewax import run as bytewax_run

    for k, v in {**env, "BYTEWAX_HOSTFILE_PATH": str(hostfile)}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(sys, "argv", ["bytewax.run", *argv[3:]])
    args = bytewax_run._parse_args()
    assert args.process_id == 0
    assert args.addresses == f"{pod}.svc:9999"
    assert str(args.recovery_directory) == env["BYTEWAX_RECOVERY_DIRECTORY"]
    assert args.snapshot_interval.total_seconds() == int(env["BYTEWAX_SNAPSHOT_INTERVAL"])
    assert args.backup_interval.total_seconds() == int(env["BYTEWAX_RECOVERY_BACKUP_INTERVAL"])
    assert args.workers_per_process == int(env["BYTEWAX_WORKERS_PER_PROCESS"])


@pytest.mark.parametrize("directory", DEPLOYABLE, ids=lambda d: str(d.relative_to(K8S)))
def test_the_settings_configmap_holds_valid_settings_for_the_flow_and_the_consumers(
    directory, tmp_path
):
    from dataflows.settings import Settings

    objs = render(directory)
    data = find(objs, "ConfigMap", "ensemble-settings")["data"]
    # as the dataflow pod sees them: its own principal, the mounted password and CA files
    main = container(workload(objs, "StatefulSet", "ensemble-dataflow"), "dataflow")
    pod_env = {e["name"]: e["value"] for e in main["env"] if "value" in e}
    mounts = {m["name"]: m["mountPath"] for m in main["volumeMounts"]}
    assert pod_env["ENSEMBLE_KAFKA_SASL_PASSWORD_FILE"].startswith(mounts["kafka-credentials"])
    assert data["ENSEMBLE_KAFKA_SSL_CA"].startswith(mounts["kafka-ca"])
    (tmp_path / "password").write_text("pw")
    (tmp_path / "ca.crt").write_text("ca")
    keys_cm = find(objs, "ConfigMap", "ensemble-operator-keys")["data"]
    (tmp_path / "keys.json").write_text(keys_cm["operator-keys.json"])
    assert pod_env["ENSEMBLE_OPERATOR_KEYS_FILE"].startswith(mounts["operator-keys"])
    local = {"ENSEMBLE_KAFKA_SASL_PASSWORD_FILE": str(tmp_path / "password"),
             "ENSEMBLE_KAFKA_SSL_CA": str(tmp_path / "ca.crt"),
             "ENSEMBLE_OPERATOR_KEYS_FILE": str(tmp_path / "keys.json")}  # fmt: skip
    settings = Settings.from_env({**data, **pod_env, **local})  # raises, naming a bad value
    assert settings.kafka_security.authenticated and settings.kafka_security.username == "flow"
    assert settings.kafka_bootstrap == data["ENSEMBLE_KAFKA_BOOTSTRAP"]
    assert settings.wall_clock and settings.kafka_tail
    assert not any(k.startswith("ENSEMBLE_ALERTS_") for k in data), (
        "alerts settings go in alerts.json"
    )


def test_the_alerts_configmap_is_a_valid_alerts_config_mounted_where_the_consumer_reads_it(
    tmp_path,
):
    from consumers.alerts import CONFIG_ENV, load_config

    objs = render(BASE)
    dep = workload(objs, "Deployment", "ensemble-alerts")
    c = container(dep, "alerts")
    env = container_env(objs, c, "ensemble-alerts-x", "ns")
    path = Path(env[CONFIG_ENV])
    m = next(m for m in c["volumeMounts"] if m["mountPath"] == str(path.parent))
    vol = next(v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == m["name"])
    data = find(objs, "ConfigMap", vol["configMap"]["name"])["data"]
    assert "subPath" not in m, "a subPath mount never sees ConfigMap updates (no silencing live)"
    (tmp_path / path.name).write_text(data[path.name])
    cfg = load_config({}, tmp_path / path.name)
    assert set(cfg.symbols) == set(json.loads(data[path.name])["symbols"])


def test_secrets_are_referenced_by_the_names_the_consumers_read():
    from consumers import llm, slack

    objs = render(BASE)
    wanted = {
        ("Deployment", "ensemble-alerts", "alerts"): {slack.ENV_VAR},
        ("Deployment", "ensemble-copilot", "copilot"): {
            llm.ENV_BASE_URL,
            llm.ENV_MODEL,
            llm.ENV_API_KEY,
        },
        ("CronJob", "ensemble-copilot-summary", "summary"): {
            llm.ENV_BASE_URL,
            llm.ENV_MODEL,
            llm.ENV_API_KEY,
        },
    }
    for (kind, name, cname), names in wanted.items():
        c = container(workload(objs, kind, name), cname)
        from_secrets = {
            e["name"] for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})
        }
        assert from_secrets == names, (name, from_secrets)
    for o in objs:
        for _, c in containers(o):
            for e in c.get("env", []):
                if e["name"].endswith("_FILE"):  # a path to a mounted Secret, not a secret
                    continue
                if re.search(r"key|secret|token|password|webhook", e["name"], re.I):
                    assert "value" not in e, f"{c['name']}: {e['name']} has a literal value"


def test_docs_deploy_md_says_which_secrets_a_pod_cannot_start_without():
    """The runbook's Secrets table is what an operator reads when a pod hangs in
    ContainerCreating: a Secret a pod mounts or reads without `optional: true` must be
    documented as stopping the pod, and an optional one as not."""
    required: dict[str, bool] = {}
    for o in render(BASE):
        for _, spec in pod_specs(o):
            for v in spec.get("volumes", []):
                if "secret" in v:
                    name = v["secret"]["secretName"]
                    required[name] = required.get(name, False) or not v["secret"].get("optional")
            for c in spec.get("initContainers", []) + spec.get("containers", []):
                for e in c.get("env", []):
                    ref = e.get("valueFrom", {}).get("secretKeyRef")
                    if ref:
                        name, needed = ref["name"], not ref.get("optional")
                        required[name] = required.get(name, False) or needed
    text = (ROOT / "docs" / "deploy.md").read_text()
    rows = {}
    for line in text.splitlines():
        m = re.match(r"\| `(ensemble-[a-z<>-]+)`.*\| ([^|]+) \|$", line)
        if m:
            rows.setdefault(m.group(1), []).append(m.group(2))
    for name, needed in required.items():
        row = rows.get(name) or rows.get(
            re.sub(r"^ensemble-kafka-(?!ca$)[a-z]+$", "ensemble-kafka-<user>", name)
        )
        assert row, f"docs/deploy.md's Secrets table has no row for {name}"
        stops = any("does not start" in r for r in row)
        assert stops == needed, (
            f"{name}: the manifests make it {'required' if needed else 'optional'}, "
            f"docs/deploy.md says without it: {row}"
        )


# -- tests: the checks can fail -------------------------------------------------------------------
def test_the_checks_catch_a_writable_root_a_root_user_a_missing_limit_and_an_added_capability():
    objs = copy.deepcopy(render(BASE))
    c = container(find(objs, "StatefulSet", "ensemble-dataflow"), "dataflow")
    c["securityContext"]["readOnlyRootFilesystem"] = False
    c["securityContext"]["capabilities"]["add"] = ["NET_ADMIN"]
    del c["resources"]["limits"]["memory"]
    find(objs, "Deployment", "ensemble-alerts")["spec"]["template"]["spec"]["securityContext"][
        "runAsUser"
    ] = 0
    problems = "\n".join(posture_problems(objs))
    for expected in (
        "readOnlyRootFilesystem",
        "capabilities",
        "memory request and limit",
        "runAsUser",
    ):
        assert expected in problems


def test_the_checks_catch_a_0440_secret_its_non_root_user_cannot_read_without_fs_group():
    """Kubernetes writes Secret files owned by root:root unless the pod sets fsGroup; the
    alerts pod's password file (0440) is then unreadable and it cannot log in to Kafka."""
    objs = copy.deepcopy(render(BASE))
    pod = find(objs, "Deployment", "ensemble-alerts")["spec"]["template"]["spec"]
    assert posture_problems(objs) == []
    del pod["securityContext"]["fsGroup"]
    assert [p for p in posture_problems(objs) if "not readable" in p] == [
        "Deployment ensemble-alerts/alerts: volume kafka-credentials (mode 0440, group 0) "
        "is not readable by user 10001: set the pod's fsGroup or a wider mode"
    ]
    creds = next(v for v in pod["volumes"] if v["name"] == "kafka-credentials")
    creds["secret"]["defaultMode"] = 0o444  # world-readable: fine without fsGroup
    assert posture_problems(objs) == []


def test_the_checks_catch_a_schema_error_a_broken_selector_and_a_missing_configmap():
    objs = copy.deepcopy(render(BASE))
    sts = find(objs, "StatefulSet", "ensemble-dataflow")
    sts["spec"]["replicas"] = "one"
    job = find(objs, "Job", "ensemble-topics")  # validation stops at an object's first error
    job["spec"]["template"]["spec"]["containers"][0]["volumeMount"] = []  # a typo'd field
    find(objs, "Service", "ensemble-dataflow")["spec"]["selector"][
        "app.kubernetes.io/component"
    ] = "x"
    find(objs, "Deployment", "ensemble-alerts")["spec"]["template"]["spec"]["containers"][0][
        "envFrom"
    ][0]["configMapRef"]["name"] = "nope"
    schema = "\n".join(schema_problems(objs))
    assert "replicas" in schema and "volumeMount" in schema
    wiring = "\n".join(wiring_problems(objs))
    assert "selects no pod" in wiring and "ConfigMap nope does not exist" in wiring


def test_the_checks_catch_a_podmonitor_on_an_undeclared_port_and_a_missing_probe():
    objs = copy.deepcopy(render(K8S / "overlays" / "paper"))
    by_kind(objs, "PodMonitor")[0]["spec"]["podMetricsEndpoints"][0]["port"] = "metrics"
    assert any("port 'metrics'" in p for p in schema_problems(objs))
    del container(find(objs, "StatefulSet", "ensemble-dataflow"), "dataflow")["livenessProbe"]
    assert probe_problems(objs) == ["StatefulSet ensemble-dataflow/dataflow: no livenessProbe"]


def test_the_renderer_refuses_what_it_cannot_render(tmp_path):
    (tmp_path / "kustomization.yaml").write_text("resources: [missing.yaml]\npatches: []\n")
    with pytest.raises(KustomizeError, match="does not know"):
        render(tmp_path)
    (tmp_path / "kustomization.yaml").write_text("resources: [missing.yaml]\n")
    with pytest.raises(KustomizeError, match="does not exist"):
        render(tmp_path)


# -- tests: the Dockerfile ------------------------------------------------------------------------
def test_the_image_is_slim_python_and_runs_as_the_numeric_non_root_user_of_the_pods():
    stages = dockerfile_stages(DOCKERFILE.read_text())
    for stage in stages:
        assert re.fullmatch(r"python:3\.11-slim(-\w+)?", stage["image"]), stage["image"]
    users = [rest for word, rest in stages[-1]["steps"] if word == "USER"]
    assert users, "the runtime stage sets no USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) == APP_UID and (not gid or int(gid) == APP_UID)
    for o in render(BASE):
        for _, spec in pod_specs(o):
            assert spec["securityContext"]["runAsUser"] == int(uid)


def test_the_image_installs_the_package_without_dev_extras_and_carries_the_model():
    stages = dockerfile_stages(DOCKERFILE.read_text())
    runs = " ".join(rest for s in stages for word, rest in s["steps"] if word == "RUN")
    assert re.search(r"pip install (--[\w-]+ )*\.(\s|$)", runs), "the project is installed"
    assert "--require-hashes -r requirements.lock" in runs, "dependencies come from the lock"
    assert "[dev]" not in runs and "-e " not in runs
    env = dockerfile_env(stages[-1])
    copies = dict((dest, srcs) for srcs, dest in context_copies(stages[-1]))
    assert copies[env["ENSEMBLE_MODEL_DIR"]] == ["models/artifacts/default"]
    assert (ROOT / "models/artifacts/default/manifest.json").is_file()
    for var in ("HOME", "MPLCONFIGDIR", "BYTEWAX_DATAFLOW_API_CACHE_PATH"):
        assert env[var].startswith("/tmp"), f"{var} must be under the writable /tmp"
    exposed = {
        int(p) for word, rest in stages[-1]["steps"] if word == "EXPOSE" for p in rest.split()
    }
    sts = find(render(BASE), "StatefulSet", "ensemble-dataflow")
    assert exposed == {p["containerPort"] for p in container(sts, "dataflow")["ports"]}


def test_the_docker_context_holds_every_copied_path_and_package_and_nothing_private():
    import tomllib

    stages = dockerfile_stages(DOCKERFILE.read_text())
    for stage in stages:
        for srcs, _ in context_copies(stage):
            for src in srcs:
                assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
                assert in_docker_context(src), f"COPY {src}: excluded by .dockerignore"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    copied = {s for stage in stages[:1] for srcs, _ in context_copies(stage) for s in srcs}
    for pkg in project["tool"]["setuptools"]["packages"]:
        top = pkg.split(".")[0]  # a subpackage comes with its parent's directory
        assert top in copied, f"package {pkg} is not copied into the build stage"
        assert in_docker_context(f"{pkg.replace('.', '/')}/__init__.py")
    assert project["project"]["readme"] in copied
    for private in (
        ".venv/bin/python",
        ".git/config",
        ".env",
        "out/orders.jsonl",
        "tests/conftest.py",
        ".kafka/x",
        "dataflows/__pycache__/io.cpython-311.pyc",
        "deploy/k8s/base/settings.env",
    ):
        assert not in_docker_context(private), f"{private} would be sent to the Docker build"


# -- tests: the init script, run -----------------------------------------------------------------
def _init_env(tmp_path: Path, ordinal: int, replicas: int, partitions: int) -> dict[str, str]:
    objs = render(BASE)
    sts = workload(objs, "StatefulSet", "ensemble-dataflow")
    env = container_env(
        objs, container(sts, "init-dataflow"), f"ensemble-dataflow-{ordinal}", "paper"
    )
    vol = tmp_path / f"recovery-{ordinal}"
    vol.mkdir(exist_ok=True)
    env.update(
        BYTEWAX_REPLICAS=str(replicas),
        RECOVERY_PARTITIONS=str(partitions),
        BYTEWAX_HOSTFILE_PATH=str(tmp_path / f"hostfile-{ordinal}.txt"),
        BYTEWAX_RECOVERY_DIRECTORY=str(vol),
    )
    return env


def _run_init(env: dict[str, str]) -> subprocess.CompletedProcess:
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return subprocess.run(
        ["sh", str(INIT_SCRIPT)],
        env={"PATH": path, "TMPDIR": os.environ.get("TMPDIR", "/tmp"), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def _parts(directory: Path) -> set[int]:
    return {int(p.name[5:-8]) for p in directory.glob("part-*.sqlite3")}


def test_init_script_creates_the_recovery_partitions_once_and_then_leaves_them(tmp_path):
    env = _init_env(tmp_path, 0, 1, 4)
    first = _run_init(env)
    assert first.returncode == 0, first.stderr
    vol = Path(env["BYTEWAX_RECOVERY_DIRECTORY"])
    assert _parts(vol) == {0, 1, 2, 3}
    assert "starts from the beginning" in first.stdout
    assert Path(env["BYTEWAX_HOSTFILE_PATH"]).read_text() == "0.0.0.0:9999\n"  # no DNS needed
    before = {p.name: p.read_bytes() for p in vol.iterdir() if p.is_file()}
    again = _run_init(env)
    assert again.returncode == 0, again.stderr
    assert "resumes from its last snapshot" in again.stdout
    assert {p.name: p.read_bytes() for p in vol.iterdir() if p.is_file()} == before


def test_init_script_splits_the_partitions_over_the_processes_and_lists_them_in_the_hostfile(
    tmp_path,
):
    envs = [_init_env(tmp_path, i, 2, 5) for i in range(2)]
    for env in envs:
        done = _run_init(env)
        assert done.returncode == 0, done.stderr
    held = [_parts(Path(env["BYTEWAX_RECOVERY_DIRECTORY"])) for env in envs]
    assert held == [{0, 2, 4}, {1, 3}]
    # every process listens on its own line and connects to the others by their DNS names
    hostfiles = [Path(env["BYTEWAX_HOSTFILE_PATH"]).read_text().splitlines() for env in envs]
    assert hostfiles == [
        ["0.0.0.0:9999", "ensemble-dataflow-1.ensemble-dataflow.paper.svc:9999"],
        ["ensemble-dataflow-0.ensemble-dataflow.paper.svc:9999", "0.0.0.0:9999"],
    ]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"BYTEWAX_REPLICAS": "2"},
            "recovery volume was set up for 'processes=1 partitions=4 ordinal=0'",
        ),
        ({"RECOVERY_PARTITIONS": "8"}, "refusing to start on state it cannot use"),
        ({"BYTEWAX_POD_NAME": "ensemble-dataflow-1"}, "pod ordinal 1 but BYTEWAX_REPLICAS=1"),
        ({"BYTEWAX_POD_NAME": "other-0"}, "is not 'ensemble-dataflow-<ordinal>'"),
        ({"RECOVERY_PARTITIONS": ""}, "RECOVERY_PARTITIONS is not set"),
        ({"BYTEWAX_REPLICAS": "x"}, "must be a whole number"),
    ],
)
def test_init_script_refuses_state_or_settings_it_cannot_use(tmp_path, change, message):
    env = _init_env(tmp_path, 0, 1, 4)
    assert _run_init(env).returncode == 0
    done = _run_init({**env, **change})
    assert done.returncode == 2
    assert message in done.stderr


def test_init_script_refuses_partitions_without_its_layout_file(tmp_path):
    env = _init_env(tmp_path, 0, 1, 4)
    assert _run_init(env).returncode == 0
    (Path(env["BYTEWAX_RECOVERY_DIRECTORY"]) / "ensemble-layout").unlink()
    done = _run_init(env)
    assert done.returncode == 2 and "an interrupted first start?" in done.stderr


# -- tests: the manifests' own commands against a real broker ------------------------------------
@pytest.fixture
def kafka() -> str:
    bootstrap = os.environ.get("ENSEMBLE_TEST_KAFKA")
    if not bootstrap:
        msg = "no Kafka broker: run `make test`, or set ENSEMBLE_TEST_KAFKA=127.0.0.1:19092"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return bootstrap


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pod_volumes(objs, o: dict[str, Any], where: Path) -> dict[str, Path]:
    """Local directories standing in for a pod's volumes, ConfigMaps written out as files,
    the Kafka Secrets filled from the test broker (deploy/kafka/broker.sh's files)."""
    ((_, spec),) = pod_specs(o)
    out = {}
    for v in spec.get("volumes", []) + o["spec"].get("volumeClaimTemplates", []):
        name = v.get("name") or v["metadata"]["name"]
        d = where / f"{o['metadata']['name']}-{name}"
        d.mkdir()
        if "configMap" in v:
            for k, text in find(objs, "ConfigMap", v["configMap"]["name"])["data"].items():
                (d / k).write_text(text)
        secret = v.get("secret", {}).get("secretName", "")
        admin_pw = os.environ.get("ENSEMBLE_KAFKA_SASL_PASSWORD_FILE")
        if secret.startswith("ensemble-kafka-") and admin_pw:
            if secret == "ensemble-kafka-ca":
                (d / "ca.crt").write_text(Path(os.environ["ENSEMBLE_KAFKA_SSL_CA"]).read_text())
            else:
                user = secret.removeprefix("ensemble-kafka-")
                (d / "password").write_text(
                    (Path(admin_pw).parent / f"{user}.password").read_text()
                )
        out[name] = d
    return out


def _localize(value: str, paths: dict[str, Path]) -> str:
    for inside, outside in sorted(paths.items(), key=lambda kv: -len(kv[0])):
        if value == inside or value.startswith(inside + "/"):
            return str(outside) + value[len(inside) :]
    return value


def _local_run(
    objs, o: dict[str, Any], c: dict[str, Any], volumes: dict[str, Path], pod: str, **override: str
) -> tuple[list[str], dict[str, str]]:
    """argv and environment of a container run here: the image's ENV, the container's env,
    container paths (mounts, the model the image copies) mapped to local directories."""
    paths = {m["mountPath"]: volumes[m["name"]] for m in c.get("volumeMounts", [])}
    paths.update({dest: ROOT / srcs[0] for srcs, dest in context_copies(runtime_stage())})
    image_env = dockerfile_env(runtime_stage())
    image_env.pop("PATH")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ENSEMBLE_", "BYTEWAX_"))}
    env.update({**image_env, **container_env(objs, c, pod, "ns"), **override})
    argv = [_localize(a, paths) for a in container_argv(c, env)]
    env = {k: _localize(v, paths) for k, v in env.items()}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return argv, env


def _scrape(url: str, deadline_s: float, proc: subprocess.Popen) -> str:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"exited with {proc.returncode}:\n{proc.stdout.read()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return r.read().decode()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} did not answer within {deadline_s} s")


@pytest.mark.slow
def test_the_topic_job_and_the_statefulset_commands_run_serve_metrics_and_resume(kafka, tmp_path):
    from dataflows.progress import resumed_epoch
    from dataflows.topics import ALL_TOPICS

    objs = render(BASE)
    prefix = f"it-deploy-{uuid.uuid4().hex[:8]}"
    settings = find(objs, "ConfigMap", "ensemble-settings")["data"]
    settings.update(ENSEMBLE_KAFKA_BOOTSTRAP=kafka, ENSEMBLE_TOPIC_PREFIX=prefix)
    if os.environ.get("ENSEMBLE_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT") == "PLAINTEXT":
        pytest.skip("the manifests authenticate; the test broker runs plain text")
    cwd = tmp_path / "workdir"  # the image's WORKDIR, read-only in the pod
    cwd.mkdir()

    # 1. the topic Job's command, as the Job runs it
    job = workload(objs, "Job", "ensemble-topics")
    argv, env = _local_run(
        objs, job, container(job, "topics"), _pod_volumes(objs, job, tmp_path), "x"
    )
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    from confluent_kafka.admin import AdminClient

    from dataflows.kafka_security import confluent_config

    topics = AdminClient(confluent_config(kafka)).list_topics(timeout=30).topics
    assert {t.name(prefix) for t in ALL_TOPICS} <= set(topics)

    # 2. the init container, then the dataflow container, twice: the second start resumes
    sts = workload(objs, "StatefulSet", "ensemble-dataflow")
    volumes = _pod_volumes(objs, sts, tmp_path)
    pod = f"{sts['metadata']['name']}-0"
    main = container(sts, "dataflow")
    init_argv, init_env = _local_run(objs, sts, container(sts, "init-dataflow"), volumes, pod)
    api_port, ready_port = _free_port(), _free_port()  # the test's own, not 3030 and 3031
    argv, env = _local_run(
        objs,
        sts,
        main,
        volumes,
        pod,
        BYTEWAX_DATAFLOW_API_PORT=str(api_port),
        ENSEMBLE_READY_PORT=str(ready_port),
        BYTEWAX_SNAPSHOT_INTERVAL="1",
    )
    probe = main["livenessProbe"]["httpGet"]
    ready = main["readinessProbe"]["httpGet"]
    assert (probe["port"], ready["port"]) == ("http-metrics", "http-ready")
    for start in ("first", "second"):
        done = subprocess.run(
            init_argv, env=init_env, cwd=cwd, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        assert ("starts from the beginning" if start == "first" else "resumes") in done.stdout
        proc = subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        try:
            body = _scrape(f"http://127.0.0.1:{api_port}{probe['path']}", 120, proc)
            assert "bytewax_" in body
            assert _scrape(f"http://127.0.0.1:{ready_port}{ready['path']}", 60, proc).startswith(
                "ok"
            )
            time.sleep(2.5)  # at least one recovery snapshot
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                out = proc.communicate(timeout=30)[0]
            except subprocess.TimeoutExpired:
                proc.kill()
                out = proc.communicate()[0]
        assert "cannot start" not in out and "Error" not in out, out
    assert list(cwd.iterdir()) == [], "the process wrote into its working directory"
    # SIGTERM stops the flow cleanly (dataflows/progress.py): SQLite folds its write-ahead
    # log into the partition files, so the snapshot is read from them
    assert resumed_epoch(volumes["recovery"]) is not None, "no recovery snapshot written"
    assert (volumes["tmp"] / "dataflow.json").is_file(), "the API cache is not in /tmp"


# -- tests: network policies and what the pods hold (issue 14) ----------------------------------
def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics for matchLabels and matchExpressions (In/NotIn/
    Exists/DoesNotExist); an empty selector selects everything."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        k, op, vals = e["key"], e["operator"], e.get("values", [])
        ok = {
            "In": labels.get(k) in vals,
            "NotIn": labels.get(k) not in vals,
            "Exists": k in labels,
            "DoesNotExist": k not in labels,
        }[op]
        if not ok:
            return False
    return True


def _pod_policies(objs, labels: dict[str, str]) -> list[dict[str, Any]]:
    return [p for p in by_kind(objs, "NetworkPolicy") if _selects(p["spec"]["podSelector"], labels)]


def _allowed(policies, direction: str) -> list[tuple[int, list[dict[str, Any]]]]:
    """(port, peers) for every port a set of policies allows in `direction` (ingress/egress);
    peers [] means any peer."""
    key = "from" if direction == "ingress" else "to"
    return [
        (p["port"], rule.get(key, []))
        for pol in policies
        for rule in pol["spec"].get(direction, [])
        for p in rule.get("ports", [])
    ]


def test_every_pod_is_under_a_default_deny_policy_for_both_directions(rendered):
    for o in rendered:
        for meta, _ in pod_specs(o):
            pols = _pod_policies(rendered, meta["labels"])
            types = {t for p in pols for t in p["spec"]["policyTypes"]}
            assert {"Ingress", "Egress"} <= types, (o["metadata"]["name"], types)
            # nothing allows traffic without naming a port
            for p in pols:
                for direction in ("ingress", "egress"):
                    for rule in p["spec"].get(direction, []):
                        assert rule.get("ports"), (p["metadata"]["name"], direction, rule)


def test_only_dataflow_pods_reach_9999_and_only_prometheus_reaches_the_metrics_ports(rendered):
    sts = workload(rendered, "StatefulSet", "ensemble-dataflow")
    labels = sts["spec"]["template"]["metadata"]["labels"]
    ingress = _allowed(_pod_policies(rendered, labels), "ingress")
    assert sorted({port for port, _ in ingress}) == [3030, 9999]
    for port, peers in ingress:
        assert peers, f"port {port} is open to every peer in the cluster"
        for peer in peers:
            assert "ipBlock" not in peer
            pod_sel = peer.get("podSelector")
            assert pod_sel and (pod_sel.get("matchLabels") or pod_sel.get("matchExpressions"))
            if port == 9999:
                assert "namespaceSelector" not in peer and _selects(pod_sel, labels)
            else:
                assert pod_sel["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
    # no other Ensemble pod accepts anything but Prometheus on the ingestor's metrics port
    for o in rendered:
        for meta, _ in pod_specs(o):
            if o is sts:
                continue
            ingress = _allowed(_pod_policies(rendered, meta["labels"]), "ingress")
            if o["metadata"]["name"] == "ensemble-ingestor":
                assert [port for port, _ in ingress] == [9108]
                for peer in ingress[0][1]:
                    assert peer["podSelector"]["matchLabels"] == {
                        "app.kubernetes.io/name": "prometheus"
                    }
            else:
                assert not ingress, o["metadata"]["name"]


def test_each_pod_may_reach_kafka_and_dns_and_only_the_notifiers_and_the_ingestor_https(rendered):
    for o in rendered:
        for meta, _ in pod_specs(o):
            egress = {
                port for port, _ in _allowed(_pod_policies(rendered, meta["labels"]), "egress")
            }
            name = o["metadata"]["name"]
            assert {53, 9092} <= egress, (name, egress)
            notifier = meta["labels"]["app.kubernetes.io/component"] in (
                "ingestor", "alerts", "copilot", "copilot-summary",
            )  # fmt: skip
            assert (443 in egress) == notifier, (name, egress)
            assert 3030 not in egress


def test_the_dataflow_pod_holds_no_exchange_keys_and_every_kafka_client_its_own_principal(rendered):
    sts = workload(rendered, "StatefulSet", "ensemble-dataflow")
    text = json.dumps(sts)
    assert "exchange" not in text.lower(), "the dataflow pod references exchange keys"
    users = {}
    for o in rendered:
        for spec, c in containers(o):
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            if "ENSEMBLE_KAFKA_SASL_USERNAME" in env:
                users[c["name"]] = env["ENSEMBLE_KAFKA_SASL_USERNAME"]
                secret = next(v for v in spec["volumes"] if v["name"] == "kafka-credentials")
                assert secret["secret"]["secretName"] == f"ensemble-kafka-{users[c['name']]}"
    assert users == {
        "dataflow": "flow", "ingestor": "ingestor", "alerts": "alerts", "copilot": "copilot",
        "summary": "copilot", "topics": "admin",
    }  # fmt: skip
    from dataflows.topics import ACCESS

    assert {u for u in users.values() if u != "admin"} <= {a.principal for a in ACCESS}


def test_the_policy_checks_catch_an_open_metrics_port():
    objs = copy.deepcopy(render(BASE))
    pol = find(objs, "NetworkPolicy", "ensemble-dataflow")
    pol["spec"]["ingress"].append({"ports": [{"port": 3030, "protocol": "TCP"}]})
    with pytest.raises(AssertionError, match="open to every peer"):
        test_only_dataflow_pods_reach_9999_and_only_prometheus_reaches_the_metrics_ports(objs)


# -- tests: the live market-data ingestor ---------------------------------------------------------
def test_the_ingestor_deployment_runs_one_venue_once_with_the_command_line_s_own_arguments():
    from marketdata.live.__main__ import parse_args

    objs = render(BASE)
    dep = workload(objs, "Deployment", "ensemble-ingestor")
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"
    c = container(dep, "ingestor")
    env = container_env(objs, c, "ensemble-ingestor-x", "ns")
    argv = container_argv(c, env)
    assert argv[:3] == ["python", "-m", "marketdata.live"]
    cfg, metrics_port = parse_args(argv[3:])  # the ingestor's own parser and validation
    assert cfg.venue == "hyperliquid", "the venue whose trades carry addresses"
    assert ",".join(cfg.symbols) == env["ENSEMBLE_SYMBOLS"]
    assert cfg.bootstrap == env["ENSEMBLE_KAFKA_BOOTSTRAP"]
    assert cfg.prefix == env["ENSEMBLE_TOPIC_PREFIX"]
    assert ",".join(cfg.candle_symbols) == env["ENSEMBLE_CANDLE_SYMBOLS"], "as the flow reads"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["http-metrics"] == metrics_port
    for kind in ("livenessProbe", "readinessProbe"):
        assert c[kind]["httpGet"] == {"path": "/metrics", "port": "http-metrics"}
    assert dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 30, (
        "time to flush to Kafka after SIGTERM"
    )


@pytest.mark.slow
def test_the_ingestor_command_serves_metrics_publishes_and_exits_0_on_sigterm(kafka, tmp_path):
    from dataflows.topics import provision
    from tests.integration.kafka_io import read_topic
    from tests.venue_servers import HL_CAPTURE, Script, VenueServer, capture_or_skip, load_frames

    frames = load_frames("hyperliquid", capture_or_skip(HL_CAPTURE))
    objs = render(BASE)
    prefix = f"it-deploy-{uuid.uuid4().hex[:8]}"
    settings = find(objs, "ConfigMap", "ensemble-settings")["data"]
    settings.update(ENSEMBLE_KAFKA_BOOTSTRAP=kafka, ENSEMBLE_TOPIC_PREFIX=prefix)
    settings.update(ENSEMBLE_SYMBOLS="BTC-PERP", ENSEMBLE_CANDLE_SYMBOLS="")
    provision(kafka, prefix)
    dep = workload(objs, "Deployment", "ensemble-ingestor")
    c = container(dep, "ingestor")
    argv, env = _local_run(objs, dep, c, _pod_volumes(objs, dep, tmp_path), "x")
    port = _free_port()
    argv[argv.index("--metrics-port") + 1] = str(port)
    cwd = tmp_path / "workdir"
    cwd.mkdir()
    with VenueServer("hyperliquid", frames, Script(pace_s=0.05)) as server:
        argv += ["--ws-url", server.ws_url, "--rest-url", server.rest_url]  # not the internet
        proc = subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        try:
            body = _scrape(
                f"http://127.0.0.1:{port}{c['readinessProbe']['httpGet']['path']}", 60, proc
            )
            assert server.done.wait(30), "the server did not get to the end of its capture"
            time.sleep(0.5)
            body = _scrape(f"http://127.0.0.1:{port}/metrics", 10, proc)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                out = proc.communicate(timeout=60)[0]
            except subprocess.TimeoutExpired:
                proc.kill()
                out = proc.communicate()[0]
    assert proc.returncode == 0, out
    assert 'ensemble_live_frames_total{stream="trades",venue="hyperliquid"} 9.0' in body
    trades = read_topic(kafka, f"{prefix}.trades", "trade")
    assert len(trades) == sum(len(f.trades) for f in frames)
    assert list(cwd.iterdir()) == [], "the process wrote into its working directory"
