#!/usr/bin/env bash
# A real, kubelet-less Kubernetes control plane for nekzusd's tests.
#
#   cluster.sh build        build (once) kube-apiserver, kube-controller-manager and
#                           kube-scheduler from Debian's own kubernetes source package
#                           into ${NEKZUSD_K8S_CACHE:-$HOME/.cache/nekzusd-k8s}/bin
#   cluster.sh build-kubelet
#                           build (once) the kubelet from the same source into the same bin/
#                           (tests/harness/k8s_live.py runs it with a private dockerd)
#   cluster.sh up DIR       start etcd + apiserver + controller-manager + scheduler on
#                           127.0.0.1 with state, logs, pid files and kubeconfigs in DIR;
#                           with NEKZUSD_K8S_NODE=kubelet no fake node is made: the apiserver
#                           and controllers are set up for a real kubelet (node 127.0.0.1,
#                           DIR/kubeconfig-node), which tests/harness/k8s_live.py then starts
#   cluster.sh down DIR     stop everything started by "up DIR"
#   cluster.sh status DIR   exit 0 when the apiserver of DIR answers /readyz
#
# Nothing here is committed but this script: sources and binaries live in the cache dir.
# See README.md beside this file.
set -euo pipefail

K8S_SRC_VERSION="1.20.5+really1.20.2-1.1+deb12u1"
K8S_GIT_VERSION="v1.20.2"
COMPONENTS=(kube-apiserver kube-controller-manager kube-scheduler)
DEB_PACKAGES=(golang-go rsync etcd-server golang-github-modern-go-reflect2-dev openssl curl make xz-utils ca-certificates)
REFLECT2_DEB=/usr/share/gocode/src/github.com/modern-go/reflect2

CACHE="${NEKZUSD_K8S_CACHE:-${HOME:-/root}/.cache/nekzusd-k8s}"
BIN="$CACHE/bin"

log() { printf '[cluster.sh %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

have_binaries() {   # have_binaries [COMPONENT...]: all built (default: the control plane)
    local c
    (( $# )) || set -- "${COMPONENTS[@]}"
    for c in "$@"; do [[ -x "$BIN/$c" ]] || return 1; done
    return 0
}

# ---------------------------------------------------------------------------- build
install_packages() {
    local missing=() p
    for p in "${DEB_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    [[ $(id -u) -eq 0 ]] || die "need root to install: ${missing[*]}"
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null; then
        log "apt-get install failed; running apt-get update once and retrying"
        apt-get update -q </dev/null
        apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
    fi
}

# deb-src entries for the same mirrors the system uses, in a private apt config:
# the system's sources, lists and caches are left untouched.
private_apt_sources() {
    local aptd="$1" f
    mkdir -p "$aptd/sources.list.d" "$aptd/lists/partial"
    : > "$aptd/sources.list"
    rm -f "$aptd/sources.list.d/"*
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f "$f" ]] || continue
        sed -E 's/^Types:.*/Types: deb-src/' "$f" > "$aptd/sources.list.d/$(basename "$f")"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f "$f" ]] || continue
        sed -nE 's/^[[:space:]]*deb([[:space:]])/deb-src\1/p' "$f" >> "$aptd/sources.list"
    done
}

fetch_source() {
    local src="$1" aptd="$CACHE/apt"
    private_apt_sources "$aptd"
    local opts=(
        -o "Dir::Etc::SourceList=$aptd/sources.list"
        -o "Dir::Etc::SourceParts=$aptd/sources.list.d"
        -o "Dir::State::Lists=$aptd/lists"
        -o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache="
        -o "APT::Get::Only-Source=true"
        -o "APT::Sandbox::User=root"
    )
    mkdir -p "$src"
    if ! ls "$src"/kubernetes_*.orig.tar.* >/dev/null 2>&1; then
        log "apt-get update (private deb-src lists in $aptd)"
        apt-get "${opts[@]}" update -q </dev/null >&2
        log "apt-get source --download-only kubernetes=$K8S_SRC_VERSION"
        (cd "$src" && apt-get "${opts[@]}" source --download-only -q "kubernetes=$K8S_SRC_VERSION" </dev/null >&2)
    fi
}

