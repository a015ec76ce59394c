#!/usr/bin/env bash
# Build a real kubelet from the Go module proxy into a cache outside the repo, for the
# standalone-kubelet test (tests/test_kubelet.py, `make e2e-kubelet`):
#
#   go build -o $CACHE/kubelet-VERSION k8s.io/kubernetes/cmd/kubelet
#
# in a scratch wrapper module. `go install k8s.io/kubernetes/cmd/kubelet@VERSION` does not work:
# k8s.io/kubernetes's go.mod requires its ~30 staging modules (k8s.io/api, k8s.io/client-go, ...)
# at v0.0.0 and replaces them with ./staging/src/..., and go refuses pkg@version installs of a
# module with replace directives (golang/go#44840). The wrapper requires k8s.io/kubernetes
# VERSION and replaces every staging module named in that go.mod with its published tag
# (v1.X.Y -> v0.X.Y). The wrapper go.mod is generated here: no Go code ships in Tugboat.
#
#   scripts/install-kubelet.sh        prints the path of the binary
#
# A binary already in the cache is not built again. Environment:
#   TUGBOAT_TEST_TOOLS   the cache (default /var/cache/tugboat-test-tools)
#   GOCACHE, GOMODCACHE  default to go-build and go-mod under the cache
#   GOFLAGS              passed on, with -trimpath added (on a shared machine: -p=1, and nice)
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=v1.36.3
STAGING_VERSION=v0.${VERSION#v1.}
cache="${TUGBOAT_TEST_TOOLS:-/var/cache/tugboat-test-tools}"
binary="$cache/kubelet-$VERSION"

if [ -x "$binary" ]; then
    echo "$binary"
    exit 0
fi
if ! command -v go >/dev/null 2>&1; then
    echo "install-kubelet: $binary is missing and there is no Go toolchain to build it" >&2
    exit 1
fi

install -d -m 0755 "$cache"
export GOCACHE="${GOCACHE:-$cache/go-build}"
export GOMODCACHE="${GOMODCACHE:-$cache/go-mod}"
export GOFLAGS="${GOFLAGS:+$GOFLAGS }-trimpath"
# As Kubernetes' own release builds of kubelet: static, no cgo.
export CGO_ENABLED=0

# Built in a scratch directory and renamed into the cache only when whole, so a build that fails
# or is interrupted never leaves a binary that the next run would trust.
scratch=$(mktemp -d "${TMPDIR:-/tmp}/tug-kubelet.XXXXXX")
trap 'rm -rf "$scratch"' EXIT

echo "install-kubelet: building kubelet $VERSION into $cache (long: thousands of packages)" >&2
start=$(date +%s)

gomod=$(go mod download -json "k8s.io/kubernetes@$VERSION" |
    sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
if [ ! -f "$gomod" ]; then
    echo "install-kubelet: could not download the go.mod of k8s.io/kubernetes@$VERSION" >&2
    exit 1
fi
# Every `k8s.io/x => ./staging/src/k8s.io/x` of k8s.io/kubernetes's go.mod.
mapfile -t staging < <(sed -n 's|^[[:space:]]*\(k8s.io/[^[:space:]]*\) => ./staging/src/.*|\1|p' "$gomod")
if [ ${#staging[@]} -eq 0 ]; then
    echo "install-kubelet: no staging replaces found in $gomod" >&2
    exit 1
fi
goversion=$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$gomod")

mod="$scratch/module"
mkdir -p "$mod"
{
    echo "module tugboat.invalid/kubelet-build"
    echo
    echo "go $goversion"
    echo
    echo "require k8s.io/kubernetes $VERSION"
    echo
    echo "replace ("
    for m in "${staging[@]}"; do
        echo "	$m => $m $STAGING_VERSION"
    done
    echo ")"
} >"$mod/go.mod"
(
    cd "$mod"
    # Adds the requirements (and go.sum lines) of the kubelet package's import graph.
    go get "k8s.io/kubernetes/cmd/kubelet@$VERSION"
    ldflags="-X k8s.io/component-base/version.gitVersion=$VERSION"
    ldflags="$ldflags -X k8s.io/client-go/pkg/version.gitVersion=$VERSION"
    go build -ldflags "$ldflags" -o "$scratch/kubelet" k8s.io/kubernetes/cmd/kubelet
)
mv -f "$scratch/kubelet" "$binary"
echo "install-kubelet: built kubelet $VERSION in $(($(date +%s) - start)) s" >&2
echo "$binary"
