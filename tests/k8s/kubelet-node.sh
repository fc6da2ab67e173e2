#!/usr/bin/env bash
# A Kubernetes node for the tests: a private dockerd and a real kubelet (dockershim) on it.
#
#   unshare --pid --fork --kill-child --mount-proc --mount --propagation slave kubelet-node.sh DIR
#
# Runs as PID 1 of its own pid + mount namespace (tests/k8s_live.py starts it that way), because the
# kubelet otherwise changes the host: it sets kernel settings, renices and re-scores every process named
# dockerd it can see, and writes below /var/log and /var/lib/kubelet (some of it at fixed paths). Here
# /var/log and /var/lib are private directories of DIR, /proc/sys is read-only with files holding the
# values the kubelet wants bound over the six settings it checks, and every process of the node dies
# with this one (the kernel kills a pid namespace with its PID 1). What remains on the host afterwards
# is cgroup folders below the node's own cgroup root (made and removed by tests/k8s_live.py).
#
# DIR/node.env gives: KUBELET (binary), DOCKER_DIR (dockerd's base, short: unix socket paths),
# KUBECONFIG_NODE, KUBELET_PORT, HEALTHZ_PORT, CGROUP_ROOT (e.g. /nekzusd-kubelet-1234), PAUSE_IMAGE.
# SIGTERM: the kubelet stops, then dockerd (its containers with it), then this script exits 0.
set -euo pipefail

DIR=$1
# shellcheck disable=SC1091
. "$DIR/node.env"
log() { printf '[kubelet-node %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

[[ $$ -eq 1 ]] || { log "must run as PID 1 of its own pid namespace (see the header)"; exit 2; }

mkdir -p "$DIR/ns/varlog" "$DIR/ns/varlib" "$DIR/ns/sysctl" "$DIR/logs"
mount --bind "$DIR/ns/varlog" /var/log
mount --bind "$DIR/ns/varlib" /var/lib
mount --bind /proc/sys /proc/sys
mount -o remount,bind,ro /proc/sys
for setting in vm/overcommit_memory=1 vm/panic_on_oom=0 kernel/panic=10 kernel/panic_on_oops=1 \
               kernel/keys/root_maxkeys=1000000 kernel/keys/root_maxbytes=25000000; do
    key=${setting%%=*}
    file="$DIR/ns/sysctl/${key//\//.}"
    echo "${setting#*=}" > "$file"
    mount --bind "$file" "/proc/sys/$key"
done

# Root on these machines lacks CAP_SYS_RESOURCE, and runc fails on any negative oom_score_adj
# (dockershim asks -998 for pod sandboxes): the default runtime clamps it to 0, then runs runc.
cat > "$DIR/runc-clamp" <<'CLAMP'
#!/bin/sh
prev=""; bundle=""
for arg in "$@"; do
    case "$prev" in --bundle|-b) bundle=$arg ;; esac
    case "$arg" in --bundle=*) bundle=${arg#--bundle=} ;; esac
    prev=$arg
done
if [ -n "$bundle" ] && [ -f "$bundle/config.json" ]; then
    sed -i -E 's/"oomScoreAdj":-[0-9]+/"oomScoreAdj":0/' "$bundle/config.json"
fi
exec /usr/sbin/runc "$@"
CLAMP
chmod 755 "$DIR/runc-clamp"
cat > "$DIR/daemon.json" <<JSON
{"runtimes": {"runc-clamp": {"path": "$DIR/runc-clamp"}}, "default-runtime": "runc-clamp",
 "cgroup-parent": "$CGROUP_ROOT/docker",
 "default-ulimits": {"nofile": {"Name": "nofile", "Soft": 4096, "Hard": 4096},
                     "nproc": {"Name": "nproc", "Soft": 4096, "Hard": 4096}}}
JSON

SOCK="$DOCKER_DIR/docker.sock"
mkdir -p "$DOCKER_DIR"
dockerd --config-file "$DIR/daemon.json" --host "unix://$SOCK" --data-root "$DOCKER_DIR/data" \
    --exec-root "$DOCKER_DIR/exec" --pidfile "$DOCKER_DIR/dockerd.pid" \
    --iptables=false --ip6tables=false --bridge=none --ip-masq=false --userland-proxy=false \
    --storage-driver=overlay2 --shutdown-timeout=1 </dev/null >"$DIR/logs/dockerd.log" 2>&1 &
dockerd_pid=$!
kubelet_pid=""

stop() {
    trap '' TERM INT
    log "stopping"
    [[ -n "$kubelet_pid" ]] && kill -TERM "$kubelet_pid" 2>/dev/null && wait "$kubelet_pid" || true
    kill -TERM "$dockerd_pid" 2>/dev/null && wait "$dockerd_pid" || true
    exit "${1:-0}"
}
trap 'stop 0' TERM INT

for _ in $(seq 300); do
    curl -sf --max-time 2 --unix-socket "$SOCK" http://docker/_ping >/dev/null 2>&1 && break
    kill -0 "$dockerd_pid" 2>/dev/null || { tail -n 20 "$DIR/logs/dockerd.log" >&2; log "dockerd died"; exit 1; }
    sleep 0.1
done
log "dockerd ready"

"$KUBELET" --v=2 \
    --kubeconfig="$KUBECONFIG_NODE" --hostname-override=127.0.0.1 \
    --root-dir="$DIR/kubelet" --cert-dir="$DIR/kubelet/pki" \
    --container-runtime=docker --docker-endpoint="unix://$SOCK" --docker="unix://$SOCK" \
    --container-runtime-endpoint="unix://$DIR/dockershim.sock" --image-service-endpoint="unix://$DIR/dockershim.sock" \
    --experimental-dockershim-root-directory="$DIR/dockershim" --volume-plugin-dir="$DIR/volume-plugins" \
    --pod-infra-container-image="$PAUSE_IMAGE" \
    --cgroup-driver=cgroupfs --cgroups-per-qos=true --cgroup-root="$CGROUP_ROOT" --enforce-node-allocatable= \
    --fail-swap-on=false --anonymous-auth=true --authentication-token-webhook=false --authorization-mode=AlwaysAllow \
    --address=127.0.0.1 --port="$KUBELET_PORT" --read-only-port=0 \
    --healthz-bind-address=127.0.0.1 --healthz-port="$HEALTHZ_PORT" \
    --make-iptables-util-chains=false --image-gc-high-threshold=100 --image-gc-low-threshold=99 \
    --node-status-update-frequency=4s </dev/null >"$DIR/logs/kubelet.log" 2>&1 &
kubelet_pid=$!
log "kubelet started"

# Until told to stop; if dockerd or the kubelet dies, the node is broken: stop the other one and say so.
set +e
wait -n "$dockerd_pid" "$kubelet_pid"
log "dockerd or the kubelet exited on its own (logs in $DIR/logs)"
stop 1
