#!/usr/bin/env bash
# Build the Kubernetes CRI test tools from the Go module proxy into a cache outside the repo:
#
#   crictl   go install sigs.k8s.io/cri-tools/cmd/crictl@VERSION
#   critest  go test -c of sigs.k8s.io/cri-tools/cmd/critest in a scratch module that requires
#            cri-tools@VERSION (critest is a ginkgo test binary: cmd/critest holds only
#            cri_test.go, and cri-tools' own Makefile builds it with `go test -c`)
#
# as cri-tools' Makefile does (CGO_ENABLED=0, -trimpath, the version in pkg/version.Version).
# Tools only for the tests (tests/test_cri_*.py): no Go code ships in Tugboat.
#
#   scripts/install-cri-tools.sh [crictl] [critest]     (default: both)
#
# Prints the path of each binary, one a line. A binary already in the cache is not built again
# (the cache directory is per version). Environment:
#   TUGBOAT_TEST_TOOLS   the cache (default /var/cache/tugboat-test-tools)
#   GOFLAGS              passed on (on a shared machine: GOFLAGS=-p=1 nice -n 19 ...)
# scripts/install.sh calls this when TUGBOAT_CRI_TOOLS=1 (or =crictl, =critest) is set; the
# crictl tests call it themselves when crictl is missing, so a plain `make test` needs no flag.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=v1.37.0
MODULE=sigs.k8s.io/cri-tools
cache="${TUGBOAT_TEST_TOOLS:-/var/cache/tugboat-test-tools}/cri-tools-$VERSION"

tools=("$@")
[ ${#tools[@]} -gt 0 ] || tools=(crictl critest)
for t in "${tools[@]}"; do
    case "$t" in
        crictl | critest) ;;
        *)
            echo "install-cri-tools: unknown tool '$t' (crictl, critest)" >&2
            exit 2
            ;;
    esac
done

if ! command -v go >/dev/null 2>&1; then
    for t in "${tools[@]}"; do
        if [ ! -x "$cache/$t" ]; then
            echo "install-cri-tools: $t is not in $cache and there is no Go toolchain to build it" >&2
            exit 1
        fi
    done
fi

install -d -m 0755 "$cache"
export CGO_ENABLED=0
ldflags="-X $MODULE/pkg/version.Version=${VERSION#v}"

# Each binary is built in a scratch directory and renamed into the cache only when whole, so a
# build that fails or is interrupted never leaves a binary that the next run would trust.
scratch=$(mktemp -d "${TMPDIR:-/tmp}/tug-cri-tools.XXXXXX")
trap 'rm -rf "$scratch"' EXIT

build_crictl() {
    GOBIN="$scratch/bin" go install -trimpath -ldflags "$ldflags" "$MODULE/cmd/crictl@$VERSION"
    mv -f "$scratch/bin/crictl" "$cache/crictl"
}

build_critest() {
    local mod="$scratch/critest-module"
    mkdir -p "$mod"
    (
        cd "$mod"
        go mod init tugboat.invalid/critest-build >/dev/null 2>&1
        # -t: cmd/critest holds only a test file, whose imports are test dependencies.
        go get -t "$MODULE/cmd/critest@$VERSION"
        go test -c -trimpath -ldflags "$ldflags" -o "$scratch/critest" "$MODULE/cmd/critest"
    )
    mv -f "$scratch/critest" "$cache/critest"
}

for t in "${tools[@]}"; do
    if [ ! -x "$cache/$t" ]; then
        echo "install-cri-tools: building $t $VERSION into $cache" >&2
        start=$(date +%s)
        "build_$t"
        echo "install-cri-tools: built $t in $(($(date +%s) - start)) s" >&2
    fi
    echo "$cache/$t"
done
