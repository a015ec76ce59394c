#!/usr/bin/env bash
# The Debian 12 (bookworm) packages of a minimal root for tests/test_deb.py, downloaded once with
# `debootstrap --make-tarball` into a cache outside the repo, so that the test makes a fresh root
# in seconds with `debootstrap --unpack-tarball` and no network. The tarball holds minbase plus
# the packages Tugboat's .deb Depends on (so that `apt-get install ./tugboat_*.deb` in the root
# needs no download): a new list of packages is a new tarball.
#
#   scripts/debootstrap-cache.sh          prints the tarball's path (makes it first if missing)
#
# Environment: TUGBOAT_TEST_TOOLS (the cache, default /var/cache/tugboat-test-tools); the mirror
# is the first URIs: of /etc/apt/sources.list.d/debian.sources (else deb.debian.org).
set -euo pipefail

SUITE=bookworm
# Keep in step with Depends: in debian/control (else apt in the root would need the network).
INCLUDE=python3,runc,nftables,iproute2,util-linux,tini,init-system-helpers,ca-certificates
cache="${TUGBOAT_TEST_TOOLS:-/var/cache/tugboat-test-tools}"
key=$(printf '%s %s' "$SUITE" "$INCLUDE" | sha256sum | cut -c1-12)
tarball="$cache/debootstrap-$SUITE-$key.tgz"
if [ -s "$tarball" ]; then
    echo "$tarball"
    exit 0
fi
mirror=$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\).*/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null |
    head -n 1)
mirror=${mirror:-http://deb.debian.org/debian}
install -d -m 0755 "$cache"
work=$(mktemp -d "$cache/.debootstrap.XXXXXX")
trap 'rm -rf "$work"' EXIT
debootstrap --variant=minbase --include="$INCLUDE" --make-tarball="$work/out.tgz" \
    "$SUITE" "$work/root" "$mirror" >"$work/log" 2>&1 || {
    tail -n 20 "$work/log" >&2
    exit 1
}
mv -f "$work/out.tgz" "$tarball"
echo "$tarball"
