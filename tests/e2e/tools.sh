#!/usr/bin/env bash
# Builds the e2e tools from their official Go modules at pinned versions:
#   kube-apiserver, kube-controller-manager, kube-scheduler (k8s.io/kubernetes; kwok does not schedule
#   pods, so the real scheduler binds them to kwok's fake nodes), etcd (go.etcd.io/etcd/server/v3),
#   kwok (sigs.k8s.io/kwok), jaeger v2 (github.com/jaegertracing/jaeger/cmd/jaeger),
# into ${GAMECLUSTER_E2E_CACHE:-$HOME/.cache/gamecluster/e2e}/<version-tag>/bin (outside the repo).
# A tool whose binary is already there is not built again.
#
# usage: tests/e2e/tools.sh                 build what is missing (all tools)
#        tests/e2e/tools.sh TOOL...         build only these (kube-apiserver kube-controller-manager
#                                           kube-scheduler etcd kwok jaeger kubectl)
#        tests/e2e/tools.sh --bin-dir       print the bin folder, build nothing
#        tests/e2e/tools.sh --share-dir     print the folder of data files (kwok-stages.yaml)
#        tests/e2e/tools.sh --versions      print the pinned versions, build nothing
#        tests/e2e/tools.sh --check         exit 0 when every tool is present, 1 otherwise
#
# The real-pod tier (marker `pods`, issue 11) needs a second, separate set: the node tools
#   kubelet, kube-proxy (k8s.io/kubernetes, same version), coredns (github.com/coredns/coredns),
#   pause (the pause container's pause.c from the k8s.io/kubernetes module, gcc -static),
# into ${GAMECLUSTER_E2E_CACHE:-...}/<node-tag>/bin. The control-plane tier never needs them.
#        tests/e2e/tools.sh --node          build what is missing of the node tools
#        tests/e2e/tools.sh --node-bin-dir  print their bin folder, build nothing
#        tests/e2e/tools.sh --check-node    exit 0 when every node tool is present, 1 otherwise
# (node tools also need gcc and a static libc for pause: Debian's gcc + libc6-dev.)
#
# Needs: go (the toolchain on this machine; GOTOOLCHAIN=local, nothing else is downloaded but modules
# from the Go module proxy), python3 (reads `go mod edit -json`), kubectl (checked; installed from
# Debian's packages when missing, else built from k8s.io/kubernetes/cmd/kubectl).
set -euo pipefail

K8S_VERSION=v1.36.3          # kube-*; kwok v0.8.0 is built on client-go v0.36 and defaults to k8s 1.36
ETCD_VERSION=v3.6.16         # go.etcd.io/etcd/server/v3
KWOK_VERSION=v0.8.0          # sigs.k8s.io/kwok
JAEGER_VERSION=v1.76.0       # Go module tag of github.com/jaegertracing/jaeger; cmd/jaeger is Jaeger v2
JAEGER_V2_VERSION=v2.13.0    # the v2 release of that same commit (CHANGELOG: "v1.76.0 / v2.13.0")

TAG="k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}_jaeger-${JAEGER_VERSION}"
CACHE_ROOT="${GAMECLUSTER_E2E_CACHE:-$HOME/.cache/gamecluster/e2e}"
BIN="$CACHE_ROOT/$TAG/bin"
SHARE="$CACHE_ROOT/$TAG/share"   # kwok-stages.yaml: kwok's own "fast" stages, read from its module
ALL_TOOLS=(etcd kwok kube-apiserver kube-controller-manager kube-scheduler jaeger)

# Node tools of the real-pod tier: a folder of their own, so adding them changes nothing above.
COREDNS_VERSION=v1.15.0      # github.com/coredns/coredns (go 1.26)
PAUSE_VERSION=3.10.2         # build/pause/Makefile TAG in k8s.io/kubernetes@$K8S_VERSION
NODE_TAG="node-k8s-${K8S_VERSION}_coredns-${COREDNS_VERSION}_pause-${PAUSE_VERSION}"
NODE_BIN="$CACHE_ROOT/$NODE_TAG/bin"
NODE_TOOLS=(kubelet kube-proxy coredns pause)

log() { printf '[e2e-tools] %s\n' "$*" >&2; }
die() { printf '[e2e-tools] FAILED: %s\n' "$*" >&2; exit 1; }

