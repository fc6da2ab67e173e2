"""A real (kubelet-less) Kubernetes control plane for tests: Python side of cluster.sh.

Typical use in a pytest file::

    from tests.harness.k8s.cluster import Cluster, require_cluster

    @pytest.fixture(scope="session")
    def k8s(tmp_path_factory):
        require_cluster()                      # skips (or fails under CI) with the reason
        cluster = Cluster()
        cluster.start(tmp_path_factory.mktemp("k8s"))
        yield cluster
        cluster.stop()

    async def test_x(k8s):
        async with k8s.api_client() as api: ...
        await k8s.mark_pods_running("default")

There is no kubelet: the scheduler binds pods to the fake Node "fake-node", they stay Pending
until ``mark_pods_running`` patches their status, and pods deleted with a grace period stay
Terminating until ``force_delete_terminating`` (or ``fake_kubelet``) removes them.  See README.md.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import datetime as _dt
import os
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
CLUSTER_SH = HERE / "cluster.sh"
COMPONENTS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")

#: Where the built binaries are cached (outside the repository).
CACHE_DIR = Path(os.environ.get("NEKZUSD_K8S_CACHE") or Path.home() / ".cache" / "nekzusd-k8s")
BIN_DIR = CACHE_DIR / "bin"
BUILD_LOG = CACHE_DIR / "build.log"

_available: tuple[bool, str] | None = None


def binaries_present() -> bool:
    return all(os.access(BIN_DIR / c, os.X_OK) for c in COMPONENTS) and shutil.which("etcd") is not None


def build(timeout: float = 1800) -> None:
    """Run ``cluster.sh build`` (a no-op when the binaries are cached); output goes to BUILD_LOG."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(BUILD_LOG, "ab") as log:
        subprocess.run(["bash", str(CLUSTER_SH), "build"], stdin=subprocess.DEVNULL, stdout=log,
                       stderr=subprocess.STDOUT, timeout=timeout, check=True)


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def available(build_if_missing: bool = True) -> tuple[bool, str]:
    """(True, "") when the cluster can run; else (False, reason).

    Builds the binaries first when they are missing (several minutes, once per machine),
    unless ``build_if_missing`` is False or NEKZUSD_K8S_BUILD=0.  The answer is cached.
    """
    global _available
    if _available is not None:
        return _available
    if binaries_present():
        _available = (True, "")
        return _available
    if not build_if_missing or os.environ.get("NEKZUSD_K8S_BUILD") == "0":
        return (False, f"Kubernetes test binaries not built in {BIN_DIR} (run tests/harness/k8s/cluster.sh build)")
    missing = [t for t in ("bash", "curl", "openssl", "apt-get", "dpkg-query", "setsid", "flock")
               if shutil.which(t) is None]
    if shutil.which("apt-get") is None:
        _available = (False, "no apt-get: the Kubernetes test cluster is built from Debian packages")
        return _available
    if os.geteuid() != 0 and (shutil.which("go") is None or shutil.which("etcd") is None):
        _available = (False, "not root and golang-go/etcd-server not installed: cannot build the k8s test cluster")
        return _available
    try:
        build()
    except subprocess.TimeoutExpired:
        _available = (False, f"building the k8s test binaries timed out; see {BUILD_LOG}")
    except (subprocess.CalledProcessError, OSError) as exc:
        _available = (False, f"building the k8s test binaries failed ({exc}); missing tools: {missing}; "
                             f"last lines of {BUILD_LOG}:\n{_log_tail(BUILD_LOG)}")
    else:
        _available = (True, "") if binaries_present() else (False, f"build ran but binaries missing in {BIN_DIR}")
    return _available


def require_cluster() -> None:
    """In a test or fixture: skip with the reason when the cluster can't be had.

    Under CI (CI=true) or with NEKZUSD_K8S_REQUIRED=1 the test fails instead, so a broken build
    can never turn into silently skipped tests there.
    """
    import pytest

    ok, reason = available()
    if ok:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes") or os.environ.get("NEKZUSD_K8S_REQUIRED") == "1":
        pytest.fail(f"Kubernetes test cluster required but unavailable: {reason}", pytrace=False)
    pytest.skip(f"Kubernetes test cluster unavailable: {reason}")


