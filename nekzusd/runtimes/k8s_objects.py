"""Kubernetes objects (as the API server's JSON) mapped to the API's shapes: pure functions, no I/O.

Kept apart from the runtime so that the mapping rules of docs/kubernetes.md can be read, and tested, alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from ..secrets import is_secret, mask_details, mask_labels
from .base import Container, Port

RUNTIME = "kubernetes"
# Where stop keeps the replica count that start restores (on the Deployment/StatefulSet).
REPLICAS_ANNOTATION = "nekzus.io/replicas-before-stop"
# What `kubectl rollout restart` sets on the pod template; a change rolls every pod.
RESTARTED_AT_ANNOTATION = "kubectl.kubernetes.io/restartedAt"
WORKLOAD_KINDS = {"Deployment": "deployments", "StatefulSet": "statefulsets"}

_PHASES = {"Pending": "pending", "Running": "running", "Succeeded": "exited", "Failed": "failed",
           "Unknown": "unknown"}
_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS_SUBDOMAIN_RE = re.compile(rf"{_DNS_LABEL}(\.{_DNS_LABEL})*")


def parse_time(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


_QUANTITY_RE = re.compile(r"([+-]?[0-9.]+)([eE][+-]?[0-9]+|[numkMGTPE]|[KMGTPE]i)?")
_SUFFIX = {"n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1),
           "k": Decimal("1e3"), "M": Decimal("1e6"), "G": Decimal("1e9"), "T": Decimal("1e12"),
           "P": Decimal("1e15"), "E": Decimal("1e18"),
           **{f"{p}i": Decimal(1024) ** (i + 1) for i, p in enumerate("KMGTPE")}}


def parse_quantity(value: str | int | float | None) -> float:
    """A Kubernetes resource quantity ("250m", "123456n", "64Mi", "1e3") as a plain number."""
    if value is None:
        return 0.0
    if isinstance(value, (int, float)):
        return float(value)
    match = _QUANTITY_RE.fullmatch(value.strip())
    if not match:
        raise ValueError(f"not a Kubernetes quantity: {value!r}")
    number, suffix = match.group(1), match.group(2) or ""
    try:
        if suffix[:1] in ("e", "E"):
            return float(Decimal(number + suffix))
        return float(Decimal(number) * _SUFFIX[suffix])
    except InvalidOperation:
        raise ValueError(f"not a Kubernetes quantity: {value!r}") from None


def selector_string(selector: dict[str, Any] | None) -> str:
    """A LabelSelector object as the ``labelSelector`` query string the API takes."""
    selector = selector or {}
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], ",".join(expr.get("values") or [])
        parts.append({"In": f"{key} in ({values})", "NotIn": f"{key} notin ({values})",
                      "Exists": key, "DoesNotExist": f"!{key}"}[op])
    return ",".join(parts)


def _ports(containers: list[dict[str, Any]]) -> tuple[Port, ...]:
    ports = [Port(p.get("hostIP", ""), int(p["containerPort"]), p.get("hostPort"),
                  (p.get("protocol") or "TCP").lower())
             for c in containers for p in c.get("ports") or [] if "containerPort" in p]
    ports.sort(key=lambda p: (p.private_port, p.type, p.ip, p.public_port or 0))
    return tuple(ports)


def pod_state(pod: dict[str, Any]) -> str:
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return "stopped"
    return _PHASES.get((pod.get("status") or {}).get("phase", ""), "unknown")


def _reason(pod: dict[str, Any]) -> str:
    """The one word `kubectl get pods` would show in its STATUS column."""
    status = pod.get("status") or {}
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return "Terminating"
    for cs in status.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting")
        if waiting and waiting.get("reason"):
            return waiting["reason"]
    phase = status.get("phase", "Unknown")
    if phase == "Pending" and not (pod.get("spec") or {}).get("nodeName"):
        return "Pending (not scheduled)"
    if phase == "Succeeded":
        return "Completed"
    if phase == "Failed":
        return status.get("reason") or "Error"
    return phase


def _ready(pod: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def restarts(pod: dict[str, Any]) -> int:
    return sum(int(cs.get("restartCount", 0)) for cs in (pod.get("status") or {}).get("containerStatuses") or [])


def workload_name(meta: dict[str, Any]) -> str:
    """The workload a pod belongs to: a ReplicaSet's pod-template-hash suffix leads back to its Deployment."""
    owner = next((r for r in meta.get("ownerReferences") or [] if r.get("controller")), None)
    if owner is None:
        return ""
    name = owner.get("name", "")
    template_hash = (meta.get("labels") or {}).get("pod-template-hash")
    if owner.get("kind") == "ReplicaSet" and template_hash and name.endswith(f"-{template_hash}"):
        return name[: -len(template_hash) - 1]
    return name