case "${1:-}" in
  --bin-dir) echo "$BIN"; exit 0 ;;
  --node-bin-dir) echo "$NODE_BIN"; exit 0 ;;
  --check-node)
    for t in "${NODE_TOOLS[@]}"; do [[ -x "$NODE_BIN/$t" ]] || exit 1; done
    exit 0 ;;
  --share-dir) echo "$SHARE"; exit 0 ;;
  --versions)
    printf 'kubernetes=%s\netcd=%s\nkwok=%s\njaeger=%s\njaeger-module=%s\ntag=%s\n' \
      "$K8S_VERSION" "$ETCD_VERSION" "$KWOK_VERSION" "$JAEGER_V2_VERSION" "$JAEGER_VERSION" "$TAG"
    printf 'coredns=%s\npause=%s\nnode-tag=%s\n' "$COREDNS_VERSION" "$PAUSE_VERSION" "$NODE_TAG"
    exit 0 ;;
  --check)
    for t in "${ALL_TOOLS[@]}"; do [[ -x "$BIN/$t" ]] || exit 1; done
    [[ -s "$SHARE/kwok-stages.yaml" ]] || exit 1
    exit 0 ;;
  -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
esac

# Go environment: the local toolchain only, static binaries, no VCS stamping.
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-mod=mod -buildvcs=false"
GO_BUILD_FLAGS=(-trimpath)

require_go() {
  command -v go >/dev/null || die "go: step=check: no 'go' on PATH (the Go toolchain is needed to build the tools)"
  command -v python3 >/dev/null || die "python3: step=check: not on PATH"
}

# step NAME STEP CMD...: runs CMD with its output in a log; on failure prints the tail and exits.
step() {
  local tool=$1 what=$2; shift 2
  local out="$WORK/$tool.$what.log"
  if ! "$@" >"$out" 2>&1; then
    tail -n 40 "$out" >&2
    die "$tool: step=$what: command failed: $* (full log above, last 40 lines)"
  fi
}

# The go.mod file of MODULE@VERSION from the module proxy (cached by go in GOMODCACHE).
gomod_of() {
  go mod download -json "$1@$2" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get("GoMod") or sys.exit(d.get("Error","no GoMod")))'
}

# Writes a throwaway module in DIR that requires MODULE@VERSION and carries the upstream replace
# directives: those pointing at a local folder (k8s staging, etcd siblings) become a pin of the same
# module from the proxy at PINVER (a version, or "k8s" = v0.Y.Z for vX.Y.Z); others are copied.
make_module() {
  local tool=$1 dir=$2 module=$3 version=$4 pinver=$5 upstream
  upstream=$(gomod_of "$module" "$version") || die "$tool: step=resolve: cannot get go.mod of $module@$version"
  mkdir -p "$dir"
  (cd "$dir" && go mod init "gamecluster.local/e2e-tools/$tool" >/dev/null 2>&1) \
    || die "$tool: step=prepare: go mod init failed"
  python3 - "$upstream" "$module" "$version" "$pinver" >"$dir/go.mod.extra" <<'PY' \
    || die "$tool: step=prepare: cannot read replace directives of $module@$version"
import json, subprocess, sys
upstream, module, version, pinver = sys.argv[1:]
d = json.loads(subprocess.check_output(["go", "mod", "edit", "-json", upstream]))
if pinver == "k8s":
    major, minor, patch = version.lstrip("v").split(".")
    pinver = f"v0.{minor}.{patch}"
print(f"go {d['Go']}")
print(f"require {module} {version}")
for r in d.get("Replace") or []:
    old, new = r["Old"], r["New"]
    if new["Path"].startswith((".", "/")):
        if "FORBIDDEN" in new["Path"]:
            continue  # etcd's guard against importing its root module; not needed here
        print(f"replace {old['Path']} => {old['Path']} {pinver}")
    else:
        lhs = old["Path"] + (" " + old["Version"] if old.get("Version") else "")
        print(f"replace {lhs} => {new['Path']} {new['Version']}")
PY
  # `go mod init` wrote the local go version; use the upstream module's instead.
  sed -i '/^go /d' "$dir/go.mod" && cat "$dir/go.mod.extra" >>"$dir/go.mod" && rm "$dir/go.mod.extra"
}

# build TOOL DIR PKG VERSION LDFLAGS [OUT]: go get PKG@VERSION (download step; without @VERSION go
# get would upgrade to the newest release) + go build into OUT/TOOL (default $BIN) atomically.
build_pkg() {
  local tool=$1 dir=$2 pkg=$3 version=$4 ldflags=$5 t0
  local BIN=${6:-$BIN}
  t0=$(date +%s)
  log "$tool: downloading modules for $pkg"
  (cd "$dir" && step "$tool" download go get "$pkg@$version")
  log "$tool: building $pkg"
  (cd "$dir" && step "$tool" build go build "${GO_BUILD_FLAGS[@]}" -ldflags "-s -w $ldflags" \
    -o "$BIN/.$tool.partial" "$pkg")
  mv -f "$BIN/.$tool.partial" "$BIN/$tool"
  log "$tool: built in $(( $(date +%s) - t0 ))s -> $BIN/$tool"
}