do_build() {   # do_build [COMPONENT...] (default: the control plane)
    (( $# )) || set -- "${COMPONENTS[@]}"
    local components=("$@")
    mkdir -p "$CACHE"
    exec 9>"$CACHE/build.lock"
    flock 9      # one build at a time (parallel test runs share the cache)
    if have_binaries "${components[@]}"; then
        log "binaries cached in $BIN; build skipped"
        return 0
    fi
    local t0=$SECONDS
    install_packages
    [[ -d "$REFLECT2_DEB" ]] || die "$REFLECT2_DEB missing (golang-github-modern-go-reflect2-dev)"
    local src="$CACHE/src" work="$CACHE/work"
    fetch_source "$src"
    local orig
    orig=$(ls "$src"/kubernetes_*.orig.tar.* | head -n1)
    rm -rf "$work"; mkdir -p "$work/.go/src/k8s.io"
    log "unpacking $(basename "$orig")"
    tar -C "$work" -xf "$orig"
    local tree
    tree=$(find "$work" -mindepth 1 -maxdepth 1 -type d ! -name .go | head -n1)
    [[ -f "$tree/Makefile" && -d "$tree/cmd/kube-apiserver" ]] || die "unexpected source layout in $orig"
    # The vendored reflect2 1.0.1 makes the apiserver panic under Go >= 1.18: use Debian's 1.0.2.
    local v="$tree/vendor/github.com/modern-go/reflect2"
    rm -f "$v"/*.go "$v"/*.s
    find "$REFLECT2_DEB" -maxdepth 1 \( -name '*.go' -o -name '*.s' \) ! -name '*_test.go' -exec cp {} "$v/" \;
    ln -sfn "$tree" "$work/.go/src/k8s.io/kubernetes"
    log "building ${components[*]} (GOPATH mode; takes several minutes)"
    (
        cd "$work/.go/src/k8s.io/kubernetes"
        export GOPATH="$work/.go" GO111MODULE=off GOPROXY=off GOFLAGS= CGO_ENABLED=0
        export GOCACHE="$CACHE/gocache" HOME="${HOME:-/root}"
        export KUBE_GIT_VERSION="$K8S_GIT_VERSION" KUBE_GIT_TREE_STATE=clean KUBE_GIT_COMMIT=debian
        export KUBE_VERBOSE=1
        local what="" c
        for c in "${components[@]}"; do what+=" cmd/$c"; done
        make WHAT="${what# }" </dev/null >&2
    )
    # into bin/ beside what is already there; each binary appears whole (rename) or not at all
    mkdir -p "$BIN"
    local c f
    for c in "${components[@]}"; do
        f=$(find "$tree/_output" -type f -name "$c" -perm -u+x | head -n1)
        [[ -n "$f" ]] || die "built $c not found under $tree/_output"
        cp "$f" "$BIN/.$c.tmp"; mv "$BIN/.$c.tmp" "$BIN/$c"
    done
    rm -rf "$work" "$CACHE/gocache"   # keep only the binaries and the downloaded source
    log "build done in $((SECONDS - t0)) s; binaries in $BIN"
}

# ---------------------------------------------------------------------------- up / down
# Stop order: the reverse of the start order.
PROCS=(kube-scheduler kube-controller-manager kube-apiserver etcd)
NODE_NAME=fake-node
KUBELET_NODE_NAME=127.0.0.1   # the real kubelet's --hostname-override (a loopback address, no DNS)

free_port() {   # free_port VAR: a loopback port nothing listens on, below the ephemeral range
    local p
    for _ in $(seq 500); do
        p=$(( 20000 + RANDOM % 12000 ))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && [[ " ${USED_PORTS:-} " != *" $p "* ]]; then
            USED_PORTS="${USED_PORTS:-} $p"   # not handed out twice in this run
            printf -v "$1" '%s' "$p"; return 0
        fi
    done
    die "no free port found"
}

# pid_of DIR NAME: the pid from DIR/NAME.pid when that process is alive and really ours
pid_of() {
    local dir="$1" name="$2" pid
    [[ -f "$dir/$name.pid" ]] || return 1
    pid=$(cat "$dir/$name.pid")
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [[ -r "/proc/$pid/cmdline" ]] || return 1
    # pids are reused: make sure it is the process we started (its command line names DIR)
    tr '\0' ' ' < "/proc/$pid/cmdline" | grep -qF -- "$dir/" || return 1
    echo "$pid"
}

start_proc() {   # start_proc DIR NAME CMD...: detached, own session, log + pid in DIR
    local dir="$1" name="$2"; shift 2
    setsid "$@" </dev/null >"$dir/logs/$name.log" 2>&1 &
    echo $! > "$dir/$name.pid"
}

# started DIR NAME: the process start_proc just started (our child) is alive.  Not pid_of: its
# command-line check fails for a child forked but not yet exec'd, which a loaded machine makes last
# long enough for a first poll to see (CI saw "kube-apiserver exited during start-up", log empty).
started() {
    local pid state
    pid=$(cat "$1/$2.pid" 2>/dev/null) || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    state=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null) || return 1
    [[ "${state:0:1}" != Z ]]
}

wait_until() {   # wait_until SECONDS DIR NAME CMD...: poll CMD, fail early if NAME died
    local limit="$1" dir="$2" name="$3"; shift 3
    local end=$((SECONDS + limit))
    while (( SECONDS < end )); do
        "$@" >/dev/null 2>&1 && return 0
        if ! started "$dir" "$name"; then
            local status=0
            wait "$(cat "$dir/$name.pid")" 2>/dev/null || status=$?   # our child: its exit status
            tail -n 30 "$dir/logs/$name.log" >&2 || true
            die "$name exited during start-up with status $status (log: $dir/logs/$name.log)"
        fi
        sleep 0.2
    done
    tail -n 30 "$dir/logs/$name.log" >&2 || true
    die "$name not ready after ${limit}s (log: $dir/logs/$name.log)"
}

api() {   # api METHOD PATH [JSON] [CONTENT-TYPE]: admin call to the apiserver, prints the body
    local method="$1" path="$2" body="${3:-}" ctype="${4:-application/json}"
    local args=(-sS --max-time 20 --cacert "$DIR/pki/ca.crt" -H "Authorization: Bearer $ADMIN_TOKEN"
                -X "$method" -w '\n%{http_code}')
    [[ -n "$body" ]] && args+=(-H "Content-Type: $ctype" --data-binary "$body")
    local out code
    out=$(curl "${args[@]}" "$API$path")
    code="${out##*$'\n'}"; out="${out%$'\n'*}"
    if [[ "$code" != 2* && "$code" != 409 ]]; then
        die "$method $path -> HTTP $code: $out"
    fi
    printf '%s' "$out"
}

write_kubeconfig() {   # write_kubeconfig FILE USER TOKEN
    local file="$1" user="$2" token="$3" ca
    ca=$(base64 -w0 < "$DIR/pki/ca.crt")
    cat > "$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: nekzusd-test
  cluster:
    server: $API
    certificate-authority-data: $ca
users:
- name: $user
  user:
    token: $token
contexts:
- name: $user@nekzusd-test
  context:
    cluster: nekzusd-test
    user: $user
    namespace: default
current-context: $user@nekzusd-test
EOF
    chmod 600 "$file"
}

make_pki() {
    local pki="$DIR/pki"
    mkdir -p "$pki"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=nekzusd-test-ca" \
        -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
        -keyout "$pki/apiserver.key" -out "$pki/apiserver.csr" 2>/dev/null
    printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,IP:10.0.0.1" \
        "extendedKeyUsage=serverAuth" "keyUsage=digitalSignature,keyEncipherment" > "$pki/apiserver.ext"
    openssl x509 -req -in "$pki/apiserver.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
        -days 3650 -extfile "$pki/apiserver.ext" -out "$pki/apiserver.crt" 2>/dev/null
    openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
    openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
    chmod 600 "$pki"/*.key
}

make_fake_node() {
    # A Node object without a kubelet: Ready, schedulable, its only address on loopback; with
    # --kubelet-preferred-address-types=InternalIP anything the apiserver proxies "to the kubelet"
    # (pod logs, exec, port-forward) only ever dials 127.0.0.1:10250 (no DNS lookup of the name).
    api POST /api/v1/nodes "{\"apiVersion\":\"v1\",\"kind\":\"Node\",\"metadata\":{\"name\":\"$NODE_NAME\",
        \"labels\":{\"kubernetes.io/hostname\":\"$NODE_NAME\",\"kubernetes.io/os\":\"linux\",\"kubernetes.io/arch\":\"amd64\"}}}" >/dev/null
    local now
    now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
    api PATCH "/api/v1/nodes/$NODE_NAME/status" "{\"status\":{
        \"capacity\":{\"cpu\":\"16\",\"memory\":\"64Gi\",\"pods\":\"110\",\"ephemeral-storage\":\"100Gi\"},
        \"allocatable\":{\"cpu\":\"16\",\"memory\":\"64Gi\",\"pods\":\"110\",\"ephemeral-storage\":\"100Gi\"},
        \"conditions\":[{\"type\":\"Ready\",\"status\":\"True\",\"reason\":\"KubeletReady\",\"message\":\"fake node, no kubelet\",
                         \"lastHeartbeatTime\":\"$now\",\"lastTransitionTime\":\"$now\"}],
        \"addresses\":[{\"type\":\"InternalIP\",\"address\":\"127.0.0.1\"}],
        \"daemonEndpoints\":{\"kubeletEndpoint\":{\"Port\":10250}},
        \"nodeInfo\":{\"kubeletVersion\":\"$K8S_GIT_VERSION\",\"kubeProxyVersion\":\"$K8S_GIT_VERSION\",\"operatingSystem\":\"linux\",
                      \"architecture\":\"amd64\",\"containerRuntimeVersion\":\"none://0\",\"osImage\":\"none\",\"kernelVersion\":\"none\",
                      \"machineID\":\"\",\"systemUUID\":\"\",\"bootID\":\"\"}}}" application/merge-patch+json >/dev/null
    # The TaintNodesByCondition admission plugin gave it node.kubernetes.io/not-ready: drop all taints.
    api PATCH "/api/v1/nodes/$NODE_NAME" '{"spec":{"taints":null}}' application/merge-patch+json >/dev/null
}

do_up() {
    DIR="$1"
    have_binaries || die "binaries missing in $BIN: run '$0 build' first"
    command -v etcd >/dev/null || die "etcd missing: run '$0 build' (installs etcd-server)"
    mkdir -p "$DIR"; DIR=$(cd "$DIR" && pwd)
    local p
    for p in "${PROCS[@]}"; do
        pid_of "$DIR" "$p" >/dev/null && die "$p of $DIR is already running: '$0 down $DIR' first"
    done
    local mode="${NEKZUSD_K8S_NODE:-fake}"
    [[ "$mode" == fake || "$mode" == kubelet ]] || die "NEKZUSD_K8S_NODE must be fake or kubelet, not $mode"
    # A real kubelet needs the Node authorizer (its own node's pods and secrets), an address type it
    # reports for 127.0.0.1, and the node lifecycle controller (which lifts the not-ready taint).
    local authz=RBAC address_types=InternalIP controllers='*,-nodelifecycle'
    if [[ "$mode" == kubelet ]]; then
        authz=Node,RBAC address_types=InternalIP,Hostname controllers='*'
        NODE_NAME=$KUBELET_NODE_NAME
    fi
    rm -rf "$DIR/etcd-data" "$DIR/logs" "$DIR/pki" "$DIR/cluster.env"
    mkdir -p "$DIR/logs"
    # any failure from here on (die, set -e) stops what was started
    trap 'rc=$?; if [[ $rc -ne 0 ]]; then log "start-up failed; stopping what was started"; do_down "$DIR" || true; fi' EXIT
    local t0=$SECONDS

    make_pki
    ADMIN_TOKEN=$(openssl rand -hex 24); LIMITED_TOKEN=$(openssl rand -hex 24); NODE_TOKEN=$(openssl rand -hex 24)
    # token,user,uid,"groups"
    printf '%s,admin,uid-admin,"system:masters"\n%s,limited,uid-limited\n' \
        "$ADMIN_TOKEN" "$LIMITED_TOKEN" > "$DIR/pki/tokens.csv"
    [[ "$mode" == fake ]] || printf '%s,system:node:%s,uid-node,"system:nodes"\n' \
        "$NODE_TOKEN" "$NODE_NAME" >> "$DIR/pki/tokens.csv"
    chmod 600 "$DIR/pki/tokens.csv"

    local etcd_port etcd_peer api_port
    free_port etcd_port; free_port etcd_peer; free_port api_port
    API="https://127.0.0.1:$api_port"

    start_proc "$DIR" etcd etcd --name nekzusd-test --data-dir "$DIR/etcd-data" --logger=zap \
        --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
        --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
        --initial-cluster "nekzusd-test=http://127.0.0.1:$etcd_peer" --unsafe-no-fsync
    wait_until 30 "$DIR" etcd curl -sf --max-time 2 "http://127.0.0.1:$etcd_port/health"

    start_proc "$DIR" kube-apiserver "$BIN/kube-apiserver" \
        --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$api_port" --insecure-port=0 \
        --etcd-servers="http://127.0.0.1:$etcd_port" \
        --cert-dir="$DIR/pki" --tls-cert-file="$DIR/pki/apiserver.crt" --tls-private-key-file="$DIR/pki/apiserver.key" \
        --client-ca-file="$DIR/pki/ca.crt" \
        --token-auth-file="$DIR/pki/tokens.csv" --authorization-mode="$authz" --anonymous-auth=false \
        --service-account-key-file="$DIR/pki/sa.pub" --service-account-signing-key-file="$DIR/pki/sa.key" \
        --service-account-issuer=https://kubernetes.default.svc.cluster.local \
        --disable-admission-plugins=ServiceAccount --service-cluster-ip-range=10.0.0.0/24 \
        --kubelet-preferred-address-types="$address_types" \
        --endpoint-reconciler-type=none --allow-privileged=true --profiling=false
    wait_until 90 "$DIR" kube-apiserver \
        curl -sf --max-time 2 --cacert "$DIR/pki/ca.crt" -H "Authorization: Bearer $ADMIN_TOKEN" "$API/readyz"
    log "kube-apiserver ready at $API after $((SECONDS - t0)) s"

    write_kubeconfig "$DIR/kubeconfig" admin "$ADMIN_TOKEN"
    write_kubeconfig "$DIR/kubeconfig-limited" limited "$LIMITED_TOKEN"
    [[ "$mode" == fake ]] || write_kubeconfig "$DIR/kubeconfig-node" "system:node:$NODE_NAME" "$NODE_TOKEN"

    start_proc "$DIR" kube-controller-manager "$BIN/kube-controller-manager" \
        --kubeconfig="$DIR/kubeconfig" --controllers="$controllers" --leader-elect=false \
        --port=0 --secure-port=0 --use-service-account-credentials=false \
        --service-account-private-key-file="$DIR/pki/sa.key" --root-ca-file="$DIR/pki/ca.crt" \
        --cluster-signing-cert-file="$DIR/pki/ca.crt" --cluster-signing-key-file="$DIR/pki/ca.key" \
        --profiling=false
    start_proc "$DIR" kube-scheduler "$BIN/kube-scheduler" \
        --kubeconfig="$DIR/kubeconfig" --leader-elect=false --port=0 --secure-port=0 --profiling=false

    # Namespaces and RBAC for the limited user: "view" in default and team-a, nothing elsewhere.
    local ns
    for ns in team-a forbidden-ns; do
        api POST /api/v1/namespaces "{\"apiVersion\":\"v1\",\"kind\":\"Namespace\",\"metadata\":{\"name\":\"$ns\"}}" >/dev/null
    done
    for ns in default team-a; do
        api POST "/apis/rbac.authorization.k8s.io/v1/namespaces/$ns/rolebindings" \
            '{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"RoleBinding","metadata":{"name":"limited-view"},
              "roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"ClusterRole","name":"view"},
              "subjects":[{"apiGroup":"rbac.authorization.k8s.io","kind":"User","name":"limited"}]}' >/dev/null
    done

    if [[ "$mode" == fake ]]; then make_fake_node; fi

    # The default ServiceAccount is needed by nothing here (the ServiceAccount admission plugin is
    # off), but the controller-manager creates it; wait for both controllers to be alive.
    sleep 0.5
    started "$DIR" kube-controller-manager || { tail -n 30 "$DIR/logs/kube-controller-manager.log" >&2; die "kube-controller-manager died"; }
    started "$DIR" kube-scheduler || { tail -n 30 "$DIR/logs/kube-scheduler.log" >&2; die "kube-scheduler died"; }

    cat > "$DIR/cluster.env" <<EOF
API_URL=$API
API_PORT=$api_port
ETCD_URL=http://127.0.0.1:$etcd_port
KUBECONFIG=$DIR/kubeconfig
KUBECONFIG_LIMITED=$DIR/kubeconfig-limited
CA_FILE=$DIR/pki/ca.crt
ADMIN_TOKEN=$ADMIN_TOKEN
LIMITED_TOKEN=$LIMITED_TOKEN
NODE_NAME=$NODE_NAME
EOF
    [[ "$mode" == fake ]] || echo "KUBECONFIG_NODE=$DIR/kubeconfig-node" >> "$DIR/cluster.env"
    chmod 600 "$DIR/cluster.env"
    trap - EXIT
    log "cluster up in $((SECONDS - t0)) s: $API (kubeconfig: $DIR/kubeconfig)"
    cat "$DIR/cluster.env"
}

alive() {   # alive PID: running (a zombie waiting for its reaper counts as gone)
    [[ -r "/proc/$1/stat" ]] || return 1
    local stat; stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat="${stat##*) }"
    [[ "${stat%% *}" != Z ]]
}

do_down() {
    local dir="$1" name pid end pids=()
    [[ -d "$dir" ]] || return 0
    dir=$(cd "$dir" && pwd)
    # SIGTERM to all at once (a sequential stop takes ~8 s, this ~3 s), SIGKILL after 15 s.
    for name in "${PROCS[@]}"; do
        if pid=$(pid_of "$dir" "$name"); then
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$name:$pid")
        fi
    done
    end=$((SECONDS + 15))
    local entry
    for entry in "${pids[@]}"; do
        name="${entry%%:*}"; pid="${entry#*:}"
        while alive "$pid" && (( SECONDS < end )); do sleep 0.1; done
        if alive "$pid"; then
            log "$name ($pid) ignored SIGTERM; killing"
            kill -KILL "$pid" 2>/dev/null || true
            while alive "$pid"; do sleep 0.1; done
        fi
    done
    for name in "${PROCS[@]}"; do rm -f "$dir/$name.pid"; done
}

do_status() {
    local dir="$1"
    [[ -f "$dir/cluster.env" ]] || return 1
    # shellcheck disable=SC1091
    ( . "$dir/cluster.env"
      curl -sf --max-time 3 --cacert "$CA_FILE" -H "Authorization: Bearer $ADMIN_TOKEN" "$API_URL/readyz" >/dev/null )
}

case "${1:-}" in
    build) do_build ;;
    build-kubelet) do_build kubelet ;;
    up)     [[ $# -eq 2 ]] || die "usage: $0 up DIR"; do_up "$2" ;;
    down)   [[ $# -eq 2 ]] || die "usage: $0 down DIR"; do_down "$2" ;;
    status) [[ $# -eq 2 ]] || die "usage: $0 status DIR"; do_status "$2" ;;
    *) die "usage: $0 build | build-kubelet | up DIR | down DIR | status DIR" ;;
esac