def _env_secrets(containers: list[dict[str, Any]]) -> list[str]:
    """Literal secret values of the containers' environment: masked where a label repeats them."""
    return [var["value"] for c in containers for var in c.get("env") or []
            if isinstance(var.get("value"), str) and is_secret(var.get("name", ""), var["value"])]


def container_from_pod(pod: dict[str, Any]) -> Container:
    meta, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
    containers = spec.get("containers") or []
    statuses = status.get("containerStatuses") or []
    ready = sum(1 for cs in statuses if cs.get("ready"))
    state = pod_state(pod)
    health = None
    if state == "running":
        health = "healthy" if _ready(pod) else "unhealthy"
    return Container(
        id=meta["name"],
        name=meta["name"],
        image=containers[0].get("image", "") if containers else "",
        state=state,
        status=f"{_reason(pod)}, {ready}/{len(containers)} ready, {restarts(pod)} restarts",
        created=int(parse_time(meta.get("creationTimestamp")) or 0),
        runtime=RUNTIME,
        namespace=meta.get("namespace", ""),
        ports=_ports(containers),
        labels=mask_labels(meta.get("labels") or {}, _env_secrets(containers)),
        health=health,
        workload=workload_name(meta),
    )


@dataclass(frozen=True)
class Workload:
    """A Deployment or StatefulSet: what nekzusd scales (stop/start) and rolls (restart)."""

    kind: str
    doc: dict[str, Any]

    @property
    def name(self) -> str:
        return self.doc["metadata"]["name"]

    @property
    def namespace(self) -> str:
        return self.doc["metadata"]["namespace"]

    @property
    def path(self) -> str:
        return f"/apis/apps/v1/namespaces/{self.namespace}/{WORKLOAD_KINDS[self.kind]}/{self.name}"

    @property
    def replicas(self) -> int:
        return int((self.doc.get("spec") or {}).get("replicas") or 0)

    @property
    def replicas_before_stop(self) -> int | None:
        """The count stop saved, when nekzusd scaled this workload to 0 (and nobody scaled it since)."""
        value = (self.doc["metadata"].get("annotations") or {}).get(REPLICAS_ANNOTATION)
        if value is None or self.replicas != 0:
            return None
        try:
            return max(int(value), 1)
        except ValueError:
            return 1

    @property
    def selector(self) -> str:
        return selector_string((self.doc.get("spec") or {}).get("selector"))

    @property
    def template(self) -> dict[str, Any]:
        return (self.doc.get("spec") or {}).get("template") or {}

    def describe(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


def container_from_workload(workload: Workload) -> Container:
    """The row of a workload nekzusd scaled to 0: no pod is left to show, yet it must stay listed
    (as ``stopped``, with the workload's name as id) so that it can be started again."""
    meta = workload.doc["metadata"]
    template = workload.template
    containers = (template.get("spec") or {}).get("containers") or []
    before = workload.replicas_before_stop or 1
    return Container(
        id=workload.name,
        name=workload.name,
        image=containers[0].get("image", "") if containers else "",
        state="stopped",
        status=f"Stopped by nekzusd: {workload.kind} scaled to 0 (was {before} "
               f"replica{'s' if before != 1 else ''})",
        created=int(parse_time(meta.get("creationTimestamp")) or 0),
        runtime=RUNTIME,
        namespace=meta.get("namespace", ""),
        ports=_ports(containers),
        labels=mask_labels((template.get("metadata") or {}).get("labels") or {}, _env_secrets(containers)),
        workload=workload.name,
    )


# ---------------------------------------------------------------------------------------- inspect

def _env(container: dict[str, Any]) -> list[dict[str, Any]]:
    """Literal values, masked when they look secret; ``valueFrom``/``envFrom`` shown as what they
    are, references (nekzusd never resolves a Secret for display)."""
    out: list[dict[str, Any]] = []
    for var in container.get("env") or []:
        if "valueFrom" in var:
            out.append({"name": var["name"], "valueFrom": var["valueFrom"]})
        else:
            value = var.get("value", "")
            out.append({"name": var["name"], "value": "***" if is_secret(var["name"], value) else value})
    for source in container.get("envFrom") or []:
        out.append({"envFrom": source})
    return out


_VOLUME_SOURCE_NAME = {"persistentVolumeClaim": "claimName", "secret": "secretName", "configMap": "name",
                       "hostPath": "path", "nfs": "path"}


def _mounts(container: dict[str, Any], volumes: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for mount in container.get("volumeMounts") or []:
        volume = volumes.get(mount["name"], {})
        kind = next((k for k in volume if k != "name"), "unknown")
        entry: dict[str, Any] = {"name": mount["name"], "mountPath": mount.get("mountPath", ""),
                                 "readOnly": bool(mount.get("readOnly", False)), "type": kind}
        source = (volume.get(kind) or {}) if isinstance(volume.get(kind), dict) else {}
        if _VOLUME_SOURCE_NAME.get(kind) in source:
            entry["source"] = source[_VOLUME_SOURCE_NAME[kind]]
        if mount.get("subPath"):
            entry["subPath"] = mount["subPath"]
        out.append(entry)
    return out


def _container_details(spec_container: dict[str, Any], status: dict[str, Any] | None,
                       volumes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    status = status or {}
    state = next(iter((status.get("state") or {}).keys()), None)
    return {
        "name": spec_container["name"],
        "image": spec_container.get("image", ""),
        "state": state,
        "ready": bool(status.get("ready", False)),
        "restarts": int(status.get("restartCount", 0)),
        "env": _env(spec_container),
        "ports": [p.as_json() for p in _ports([spec_container])],
        "mounts": _mounts(spec_container, volumes),
        "resources": spec_container.get("resources") or {},
    }


def details(row: Container, pod_spec: dict[str, Any], pod_status: dict[str, Any] | None,
            owner: dict[str, str] | None, extra: dict[str, Any]) -> dict[str, Any]:
    """The normalised ContainerDetails of a pod (or of a stopped workload's pod template)."""
    volumes = {v["name"]: v for v in pod_spec.get("volumes") or []}
    statuses = {s["name"]: s for s in (pod_status or {}).get("containerStatuses") or []}
    containers = [_container_details(c, statuses.get(c["name"]), volumes) for c in pod_spec.get("containers") or []]
    return mask_details({
        **row.as_json(),
        "images": [c["image"] for c in containers],
        "env": [dict(e, container=c["name"]) for c in containers for e in c["env"]],
        "mounts": [dict(m, container=c["name"]) for c in containers for m in c["mounts"]],
        "owner": owner,
        "node": pod_spec.get("nodeName"),
        "restarts": sum(c["restarts"] for c in containers),
        "containers": containers,
        **extra,
    }, _env_secrets(pod_spec.get("containers") or []))


def pod_details(pod: dict[str, Any], owner: dict[str, str] | None) -> dict[str, Any]:
    status = pod.get("status") or {}
    return details(container_from_pod(pod), pod.get("spec") or {}, status, owner, {
        "phase": status.get("phase"),
        "podIP": status.get("podIP"),
        "hostIP": status.get("hostIP"),
        "startedAt": status.get("startTime"),
        "annotations": dict(pod["metadata"].get("annotations") or {}),
    })


def workload_details(workload: Workload) -> dict[str, Any]:
    return details(container_from_workload(workload), workload.template.get("spec") or {}, None,
                   {"kind": workload.kind, "name": workload.name},
                   {"phase": None, "podIP": None, "hostIP": None, "startedAt": None,
                    "annotations": dict(workload.doc["metadata"].get("annotations") or {}),
                    "replicasBeforeStop": workload.replicas_before_stop})
