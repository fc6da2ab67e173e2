"""A Kubernetes cluster with a real kubelet for the tests that need real containers: pod logs, pod
statistics from the kubelet's summary, lifecycle that really starts and stops containers.

The fast control plane of tests/k8s (a fake node whose pods the tests mark Running) stays for everything
else; this one costs a kubelet build once per machine (several minutes, cached beside the control plane's
binaries) and about 15-20 s of start-up per session:

- the control plane of tests/harness/k8s/cluster.sh in its ``kubelet`` mode (Node authorizer, node lifecycle
  controller, no fake node);
- a private dockerd and the kubelet (v1.20, built-in dockershim) as PID 1's children of their own pid and
  mount namespaces (tests/harness/k8s/kubelet-node.sh says why and how: kernel settings, /var/log, /var/lib, the
  processes it renices all stay off the host), with the runc wrapper that clamps negative oom_score_adj;
- pods get the node's cgroup root ``/nekzusd-kubelet-<pid>-<n>`` in every cgroup v1 hierarchy (and the
  unified one), made before the kubelet starts and removed after it stopped, so that two of these clusters
  on one host (parallel sessions) never touch each other's pods;
- images ``localhost/busybox:latest`` (tests/engines.py builds it from busybox-static) and
  ``localhost/pause:1`` (the same files, whose command waits for SIGTERM) are imported, nothing is pulled.

Teardown deletes every pod (grace period 0), stops the kubelet then dockerd, stops the control plane and
removes the cgroup folders; then it compares the host with what it was before the start (kernel settings,
/var/log/pods, /var/lib/kubelet, the dockershim socket, cgroup folders, mounts, processes, other dockerds'
priority) and fails the session if anything is left.

Pods here need ``hostNetwork: true`` (no bridge on these machines) and ``imagePullPolicy: Never``:
``pod()`` and ``deployment()`` below write them so. Tests that use ``kubelet_cluster`` carry ``LIVE``
(``kubernetes`` and ``xdist_group("kubelet")``: under pytest-xdist with ``--dist loadgroup`` only one worker
starts the node). ``python -m tests.harness.k8s_live`` starts one by hand and prints its kubeconfig.
"""

from __future__ import annotations

import asyncio
import ctypes
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlencode

import pytest

from tests.harness.engines import BUSYBOX, Engine, EngineError, build_busybox_rootfs
from tests.harness.k8s.cluster import BIN_DIR, BUILD_LOG, CACHE_DIR, CLUSTER_SH, Cluster, require_cluster

HERE = Path(__file__).resolve().parent
NODE_SH = HERE / "k8s" / "kubelet-node.sh"
KUBELET = BIN_DIR / "kubelet"
NODE_NAME = "127.0.0.1"
PAUSE = "localhost/pause:1"
PAUSE_CMD = ["sh", "-c", "trap 'exit 0' TERM INT; sleep 2147483647 & wait"]
CGROUP_PREFIX = "nekzusd-kubelet-"
NAMESPACES = ("default", "team-a")
#: What the tests that use the live cluster carry.
LIVE = [pytest.mark.kubernetes, pytest.mark.xdist_group("kubelet")]

# The settings the kubelet sets when it may (kubelet-node.sh hides them from it).
SYSCTLS = ("vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
           "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes")
# Fixed paths a kubelet with default flags writes on the host.
HOST_PATHS = ("/var/log/pods", "/var/log/containers", "/var/lib/kubelet", "/var/lib/dockershim",
              "/var/run/dockershim.sock", "/run/dockershim.sock", "/usr/libexec/kubernetes")

_counter = itertools.count()
_PR_SET_PDEATHSIG = 1