build_k8s() {  # TOOLS... from k8s.io/kubernetes/cmd/ (into $K8S_OUT, default $BIN)
  local dir="$WORK/k8s" date ver minor ld=""
  [[ -f "$dir/go.mod" ]] || make_module k8s "$dir" k8s.io/kubernetes "$K8S_VERSION" k8s
  ver=${K8S_VERSION#v}; minor=$(cut -d. -f2 <<<"$ver")
  date=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | python3 -c \
    'import json,sys; print(json.load(open(json.load(sys.stdin)["Info"]))["Time"])') \
    || die "k8s: step=resolve: cannot read the release time of k8s.io/kubernetes@$K8S_VERSION"
  # The variables release builds set (hack/lib/version.sh); gitCommit is unknown from a module zip.
  for p in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
    ld+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
    ld+=" -X $p.gitTreeState=clean -X $p.buildDate=$date"
  done
  for t in "$@"; do
    build_pkg "$t" "$dir" "k8s.io/kubernetes/cmd/$t" "$K8S_VERSION" "$ld" "${K8S_OUT:-$BIN}"
  done
}

build_coredns() {
  local dir="$WORK/coredns"
  make_module coredns "$dir" github.com/coredns/coredns "$COREDNS_VERSION" "$COREDNS_VERSION"
  build_pkg coredns "$dir" github.com/coredns/coredns "$COREDNS_VERSION" \
    "-X github.com/coredns/coredns/coremain.GitCommit=module-$COREDNS_VERSION" "$NODE_BIN"
}

# The pause container's binary, as build/pause/Makefile builds it (CFLAGS there), from the
# k8s.io/kubernetes module zip: a static C program, so the image needs nothing else.
build_pause() {
  local src t0
  t0=$(date +%s)
  command -v gcc >/dev/null || die "pause: step=check: no gcc (Debian: apt-get install gcc libc6-dev)"
  src=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')/build/pause/linux/pause.c \
    || die "pause: step=download: cannot get k8s.io/kubernetes@$K8S_VERSION"
  [[ -f "$src" ]] || die "pause: step=source: no $src"
  step pause build gcc -Os -Wall -Werror -static "-DVERSION=v$PAUSE_VERSION-module-$K8S_VERSION" \
    -o "$NODE_BIN/.pause.partial" "$src"
  mv -f "$NODE_BIN/.pause.partial" "$NODE_BIN/pause"
  log "pause: built in $(( $(date +%s) - t0 ))s -> $NODE_BIN/pause"
}