@dataclass(frozen=True)
class ClusterInfo:
    base_dir: Path
    api_url: str           # https://127.0.0.1:PORT
    kubeconfig: Path       # admin (group system:masters), namespace default
    kubeconfig_limited: Path  # user "limited": RBAC "view" in default and team-a only
    ca_file: Path
    admin_token: str
    limited_token: str
    node_name: str
    etcd_url: str


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Cluster:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler, all on 127.0.0.1."""

    def __init__(self) -> None:
        self.info: ClusterInfo | None = None
        self._pod_ip_counter = 0

    # ------------------------------------------------------------------ lifecycle
    def start(self, base_dir: str | os.PathLike | None = None, timeout: float = 180,
              node: str = "fake") -> ClusterInfo:
        """Start the cluster with its state under base_dir (a temp dir when None); blocks until ready
        (about 5 s warm).  Returns the paths and URL; also kept as ``self.info``.

        ``node="kubelet"``: no fake node; the control plane is set up for the real kubelet that
        tests/harness/k8s_live.py starts (node ``127.0.0.1``, its kubeconfig ``base_dir/kubeconfig-node``)."""
        if self.info is not None:
            raise RuntimeError("cluster already started")
        from tests.harness.machine import refuse_engines_if_asked

        refuse_engines_if_asked("a Kubernetes control plane")
        ok, reason = available()
        if not ok:
            raise RuntimeError(reason)
        base = Path(base_dir) if base_dir is not None else Path(tempfile.mkdtemp(prefix="nekzusd-k8s-"))
        base.mkdir(parents=True, exist_ok=True)
        base = base.resolve()
        proc = self._up(base, timeout, node)
        if proc.returncode != 0 and "exited during start-up" in proc.stderr:
            # A component that dies while it starts is retried once, in a fresh directory, and said loudly:
            # the suite's Kubernetes tests all share this cluster, and one crash of a third-party binary
            # under a loaded machine would otherwise error every one of them (seen once in CI, log empty).
            warnings.warn(f"cluster.sh up failed once, retried:\n{proc.stderr[-2000:]}", stacklevel=2)
            base = base / "retry"
            base.mkdir()
            proc = self._up(base, timeout, node)
        if proc.returncode != 0:
            raise RuntimeError(f"cluster.sh up failed (rc={proc.returncode}):\n{proc.stderr[-4000:]}")
        env = {}
        for line in (base / "cluster.env").read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep:
                env[key] = value
        self.info = ClusterInfo(
            base_dir=base, api_url=env["API_URL"], kubeconfig=Path(env["KUBECONFIG"]),
            kubeconfig_limited=Path(env["KUBECONFIG_LIMITED"]), ca_file=Path(env["CA_FILE"]),
            admin_token=env["ADMIN_TOKEN"], limited_token=env["LIMITED_TOKEN"],
            node_name=env["NODE_NAME"], etcd_url=env["ETCD_URL"])
        atexit.register(self.stop)   # safety net if the caller never stops it
        return self.info

    @staticmethod
    def _up(base: Path, timeout: float, node: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", str(CLUSTER_SH), "up", str(base)], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "NEKZUSD_K8S_NODE": node})

    def stop(self) -> None:
        """Stop every process of the cluster (idempotent)."""
        if self.info is None:
            return
        subprocess.run(["bash", str(CLUSTER_SH), "down", str(self.info.base_dir)],
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=120, check=False)
        self.info = None
        atexit.unregister(self.stop)

    def __enter__(self) -> Cluster:
        if self.info is None:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # convenience accessors
    @property
    def kubeconfig(self) -> Path:
        return self._info().kubeconfig

    @property
    def kubeconfig_limited(self) -> Path:
        return self._info().kubeconfig_limited

    @property
    def api_url(self) -> str:
        return self._info().api_url

    def _info(self) -> ClusterInfo:
        if self.info is None:
            raise RuntimeError("cluster not started")
        return self.info

    # ------------------------------------------------------------------ clients
    @contextlib.asynccontextmanager
    async def api_client(self, limited: bool = False) -> AsyncIterator[object]:
        """A kubernetes_asyncio ApiClient for the admin (or the limited) user; closed on exit."""
        from kubernetes_asyncio import config

        path = self._info().kubeconfig_limited if limited else self._info().kubeconfig
        api = await config.new_client_from_config(config_file=str(path), persist_config=False)
        try:
            yield api
        finally:
            await api.close()

    # ------------------------------------------------------------------ kubelet stand-ins
    async def mark_pods_running(self, namespace: str, label_selector: str | None = None) -> list[str]:
        """Do what a kubelet would: every pod of the namespace that is bound to a node, not being
        deleted and not yet Running gets status Running (phase, conditions, ready containerStatuses,
        a loopback podIP, startTime) through the status subresource.  Returns the patched names."""
        from kubernetes_asyncio import client

        patched = []
        async with self.api_client() as api:
            core = client.CoreV1Api(api)
            kwargs = {"label_selector": label_selector} if label_selector else {}
            pods = await core.list_namespaced_pod(namespace, **kwargs)
            for pod in pods.items:
                if not pod.spec.node_name or pod.metadata.deletion_timestamp is not None:
                    continue
                if pod.status.phase == "Running":
                    continue
                await core.patch_namespaced_pod_status(pod.metadata.name, namespace, self._running_status(pod))
                patched.append(pod.metadata.name)
        return patched

    def _running_status(self, pod) -> dict:
        now = _now()
        self._pod_ip_counter += 1
        n = self._pod_ip_counter
        pod_ip = f"127.10.{(n // 250) % 250}.{n % 250 + 1}"   # loopback range only
        statuses = []
        for c in pod.spec.containers:
            statuses.append({
                "name": c.name, "image": c.image, "imageID": f"fake://{c.image}",
                "containerID": f"fake://{pod.metadata.uid}-{c.name}",
                "ready": True, "started": True, "restartCount": 0,
                "state": {"running": {"startedAt": now}},
            })
        conditions = [
            {"type": t, "status": "True", "lastTransitionTime": now, "lastProbeTime": None}
            for t in ("Initialized", "Ready", "ContainersReady", "PodScheduled")
        ]
        return {"status": {
            "phase": "Running", "conditions": conditions, "containerStatuses": statuses,
            "hostIP": "127.0.0.1", "podIP": pod_ip, "podIPs": [{"ip": pod_ip}],
            "startTime": now, "qosClass": pod.status.qos_class or "BestEffort",
        }}

    async def force_delete_terminating(self, namespace: str) -> list[str]:
        """Do what a kubelet would when a pod is deleted: pods that carry a deletionTimestamp
        (stuck "Terminating" because no kubelet confirms the kill) are deleted with
        grace_period_seconds=0.  Returns the deleted names."""
        from kubernetes_asyncio import client
        from kubernetes_asyncio.client.rest import ApiException

        deleted = []
        async with self.api_client() as api:
            core = client.CoreV1Api(api)
            pods = await core.list_namespaced_pod(namespace)
            for pod in pods.items:
                if pod.metadata.deletion_timestamp is None:
                    continue
                try:
                    await core.delete_namespaced_pod(pod.metadata.name, namespace, grace_period_seconds=0)
                    deleted.append(pod.metadata.name)
                except ApiException as exc:
                    if exc.status != 404:
                        raise
        return deleted

    @contextlib.asynccontextmanager
    async def fake_kubelet(self, namespaces: tuple[str, ...] = ("default", "team-a", "forbidden-ns"),
                           interval: float = 0.3) -> AsyncIterator[None]:
        """While active, a background task keeps doing both kubelet jobs in the namespaces:
        marks bound pods Running and finishes Terminating pods.  For tests of code (e.g. a
        rollout restart or scale down) that waits for pods to come and go by themselves."""
        async def loop() -> None:
            while True:
                for ns in namespaces:
                    try:
                        await self.mark_pods_running(ns)
                        await self.force_delete_terminating(ns)
                    except asyncio.CancelledError:
                        raise
                    except Exception:  # a pod vanished between list and patch: next round
                        pass
                await asyncio.sleep(interval)

        task = asyncio.create_task(loop())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