def build_kubelet(timeout: float = 3600) -> None:
    """``cluster.sh build-kubelet``: a no-op when cached; otherwise builds it from the same source as the
    control plane, under the same lock (two builds never run at once, a second waits for the first)."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(BUILD_LOG, "ab") as log:
        subprocess.run(["bash", str(CLUSTER_SH), "build-kubelet"], stdin=subprocess.DEVNULL, stdout=log,
                       stderr=subprocess.STDOUT, timeout=timeout, check=True)


def require_kubelet() -> None:
    """Skip (fail under CI=true or NEKZUSD_K8S_REQUIRED=1) when the live cluster cannot run here."""
    require_cluster()
    missing = [tool for tool in ("unshare", "dockerd", "runc", "mount", "curl") if shutil.which(tool) is None
               and not os.path.exists(f"/usr/sbin/{tool}")]
    reason = ""
    if os.geteuid() != 0:
        reason = "the kubelet needs root"
    elif missing:
        reason = f"missing {', '.join(missing)} (apt-get install -y docker.io runc util-linux curl)"
    elif not os.access(KUBELET, os.X_OK):
        try:
            build_kubelet()
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
            reason = f"building the kubelet failed ({exc}); see {BUILD_LOG}"
    if not reason:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes") or os.environ.get("NEKZUSD_K8S_REQUIRED") == "1":
        pytest.fail(f"live Kubernetes cluster required but unavailable: {reason}", pytrace=False)
    pytest.skip(f"live Kubernetes cluster unavailable: {reason}")


# ------------------------------------------------------------------------------------ host state

def _cgroup_mounts() -> list[str]:
    """Mount points of every cgroup hierarchy (v1 and the unified one)."""
    with open("/proc/self/mountinfo") as fh:
        rows = [line.split() for line in fh]
    return sorted({row[4] for row in rows if row[row.index("-") + 1] in ("cgroup", "cgroup2")})


def _ours(pid: int, base: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return base.encode() in fh.read()
    except OSError:
        return False


def host_state(base: Path | None = None) -> dict[str, Any]:
    """What the live cluster must leave as it found it; ``base``: the cluster's directory (its mounts and
    processes must all be gone)."""
    state: dict[str, Any] = {}
    for key in SYSCTLS:
        with open(f"/proc/sys/{key}") as fh:
            state[f"sysctl {key}"] = fh.read().strip()
    for path in HOST_PATHS:
        state[path] = os.path.lexists(path)
    # a kubelet's default cgroup root (other live clusters' roots come and go: each checks its own)
    state["cgroups"] = sorted(f"{mount}/kubepods" for mount in _cgroup_mounts()
                              if os.path.exists(f"{mount}/kubepods"))
    if base is not None:
        with open("/proc/self/mountinfo") as fh:
            state["mounts"] = [line.split()[4] for line in fh if str(base) in line.split()[4]]
        state["processes"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit() and _ours(int(p), str(base)))
    return state


def _dockerds() -> dict[int, tuple[str, str]]:
    """Every dockerd on the host: its oom_score_adj and nice value (the kubelet changes both when it can
    see the process)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as fh:
                if fh.read().strip() != "dockerd":
                    continue
            with open(f"/proc/{entry}/oom_score_adj") as fh:
                score = fh.read().strip()
            with open(f"/proc/{entry}/stat") as fh:
                nice = fh.read().rsplit(")", 1)[1].split()[16]
        except OSError:
            continue
        found[int(entry)] = (score, nice)
    return found


def _remove_cgroup_tree(path: str) -> None:
    """rmdir a cgroup folder and everything below it, deepest first (a cgroup folder is removed empty)."""
    for root, dirs, _files in os.walk(path, topdown=False):
        for name in dirs:
            with _suppress_missing():
                os.rmdir(os.path.join(root, name))
    with _suppress_missing():
        os.rmdir(path)


class _suppress_missing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type | None, exc: BaseException | None, tb: Any) -> bool:
        return isinstance(exc, FileNotFoundError)