# The node tools (--node): kubelet, kube-proxy, coredns, pause; only what is missing.
build_node_tools() {
  local t todo=() k8s=()
  mkdir -p "$NODE_BIN"
  log "node tools: $NODE_TAG"
  log "node bin: $NODE_BIN"
  for t in "${NODE_TOOLS[@]}"; do
    if [[ -x "$NODE_BIN/$t" ]]; then log "$t: present, skipped"; else todo+=("$t"); fi
  done
  [[ ${#todo[@]} -gt 0 ]] || return 0
  require_go
  log "go: $(go version)"
  for t in "${todo[@]}"; do
    case "$t" in kubelet|kube-proxy) k8s+=("$t") ;; esac
  done
  [[ ${#k8s[@]} -eq 0 ]] || K8S_OUT="$NODE_BIN" build_k8s "${k8s[@]}"
  for t in "${todo[@]}"; do
    case "$t" in
      coredns) build_coredns ;;
      pause) build_pause ;;
    esac
  done
}

build_etcd() {
  local dir="$WORK/etcd"
  make_module etcd "$dir" go.etcd.io/etcd/server/v3 "$ETCD_VERSION" "$ETCD_VERSION"
  build_pkg etcd "$dir" go.etcd.io/etcd/server/v3 "$ETCD_VERSION" \
    "-X go.etcd.io/etcd/api/v3/version.GitSHA=module-$ETCD_VERSION"
}

build_kwok() {
  local dir="$WORK/kwok"
  make_module kwok "$dir" sigs.k8s.io/kwok "$KWOK_VERSION" "$KWOK_VERSION"
  build_pkg kwok "$dir" sigs.k8s.io/kwok/cmd/kwok "$KWOK_VERSION" ""  # its version is a constant
}

build_jaeger() {
  local dir="$WORK/jaeger" p=github.com/jaegertracing/jaeger/internal/version
  make_module jaeger "$dir" github.com/jaegertracing/jaeger "$JAEGER_VERSION" "$JAEGER_VERSION"
  build_pkg jaeger "$dir" github.com/jaegertracing/jaeger/cmd/jaeger "$JAEGER_VERSION" \
    "-X $p.latestVersion=$JAEGER_V2_VERSION"
}

# kwok v0.8.0 runs only with Stage objects in its config (kwokctl writes them); the ones kwok ships
# in kustomize/stage/ are copied from its module: node fast + heartbeat-with-lease, pod fast.
ensure_kwok_stages() {
  local out="$SHARE/kwok-stages.yaml" dir f
  if [[ -s "$out" ]]; then log "kwok-stages: present, skipped"; return; fi
  require_go
  dir=$(go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])') \
    || die "kwok-stages: step=download: cannot get sigs.k8s.io/kwok@$KWOK_VERSION"
  mkdir -p "$SHARE"
  : >"$out.partial"
  for f in "$dir"/kustomize/stage/node/fast/*.yaml "$dir"/kustomize/stage/node/heartbeat-with-lease/*.yaml \
      "$dir"/kustomize/stage/pod/fast/*.yaml; do
    [[ $(basename "$f") == kustomization.yaml ]] && continue
    { echo "---"; cat "$f"; } >>"$out.partial"
  done
  grep -q '^kind: Stage' "$out.partial" || die "kwok-stages: step=copy: no Stage found in $dir/kustomize/stage"
  mv -f "$out.partial" "$out"
  log "kwok-stages: $(grep -c '^kind: Stage' "$out") stages -> $out"
}

# kubectl: the machine's (/usr/bin/kubectl or PATH), else the package `kubectl` where the machine's
# apt sources have one (Debian's own archive has none: its kubernetes-client is v1.20, far outside
# the version skew kubectl supports, so it is not used), else built here from k8s.io/kubernetes.
ensure_kubectl() {
  if command -v kubectl >/dev/null; then log "kubectl: using $(command -v kubectl)"; return; fi
  if [[ -x "$BIN/kubectl" ]]; then log "kubectl: using $BIN/kubectl"; return; fi
  if command -v apt-get >/dev/null && [[ $(id -u) == 0 ]]; then
    log "kubectl: missing; looking for an apt package"
    apt-get update -qq >/dev/null 2>&1 || true
    if apt-cache policy kubectl 2>/dev/null | grep -q 'Candidate: [0-9]'; then
      apt-get install -y -qq kubectl >/dev/null 2>&1 || log "kubectl: apt-get install kubectl failed"
    fi
    if command -v kubectl >/dev/null; then log "kubectl: installed $(command -v kubectl)"; return; fi
  fi
  log "kubectl: no package; building it from k8s.io/kubernetes/cmd/kubectl"
  require_go; build_k8s kubectl
}

main() {
  local want=("$@") t todo=() t0
  if [[ "${1:-}" == --node ]]; then
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/gamecluster-e2e-tools.XXXXXX")
    trap 'rm -rf "$WORK"' EXIT
    t0=$(date +%s)
    build_node_tools
    log "done in $(( $(date +%s) - t0 ))s"
    return
  fi
  [[ ${#want[@]} -gt 0 ]] || want=("${ALL_TOOLS[@]}" kubectl)
  mkdir -p "$BIN"
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/gamecluster-e2e-tools.XXXXXX")
  trap 'rm -rf "$WORK"' EXIT
  t0=$(date +%s)
  log "versions: $TAG"
  log "bin: $BIN"
  for t in "${want[@]}"; do
    case "$t" in
      kubectl) ensure_kubectl; continue ;;
      kwok-stages) continue ;;
      etcd|kwok|kube-apiserver|kube-controller-manager|kube-scheduler|jaeger) ;;
      *) die "$t: step=args: unknown tool (known: ${ALL_TOOLS[*]} kubectl)" ;;
    esac
    if [[ -x "$BIN/$t" ]]; then log "$t: present, skipped"; else todo+=("$t"); fi
  done
  if [[ ${#todo[@]} -gt 0 ]]; then
    require_go
    log "go: $(go version)"
    local k8s=()
    for t in "${todo[@]}"; do
      case "$t" in
        kube-apiserver|kube-controller-manager|kube-scheduler) k8s+=("$t") ;;
      esac
    done
    [[ ${#k8s[@]} -eq 0 ]] || build_k8s "${k8s[@]}"
    for t in "${todo[@]}"; do
      case "$t" in
        etcd) build_etcd ;;
        kwok) build_kwok ;;
        jaeger) build_jaeger ;;
      esac
    done
  fi
  if [[ " ${want[*]} " == *" kwok "* || " ${want[*]} " == *" kwok-stages "* ]]; then
    ensure_kwok_stages
  fi
  log "done in $(( $(date +%s) - t0 ))s"
}

main "$@"
