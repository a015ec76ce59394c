#!/usr/bin/env bash
# Make Tugboat's peers available to the benchmarks and the reference tests, without installing
# them system-wide: Debian's packages are fetched with `apt-get download` and unpacked with
# `dpkg-deb -x` into a cache outside the repository. Nothing is configured and nothing is
# started: no maintainer script runs, so no dockerd or containerd starts on the host's network,
# no systemd unit is enabled, no CNI config lands in /etc/cni.
#
#   scripts/install-peers.sh          unpack (once; later calls only check the cache)
#   scripts/install-peers.sh --env    print the shell variables the peers need (PEERS_ROOT ...)
#
# What ends up in $TUGBOAT_PEERS (default /var/cache/tugboat-peers), in root/:
#   containerd 1.6 (containerd, containerd-shim-runc-v2, ctr)
#   docker.io 20.10 (dockerd, docker-proxy; the reference daemon: docs/docker-api.md)
#   podman 4.3 with conmon, containers-common and containers-image (configuration files under
#   root/usr/share/containers and root/etc/containers, used through CONTAINERS_CONF etc.) and
#   libsubid4 (the one shared library podman needs that the machine lacks: LD_LIBRARY_PATH)
# runc, tini and the CNI plugins come from the machine (scripts/install.sh and Debian).
#
# bench/peerd.py finds the binaries here; the benchmarks and tests/test_docker_reference.py say
# a peer is missing (and name this script) instead of failing when the cache is not there.
set -euo pipefail

cache="${TUGBOAT_PEERS:-/var/cache/tugboat-peers}"
packages=(containerd docker.io podman conmon golang-github-containers-common
    golang-github-containers-image libsubid4)

if [ "${1:-}" = "--env" ]; then
    echo "PEERS_ROOT=$cache/root"
    echo "PATH=$cache/root/usr/bin:$cache/root/usr/sbin:\$PATH"
    echo "LD_LIBRARY_PATH=$cache/root/usr/lib/x86_64-linux-gnu"
    exit 0
fi

# The versions apt would give now: the cache is good when it was unpacked from exactly these.
want=$(apt-cache policy "${packages[@]}" 2>/dev/null | awk '/^[^ ]/ {p=$1} /Candidate:/ {print p, $2}')
stamp="$cache/root/.unpacked"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$cache/root/usr/sbin/dockerd" ]; then
    exit 0
fi
if echo "$want" | grep -q "(none)" || [ -z "$want" ]; then
    # The package lists may be missing or old (a fresh machine): read them once.
    apt-get update -qq
    want=$(apt-cache policy "${packages[@]}" | awk '/^[^ ]/ {p=$1} /Candidate:/ {print p, $2}')
fi

install -d -m 0755 "$cache"
scratch=$(mktemp -d "$cache/.new.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
# _apt downloads into the directory: it must be able to write there.
chmod 0777 "$scratch"
(cd "$scratch" && apt-get download -qq "${packages[@]}")
install -d "$scratch/root"
for deb in "$scratch"/*.deb; do
    dpkg-deb -x "$deb" "$scratch/root"
done
echo "$want" >"$scratch/root/.unpacked"
# Swap the new tree in whole: a run that fails half-way never leaves a tree the next one trusts.
rm -rf "$cache/root.old"
[ -d "$cache/root" ] && mv "$cache/root" "$cache/root.old"
mv "$scratch/root" "$cache/root"
rm -rf "$cache/root.old"
echo "install-peers: unpacked into $cache/root:" >&2
echo "$want" | sed 's/^/  /' >&2