def sweep_stale_cgroups() -> list[str]:
    """The cgroup roots of live clusters whose test process died without its teardown (SIGKILL): named
    ``nekzusd-kubelet-<pid>-<n>``, removed when that pid is gone and they hold no process."""
    removed = []
    for mount in _cgroup_mounts():
        for name in os.listdir(mount):
            if not name.startswith(CGROUP_PREFIX):
                continue
            pid = name[len(CGROUP_PREFIX):].split("-")[0]
            if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                try:
                    _remove_cgroup_tree(f"{mount}/{name}")
                    removed.append(f"{mount}/{name}")
                except OSError:
                    pass  # still holds a process: leave it
    return removed


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the test process dies (unshare --kill-child then kills the
    node's namespace), and a session of its own (no terminal signals)."""
    os.setsid()
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


# ------------------------------------------------------------------------------------ the cluster

@dataclass
class Timings:
    kubelet_build: float = 0.0
    control_plane: float = 0.0
    docker_ready: float = 0.0
    images: float = 0.0
    node_ready: float = 0.0
    total: float = 0.0
    teardown: float = 0.0


@dataclass
class LiveCluster:
    """Control plane + private dockerd + kubelet; ``start()`` blocks until the node is Ready."""

    base: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="nkk-")))  # short: socket paths
    cluster: Cluster = field(default_factory=Cluster)
    timings: Timings = field(default_factory=Timings)
    cgroup_root: str = ""
    engine: Engine | None = None  # the node's dockerd (API calls only: kubelet-node.sh runs it)
    _proc: subprocess.Popen[bytes] | None = None
    _before: dict[str, Any] = field(default_factory=dict)
    _dockerds: dict[int, tuple[str, str]] = field(default_factory=dict)

    @property
    def node_dir(self) -> Path:
        return self.base / "node"

    def start(self, timeout: float = 120) -> LiveCluster:
        t0 = time.monotonic()
        if not os.access(KUBELET, os.X_OK):
            build_kubelet()
        self.timings.kubelet_build = time.monotonic() - t0
        sweep_stale_cgroups()
        self._before = host_state()
        self._dockerds = _dockerds()
        try:
            t1 = time.monotonic()
            self.cluster.start(self.base / "cp", node="kubelet")
            self.timings.control_plane = time.monotonic() - t1
            self._start_node()
            t2 = time.monotonic()
            self._wait_docker(timeout)
            self.timings.docker_ready = time.monotonic() - t2
            t3 = time.monotonic()
            self._import_images()
            self.timings.images = time.monotonic() - t3
            t4 = time.monotonic()
            self._wait_node_ready(timeout)
            self.timings.node_ready = time.monotonic() - t4
        except BaseException:
            self.stop(check=False)
            raise
        self.timings.total = time.monotonic() - t0
        return self

    def _start_node(self) -> None:
        self.cgroup_root = f"/{CGROUP_PREFIX}{os.getpid()}-{next(_counter)}"
        for mount in _cgroup_mounts():
            path = Path(mount + self.cgroup_root)
            path.mkdir()
            for name in ("cpuset.cpus", "cpuset.mems"):  # a new cpuset is empty: no task could join it
                if (path / name).exists():
                    (path / name).write_text((path.parent / name).read_text())
        node = self.node_dir
        node.mkdir(parents=True)
        assert self.cluster.info is not None
        docker_dir = self.base / "d"
        env = {"KUBELET": str(KUBELET), "DOCKER_DIR": str(docker_dir),
               "KUBECONFIG_NODE": str(self.cluster.info.base_dir / "kubeconfig-node"),
               "KUBELET_PORT": str(_free_port()), "HEALTHZ_PORT": str(_free_port()),
               "CGROUP_ROOT": self.cgroup_root, "PAUSE_IMAGE": PAUSE}
        (node / "node.env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
        self.engine = Engine("docker", docker_dir)
        log = open(node / "node.log", "ab")
        try:
            self._proc = subprocess.Popen(
                ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "--mount", "--propagation", "slave",
                 "bash", str(NODE_SH), str(node)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        finally:
            log.close()

    def _alive(self) -> None:
        assert self._proc is not None
        if self._proc.poll() is not None:
            raise RuntimeError(f"the kubelet node exited ({self._proc.returncode}):\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        out = []
        for name in ("node.log", "logs/dockerd.log", "logs/kubelet.log"):
            try:
                text = (self.node_dir / name).read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                continue
            out.append(f"--- {name}\n" + "\n".join(text))
        return "\n".join(out)

    def _wait_docker(self, timeout: float) -> None:
        assert self.engine is not None
        deadline = time.monotonic() + timeout
        while True:
            self._alive()
            try:
                if self.engine.socket_path.exists() and self.engine.api("GET", "/_ping", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the node's dockerd did not answer within {timeout:g} s:\n{self.log_tail()}")
            time.sleep(0.05)

    def _import_images(self) -> None:
        """busybox as tests/engines.py builds it, and the pause image: the same files, a command of its own."""
        assert self.engine is not None
        self.engine.ensure_busybox()
        repo, tag = PAUSE.rsplit(":", 1)
        query = urlencode({"fromSrc": "-", "repo": repo, "tag": tag, "changes": f"CMD {json.dumps(PAUSE_CMD)}"})
        status, data = self.engine.api("POST", f"/images/create?{query}", body=build_busybox_rootfs().read_bytes(),
                                       headers={"Content-Type": "application/x-tar"}, timeout=120)
        if status != 200 or b'"error"' in data:
            raise EngineError(f"importing {PAUSE} failed: {status} {data[-300:]!r}")

    def _wait_node_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self._alive()
            node = self.kubectl_json("GET", f"/api/v1/nodes/{NODE_NAME}")
            conditions = {c["type"]: c["status"] for c in ((node or {}).get("status") or {}).get("conditions") or []}
            taints = ((node or {}).get("spec") or {}).get("taints") or []
            if conditions.get("Ready") == "True" and not any(t["effect"] == "NoSchedule" for t in taints):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"node {NODE_NAME} not Ready after {timeout:g} s ({conditions}, {taints}):\n"
                                   f"{self.log_tail()}")
            time.sleep(0.25)

    def kubectl_json(self, method: str, path: str, body: Any = None) -> Any:
        """One admin API call with curl (synchronous, for set-up and teardown); None for a 404."""
        info = self.cluster.info
        assert info is not None
        args = ["curl", "-sS", "--max-time", "20", "--cacert", str(info.ca_file),
                "-H", f"Authorization: Bearer {info.admin_token}", "-X", method, "-w", "\n%{http_code}"]
        if body is not None:
            args += ["-H", "Content-Type: application/json", "--data-binary", json.dumps(body)]
        out = subprocess.run([*args, info.api_url + path], capture_output=True, text=True, timeout=30).stdout
        text, _, code = out.rpartition("\n")
        if code == "404":
            return None
        if not code.startswith("2"):
            raise RuntimeError(f"{method} {path} -> {code}: {text[:300]}")
        return json.loads(text) if text.strip() else None

    # -------------------------------------------------------------------------------- teardown
    def stop(self, check: bool = True) -> list[str]:
        """Delete every pod, stop the node and the control plane, remove the cgroup root. With ``check``,
        raise if the host is not as before the start; returns what was found left over otherwise."""
        t0 = time.monotonic()
        if self._proc is not None and self._proc.poll() is None:
            if self.cluster.info is not None:
                self._delete_pods()
            self._stop_node()
        self._proc = None
        self.cluster.stop()
        for mount in _cgroup_mounts() if self.cgroup_root else []:
            try:
                _remove_cgroup_tree(mount + self.cgroup_root)
            except OSError:
                pass
        if self.engine is not None:
            from tests.harness.engines import _cleanup_base_dir  # the node's processes are dead; mounts: none expected
            _cleanup_base_dir(self.base)
        left = self.leftovers() if self._before else []
        shutil.rmtree(self.base, ignore_errors=True)
        self.timings.teardown = time.monotonic() - t0
        if check and left:
            raise AssertionError("the live Kubernetes cluster left this on the host:\n" + "\n".join(left))
        return left

    def _delete_pods(self) -> None:
        """Pods deleted with grace 0 in every namespace, then wait for dockerd to have no container left
        but pause and busybox images (the kubelet removes them): dockerd then stops at once."""
        try:
            for ns in self.kubectl_json("GET", "/api/v1/namespaces")["items"]:
                name = ns["metadata"]["name"]
                self.kubectl_json("DELETE", f"/api/v1/namespaces/{name}/pods?gracePeriodSeconds=0")
            assert self.engine is not None
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                running = self.engine.api_json("GET", "/containers/json")
                if not running:
                    return
                time.sleep(0.2)
        except (RuntimeError, OSError, EngineError, subprocess.TimeoutExpired):
            pass  # the node stops anyway; its namespace takes every process with it

    def _stop_node(self) -> None:
        """SIGTERM to the namespace's PID 1 (kubelet-node.sh: kubelet, then dockerd); SIGKILL after 30 s
        (the kernel then kills the whole pid namespace)."""
        assert self._proc is not None
        init = _child_of(self._proc.pid)
        if init is not None:
            os.kill(init, signal.SIGTERM)
        try:
            self._proc.wait(30)
        except subprocess.TimeoutExpired:
            if init is not None:
                os.kill(init, signal.SIGKILL)
            self._proc.kill()
            self._proc.wait(10)

    def leftovers(self) -> list[str]:
        after = host_state(self.base)
        left = [f"{key}: {self._before.get(key)!r} -> {value!r}" for key, value in after.items()
                if key in self._before and value != self._before[key]]
        left += [f"mount {m}" for m in after["mounts"]] + [f"process {p}" for p in after["processes"]]
        if self.cgroup_root:
            left += [f"cgroup {mount}{self.cgroup_root}" for mount in _cgroup_mounts()
                     if os.path.exists(mount + self.cgroup_root)]
        now = _dockerds()
        left += [f"dockerd {pid}: oom_score_adj/nice {was} -> {now[pid]}" for pid, was in self._dockerds.items()
                 if pid in now and now[pid] != was]
        return left

    # -------------------------------------------------------------------------------- for tests
    def containers_of(self, pod_uid: str) -> list[dict[str, Any]]:
        """The node's docker containers of a pod (running or not), pause sandbox excluded."""
        assert self.engine is not None
        query = urlencode({"all": "1", "filters": json.dumps({"label": [f"io.kubernetes.pod.uid={pod_uid}",
                                                                        "io.kubernetes.docker.type=container"]})})
        return self.engine.api_json("GET", f"/containers/json?{query}")

    @property
    def kubeconfig(self) -> Path:
        return self.cluster.kubeconfig


def _child_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            children = fh.read().split()
    except OSError:
        return None
    return int(children[0]) if children else None


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="session")
def kubelet_cluster() -> Iterator[LiveCluster]:
    """One live cluster per session (tests using it carry ``LIVE``); its teardown fails the session if it
    left anything on the host."""
    require_kubelet()
    live = LiveCluster().start()
    print(f"\nlive Kubernetes cluster up in {live.timings.total:.1f} s ({live.timings})", file=sys.stderr)
    yield live
    live.stop()


@pytest.fixture
async def live_api(kubelet_cluster: LiveCluster) -> AsyncIterator[Any]:
    """An admin ApiClient; the test's workloads and pods are deleted afterwards (pods with grace 0) and
    the test waits until the node has no container left, so the next test starts on an empty node."""
    from kubernetes_asyncio import client

    async with kubelet_cluster.cluster.api_client() as api:
        yield api
        apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
        for ns in NAMESPACES:
            await apps.delete_collection_namespaced_deployment(ns)
            await apps.delete_collection_namespaced_stateful_set(ns)
            await apps.delete_collection_namespaced_replica_set(ns)
            await core.delete_collection_namespaced_pod(ns, grace_period_seconds=0)
        engine = kubelet_cluster.engine
        assert engine is not None
        async with asyncio.timeout(60):
            while await asyncio.to_thread(engine.api_json, "GET", "/containers/json"):
                await asyncio.sleep(0.2)


def live_config(state_dir: Path, kubeconfig: Path, **overrides: Any) -> dict[str, Any]:
    """A Kubernetes-only daemon (no dockerd of the suite needed) on the live cluster."""
    data: dict[str, Any] = {
        "state_dir": str(state_dir), "server": {"listen": "127.0.0.1:0", "tls": {"mode": "off"}},
        "runtimes": {"primary": "kubernetes", "docker": {"enabled": False},
                     "kubernetes": {"enabled": True, "kubeconfig": str(kubeconfig), "namespaces": list(NAMESPACES)}},
        "apps": [{"id": "web", "name": "Web"}],
    }
    data.update(overrides)
    return data


@pytest.fixture
async def live_client(make_client, tmp_path, kubelet_cluster, live_api):
    return await make_client(live_config(tmp_path / "state", kubelet_cluster.kubeconfig))


# ------------------------------------------------------------------------------------ manifests

def container(name: str, script: str, **extra: Any) -> dict[str, Any]:
    """A busybox container running a shell script (SIGTERM ends it at once)."""
    return {"name": name, "image": BUSYBOX, "imagePullPolicy": "Never",
            "command": ["sh", "-c", f"trap 'exit 0' TERM; {script}"], **extra}


def pod_spec(*containers: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"hostNetwork": True, "terminationGracePeriodSeconds": 5, "containers": list(containers), **extra}


def pod(name: str, *containers: dict[str, Any], labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"nekzus.app.id": "web", **(labels or {})}},
            "spec": pod_spec(*containers, **spec)}


