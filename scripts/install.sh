#!/usr/bin/env bash
# Install everything Tugboat needs on Debian 12, idempotently: the Debian packages (runc, crun,
# busybox-static, ...) and the project's own Python environment in .venv. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

# prometheus: promtool and the Prometheus server that the metrics tests start on a port of their own
# (where systemd runs, Debian also enables its own prometheus.service on :9090).
# skopeo, umoci, docker-registry and apache2-utils (htpasswd): the image tests check interop with the
# real tools against a real registry on 127.0.0.1. nftables: published ports and outbound NAT.
# debhelper, lintian: `make deb` (scripts/build-deb.sh); debootstrap: tests/test_deb.py installs the
# package into a fresh Debian 12 root it makes with it. docker-compose (1.29, Python): the compose test
# drives it against tug-docker-api. containernetworking-plugins (in /usr/lib/cni) and iptables (portmap
# and bridge's ipMasq use it): tugd's CNI pod networking and its test.
PACKAGES=(runc crun busybox-static tini python3 python3-venv iproute2 util-linux procps prometheus
          skopeo umoci docker-registry apache2-utils nftables debhelper lintian debootstrap
          docker-compose containernetworking-plugins iptables)
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The venv is built with Debian's interpreter, never a `python3` wrapper found first on PATH.
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -e "$stamp" ]; then
    [ -x .venv/bin/python ] || /usr/bin/python3 -m venv .venv
    # compat: a plain path entry in a .pth; the default editable finder costs ~12 ms at every start
    # of tug, tugd and tug-shim (measured with -X importtime).
    .venv/bin/pip install -q --disable-pip-version-check -e '.[test]' --config-settings editable_mode=compat
    rm -f .venv/.installed-*
    touch "$stamp"
fi

# Byte-compile the project: with PYTHONDONTWRITEBYTECODE set (as on some hosts) nothing would be
# cached and every `tug` would recompile its modules (measured: ~15 ms per command).
.venv/bin/python -m compileall -q tugwire shimd supervisor cri dockerapi >/dev/null

# The Kubernetes CRI test tools (crictl, critest: Go, from the Go module proxy) into a cache outside
# the repo, only when asked: TUGBOAT_CRI_TOOLS=1 for both, or a list (TUGBOAT_CRI_TOOLS=crictl).
# Without it nothing is built here: the crictl tests build crictl themselves (once: it is cached).
case "${TUGBOAT_CRI_TOOLS:-0}" in
    0 | "") ;;
    1) bash scripts/install-cri-tools.sh >/dev/null ;;
    *) bash scripts/install-cri-tools.sh ${TUGBOAT_CRI_TOOLS//,/ } >/dev/null ;;
esac