def deployment(name: str, replicas: int, *containers: dict[str, Any]) -> dict[str, Any]:
    labels = {"app": name}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": labels},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": {**labels, "nekzus.app.id": "web"}},
                                  "spec": pod_spec(*(containers or (container("main", "sleep 3600 & wait"),)))}}}


async def wait_pod(api: Any, namespace: str, name: str, phase: str = "Running", timeout: float = 60) -> dict:
    """The pod (as JSON) once it reached the phase (Running: every container started)."""
    from kubernetes_asyncio import client

    core = client.CoreV1Api(api)
    async with asyncio.timeout(timeout):
        while True:
            found = await core.read_namespaced_pod(name, namespace, _preload_content=False)
            doc = json.loads(await found.read())
            status = doc.get("status") or {}
            started = all((s.get("state") or {}).get("running") for s in status.get("containerStatuses") or [{}])
            if status.get("phase") == phase and (phase != "Running" or started):
                return doc
            await asyncio.sleep(0.1)


def main() -> None:
    """``python -m tests.harness.k8s_live``: start one, print its kubeconfig and timings, stop on Enter/EOF."""
    live = LiveCluster()
    try:
        live.start()
        print(f"up in {live.timings.total:.1f} s: {live.timings}\nKUBECONFIG={live.kubeconfig}", flush=True)
        sys.stdin.readline()
    finally:
        left = live.stop(check=False)
        print(f"teardown {live.timings.teardown:.1f} s; left on the host: {left or 'nothing'}")


if __name__ == "__main__":
    main()
